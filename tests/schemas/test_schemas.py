import pytest
from tensorflow_metadata.proto.v0 import schema_pb2

import schemas
from data import synthetic


def test_curated_schema_matches_the_generator():
  curated = schemas.load_schema(schemas.DEFAULT_SCHEMA_PATH)
  assert curated == schemas.build_schema(synthetic.FEATURE_SPEC, synthetic.COLUMN_TYPES)


def test_every_column_required_once_and_typed():
  schema = schemas.build_schema(synthetic.FEATURE_SPEC, synthetic.COLUMN_TYPES)
  features = {f.name: f for f in schema.feature}
  assert set(features) == set(synthetic.FEATURE_SPEC.raw_columns)
  for feature in features.values():
    assert feature.presence.min_fraction == 1.0 and feature.value_count.max == 1
  assert features['price'].type == schema_pb2.FLOAT and features['context'].type == schema_pb2.BYTES


def test_domain_restricted_to_known_list_and_labels_not_served():
  schema = schemas.build_schema(synthetic.FEATURE_SPEC, synthetic.COLUMN_TYPES)
  domain_enum = {d.name: list(d.value) for d in schema.string_domain}['domain']
  assert domain_enum == synthetic.FEATURE_SPEC.domains
  labels = [f for f in schema.feature if f.name in ('click', 'conversion')]
  assert all(list(f.not_in_environment) == [schemas.SERVING] for f in labels)


def test_missing_type_names_the_column():
  types = dict(synthetic.COLUMN_TYPES)
  del types['price']
  with pytest.raises(ValueError, match="'price'"):
    schemas.build_schema(synthetic.FEATURE_SPEC, types)
