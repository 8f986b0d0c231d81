"""Loaders that turn public datasets into the pipeline's raw, domain-tagged click log.

Every loader returns a `Loaded` tuple `(frame, spec, column_types, dropped_rows)`: a DataFrame holding
exactly `spec.raw_columns` with no missing values, the `FeatureSpec` describing it, each column's CSV
type ('INT', 'FLOAT' or 'BYTES') for `schemas.build_schema`, and the counts of source rows the
loader left out on purpose, by reason (empty for loaders that keep every row; `prepare` records them
in split.json). CSV type inference runs on each split on its own, so values are chosen to read as
the same type in every split: numeric features are floats, numeric domain values are prefixed
(`tab` 1 -> 'tab_1'), the named datasets' text columns hold no numbers, and gaps are filled
('unknown' for text, -1 for integer categoricals, the column median for numeric features).

Sources are read as text first, indexed by line number, so that any malformed value raises a
`DataFormatError` naming the file, the 1-based line, the field and what was expected.
"""
import csv
import glob
import gzip
import os
from typing import Collection, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from models.features import FeatureSpec


class Loaded(NamedTuple):
  """What a loader returns; see the module docstring."""
  frame: pd.DataFrame
  spec: FeatureSpec
  column_types: Dict[str, str]
  dropped_rows: Mapping[str, int]


DOMAIN, LABEL = 'domain', 'click'
MISSING_TEXT, MISSING_INT = 'unknown', -1
HASH_THRESHOLD = 50_000  # categoricals with more distinct values are hashed, not given a vocabulary
HASH_BUCKETS = 100_000


class DataFormatError(ValueError):
  """A source that does not match its format; the message names file, line, field and expectation."""

  def __init__(self, problem: str, path: Optional[str] = None, line: Optional[int] = None,
               field: Optional[str] = None):
    location = ', '.join(part for part in (
        path, line and f'line {line}', field and f'field {field!r}') if part)
    super().__init__(f'{location}: {problem}' if location else problem)
    self.path, self.line, self.field = path, line, field


# --- Reading and checking text ---------------------------------------------------------------------

def _numbered_rows(file, sep: str) -> Iterator[Tuple[int, List[str]]]:
  """(line number, fields) per line: CSV with quoting for commas, a literal split otherwise."""
  if sep == ',':
    reader = csv.reader(file)
    for fields in reader:
      yield reader.line_num, fields
  else:
    for number, line in enumerate(file, 1):
      yield number, line.rstrip('\r\n').split(sep)


