"""`prepare` end to end: the output layout on real data, and all-or-nothing behaviour on bad input."""
import json
import os

import pandas as pd
import pytest
from tensorflow_metadata.proto.v0 import schema_pb2

import tfx_runner
from data import synthetic
from data.prepare import DataFormatError, prepare
from data.split import SPLITS
from models.features import FeatureSpec
from schemas import load_schema
from tests.data.test_loaders import dataset, write_ciao, write_ids_csv

PANDAS_TO_CSV_TYPE = {'int64': 'INT', 'float64': 'FLOAT', 'object': 'BYTES'}


@pytest.fixture(scope='module')
def ml100k_output(tmp_path_factory):
  output_dir = tmp_path_factory.mktemp('prepared') / 'ml-100k'
  info = prepare('movielens', dataset('ml-100k'), str(output_dir), seed=1)
  return output_dir, info


def test_layout(ml100k_output):
  output_dir, info = ml100k_output
  assert sorted(os.listdir(output_dir)) == ['eval', 'features.json', 'schema.pbtxt', 'split.json', 'test',
                                            'train']
  assert sorted(os.listdir(output_dir.parent)) == ['ml-100k']  # no staging directory left
  assert json.loads((output_dir / 'split.json').read_text()) == info
  assert info['dataset'] == 'movielens' and info['method'] == 'random' and info['seed'] == 1
  assert info['dropped_rows'] == {}  # MovieLens keeps every row
  assert sum(info['rows'].values()) == 100_000
  assert sum(info['rows_per_domain'][name]['F'] for name in SPLITS) == 25_740


def test_csv_matches_schema_and_spec(ml100k_output):
  output_dir, info = ml100k_output
  spec = FeatureSpec.load(str(output_dir))
  schema = load_schema(str(output_dir / 'schema.pbtxt'))
  schema_types = {f.name: schema_pb2.FeatureType.Name(f.type) for f in schema.feature}
  assert list(schema_types) == spec.raw_columns
  assert list(schema.string_domain[0].value) == spec.domains == ['M', 'F']
  for name in SPLITS:
    path = output_dir / name / 'data.csv'
    frame = pd.read_csv(path)  # infers types per file, as CsvExampleGen does per split
    assert len(frame) == info['rows'][name]
    assert {c: PANDAS_TO_CSV_TYPE[str(t)] for c, t in frame.dtypes.items()} == schema_types
    text = pd.read_csv(path, dtype=str)
    assert text.timestamp.str.fullmatch(r'\d+\.\d+').all()
    assert text.genres.str.contains('|', regex=False).any()


def test_random_split_is_reproducible(ml100k_output, tmp_path):
  output_dir, _ = ml100k_output
  prepare('movielens', dataset('ml-100k'), str(tmp_path / 'again'), seed=1)
  for name in SPLITS:
    data_file = os.path.join(name, 'data.csv')
    assert (tmp_path / 'again' / data_file).read_bytes() == (output_dir / data_file).read_bytes()


def test_temporal_split(tmp_path):
  info = prepare('movielens', dataset('ml-100k'), str(tmp_path / 'out'), split='temporal', domain='age')
  train, test = (pd.read_csv(tmp_path / 'out' / name / 'data.csv') for name in ('train', 'test'))
  assert train.timestamp.max() < info['boundaries']['eval_start'] <= info['boundaries']['test_start']
  assert test.timestamp.min() == info['boundaries']['test_start']
  assert info['rows']['train'] == pytest.approx(60_000, abs=100)
  assert info['loader_options'] == {'domain': 'age'}


def test_ali_ccp_and_kuairand(tmp_path):
  info = prepare('ali-ccp', dataset('ali-ccp-sample'), str(tmp_path / 'ali'))
  assert info['rows'] == {'train': 120, 'eval': 41, 'test': 39}  # each domain rounded on its own
  assert info['rows_per_domain']['test'] == {'scenario_1': 29, 'scenario_2': 6, 'scenario_3': 4}
  assert FeatureSpec.load(str(tmp_path / 'ali')).extra_labels == ['conversion']
  info = prepare('kuairand', dataset('kuairand-sample'), str(tmp_path / 'kuai'))
  assert info['rows_per_domain']['train'] == {'tab_1': 120}


def test_ciao_random_split_records_dropped_rows(tmp_path):
  source = tmp_path / 'ciao'
  source.mkdir()
  write_ciao(source / 'ratings.csv.gz')
  output_dir = tmp_path / 'out'
  info = prepare('ciao', str(source), str(output_dir), seed=3)
  assert json.loads((output_dir / 'split.json').read_text()) == info
  assert info['dropped_rows'] == {'rating 0 (invalid)': 6}
  assert info['rows'] == {'train': 15, 'eval': 3, 'test': 6}  # 8 valid rows per category: 5 / 1 / 2
  assert info['rows_per_domain']['train'] == {'ciao_cafe': 5, 'dvds': 5, 'food_drink': 5}
  assert sum(info['positive_rate'][name] * info['rows'][name] for name in SPLITS) == pytest.approx(3)
  assert FeatureSpec.load(str(output_dir)).domains == ['ciao_cafe', 'dvds', 'food_drink']


