"""Loaders on the real datasets beside the checkout, and on small hand-written fixtures."""
import gzip
import os

import pytest

from data.loaders import DataFormatError, load_ali_ccp, load_ciao, load_csv, load_kuairand, load_movielens

DATASETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'shared', 'datasets')


def dataset(name: str) -> str:
  path = os.path.normpath(os.path.join(DATASETS, name))
  if not os.path.exists(path):
    pytest.skip(f'{path} is not available')
  return path


def assert_consistent(frame, spec, column_types):
  """The contract every loader keeps: exactly the spec's columns, typed, complete, domains by size."""
  assert list(frame.columns) == spec.raw_columns
  assert set(column_types) == set(spec.raw_columns)
  assert not frame.isna().any().any()
  sizes = frame[spec.domain].value_counts()
  assert spec.domains == sorted(sizes.index, key=lambda name: (-sizes[name], name))
  for label in spec.label_columns:
    assert set(frame[label]) <= {0, 1}
  expected_dtype = {'INT': 'int64', 'FLOAT': 'float64', 'BYTES': 'object'}
  assert {c: str(frame[c].dtype) for c in frame} == {c: expected_dtype[t] for c, t in column_types.items()}


@pytest.fixture(scope='module')
def ml100k():
  return load_movielens(dataset('ml-100k'))


def test_movielens_100k_counts(ml100k):
  frame, spec, column_types, _ = ml100k
  assert_consistent(frame, spec, column_types)
  assert len(frame) == 100_000
  assert frame.user_id.nunique() == 943
  assert frame.item_id.nunique() == 1682
  assert spec.domains == ['M', 'F']
  assert frame.domain.value_counts().to_dict() == {'M': 74_260, 'F': 25_740}
  assert frame.click.sum() == 55_375


def test_movielens_100k_features(ml100k):
  frame, spec, column_types, _ = ml100k
  assert spec.user == 'user_id'
  assert spec.multivalent == {'genres': 6}
  assert set(spec.numeric) == {'release_year', 'timestamp'}
  assert column_types['zip_prefix'] == 'INT' and column_types['genres'] == 'BYTES'
  first = frame.iloc[0]  # u.data line 1: user 196 (49, M, writer, 55105) rated item 242 (Kolya, 1996) a 3
  assert (first.user_id, first.item_id, first.click, first.timestamp) == (196, 242, 0, 881250949.0)
  assert (first.age, first.gender, first.occupation, first.zip_prefix) == (45, 'M', 'writer', 55)
  assert (first.genres, first.release_year) == ('Comedy', 1997.0)
  assert set(frame.age) == {1, 18, 25, 35, 45, 50, 56}
  assert -1 in set(frame.zip_prefix)  # Canadian postal codes


def test_movielens_100k_age_and_occupation_domains():
  frame, spec, _, _ = load_movielens(dataset('ml-100k'), domain='age')
  assert set(spec.domains) == {'age_under18', 'age_18-24', 'age_25-34', 'age_35-44', 'age_45-49',
                               'age_50-55', 'age_56+'}
  assert spec.domains[0] == 'age_25-34'
  spec = load_movielens(dataset('ml-100k'), domain='occupation').spec
  assert len(spec.domains) == 21 and spec.domains[0] == 'student'


def test_movielens_label_rule_eq5():
  frame = load_movielens(dataset('ml-100k'), label_rule='eq5').frame
  assert frame.click.sum() == 21_201


def test_movielens_unknown_label_rule_is_rejected(tmp_path):
  expected = r"option label_rule: expected one of \['ge4', 'eq5'\], found 'ge3'"
  with pytest.raises(DataFormatError, match=expected):
    load_movielens(str(tmp_path), label_rule='ge3')


def write_ml1m(directory):
  """A tiny MovieLens-1M-format dataset: '::'-separated, latin-1, ages and occupations as codes."""
  files = {
      'ratings.dat': ['1::10::5::978300760', '1::20::3::978302109', '2::10::4::978301968',
                      '3::30::2::978300275', '3::20::4::978824291'],
      'users.dat': ['1::F::1::10::48067', '2::M::56::16::70072', '3::M::25::15::55117-1234'],
      'movies.dat': ['10::GoldenEye (1995)::Action|Adventure|Thriller',
                     '20::Amélie (Fabuleux destin d\'Amélie Poulain, Le) (2001)::Comedy|Romance',
                     '30::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi'],
  }
  for name, lines in files.items():
    (directory / name).write_text('\n'.join(lines) + '\n', encoding='latin-1')
  return str(directory)


