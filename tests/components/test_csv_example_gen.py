import glob
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from tfx.components.example_gen.base_example_gen_executor import _PartitionFn
from tfx.components.example_gen.csv_example_gen import executor as tfx_csv_executor
from tfx.proto import example_gen_pb2
from tfx.components.util import examples_utils
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import proto_utils

from components import csv_blocks, csv_example_gen
import tfx_runner

# Each column tests a part of CsvExampleGen's contract: empty cells; ints and floats in their plain forms; forms
# only Python's int() and float() read (judged cell by cell); hex and beyond-int64 integers (strings); quoted
# commas, newlines and NA (strings), a quoted empty cell (empty); a column with no value at all.
TRICKY = '''id,count,price,signed,hexish,big,text,empty
1,3,1.5,+3,5,1,plain,
2,,1e3, 4,0x10,99999999999999999999,"a, quoted ""comma""",
3,-7,.5,-2,7,2,"two
lines",

4,0,nan,0,8,3,NA,
6,1,2.5,1,3,5,"",
'''


HASH_SPLIT = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
    example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
    for name, buckets in (('train', 3), ('eval', 1), ('test', 1))]))


def _run(executor_class, input_base: str, output_dir: str, output_config=example_gen_pb2.Output()) -> dict:
  """{split: the tf.Examples `executor_class` writes into it, as sorted text} from the CSV files under
  `input_base` (one input split, `train`, hashed into `output_config`'s splits when it has them), and the
  artifact's split names and formats."""
  examples = standard_artifacts.Examples()
  examples.uri = output_dir
  exec_properties = {
      'input_base': input_base,
      'input_config': proto_utils.proto_to_json(example_gen_pb2.Input(
          splits=[example_gen_pb2.Input.Split(name='train', pattern='*.csv')])),
      'output_config': proto_utils.proto_to_json(output_config),
      'output_data_format': example_gen_pb2.FORMAT_TF_EXAMPLE,
      'output_file_format': example_gen_pb2.FORMAT_TFRECORDS_GZIP,
  }
  executor_class().Do({}, {'examples': [examples]}, exec_properties)
  splits = {}
  for split in artifact_utils.decode_split_names(examples.split_names):
    files = glob.glob(os.path.join(output_dir, f'Split-{split}', '*'))
    assert files and all(f.endswith('.gz') for f in files)
    records = tf.data.TFRecordDataset(files, compression_type='GZIP')
    splits[split] = sorted(str(tf.train.Example.FromString(r.numpy())) for r in records)
  return {'splits': splits, 'formats': (examples_utils.get_payload_format(examples),
                                        examples_utils.get_file_format(examples))}


def _write(folder, name: str, text: str) -> str:
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, name)
  with open(path, 'w') as f:
    f.write(text)
  return str(folder)


@pytest.mark.parametrize('block_bytes', [1 << 20, 64])  # one block; a block every row or two
def test_the_examples_are_those_of_tfx_csv_example_gen(tmp_path, monkeypatch, block_bytes):
  monkeypatch.setattr(csv_blocks, 'BLOCK_BYTES', block_bytes)
  data = _write(tmp_path / 'data', 'part-0.csv', TRICKY)
  _write(tmp_path / 'data', 'part-1.csv', 'id,count,price,signed,hexish,big,text,empty\n5,9,2,1,9,4,x,\n')
  ours = _run(csv_example_gen.Executor, data, str(tmp_path / 'ours'))
  assert ours == _run(tfx_csv_executor.Executor, data, str(tmp_path / 'tfx'))
  assert len(ours['splits']['train']) == 6