def test_prepare_command_on_ciao_temporal_ge4(tmp_path, capsys):
  output_dir = tmp_path / 'out'
  assert tfx_runner.main(['prepare', 'ciao', '--source', write_ciao(tmp_path / 'ratings.csv.gz'), '--output-dir',
                          str(output_dir), '--split', 'temporal', '--label-rule', 'ge4']) == 0
  info = json.loads((output_dir / 'split.json').read_text())
  assert f'Prepared ciao in {output_dir}' in capsys.readouterr().out
  assert (info['loader_options'], info['method']) == ({'label_rule': 'ge4'}, 'temporal')
  assert info['dropped_rows'] == {'rating 0 (invalid)': 6} and info['rows'] == {'train': 14, 'eval': 5, 'test': 5}
  train, test = (pd.read_csv(output_dir / name / 'data.csv') for name in ('train', 'test'))
  assert train.timestamp.max() < info['boundaries']['eval_start'] == 959670000 + 17 * 86400
  assert test.timestamp.min() == info['boundaries']['test_start']
  assert info['positive_rate'] == {'train': round(5 / 14, 4), 'eval': 0.2, 'test': 0.0}  # ratings 4 and 5 by day


def test_existing_output_is_kept_unless_overwrite(tmp_path):
  output_dir = tmp_path / 'out'
  output_dir.mkdir()
  (output_dir / 'keep.txt').write_text('mine')
  with pytest.raises(FileExistsError):
    prepare('ali-ccp', dataset('ali-ccp-sample'), str(output_dir))
  assert os.listdir(output_dir) == ['keep.txt']
  prepare('ali-ccp', dataset('ali-ccp-sample'), str(output_dir), overwrite=True)
  assert 'keep.txt' not in os.listdir(output_dir) and os.listdir(tmp_path) == ['out']


def test_temporal_split_without_time_column_leaves_nothing(tmp_path):
  with pytest.raises(ValueError, match="no 'timestamp'"):
    prepare('ali-ccp', dataset('ali-ccp-sample'), str(tmp_path / 'out'), split='temporal')
  assert os.listdir(tmp_path) == []


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
  def fail(*args):
    raise OSError('disk full')
  monkeypatch.setattr('data.prepare.write_schema', fail)
  with pytest.raises(OSError, match='disk full'):
    prepare('ali-ccp', dataset('ali-ccp-sample'), str(tmp_path / 'out'))
  assert os.listdir(tmp_path) == []


# --- Malformed sources: each error names file, line and field, and nothing is written ---------------

ML100K = {
    'u.data': '1\t10\t5\t881250949\n2\t10\t3\t881250950\n1\t20\t4\t881250951\n',
    'u.user': '1|24|M|technician|85711\n2|53|F|other|94043\n',
    'u.item': '10|Ten (1995)|01-Jan-1995||http://x|0|1\n20|Twenty (1996)|01-Jan-1996||http://y|1|0\n',
    'u.genre': 'unknown|0\nAction|1\n\n',
}


def write_ml100k(directory, replaced=None):
  """A tiny MovieLens-100K-format dataset in `directory`, with `replaced` files' text swapped in."""
  for name, text in {**ML100K, **(replaced or {})}.items():
    (directory / name).write_text(text, encoding='latin-1')
  return str(directory)


def ml100k_case(name, text):
  def make(directory):
    return 'movielens', write_ml100k(directory, {name: text}), {}
  return make


def csv_case(name, text, dataset_name, **options):
  def make(directory):
    (directory / name).write_text(text)
    return dataset_name, str(directory / name), options
  return make


def ciao_case(lines):
  def make(directory):
    return 'ciao', write_ciao(directory / 'ratings.csv.gz', lines), {}
  return make


