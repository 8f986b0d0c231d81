"""Schemas of the raw input: the curated default and the one built for a prepared dataset.

The schema is the contract ExampleValidator checks every span against before anything trains: every
column present exactly once per example, with its type, and the domain restricted to the known list.
Labels live only in the TRAINING environment, so a serving request carries no label.
"""
import os
from typing import Dict

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from models.features import FeatureSpec

SCHEMA_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCHEMA_PATH = os.path.join(SCHEMA_DIR, 'synthetic_clicks', 'schema.pbtxt')
SCHEMA_FILE = 'schema.pbtxt'

TRAINING, SERVING = 'TRAINING', 'SERVING'
_TYPES = {'INT': schema_pb2.INT, 'FLOAT': schema_pb2.FLOAT, 'BYTES': schema_pb2.BYTES}


def build_schema(spec: FeatureSpec, column_types: Dict[str, str]) -> schema_pb2.Schema:
  """A schema requiring every column of `spec`, typed by `column_types` ('INT', 'FLOAT' or 'BYTES')."""
  schema = schema_pb2.Schema()
  schema.default_environment.extend([TRAINING, SERVING])
  domain_enum = schema.string_domain.add(name=spec.domain)
  domain_enum.value.extend(spec.domains)
  for column in spec.raw_columns:
    if column not in column_types:
      raise ValueError(f'No type given for column {column!r}; pass one of {sorted(_TYPES)}.')
    feature = schema.feature.add(name=column, type=_TYPES[column_types[column]])
    feature.presence.min_fraction = 1.0
    feature.presence.min_count = 1
    feature.value_count.min = 1
    feature.value_count.max = 1
    if column == spec.domain:
      feature.domain = spec.domain
    if column in spec.label_columns:
      feature.not_in_environment.append(SERVING)
      feature.int_domain.min = 0
      feature.int_domain.max = 1
  return schema


def write_schema(schema: schema_pb2.Schema, path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text_format.MessageToString(schema))
  return path


def load_schema(path: str) -> schema_pb2.Schema:
  with open(path) as f:
    return text_format.Parse(f.read(), schema_pb2.Schema())