def test_movielens_1m_format(tmp_path):
  frame, spec, column_types, _ = load_movielens(write_ml1m(tmp_path), domain='age')
  assert_consistent(frame, spec, column_types)
  assert len(frame) == 5 and frame.click.tolist() == [1, 0, 1, 0, 1]
  assert spec.domains == ['age_25-34', 'age_under18', 'age_56+']
  assert frame.occupation.tolist()[:3] == ['k12_student', 'k12_student', 'self_employed']
  assert frame.genres.tolist()[:2] == ['Action|Adventure|Thriller', 'Comedy|Romance']
  assert frame.release_year.tolist() == [1995.0, 2001.0, 1995.0, 1977.0, 2001.0]
  assert frame.zip_prefix.tolist() == [48, 48, 70, 55, 55]


def test_movielens_1m_rejects_unknown_age_code(tmp_path):
  write_ml1m(tmp_path)
  (tmp_path / 'users.dat').write_text('1::F::1::10::48067\n2::M::57::16::70072\n', encoding='latin-1')
  with pytest.raises(DataFormatError, match=r"users\.dat, line 2, field 'age': expected an age group code"):
    load_movielens(str(tmp_path))


def test_ali_ccp_sample():
  frame, spec, column_types, _ = load_ali_ccp(dataset('ali-ccp-sample'))
  assert_consistent(frame, spec, column_types)
  assert len(frame) == 200
  assert frame.domain.value_counts().to_dict() == {'scenario_1': 146, 'scenario_2': 32, 'scenario_3': 22}
  assert spec.domains == ['scenario_1', 'scenario_2', 'scenario_3']
  assert spec.label_columns == ['click', 'conversion']
  assert (frame.click.sum(), frame.conversion.sum()) == (16, 3)
  assert spec.user == 'f101' and 'f205' in spec.vocab and '301' not in frame and 'f301' not in frame
  assert set(spec.numeric) == {'D109_14', 'D110_14', 'D127_14', 'D150_14', 'D508', 'D509', 'D702', 'D853'}


def test_ali_ccp_single_file():
  frame = load_ali_ccp(os.path.join(dataset('ali-ccp-sample'), 'ali_ccp_val_sample.csv')).frame
  assert frame.domain.value_counts().to_dict() == {'scenario_1': 38, 'scenario_2': 7, 'scenario_3': 5}


def test_kuairand_sample_joins_feature_tables():
  frame, spec, column_types, _ = load_kuairand(dataset('kuairand-sample'))
  assert_consistent(frame, spec, column_types)
  assert len(frame) == 200 and frame.user_id.nunique() == 145 and frame.video_id.nunique() == 29
  assert spec.domains == ['tab_1'] and frame.click.sum() == 32
  first = frame.iloc[0]  # user 0 and video 5543 in the feature tables
  assert (first.user_active_degree, first.register_days, first.author_id) == ('full_active', 799.0, 5752339)
  assert first.video_duration_s == pytest.approx(30.066)
  assert spec.multivalent == {'tags': 3} and frame.tags.str.startswith('tag_').all()
  assert 'play_time_ms' not in frame and column_types['user_active_degree'] == 'BYTES'


def test_kuairand_time_becomes_timestamp(tmp_path):
  source = dataset('kuairand-sample')
  for table in ('user_features_pure.csv', 'video_features_basic_pure.csv'):
    os.symlink(os.path.join(source, table), tmp_path / table)
  (tmp_path / 'log_standard.csv').write_text(
      'user_id,video_id,time_ms,is_click,tab\n0,5543,1649412000000,1,1\n88,5543,1649412060500,0,4\n')
  frame, spec, _, _ = load_kuairand(str(tmp_path))
  assert frame.timestamp.tolist() == [1649412000.0, 1649412060.5]
  assert 'timestamp' in spec.numeric and set(spec.domains) == {'tab_1', 'tab_4'}


CIAO_HEADER = 'user_id,item_id,category_id,category,rating,helpfulness,timestamp'
CIAO_CATEGORIES = [(1, 'DVDs'), (6, 'Food & Drink'), (10, 'Ciao Cafe')]


def ciao_lines(count=30):
  """`count` ratings, one a day, cycling through three categories; ratings run 0..5 in steps of three
  rows, so with 30 rows each category has two invalid 0s, one 5 and one 4."""
  return [f'{i % 7},{100 + i % 11},{CIAO_CATEGORIES[i % 3][0]},{CIAO_CATEGORIES[i % 3][1]},{i // 3 % 6},'
          f'{1 + i % 3},{959670000 + 86400 * i}' for i in range(count)]


