"""CsvExampleGen with its rows converted a block at a time: the ExampleGen of CSV input.

TFX's CsvExampleGen parses each CSV row, infers its cells' types and builds its tf.Example proto in Python, one
row at a time: on a 1M-row input (47.6 MB, 2 CPUs) that took 173-177 s, a quarter of the whole run. This
executor reads the same files with pyarrow's CSV reader in blocks of rows, and encodes each block's tf.Examples
with tfx_bsl's C++ `RecordBatchToExamplesEncoder` (`components/csv_blocks.py`, what the Beam workers run). It
keeps CsvExampleGen's contract:

- the first line of every file is its header, and the files of a split share it;
- a column's type follows from all its non-empty cells, by tfx_bsl's `csv_decoder` rule: int64 when every one
  is an integer within int64's range, float when every one is a number, bytes otherwise. Cells of the plain
  forms (`-12`, `3.5e-2`) are judged by pyarrow; a column with any other form (`+3`, `0x1f`, ` 7`) is judged
  cell by cell by that rule, in Python;
- an empty cell is a feature with an empty value list; a column with no value at all, a feature of no kind;
- quoted values may hold commas and newlines; blank lines are skipped.

Each block's examples go to their splits by TFX's hash split rule, applied to each row's cells (the serialized
example, which TFX hashes, differs from call to call here), and are written a block at a time: TFX's
ExampleGen reshuffles every single record on the way to its files, which took 17.7 s of the 76.9 s this executor
spent on 1M rows; blocks are reshuffled instead, so that both workers write.

The component is TFX's CsvExampleGen (its splits, spans and output artifact) with this executor; a hash split by
one feature (`partition_feature_name`) is refused, naming the setting.
"""
import itertools
import os
from typing import Tuple

import apache_beam as beam
from tfx import v1 as tfx
from tfx.components.example_gen import utils, write_split
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.util import examples_utils
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types.standard_component_specs import (EXAMPLES_KEY, INPUT_BASE_KEY, INPUT_CONFIG_KEY, OUTPUT_CONFIG_KEY,
                                               OUTPUT_DATA_FORMAT_KEY, OUTPUT_FILE_FORMAT_KEY)
from tfx.utils import io_utils, proto_utils

from components.csv_blocks import (MergeColumnTypes, block_types, encode_and_split_block, encode_block,
                                   read_blocks)


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
def _CsvBlocks(pipeline: beam.Pipeline, exec_properties: dict,  # pylint: disable=invalid-name
               split_pattern: str) -> Tuple[beam.PCollection, beam.pvalue.AsSingleton]:
  """The rows of the CSV files matching `split_pattern` under the input base in blocks (pyarrow, strings), and
  each column's type over all of them (a side input)."""
  pattern = f'{exec_properties[INPUT_BASE_KEY]}/{split_pattern}'
  files = sorted(fileio.glob(pattern))
  if not files:
    raise RuntimeError(f'Split pattern {pattern} does not match any files.')
  column_names = io_utils.load_csv_column_names(files[0])
  for path in files[1:]:
    if io_utils.load_csv_column_names(path) != column_names:
      raise RuntimeError(f'Files in same split {pattern} have different header: {path} against {files[0]}.')
  blocks = (pipeline
            | 'CreateFilenames' >> beam.Create(files)
            | 'ReadBlocks' >> beam.FlatMap(read_blocks, column_names))
  types = (blocks
           | 'BlockTypes' >> beam.Map(block_types)
           | 'MergeColumnTypes' >> beam.CombineGlobally(MergeColumnTypes()))
  return blocks, beam.pvalue.AsSingleton(types)


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
def _CsvToExampleBlocks(pipeline: beam.Pipeline, exec_properties: dict,  # pylint: disable=invalid-name
                        split_pattern: str) -> beam.PCollection:
  """The serialized tf.Examples of the CSV files matching `split_pattern` under the input base, a list per block."""
  blocks, types = pipeline | 'Read' >> _CsvBlocks(exec_properties, split_pattern)
  return blocks | 'Encode' >> beam.Map(encode_block, types)


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(bytes)
def _CsvToExample(pipeline: beam.Pipeline, exec_properties: dict,  # pylint: disable=invalid-name
                  split_pattern: str) -> beam.PCollection:
  """The serialized tf.Examples of the CSV files matching `split_pattern` under the input base."""
  return (pipeline
          | 'Blocks' >> _CsvToExampleBlocks(exec_properties, split_pattern)
          | 'Records' >> beam.FlatMap(list))


