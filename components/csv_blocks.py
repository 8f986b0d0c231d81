"""CSV rows to serialized tf.Examples a block at a time: what CsvExampleGen's Beam workers run
(`components/csv_example_gen.py` is the executor and the component).

This module imports pyarrow, numpy and tfx_bsl alone, not TensorFlow or TFX: a Beam worker imports the module of
every function it runs, and `components.csv_example_gen` (TFX's component API) took 11 s of each worker's start
in a 1M-row run.
"""
import bisect
import collections
import functools
import hashlib
from typing import Dict, Iterable, List, Sequence

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from tfx_bsl.coders import csv_decoder, example_coder

ColumnType = csv_decoder.ColumnType
BLOCK_BYTES = 4 * 2 ** 20  # about 90k rows of the default data: blocks for both workers, small in memory
_INTEGER = r'^-?[0-9]+$'
_NUMBER = r'^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$'
_CAST = {ColumnType.INT: pa.int64(), ColumnType.FLOAT: pa.float64()}
_PARSE = {ColumnType.INT: int, ColumnType.FLOAT: float}


def read_blocks(path: str, column_names: List[str]) -> Iterable[pa.RecordBatch]:
  """The rows of the CSV file at `path` (its first line, the header, skipped) in blocks of about
  `BLOCK_BYTES`, every column as strings, an empty cell as null."""
  strings = {name: pa.string() for name in column_names}
  with beam.io.filesystems.FileSystems.open(path) as f:  # CsvExampleGen's reader: local, gs://, ...
    try:
      reader = pcsv.open_csv(
          f, read_options=pcsv.ReadOptions(column_names=column_names, skip_rows=1, block_size=BLOCK_BYTES),
          parse_options=pcsv.ParseOptions(newlines_in_values=True),
          convert_options=pcsv.ConvertOptions(column_types=strings, null_values=[''], strings_can_be_null=True,
                                              quoted_strings_can_be_null=True))
      yield from reader
    except pa.ArrowInvalid as e:
      if 'Empty CSV file' in str(e):  # a header alone, or nothing: no rows
        return
      raise ValueError(f'Invalid CSV file {path}: {e}. Every row needs the {len(column_names)} columns of its header '
                       f'({",".join(column_names)}); quote values that hold commas or newlines.') from e


def column_type(cells: pa.Array) -> ColumnType:
  """The type `cells` (strings, empty ones null) give their column, by tfx_bsl's `csv_decoder` rule."""
  values = cells.drop_null()
  if len(values) == 0:
    return ColumnType.UNKNOWN
  if pc.all(pc.match_substring_regex(values, _INTEGER)).as_py():
    try:
      pc.cast(values, pa.int64())
      return ColumnType.INT
    except pa.ArrowInvalid:  # beyond int64: the rule's STRING, judged below
      pass
  elif pc.all(pc.match_substring_regex(values, _NUMBER)).as_py():
    return ColumnType.FLOAT
  infer = csv_decoder._InferValueType  # pylint: disable=protected-access  # the rule itself, not a copy of it
  return max(infer(value) for value in pc.unique(values).to_pylist())


def block_types(block: pa.RecordBatch) -> Dict[str, ColumnType]:
  """{column: the type its cells in `block` give it}."""
  return {name: column_type(cells) for name, cells in zip(block.schema.names, block.columns)}


class MergeColumnTypes(beam.CombineFn):
  """Each column's type over all blocks: the widest of INT < FLOAT < STRING seen (UNKNOWN with no value)."""

  def create_accumulator(self) -> Dict[str, ColumnType]:
    return {}

  def add_input(self, accumulator, types):
    for name, kind in types.items():
      accumulator[name] = max(kind, accumulator.get(name, ColumnType.UNKNOWN))
    return accumulator

  def merge_accumulators(self, accumulators):
    return functools.reduce(self.add_input, accumulators, {})

  def extract_output(self, accumulator):
    return accumulator


def typed_values(values: pa.Array, kind: ColumnType) -> pa.Array:
  """`values` (non-null strings) as `kind`'s tf.Example value type: int64, float32 or bytes."""
  if kind == ColumnType.STRING:
    return values.cast(pa.binary())
  try:
    numbers = pc.cast(values, _CAST[kind])
  except pa.ArrowInvalid:  # a form only Python parses (`+3`, ` 7`)
    numbers = pa.array([_PARSE[kind](v) for v in values.to_pylist()], _CAST[kind])
  return pc.cast(numbers, pa.float32(), safe=False) if kind == ColumnType.FLOAT else numbers


def encode_block(block: pa.RecordBatch, types: Dict[str, ColumnType]) -> List[bytes]:
  """The serialized tf.Examples of `block`'s rows, each column of its `types` type."""
  columns = []
  for name, cells in zip(block.schema.names, block.columns):
    kind = types[name]
    if kind == ColumnType.UNKNOWN:  # no value anywhere: a feature of no kind
      columns.append(pa.nulls(len(cells), pa.list_(pa.binary())))
      continue
    offsets = np.concatenate([[0], np.cumsum(cells.is_valid().to_numpy(zero_copy_only=False), dtype=np.int32)])
    columns.append(pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), typed_values(cells.drop_null(), kind)))
  return example_coder.RecordBatchToExamplesEncoder().encode(pa.RecordBatch.from_arrays(columns, block.schema.names))


def split_index(key: bytes, buckets: Sequence[int]) -> int:
  """The output split of a row with hash key `key`, by TFX's ExampleGen rule (its `_PartitionFn`): the key's
  sha256 modulo the bucket count, placed among the splits' cumulative `buckets`."""
  return bisect.bisect(buckets, int(hashlib.sha256(key).hexdigest(), 16) % buckets[-1])


def row_keys(block: pa.RecordBatch) -> List[bytes]:
  """Each row's hash key: its cells as read, joined. Not the serialized example, as TFX's rule hashes: tfx_bsl's
  encoder writes a tf.Example's features in an order that changes from call to call, and the same row would
  land in another split on each run."""
  cells = [pc.fill_null(column, '') for column in block.columns]
  return pc.binary_join_element_wise(*cells, '\x1f').cast(pa.binary()).to_pylist()


def encode_and_split_block(block: pa.RecordBatch, types: Dict[str, ColumnType],
                           buckets: Sequence[int],
                           split_names: Sequence[str]) -> Iterable[TaggedOutput]:
  """The serialized tf.Examples of `block`'s rows (`encode_block`) by output split (`split_index` of each row's
  key), each split's share tagged with its name."""
  parts = collections.defaultdict(list)
  for key, record in zip(row_keys(block), encode_block(block, types)):
    parts[split_index(key, buckets)].append(record)
  for index, records in sorted(parts.items()):
    yield TaggedOutput(split_names[index], records)