def write_ciao(path, lines=None, header=CIAO_HEADER):
  """A Ciao-format ratings file at `path` (gzip-compressed when named .gz); `lines` default to ciao_lines()."""
  text = '\n'.join([header, *(ciao_lines() if lines is None else lines)]) + '\n'
  with (gzip.open if str(path).endswith('.gz') else open)(path, 'wt') as file:
    file.write(text)
  return str(path)


def test_ciao_categories_are_domains_and_rating_0_is_dropped(tmp_path):
  write_ciao(tmp_path / 'ratings.csv.gz')
  frame, spec, column_types, dropped_rows = load_ciao(str(tmp_path))
  assert_consistent(frame, spec, column_types)
  assert dropped_rows == {'rating 0 (invalid)': 6} and len(frame) == 24
  assert spec.domains == ['ciao_cafe', 'dvds', 'food_drink']  # 8 rows each, so by name
  assert (spec.vocab, spec.numeric, spec.user) == (['user_id', 'item_id'], ['timestamp'], 'user_id')
  assert 'helpfulness' not in frame and 'category_id' not in frame
  assert frame.click.sum() == 3  # rating == 5 by default
  first = frame.iloc[0]  # line 5: lines 2 to 4 are rated 0
  assert (first.domain, first.user_id, first.item_id, first.timestamp) == ('dvds', 3, 103, 959929200.0)


def test_ciao_label_rule_and_plain_file(tmp_path):
  frame = load_ciao(write_ciao(tmp_path / 'ciao.csv'), label_rule='ge4').frame
  assert frame.click.sum() == 6
  with pytest.raises(DataFormatError, match=r"option label_rule: expected one of \['ge4', 'eq5'\], found '5'"):
    load_ciao(str(tmp_path), label_rule='5')


CIAO_ERRORS = {
    'missing column': (CIAO_HEADER.replace('rating', 'stars'), ciao_lines(2), 1, 'rating',
                       "expected a column named 'rating' in the header"),
    'rating out of range': (CIAO_HEADER, [*ciao_lines(4), '1,2,1,DVDs,6,1,959670000'], 6, 'rating',
                            "expected a rating from 0 to 5, found '6'"),
    'text timestamp': (CIAO_HEADER, ['1,2,1,DVDs,5,1,2001-01-01'], 2, 'timestamp',
                       "expected an integer, found '2001-01-01'"),
    'empty category': (CIAO_HEADER, ['1,2,1,,5,1,959670000'], 2, 'category', 'expected a domain name'),
    'punctuation category': (CIAO_HEADER, ['1,2,1,&,5,1,959670000'], 2, 'category',
                             'expected a category name with a letter or digit'),
}


@pytest.mark.parametrize('case', CIAO_ERRORS.values(), ids=CIAO_ERRORS.keys())
def test_ciao_bad_file_is_rejected(tmp_path, case):
  header, lines, line, field, expected = case
  path = write_ciao(tmp_path / 'ratings.csv.gz', lines, header)
  with pytest.raises(DataFormatError, match=expected) as error:
    load_ciao(str(tmp_path))
  assert str(error.value).startswith(f'{path}, line {line}, field {field!r}: ')
  assert (error.value.path, error.value.line, error.value.field) == (path, line, field)


def test_ciao_file_named_gz_but_not_gzip(tmp_path):
  path = tmp_path / 'ratings.csv.gz'
  path.write_text(CIAO_HEADER + '\n')
  with pytest.raises(DataFormatError, match=r'ratings\.csv\.gz: expected a complete gzip file.*drop the \.gz'):
    load_ciao(str(path))


def test_ciao_without_ratings_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='No ratings.csv.gz file found'):
    load_ciao(str(tmp_path))


@pytest.mark.slow
def test_ciao_release():
  frame, spec, _, dropped_rows = load_ciao(dataset('ciao'))
  assert len(frame) == 284_086 - 34 and dropped_rows == {'rating 0 (invalid)': 34}
  assert len(spec.domains) == 28 and spec.domains[0] == 'dvds' and spec.domains[-1] == 'adult_products'
  assert frame.domain.value_counts()['food_drink'] == 20_588
  assert frame.click.mean() == pytest.approx(0.489, abs=0.001)
  assert spec.hashed == {'item_id': 100_000}  # 105,114 items


