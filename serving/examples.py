"""Raw CSV rows (the pipeline's input format) as the serialized tf.Examples a serving request carries."""
import csv
from typing import Dict, List, Mapping

import tensorflow as tf


def _feature(value: str, dtype: tf.DType) -> tf.train.Feature:
  if dtype == tf.string:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
  if dtype.is_floating:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def row_example(row: Mapping[str, str], column_types: Mapping[str, tf.DType]) -> tf.train.Example:
  """One CSV row as a tf.Example: each column of `column_types` typed as it says; an empty cell, like a
  column the row lacks, is left out (as CsvExampleGen does), other columns (labels) are dropped."""
  features = {}
  for column, dtype in column_types.items():
    value = row.get(column)
    if not value:
      continue
    try:
      features[column] = _feature(value, dtype)
    except ValueError:
      raise ValueError(f'column {column}: {value!r} is not {dtype.name}') from None
  return tf.train.Example(features=tf.train.Features(feature=features))


def read_csv_examples(path: str, column_types: Mapping[str, tf.DType]) -> List[bytes]:
  """The serialized tf.Examples of a CSV file with a header, one per row (see `row_example`).

  Raises ValueError naming the file, line and column of a value that is not of its column's type.
  """
  serialized = []
  with open(path, newline='') as f:
    for line, row in enumerate(csv.DictReader(f), start=2):
      try:
        serialized.append(row_example(row, column_types).SerializeToString())
      except ValueError as error:
        raise ValueError(f'{path}, line {line}: {error}') from error
  return serialized


def signature_column_types(signature_def) -> Dict[str, tf.DType]:
  """{column: dtype} of a SignatureDef that takes one tensor per raw column (the model's `serving_raw`)."""
  return {name: tf.dtypes.as_dtype(info.dtype) for name, info in signature_def.inputs.items()}