def test_the_hash_split_is_the_same_on_every_run_and_keeps_every_example(tmp_path, monkeypatch):
  monkeypatch.setattr(csv_blocks, 'BLOCK_BYTES', 256)  # several blocks, each hashed into every split
  rows = ''.join(f'{i},{i % 7},user_{i}\n' for i in range(300))
  data = _write(tmp_path / 'data', 'part-0.csv', 'id,count,user\n' + rows)
  ours = _run(csv_example_gen.Executor, data, str(tmp_path / 'ours'), HASH_SPLIT)
  # The encoder's serialized bytes differ between calls: a split by them would differ between runs.
  assert ours == _run(csv_example_gen.Executor, data, str(tmp_path / 'again'), HASH_SPLIT)
  unsplit = _run(tfx_csv_executor.Executor, data, str(tmp_path / 'tfx'))['splits']['train']
  assert sorted(sum(ours['splits'].values(), [])) == unsplit
  assert list(ours['splits']) == ['train', 'eval', 'test']
  assert [len(ours['splits'][s]) for s in ('train', 'eval', 'test')] == pytest.approx([180, 60, 60], abs=25)
  # Each row's split follows its cells, by TFX's rule (a sha256 into the cumulative buckets).
  for i in (0, 1, 299):
    split = ['train', 'eval', 'test'][csv_blocks.split_index(f'{i}\x1f{i % 7}\x1fuser_{i}'.encode(), [3, 4, 5])]
    assert any(f'"user_{i}"' in example for example in ours['splits'][split])


def test_split_index_is_tfx_example_gen_rule():
  for key in (b'', b'a', b'user_7', bytes(range(256))):
    assert csv_blocks.split_index(key, [3, 4, 5]) == _PartitionFn(key, 3, [3, 4, 5], HASH_SPLIT.split_config)


def test_a_split_by_feature_is_refused_naming_the_setting(tmp_path):
  data = _write(tmp_path / 'data', 'part-0.csv', 'id,user\n1,a\n')
  by_user = example_gen_pb2.Output()
  by_user.CopyFrom(HASH_SPLIT)
  by_user.split_config.partition_feature_name = 'user'
  with pytest.raises(ValueError, match="partition_feature_name \\('user'\\)"):
    _run(csv_example_gen.Executor, data, str(tmp_path / 'ours'), by_user)


def test_the_workers_module_imports_neither_tensorflow_nor_tfx():
  imported = subprocess.run([sys.executable, '-c', 'import sys, components.csv_blocks; '
                             'print(sorted({"tensorflow", "tfx"} & set(sys.modules)))'],
                            capture_output=True, text=True, check=True, cwd=tfx_runner.REPO_ROOT)
  assert imported.stdout.strip() == '[]'


def test_column_types_follow_csv_decoders_rule(tmp_path):
  path = os.path.join(_write(tmp_path, 'tricky.csv', TRICKY), 'tricky.csv')
  [block] = csv_blocks.read_blocks(path, TRICKY.splitlines()[0].split(','))
  types = csv_blocks.block_types(block)
  kind = csv_blocks.ColumnType
  assert types == {'id': kind.INT, 'count': kind.INT, 'price': kind.FLOAT, 'signed': kind.INT,
                   'hexish': kind.STRING, 'big': kind.STRING, 'text': kind.STRING, 'empty': kind.UNKNOWN}


def test_types_merge_to_the_widest_over_blocks():
  kind = csv_blocks.ColumnType
  merge = csv_blocks.MergeColumnTypes()
  merged = merge.merge_accumulators([
      merge.add_input(merge.create_accumulator(), {'a': kind.INT, 'b': kind.UNKNOWN, 'c': kind.FLOAT}),
      merge.add_input(merge.create_accumulator(), {'a': kind.FLOAT, 'b': kind.INT, 'c': kind.INT})])
  assert merge.extract_output(merged) == {'a': kind.FLOAT, 'b': kind.INT, 'c': kind.FLOAT}


def test_a_row_with_missing_cells_names_the_file_and_the_fix(tmp_path):
  path = os.path.join(_write(tmp_path, 'bad.csv', 'a,b,c\n1,2,3\n4,5\n'), 'bad.csv')
  with pytest.raises(ValueError, match=r'bad\.csv.*3 columns of its header \(a,b,c\)'):
    list(csv_blocks.read_blocks(path, ['a', 'b', 'c']))


def test_a_header_without_rows_gives_no_examples(tmp_path):
  path = os.path.join(_write(tmp_path, 'header.csv', 'a,b\n'), 'header.csv')
  assert list(csv_blocks.read_blocks(path, ['a', 'b'])) == []