def _read_rows(path: str, sep: str, encoding: str) -> List[Tuple[int, List[str]]]:
  """The non-blank (line number, fields) of a file; a `.gz` file is decompressed on the way."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rt', encoding=encoding, newline='') as file:
      return [(number, fields) for number, fields in _numbered_rows(file, sep) if fields not in ([], [''])]
  except (gzip.BadGzipFile, EOFError) as error:  # not gzip at all, or cut short
    raise DataFormatError(f'expected a complete gzip file, as the .gz name says ({error}); '
                          'decompress it again or drop the .gz from its name', path) from error


def read_table(path: str, columns: Sequence[str], sep: str = ',', encoding: str = 'utf-8-sig',
               header: bool = True) -> pd.DataFrame:
  """Reads a delimited file as text, indexed by 1-based line number; blank lines are skipped.

  A file named `*.gz` is decompressed as it is read. With `header`, the first line names the
  columns; it must name every one of `columns`, and all of the file's columns are kept. Without it,
  each line holds exactly `columns`, in order.
  """
  rows = _read_rows(path, sep, encoding)
  if len(rows) <= header:
    found = 'only a header' if rows else 'an empty file'
    raise DataFormatError(f'expected data lines, found {found}', path, rows[-1][0] + 1 if rows else 1,
                          columns[0])
  names = list(columns)
  if header:
    (header_line, names), rows = rows[0], rows[1:]
    for column in columns:
      if column not in names:
        raise DataFormatError(f'expected a column named {column!r} in the header, found {names}',
                              path, header_line, column)
    for column in names:
      if names.count(column) > 1:
        raise DataFormatError('expected each column named once in the header', path, header_line, column)
  for number, fields in rows:
    if len(fields) != len(names):
      field = names[min(len(fields), len(names) - 1)]
      raise DataFormatError(f'expected {len(names)} fields separated by {sep!r}, found {len(fields)}',
                            path, number, field)
  return pd.DataFrame([fields for _, fields in rows], columns=names,
                      index=[number for number, _ in rows], dtype=object)


def _reject(frame: pd.DataFrame, column: str, bad: pd.Series, expected: str, path: str) -> None:
  """Raises a DataFormatError at the first line of `frame` (indexed by line) flagged in `bad`."""
  if bad.any():
    line = bad.idxmax()
    raise DataFormatError(f'expected {expected}, found {frame.at[line, column]!r}', path, line, column)


def parse_numbers(frame: pd.DataFrame, column: str, path: str, integer: bool = False,
                  allow_missing: bool = False) -> pd.Series:
  """The column as numbers; empty fields become NaN when `allow_missing`, else are errors."""
  text = frame[column].str.strip()
  values = pd.to_numeric(text, errors='coerce')
  bad = values.isna() & ~(allow_missing & (text == ''))
  if integer:
    bad |= values.notna() & (values % 1 != 0)
  _reject(frame, column, bad, 'an integer' if integer else 'a number', path)
  return values.astype('int64') if integer and not allow_missing else values


def _parse_label(frame: pd.DataFrame, column: str, path: str) -> pd.Series:
  labels = pd.to_numeric(frame[column].str.strip(), errors='coerce')
  _reject(frame, column, ~labels.isin([0, 1]), 'a 0/1 label', path)
  return labels.astype('int64')


def _domain_names(frame: pd.DataFrame, column: str, path: str, prefix: str) -> pd.Series:
  """Domain names from a column: text is kept, numbers are prefixed (tab 1 -> 'tab_1')."""
  names = frame[column].str.strip()
  _reject(frame, column, names == '', 'a domain name', path)
  is_number = pd.to_numeric(names, errors='coerce').notna()
  return names.where(~is_number, prefix + '_' + names)


def _categorical_values(frame: pd.DataFrame, column: str, path: str) -> pd.Series:
  """Integers where every value is one (INT), else the text (BYTES); empty fields stay missing."""
  text = frame[column].str.strip()
  numbers = pd.to_numeric(text, errors='coerce')
  if (numbers.notna() | (text == '')).all():
    fractional = numbers.notna() & (numbers % 1 != 0)
    _reject(frame, column, fractional, 'integers or text in a categorical column', path)
    return numbers
  return text


def _source_files(source: str, pattern: str) -> List[str]:
  """`source` itself if it is a file, else its files matching `pattern`, sorted."""
  paths = sorted(glob.glob(os.path.join(source, pattern))) if os.path.isdir(source) else [source]
  if not paths or not os.path.isfile(paths[0]):
    raise FileNotFoundError(f'No {pattern} file found at {source}.')
  return paths


# --- Turning a loaded frame into the contract ------------------------------------------------------

def _column_type(values: pd.Series) -> str:
  if pd.api.types.is_integer_dtype(values):
    return 'INT'
  return 'FLOAT' if pd.api.types.is_float_dtype(values) else 'BYTES'


def _assemble(frame: pd.DataFrame, *, categorical: Sequence[str], numeric: Sequence[str] = (),
              hashed: Sequence[str] = (), multivalent: Optional[Dict[str, int]] = None,
              domain: str = DOMAIN, label: str = LABEL, extra_labels: Sequence[str] = (),
              user: Optional[str] = None, hash_threshold: int = HASH_THRESHOLD,
              hash_buckets: int = HASH_BUCKETS, dropped_rows: Optional[Mapping[str, int]] = None) -> Loaded:
  """Fills gaps and fixes dtypes of `frame`, and describes it as a `Loaded`.

  Domains are listed by descending row count; `hashed` columns, and categoricals with more than
  `hash_threshold` distinct values, are hashed into `hash_buckets` buckets, the others get a
  vocabulary. `dropped_rows` counts the source rows the loader left out, by reason.
  """
  multivalent = dict(multivalent or {})
  columns = {domain: frame[domain].astype(str)}
  for column in [*categorical, *hashed, *multivalent]:
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values):
      columns[column] = values.fillna(MISSING_INT).astype('int64')
    else:
      columns[column] = values.fillna('').replace('', MISSING_TEXT).astype(str)
  for column in numeric:
    values = frame[column].astype('float64')
    columns[column] = values.fillna(values.median()).fillna(0.0)
  for column in [label, *extra_labels]:
    columns[column] = frame[column].astype('int64')
  result = pd.DataFrame(columns).reset_index(drop=True)

  sizes = result[domain].value_counts()
  many_values = [c for c in categorical if result[c].nunique() > hash_threshold]
  spec = FeatureSpec(
      domain=domain,
      domains=sorted(sizes.index, key=lambda name: (-sizes[name], name)),
      label=label,
      vocab=[c for c in categorical if c not in many_values],
      hashed={c: hash_buckets for c in [*many_values, *hashed]},
      numeric=list(numeric),
      multivalent=multivalent,
      extra_labels=list(extra_labels),
      user=user,
  )
  result = result[spec.raw_columns]
  return Loaded(result, spec, {column: _column_type(result[column]) for column in result.columns},
                dict(dropped_rows or {}))


def _check_option(option: str, value: str, allowed: Collection[str]) -> None:
  """Rejects a loader option's value that is not among `allowed` (a sequence or a dict's keys)."""
  if value not in allowed:
    raise DataFormatError(f'option {option}: expected one of {list(allowed)}, found {value!r}')


# --- MovieLens 100K and 1M -------------------------------------------------------------------------

# ML-1M age groups, used for both formats: a group is named by its first age code.
AGE_GROUPS = {1: 'under18', 18: '18-24', 25: '25-34', 35: '35-44', 45: '45-49', 50: '50-55', 56: '56+'}
# ML-1M occupation codes 0..20, as named in its README.
ML1M_OCCUPATIONS = [
    'other', 'academic_educator', 'artist', 'clerical_admin', 'college_grad_student',
    'customer_service', 'doctor_health_care', 'executive_managerial', 'farmer', 'homemaker',
    'k12_student', 'lawyer', 'programmer', 'retired', 'sales_marketing', 'scientist', 'self_employed',
    'technician_engineer', 'tradesman_craftsman', 'unemployed', 'writer']
MOVIELENS_DOMAINS = ('gender', 'age', 'occupation')
LABEL_RULES = {'ge4': 4, 'eq5': 5}  # a rating at or above the threshold is a click
MAX_GENRES = 6
RATING_COLUMNS = ['user_id', 'item_id', 'rating', 'timestamp']


def _zip_prefix(zips: pd.Series) -> pd.Series:
  """The first two digits of a US ZIP code (a region of a few states); -1 for other postal codes."""
  prefix = zips.str.strip().str[:2]
  return prefix.where(prefix.str.fullmatch(r'\d\d'), str(MISSING_INT)).astype('int64')


def _read_ratings(path: str, sep: str) -> pd.DataFrame:
  ratings = read_table(path, RATING_COLUMNS, sep=sep, header=False)
  return pd.DataFrame({column: parse_numbers(ratings, column, path, integer=True)
                       for column in RATING_COLUMNS})


def _read_ml100k(source: str) -> Tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
  """Ratings, users and items of the 100K format: u.data, u.user, u.item and u.genre."""
  ratings_path, users_path, items_path, genres_path = (
      os.path.join(source, name) for name in ('u.data', 'u.user', 'u.item', 'u.genre'))
  ratings = _read_ratings(ratings_path, '\t')

  users = read_table(users_path, ['user_id', 'age', 'gender', 'occupation', 'zip'], sep='|',
                     header=False)
  ages = parse_numbers(users, 'age', users_path, integer=True)
  groups = np.array(list(AGE_GROUPS))
  users = pd.DataFrame({
      'user_id': parse_numbers(users, 'user_id', users_path, integer=True),
      'gender': users.gender,
      'age': groups[np.maximum(np.searchsorted(groups, ages, side='right') - 1, 0)],
      'occupation': users.occupation,
      'zip_prefix': _zip_prefix(users.zip),
  })

  genre_table = read_table(genres_path, ['genre', 'index'], sep='|', header=False)
  order = parse_numbers(genre_table, 'index', genres_path, integer=True).argsort()
  genres = list(genre_table.genre.iloc[order])
  items = read_table(items_path, ['item_id', 'title', 'release_date', 'video_release_date', 'url',
                                  *genres], sep='|', encoding='latin-1', header=False)
  flags = np.column_stack([parse_numbers(items, genre, items_path, integer=True) for genre in genres])
  dates = pd.to_datetime(items.release_date, format='%d-%b-%Y', errors='coerce')
  _reject(items, 'release_date', dates.isna() & (items.release_date != ''),
          "a date like '01-Jan-1995' or nothing", items_path)
  items = pd.DataFrame({
      'item_id': parse_numbers(items, 'item_id', items_path, integer=True),
      'genres': ['|'.join(np.array(genres)[row == 1]) for row in flags],
      'release_year': dates.dt.year,
  })
  return ratings, users, items, ratings_path


def _read_ml1m(source: str) -> Tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
  """Ratings, users and items of the 1M format: ratings.dat, users.dat and movies.dat."""
  ratings_path, users_path, movies_path = (
      os.path.join(source, name) for name in ('ratings.dat', 'users.dat', 'movies.dat'))
  ratings = _read_ratings(ratings_path, '::')

  users = read_table(users_path, ['user_id', 'gender', 'age', 'occupation', 'zip'], sep='::',
                     encoding='latin-1', header=False)
  ages = parse_numbers(users, 'age', users_path, integer=True)
  _reject(users, 'age', ~ages.isin(AGE_GROUPS), f'an age group code in {list(AGE_GROUPS)}', users_path)
  occupations = parse_numbers(users, 'occupation', users_path, integer=True)
  _reject(users, 'occupation', ~occupations.between(0, len(ML1M_OCCUPATIONS) - 1),
          f'an occupation code from 0 to {len(ML1M_OCCUPATIONS) - 1}', users_path)
  users = pd.DataFrame({
      'user_id': parse_numbers(users, 'user_id', users_path, integer=True),
      'gender': users.gender,
      'age': ages,
      'occupation': np.array(ML1M_OCCUPATIONS)[occupations],
      'zip_prefix': _zip_prefix(users.zip),
  })

  movies = read_table(movies_path, ['item_id', 'title', 'genres'], sep='::', encoding='latin-1',
                      header=False)
  items = pd.DataFrame({
      'item_id': parse_numbers(movies, 'item_id', movies_path, integer=True),
      'genres': movies.genres,
      'release_year': pd.to_numeric(movies.title.str.extract(r'\((\d{4})\)\s*$')[0]),
  })
  return ratings, users, items, ratings_path


def load_movielens(source: str, domain: str = 'gender', label_rule: str = 'ge4') -> Loaded:
  """MovieLens 100K (`u.data`, ...) or 1M (`ratings.dat`, ...), whichever `source` holds.

  Args:
    source: The directory of the unpacked dataset.
    domain: 'gender' (M, F), 'age' (ML-1M age groups such as 'age_18-24', for both formats) or
      'occupation' (its name).
    label_rule: 'ge4' (a rating of 4 or 5 is a click) or 'eq5' (only 5 is).

  Features: user_id, item_id, gender, age (group code), occupation, zip_prefix (first two ZIP digits,
  -1 for non-US postal codes), genres (multivalent) and the numeric release_year and timestamp.
  """
  _check_option('domain', domain, MOVIELENS_DOMAINS)
  _check_option('label_rule', label_rule, LABEL_RULES)
  if os.path.exists(os.path.join(source, 'u.data')):
    ratings, users, items, ratings_path = _read_ml100k(source)
  elif os.path.exists(os.path.join(source, 'ratings.dat')):
    ratings, users, items, ratings_path = _read_ml1m(source)
  else:
    raise FileNotFoundError(f'Neither u.data (MovieLens 100K) nor ratings.dat (1M) is in {source}.')

  for column, table, name in (('user_id', users, 'users'), ('item_id', items, 'items')):
    _reject(ratings, column, ~ratings[column].isin(table[column]), f'a {column} listed in the {name} file',
            ratings_path)
  frame = ratings.merge(users, on='user_id', how='left').merge(items, on='item_id', how='left')
  frame[DOMAIN] = {
      'gender': frame.gender,
      'age': 'age_' + frame.age.map(AGE_GROUPS),
      'occupation': frame.occupation,
  }[domain]
  frame[LABEL] = (frame.rating >= LABEL_RULES[label_rule]).astype('int64')
  return _assemble(frame, categorical=['user_id', 'item_id', 'gender', 'age', 'occupation', 'zip_prefix'],
                   numeric=['release_year', 'timestamp'], multivalent={'genres': MAX_GENRES},
                   user='user_id')


# --- Ali-CCP ---------------------------------------------------------------------------------------

def _read_ali_ccp_file(path: str) -> pd.DataFrame:
  raw = read_table(path, ['click', 'purchase', '301'])
  columns = {
      DOMAIN: _domain_names(raw, '301', path, 'scenario'),
      LABEL: _parse_label(raw, 'click', path),
      'conversion': _parse_label(raw, 'purchase', path),
  }
  for field in raw.columns.drop(['click', 'purchase', '301']):
    if field.startswith('D'):
      columns[field] = parse_numbers(raw, field, path)
    else:
      columns[f'f{field}'] = parse_numbers(raw, field, path, integer=True)
  return pd.DataFrame(columns)


def load_ali_ccp(source: str, pattern: str = 'ali_ccp_*.csv') -> Loaded:
  """Ali-CCP in the Scenario-Wise-Rec CSV format: one file, or a directory of parts (train/val/test).

  Each file has a header with `click`, `purchase` and the scenario field `301` (the domain, named
  'scenario_<value>'); fields named `D...` are dense (numeric), the others label-encoded categorical
  fields, renamed `f<field>` (`101` -> `f101`, the user) so every name is a valid identifier.
  `purchase` becomes the extra label `conversion`.
  """
  parts = [_read_ali_ccp_file(path) for path in _source_files(source, pattern)]
  frame = pd.concat(parts, ignore_index=True)
  fields = frame.columns.drop([DOMAIN, LABEL, 'conversion'])
  return _assemble(frame, categorical=[f for f in fields if not f.startswith('D')],
                   numeric=[f for f in fields if f.startswith('D')], extra_labels=['conversion'],
                   user='f101' if 'f101' in fields else None)


# --- KuaiRand --------------------------------------------------------------------------------------

KUAIRAND_USERS, KUAIRAND_VIDEOS = 'user_features_pure.csv', 'video_features_basic_pure.csv'
MAX_TAGS = 3


def _read_kuairand_log(path: str) -> pd.DataFrame:
  log = read_table(path, ['user_id', 'video_id', 'is_click', 'tab'])
  columns = {
      'user_id': parse_numbers(log, 'user_id', path, integer=True),
      'video_id': parse_numbers(log, 'video_id', path, integer=True),
      DOMAIN: _domain_names(log, 'tab', path, 'tab'),
      LABEL: _parse_label(log, 'is_click', path),
  }
  if 'time_ms' in log:
    columns['timestamp'] = parse_numbers(log, 'time_ms', path) / 1000.0
  return pd.DataFrame(columns)


def _read_kuairand_users(path: str) -> pd.DataFrame:
  users = read_table(path, ['user_id', 'user_active_degree', 'is_video_author', 'register_days',
                            'follow_user_num', 'fans_user_num'])
  return pd.DataFrame({
      'user_id': parse_numbers(users, 'user_id', path, integer=True),
      'user_active_degree': users.user_active_degree,
      'is_video_author': parse_numbers(users, 'is_video_author', path, integer=True, allow_missing=True),
      'register_days': parse_numbers(users, 'register_days', path, allow_missing=True),
      'log_follow_user_num': np.log1p(parse_numbers(users, 'follow_user_num', path, allow_missing=True)),
      'log_fans_user_num': np.log1p(parse_numbers(users, 'fans_user_num', path, allow_missing=True)),
  })


def _read_kuairand_videos(path: str) -> pd.DataFrame:
  videos = read_table(path, ['video_id', 'author_id', 'video_type', 'upload_type', 'music_type',
                             'video_duration', 'tag'])
  return pd.DataFrame({
      'video_id': parse_numbers(videos, 'video_id', path, integer=True),
      'author_id': parse_numbers(videos, 'author_id', path, integer=True, allow_missing=True),
      'video_type': videos.video_type,
      'upload_type': videos.upload_type,
      'music_type': parse_numbers(videos, 'music_type', path, integer=True, allow_missing=True),
      'video_duration_s': parse_numbers(videos, 'video_duration', path, allow_missing=True) / 1000.0,
      # Tag ids '20,43' become 'tag_20|tag_43': text, so the column reads as text in every split.
      'tags': videos.tag.map(lambda tags: '|'.join(f'tag_{tag.strip()}' for tag in tags.split(',')
                                                   if tag.strip())),
  })


def load_kuairand(source: str, pattern: str = '*.csv') -> Loaded:
  """KuaiRand logs joined with the KuaiRand-Pure user and video feature tables.

  `source` is a directory holding the log files (those matching `pattern`, other than the two
  feature tables), `user_features_pure.csv` and `video_features_basic_pure.csv`. From a log only
  `user_id`, `video_id`, `is_click` (the label), `tab` (the domain, 'tab_<value>') and, when present,
  `time_ms` (as `timestamp` in seconds) are used: play and stay times are outcomes, not features.
  Users and videos missing from the tables get the fill values.
  """
  logs = [path for path in _source_files(source, pattern)
          if os.path.basename(path) not in (KUAIRAND_USERS, KUAIRAND_VIDEOS)]
  if not logs:
    raise FileNotFoundError(f'No KuaiRand log matching {pattern} in {source}.')
  frame = (pd.concat([_read_kuairand_log(path) for path in logs], ignore_index=True)
           .merge(_read_kuairand_users(os.path.join(source, KUAIRAND_USERS)), on='user_id', how='left')
           .merge(_read_kuairand_videos(os.path.join(source, KUAIRAND_VIDEOS)), on='video_id', how='left'))
  numeric = ['register_days', 'log_follow_user_num', 'log_fans_user_num', 'video_duration_s']
  return _assemble(frame, categorical=['user_id', 'video_id', 'author_id', 'user_active_degree',
                                       'is_video_author', 'video_type', 'upload_type', 'music_type'],
                   numeric=numeric + (['timestamp'] if 'timestamp' in frame else []),
                   multivalent={'tags': MAX_TAGS}, user='user_id')


# --- Ciao ------------------------------------------------------------------------------------------

CIAO_RATINGS = 'ratings.csv.gz'
CIAO_COLUMNS = ['user_id', 'item_id', 'category', 'rating', 'timestamp']
CIAO_INVALID_RATING = 0  # outside the 1-5 scale: such rows are dropped


def _category_domains(raw: pd.DataFrame, path: str) -> pd.Series:
  """Category names as domain names: lowercase words joined by '_' ('Food & Drink' -> 'food_drink').

  Like the ML-1M occupation names, so that a domain needs no quoting on a command line
  (`run --onboard-domains`).
  """
  names = _domain_names(raw, 'category', path, 'category')
  slugs = names.str.lower().str.replace(r'[^a-z0-9]+', '_', regex=True).str.strip('_')
  _reject(raw, 'category', slugs == '', 'a category name with a letter or digit', path)
  return slugs


def load_ciao(source: str, label_rule: str = 'eq5') -> Loaded:
  """Ciao product ratings (Tang et al., WSDM 2012) with their categories as domains.

  Args:
    source: The dataset's directory, holding `ratings.csv.gz`, or a ratings file (`.csv` or `.csv.gz`)
      with the columns `user_id,item_id,category,rating,timestamp` (others are ignored).
    label_rule: 'eq5' (only a 5 is a click; the default, as 80% of ratings are 4 or 5) or 'ge4'.

  Rows rated 0 are invalid: they are dropped and counted in `dropped_rows`. Domains are the category
  names made lowercase identifiers ('DVDs' -> 'dvds'). Features: user_id, item_id and the numeric
  timestamp (seconds, which a temporal split orders by). `category_id` repeats the domain, and
  `helpfulness` (other readers' verdict on the review) is only known after the rating, so neither is
  a feature.
  """
  _check_option('label_rule', label_rule, LABEL_RULES)
  path = _source_files(source, CIAO_RATINGS)[0]
  raw = read_table(path, CIAO_COLUMNS)
  ratings = parse_numbers(raw, 'rating', path, integer=True)
  _reject(raw, 'rating', ~ratings.between(0, 5), 'a rating from 0 to 5', path)
  frame = pd.DataFrame({
      DOMAIN: _category_domains(raw, path),
      'user_id': parse_numbers(raw, 'user_id', path, integer=True),
      'item_id': parse_numbers(raw, 'item_id', path, integer=True),
      'timestamp': parse_numbers(raw, 'timestamp', path, integer=True),
      LABEL: (ratings >= LABEL_RULES[label_rule]).astype('int64'),
  })
  invalid = ratings == CIAO_INVALID_RATING
  return _assemble(frame[~invalid], categorical=['user_id', 'item_id'], numeric=['timestamp'], user='user_id',
                   dropped_rows={f'rating {CIAO_INVALID_RATING} (invalid)': int(invalid.sum())})


# --- Generic CSV -----------------------------------------------------------------------------------

def _is_numeric_feature(name: str, text: pd.Series, numeric_min_distinct: int) -> bool:
  """Numbers with at least `numeric_min_distinct` distinct values, or any non-integer number; but not an
  identifier: integers in a column named like one (`id`, `user_id`, `itemId`) or unique on most rows."""
  numbers = pd.to_numeric(text[text.str.strip() != ''], errors='coerce')
  if numbers.isna().any():
    return False
  if bool((numbers % 1 != 0).any()):
    return True
  identifier = name.lower().endswith('id') or numbers.nunique() > 0.5 * len(numbers)
  return not identifier and numbers.nunique() >= numeric_min_distinct


def load_csv(source: str, domain_column: str, label_columns: Sequence[str],
             categorical: Optional[Sequence[str]] = None, numeric: Optional[Sequence[str]] = None,
             hashed: Optional[Sequence[str]] = None, user_column: Optional[str] = None,
             numeric_min_distinct: int = 20, hash_threshold: int = HASH_THRESHOLD,
             hash_buckets: int = HASH_BUCKETS) -> Loaded:
  """Any CSV file with a header, a domain column and 0/1 label columns.

  Args:
    source: The CSV file (gzip-compressed if named `.gz`).
    domain_column: Names the domain of each row; numeric values are prefixed with the column name.
    label_columns: 0/1 labels; the first is the click label, the others are extra labels.
    categorical, numeric, hashed: The feature columns; `hashed` ones are categorical and always
      hashed. When none is given, every other column is a feature: numeric when it holds
      non-integer numbers or integers with at least `numeric_min_distinct` distinct values,
      categorical otherwise; integers that identify something (a column named `...id`, or unique on
      most rows) are categorical. When any is given, only the listed columns are features, each of
      the type it is listed as.
    user_column: Identifies the user; always a categorical feature.
    numeric_min_distinct: See above.
    hash_threshold, hash_buckets: Categoricals with more than `hash_threshold` distinct values, and
      `hashed` columns, are hashed into `hash_buckets` buckets.

  Raises:
    DataFormatError: A named column is not in the file (the message lists the file's columns), or
      a value does not fit its column's type.
    ValueError: No label column, or a column listed as two types.
  """
  if not label_columns:
    raise ValueError('label_columns must name at least the click label column.')
  listed_as: Dict[str, str] = {}
  for kind, names in (('categorical', categorical), ('numeric', numeric), ('hashed', hashed)):
    for name in names or ():
      if listed_as.setdefault(name, kind) != kind:
        raise ValueError(f'Column {name!r} is listed as both {listed_as[name]} and {kind}; list it once.')
  user = [user_column] if user_column else []
  raw = read_table(source, [domain_column, *label_columns, *listed_as, *user])
  if not listed_as:
    features = [c for c in raw.columns if c not in (domain_column, *label_columns)]
    numeric = [c for c in features
               if c != user_column and _is_numeric_feature(c, raw[c], numeric_min_distinct)]
    categorical = [c for c in features if c not in numeric]
  hashed = list(hashed or ())
  categorical = [c for c in dict.fromkeys([*(categorical or ()), *user]) if c not in hashed]
  numeric = [c for c in numeric or () if c not in categorical]

  columns = {domain_column: _domain_names(raw, domain_column, source, domain_column)}
  columns.update({label: _parse_label(raw, label, source) for label in label_columns})
  columns.update({c: _categorical_values(raw, c, source) for c in [*categorical, *hashed]})
  columns.update({c: parse_numbers(raw, c, source, allow_missing=True) for c in numeric})
  return _assemble(pd.DataFrame(columns), categorical=categorical, numeric=numeric, hashed=hashed,
                   domain=domain_column, label=label_columns[0], extra_labels=label_columns[1:],
                   user=user_column, hash_threshold=hash_threshold, hash_buckets=hash_buckets)
