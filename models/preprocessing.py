"""tf.Transform `preprocessing_fn`: raw domain-tagged columns to model-ready features."""
import functools
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402

from models.features import DOMAIN_INDEX, FeatureSpec, transformed_name  # noqa: E402

OOV_BUCKETS = 1
FREQUENCY_THRESHOLD_KEY = 'vocabulary_frequency_threshold'  # in the Transform's custom_config
MULTIVALUE_SEPARATOR = '|'


def _dense(x):
  """A [batch] tensor from a column parsed as sparse (serving may omit it) or dense; a missing value
  becomes '' or 0."""
  if isinstance(x, tf.sparse.SparseTensor):
    default = '' if x.dtype == tf.string else tf.zeros([], x.dtype)
    x = tf.sparse.to_dense(tf.sparse.reset_shape(x, [x.dense_shape[0], 1]), default_value=default)
  return tf.reshape(x, [-1])


def _as_string(x):
  return x if x.dtype == tf.string else tf.strings.as_string(x)


def domain_index(domain, domains):
  """Position of each domain name in `domains`, or len(domains) (no adapter) for an unknown one."""
  matches = tf.equal(domain[:, None], tf.constant(domains)[None, :])
  return tf.where(tf.reduce_any(matches, axis=1), tf.argmax(tf.cast(matches, tf.int64), axis=1),
                  tf.constant(len(domains), tf.int64))


def preprocessing_fn(inputs, custom_config):
  """Vocabularies with an OOV bucket for categorical ids, hashing for very high-cardinality ones,
  z-scores for numeric fields, padded vocabulary ids for multi-valued fields, and the domain as a dense
  index into the known domain list. Labels pass through as int64.

  `custom_config`: `feature_spec` (a FeatureSpec's dict) and optionally `vocabulary_frequency_threshold`
  (`FREQUENCY_THRESHOLD_KEY`): a vocabulary keeps only the tokens seen at least that many times in the
  analyzed (training) data; rarer ones map to the OOV row, which so trains on them (0 or 1: every token).
  """
  spec = FeatureSpec.from_dict(custom_config['feature_spec'])
  threshold = int(custom_config.get(FREQUENCY_THRESHOLD_KEY) or 0)
  vocabulary = functools.partial(tft.compute_and_apply_vocabulary, num_oov_buckets=OOV_BUCKETS,
                                 frequency_threshold=threshold if threshold > 1 else None)
  outputs = {DOMAIN_INDEX: domain_index(_dense(inputs[spec.domain]), spec.domains)}
  for column in spec.vocab:
    outputs[transformed_name(column)] = vocabulary(_as_string(_dense(inputs[column])), vocab_filename=column)
  for column, buckets in spec.hashed.items():
    outputs[transformed_name(column)] = tf.strings.to_hash_bucket_fast(_as_string(_dense(inputs[column])), buckets)
  for column in spec.numeric:
    outputs[transformed_name(column)] = tft.scale_to_z_score(tf.cast(_dense(inputs[column]), tf.float32))
  for column, max_values in spec.multivalent.items():
    values = tf.strings.split(_as_string(_dense(inputs[column])), MULTIVALUE_SEPARATOR)
    ids = vocabulary(values, vocab_filename=column)
    # Shift by one so 0 can pad rows with fewer than max_values values.
    outputs[transformed_name(column)] = (ids + 1).to_tensor(default_value=0, shape=[None, max_values])
  for column in spec.label_columns:
    outputs[column] = tf.cast(_dense(inputs[column]), tf.int64)
  return outputs


def vocabulary_sizes(spec: FeatureSpec, tf_transform_output) -> dict:
  """Embedding table size of every categorical column, OOV buckets and padding included."""
  sizes = {c: tf_transform_output.vocabulary_size_by_name(c) + OOV_BUCKETS for c in spec.vocab}
  sizes.update(spec.hashed)
  sizes.update({c: tf_transform_output.vocabulary_size_by_name(c) + OOV_BUCKETS + 1 for c in spec.multivalent})
  return sizes
