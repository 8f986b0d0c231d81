import numpy as np
import pytest
import tensorflow as tf

from models.layers.separate import SeparateDense, SeparateEmbedding

NUM_DOMAINS, D_IN, UNITS = 3, 6, 4


def _randomize(weights, seed=1):
  rng = np.random.default_rng(seed)
  for weight in weights:
    weight.assign(rng.normal(size=weight.shape))


@pytest.mark.parametrize('shape', [(D_IN,), (5, D_IN)])
def test_dense_uses_the_starting_point_plus_its_own_domains_delta(shape):
  layer = SeparateDense(UNITS, NUM_DOMAINS, activation='relu')
  rng = np.random.default_rng(0)
  x = tf.constant(rng.normal(size=(8,) + shape), tf.float32)
  domains = tf.constant([0, 1, 2, 0, 1, 2, NUM_DOMAINS, -1], tf.int64)
  np.testing.assert_allclose(layer([x, domains]).numpy(),
                             tf.nn.relu(tf.tensordot(x, layer.kernel, 1) + layer.bias).numpy(), rtol=1e-6)
  _randomize(layer.adaptation_weights)
  output = layer([x, domains]).numpy()
  assert output.shape == (8,) + shape[:-1] + (UNITS,)
  w, b = layer.kernel.numpy(), layer.bias.numpy()
  for i, d in enumerate(domains.numpy()):
    own = (layer.kernel_delta.numpy()[d], layer.bias_delta.numpy()[d]) if 0 <= d < NUM_DOMAINS else (0.0, 0.0)
    expected = np.maximum(x.numpy()[i] @ (w + own[0]) + b + own[1], 0.0)
    np.testing.assert_allclose(output[i], expected, rtol=1e-4, atol=1e-5)


def test_only_the_domain_deltas_train():
  layer = SeparateDense(UNITS, NUM_DOMAINS)
  layer.build([(None, D_IN), (None,)])
  assert layer.trainable_weights == layer.adaptation_weights == [layer.kernel_delta, layer.bias_delta]
  embedding = SeparateEmbedding(10, UNITS, NUM_DOMAINS)
  embedding.build([(None,), (None,)])
  assert embedding.trainable_weights == embedding.adaptation_weights == [embedding.embeddings_delta]


@pytest.mark.parametrize('ids', [[1, 2, 3, 4, 5], [[1, 0, 0], [2, 3, 0], [4, 4, 4], [0, 0, 0], [9, 1, 2]]])
def test_embedding_adds_its_own_domains_vector_and_masks_padding(ids):
  layer = SeparateEmbedding(10, UNITS, NUM_DOMAINS, mask_zero=True)
  ids = tf.constant(ids, tf.int64)
  domains = tf.constant([0, 1, 2, NUM_DOMAINS, 1], tf.int64)
  layer([ids, domains])
  _randomize(layer.adaptation_weights)
  output = layer([ids, domains]).numpy()
  table = layer.embeddings.numpy()
  deltas = layer.embeddings_delta.numpy().reshape(10, NUM_DOMAINS, UNITS)
  for i, d in enumerate(domains.numpy()):
    own = deltas[ids.numpy()[i], d] if d < NUM_DOMAINS else 0.0
    np.testing.assert_allclose(output[i], table[ids.numpy()[i]] + own, rtol=1e-6)
  np.testing.assert_array_equal(layer.compute_mask([ids, domains]).numpy(), ids.numpy() != 0)


@pytest.mark.parametrize('layer', [SeparateDense(UNITS, NUM_DOMAINS, activation='relu', name='dense_0'),
                                   SeparateEmbedding(10, UNITS, NUM_DOMAINS, mask_zero=True, name='embedding_x')],
                         ids=lambda layer: type(layer).__name__)
def test_config_round_trip(layer):
  clone = type(layer).from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
