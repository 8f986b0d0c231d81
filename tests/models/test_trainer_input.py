"""The Trainer's input_fn: every example once per epoch, shuffled, in memory or streamed."""
import collections
import types

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.public import tfxio

from models.features import DOMAIN_INDEX, FeatureSpec
from models.trainer import input_fn

SPEC = FeatureSpec(domain='domain', domains=['a', 'b'], label='click')
EXAMPLES = 1000


class _Accessor:
  @staticmethod
  def tf_dataset_factory(file_pattern, options, schema):
    return tfxio.TFExampleRecord(file_pattern, schema=schema).TensorFlowDataset(options)


@pytest.fixture(scope='module')
def transformed(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('transformed') / 'examples.tfrecord')
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(EXAMPLES):
      example = tf.train.Example(features=tf.train.Features(feature={
          DOMAIN_INDEX: tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),  # the id of the example
          'click': tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
          'unused': tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
      }))
      writer.write(example.SerializeToString())
  schema = schema_pb2.Schema()
  for name in (DOMAIN_INDEX, 'click', 'unused'):
    feature = schema.feature.add(name=name, type=schema_pb2.INT)
    feature.shape.dim.add(size=1)
    feature.presence.min_fraction = 1.0
  output = types.SimpleNamespace(transformed_metadata=types.SimpleNamespace(schema=schema))
  return path, output


@pytest.mark.parametrize('max_in_memory', [EXAMPLES, 0], ids=['in_memory', 'streamed'])
def test_each_epoch_sees_every_example_once(transformed, max_in_memory):
  path, output = transformed
  dataset = input_fn(path, _Accessor, output, SPEC, batch_size=100, seed=0, feature_names=[DOMAIN_INDEX],
                     max_in_memory_examples=max_in_memory)
  epochs = []
  for features, labels in dataset.take(20):  # two epochs of ten batches
    assert set(features) == {DOMAIN_INDEX}  # only what the model reads
    ids = features[DOMAIN_INDEX].numpy().reshape(-1)
    np.testing.assert_array_equal(labels.numpy().reshape(-1), ids % 2)  # labels stay with their examples
    epochs.append(ids)
  first, second = np.concatenate(epochs[:10]), np.concatenate(epochs[10:])
  assert collections.Counter(first) == collections.Counter(range(EXAMPLES))
  assert not np.array_equal(first, np.arange(EXAMPLES))  # shuffled
  if max_in_memory:
    assert collections.Counter(second) == collections.Counter(range(EXAMPLES))
    assert not np.array_equal(first, second)  # a fresh order every epoch


def test_validation_batches_are_the_same_on_every_pass(transformed):
  path, output = transformed
  dataset = input_fn(path, _Accessor, output, SPEC, batch_size=100, seed=0, feature_names=[DOMAIN_INDEX],
                     validation_steps=4)
  passes = [np.concatenate([f[DOMAIN_INDEX].numpy().reshape(-1) for f, _ in dataset]) for _ in range(2)]
  np.testing.assert_array_equal(passes[0], np.arange(400))  # the first 4 batches, in file order, once
  np.testing.assert_array_equal(passes[1], passes[0])


def test_validation_can_hold_some_domains_alone(transformed):
  path, output = transformed  # the domain index of example i is i: domains 'a' (0) and 'b' (1) are 2 examples
  dataset = input_fn(path, _Accessor, output, SPEC, batch_size=100, seed=0, feature_names=[DOMAIN_INDEX],
                     validation_steps=4, validation_domains=['b'])
  ids = np.concatenate([f[DOMAIN_INDEX].numpy().reshape(-1) for f, _ in dataset])
  np.testing.assert_array_equal(ids, [1])