@beam.ptransform_fn
def _WriteBlocks(blocks: beam.PCollection, split_uri: str) -> beam.pvalue.PDone:  # pylint: disable=invalid-name
  """Writes the blocks of serialized examples to `split_uri` as gzipped TFRecord files, as TFX's WriteSplit names
  them."""
  return (blocks
          | 'Shuffle' >> beam.Reshuffle()  # both workers write, whatever the number of input files
          | 'Records' >> beam.FlatMap(list)
          | 'Write' >> beam.io.WriteToTFRecord(os.path.join(split_uri, write_split.DEFAULT_FILE_NAME),
                                               file_name_suffix='.gz'))


class Executor(BaseExampleGenExecutor):
  """ExampleGen's executor for CSV files, converting and writing their rows a block at a time."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _CsvToExample  # TFX's contract (GenerateExamplesByBeam); `Do` writes blocks instead

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    """Writes each split's examples, as TFX's ExampleGen does (the same files, split names and formats on the
    artifact), a block at a time."""
    self._log_startup(input_dict, output_dict, exec_properties)
    input_config = proto_utils.json_to_proto(exec_properties[INPUT_CONFIG_KEY], example_gen_pb2.Input())
    output_config = proto_utils.json_to_proto(exec_properties[OUTPUT_CONFIG_KEY], example_gen_pb2.Output())
    file_format = exec_properties.get(OUTPUT_FILE_FORMAT_KEY, example_gen_pb2.FILE_FORMAT_UNSPECIFIED)
    split_names = utils.generate_output_split_names(input_config, output_config)
    examples = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
    examples.split_names = artifact_utils.encode_split_names(split_names)
    with self._make_beam_pipeline() as pipeline:
      if output_config.split_config.splits:  # one input split, hashed into the output splits
        if len(input_config.splits) != 1:
          raise ValueError('A hash split of the output needs exactly one input split; got '
                           f'{[s.name for s in input_config.splits]}.')
        if output_config.split_config.partition_feature_name:
          raise ValueError('CsvExampleGen splits by a hash of each whole row: drop partition_feature_name '
                           f'({output_config.split_config.partition_feature_name!r}) from the output split_config.')
        buckets = list(itertools.accumulate(s.hash_buckets for s in output_config.split_config.splits))
        rows, types = pipeline | 'InputToBlocks' >> _CsvBlocks(exec_properties, input_config.splits[0].pattern)
        parts = rows | 'EncodeAndSplit' >> beam.FlatMap(encode_and_split_block, types, buckets,
                                                        split_names).with_outputs(*split_names)
        blocks = {name: parts[name] for name in split_names}
      else:
        blocks = {split.name: pipeline | f'InputToBlocks[{split.name}]' >> _CsvToExampleBlocks(exec_properties,
                                                                                                split.pattern)
                  for split in input_config.splits}
      for name, split_blocks in blocks.items():
        _ = split_blocks | f'WriteSplit[{name}]' >> _WriteBlocks(
            artifact_utils.get_split_uri(output_dict[EXAMPLES_KEY], name))
    if exec_properties.get(OUTPUT_DATA_FORMAT_KEY):
      examples_utils.set_payload_format(examples, exec_properties[OUTPUT_DATA_FORMAT_KEY])
    if file_format:
      examples_utils.set_file_format(examples, write_split.to_file_format_str(file_format))


class CsvExampleGen(tfx.components.CsvExampleGen):
  """TFX's CsvExampleGen (spec, splits, spans, output) with the block-at-a-time `Executor`."""
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