MALFORMED = {
    'wrong separator': (ml100k_case('u.data', '1,10,5,881250949\n'), 'u.data', 1, 'item_id'),
    'non-numeric rating': (ml100k_case('u.data', '1\t10\t5\t881250949\n2\t10\tfive\t881250950\n'),
                           'u.data', 2, 'rating'),
    'empty file': (ml100k_case('u.user', ''), 'u.user', 1, 'user_id'),
    'missing field': (ml100k_case('u.user', '1|24|M|technician|85711\n2|53|F|other\n'), 'u.user', 2, 'zip'),
    'non-numeric genre flag': (ml100k_case('u.item', '10|Ten (1995)|01-Jan-1995||http://x|0|yes\n'),
                               'u.item', 1, 'Action'),
    'bad release date': (ml100k_case('u.item', '10|Ten (1995)|1995/01/01||http://x|0|1\n'),
                         'u.item', 1, 'release_date'),
    'unknown user': (ml100k_case('u.data', '1\t10\t5\t881250949\n\n9\t10\t5\t881250949\n'),
                     'u.data', 3, 'user_id'),
    'missing column': (csv_case('ali.csv', 'click,301,101\n0,1,5\n', 'ali-ccp'), 'ali.csv', 1, 'purchase'),
    'header only': (csv_case('log.csv', 'scene,click\n', 'csv', domain_column='scene',
                             label_columns=['click']), 'log.csv', 2, 'scene'),
    'missing domain column': (csv_case('log.csv', 'site,click\na,1\n', 'csv', domain_column='scene',
                                       label_columns=['click']), 'log.csv', 1, 'scene'),
    'duplicate column': (csv_case('log.csv', 'scene,click,click\na,1,0\n', 'csv', domain_column='scene',
                                  label_columns=['click']), 'log.csv', 1, 'click'),
    'too many fields': (csv_case('log.csv', 'scene,click\na,1\nb,0,7\n', 'csv', domain_column='scene',
                                 label_columns=['click']), 'log.csv', 3, 'click'),
    'ciao rating out of range': (ciao_case(['1,2,1,DVDs,5,1,959670000', '1,3,1,DVDs,-1,1,959670000']),
                                 'ratings.csv.gz', 3, 'rating'),
}


@pytest.mark.parametrize('case', MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_source_is_rejected(tmp_path, case):
  make_source, file_name, line, field = case
  source_dir = tmp_path / 'source'
  source_dir.mkdir()
  dataset_name, source, options = make_source(source_dir)
  output_dir = tmp_path / 'out'
  with pytest.raises(DataFormatError) as error:
    prepare(dataset_name, source, str(output_dir), **options)
  message = str(error.value)
  assert os.path.join(str(source_dir), file_name) in message
  assert f'line {line},' in message and f'field {field!r}' in message and 'expected' in message
  assert (error.value.line, error.value.field) == (line, field)
  assert os.listdir(tmp_path) == ['source']


def test_unknown_domain_option_is_rejected(tmp_path):
  with pytest.raises(DataFormatError, match="option domain: expected one of .*, found 'country'"):
    prepare('movielens', write_ml100k(tmp_path), str(tmp_path / 'out'), domain='country')
  assert not (tmp_path / 'out').exists()


def test_prepare_command_on_a_generic_csv(tmp_path, capsys):
  """`tfx_runner.py prepare csv`: integer ids are categorical unless told otherwise, the rest inferred."""
  source = synthetic.write_csv(synthetic.generate(600, seed=2), str(tmp_path / 'raw'))
  output_dir = tmp_path / 'prepared'
  assert tfx_runner.main(['prepare', 'csv', '--source', source, '--output-dir', str(output_dir), '--domain', 'domain',
                          '--label-columns', 'click,conversion', '--user-column', 'user_id']) == 0
  assert f'Prepared csv in {output_dir}' in capsys.readouterr().out
  spec = FeatureSpec.load(str(output_dir))
  assert (spec.label, spec.extra_labels, spec.user) == ('click', ['conversion'], 'user_id')
  assert {'user_id', 'item_id', 'context'} <= set(spec.categorical)  # integer ids are ids, not z-scored numbers
  assert {'price', 'user_activity'} <= set(spec.numeric)
  assert sum(len(pd.read_csv(output_dir / split / 'data.csv')) for split in SPLITS) == 600

  assert tfx_runner.main(['prepare', 'csv', '--source', source, '--output-dir', str(tmp_path / 'listed'),
                          '--domain', 'domain', '--label-columns', 'click', '--categorical', 'item_id',
                          '--numeric', 'price']) == 0
  listed = FeatureSpec.load(str(tmp_path / 'listed'))
  assert (listed.categorical, listed.numeric) == (['item_id'], ['price'])  # only the listed columns
  with pytest.raises(SystemExit, match='--domain'):
    tfx_runner.main(['prepare', 'csv', '--source', source, '--output-dir', str(tmp_path / 'x')])


def test_prepare_command_on_a_csv_with_hashed_and_unknown_columns(tmp_path, capsys):
  source = write_ids_csv(tmp_path / 'log.csv')
  command = ['prepare', 'csv', '--source', source, '--domain', 'd', '--label-columns', 'click']
  assert tfx_runner.main([*command, '--output-dir', str(tmp_path / 'out'), '--hashed', 'user_id',
                          '--numeric', 'views']) == 0
  spec = FeatureSpec.load(str(tmp_path / 'out'))
  assert (spec.vocab, spec.hashed, spec.numeric) == ([], {'user_id': 100_000}, ['views'])
  assert tfx_runner.main([*command, '--output-dir', str(tmp_path / 'bad'), '--categorical', 'user,views']) == 2
  assert ("field 'user': expected a column named 'user' in the header, found ['d', 'click', 'user_id', "
          in capsys.readouterr().err)
  assert not (tmp_path / 'bad').exists()