def test_generic_csv_with_named_columns():
  frame, spec, column_types, _ = load_csv(
      os.path.join(dataset('douban-sample'), 'douban_sample.csv'), domain_column='domain',
      label_columns=['rating'], categorical=['item_id', 'living_place'], numeric=['time_bin'],
      user_column='user_id')
  assert_consistent(frame, spec, column_types)
  assert len(frame) == 3000 and frame.rating.sum() == 1936
  assert spec.domains == ['movie', 'book', 'music'] and spec.domain == 'domain'
  assert spec.vocab == ['item_id', 'living_place', 'user_id'] and spec.numeric == ['time_bin']
  assert 'join_time' not in frame


def test_generic_csv_inference(tmp_path):
  rows = ['scenario,clicked,bought,shop,price,score,city,visitor']
  rows += [f'{i % 2},{i % 3 == 0:d},0,{i % 5},{i}.5,{i % 30},city{i % 4},v{i}' for i in range(60)]
  rows.append('1,1,1,,,7,,v60')  # gaps get filled
  path = tmp_path / 'log.csv'
  path.write_text('\n'.join(rows) + '\n')
  frame, spec, column_types, _ = load_csv(str(path), 'scenario', ['clicked', 'bought'], hash_threshold=50,
                                       hash_buckets=1000)
  assert_consistent(frame, spec, column_types)
  assert spec.domains == ['scenario_1', 'scenario_0'] and spec.label == 'clicked'
  assert spec.extra_labels == ['bought']
  assert spec.vocab == ['shop', 'city'] and spec.hashed == {'visitor': 1000}
  assert spec.numeric == ['price', 'score']  # non-integer; integers with many distinct values
  last = frame.iloc[-1]
  assert (last.shop, last.city, last.price) == (-1, 'unknown', frame.price.iloc[:-1].median())


def test_generic_csv_rejects_fractional_categorical(tmp_path):
  path = tmp_path / 'log.csv'
  path.write_text('d,click,size\na,1,1\nb,0,2.5\n')
  with pytest.raises(DataFormatError, match=r"line 3, field 'size': expected integers or text"):
    load_csv(str(path), 'd', ['click'], categorical=['size'])


def test_generic_csv_rejects_bad_label(tmp_path):
  path = tmp_path / 'log.csv'
  path.write_text('d,click\na,1\nb,2\n')
  expected = r"log\.csv, line 3, field 'click': expected a 0/1 label, found '2'"
  with pytest.raises(DataFormatError, match=expected):
    load_csv(str(path), 'd', ['click'])


def write_ids_csv(path):
  """60 rows of integer columns: three named like ids, one unique per row, one plain count."""
  rows = ['d,click,user_id,itemId,movieid,seq,views']
  rows += [f'{i % 2},{i % 3 == 0:d},{i % 25},{i % 30},{i % 21},{i * 3},{i * 7 % 23}' for i in range(60)]
  path.write_text('\n'.join(rows) + '\n')
  return str(path)


def test_generic_csv_integer_ids_are_categorical(tmp_path):
  _, spec, _, _ = load_csv(write_ids_csv(tmp_path / 'log.csv'), 'd', ['click'])
  assert spec.vocab == ['user_id', 'itemId', 'movieid', 'seq']  # by name, or unique on most rows
  assert spec.numeric == ['views']  # 23 distinct counts


def test_generic_csv_listed_types_override_inference(tmp_path):
  _, spec, column_types, _ = load_csv(write_ids_csv(tmp_path / 'log.csv'), 'd', ['click'],
                                      categorical=['views'], numeric=['user_id'], hashed=['itemId'],
                                      hash_buckets=64)
  assert (spec.vocab, spec.hashed, spec.numeric) == (['views'], {'itemId': 64}, ['user_id'])
  assert (column_types['itemId'], column_types['user_id']) == ('INT', 'FLOAT')
  assert 'movieid' not in spec.raw_columns  # only the listed columns are features


def test_generic_csv_rejects_unknown_or_twice_listed_column(tmp_path):
  path = write_ids_csv(tmp_path / 'log.csv')
  expected = (r"log\.csv, line 1, field 'user': expected a column named 'user' in the header, "
              r"found \['d', 'click', 'user_id', 'itemId', 'movieid', 'seq', 'views'\]")
  with pytest.raises(DataFormatError, match=expected):
    load_csv(path, 'd', ['click'], numeric=['views', 'user'])
  with pytest.raises(ValueError, match="Column 'views' is listed as both categorical and hashed"):
    load_csv(path, 'd', ['click'], categorical=['views'], hashed=['views'])
