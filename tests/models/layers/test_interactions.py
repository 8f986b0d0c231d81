import itertools

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models.layers.interactions import (BiInteractionPooling, BilinearInteraction, CompressedInteraction, CrossLayer,
                                        FactorizationMachine, MultiHeadSelfAttention, ProductLayer)

BATCH, FIELDS, DIM = 5, 4, 3
PAIRS = list(itertools.combinations(range(FIELDS), 2))


def _random(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_fm_equals_the_sum_of_pairwise_dot_products():
  fields = _random(BATCH, FIELDS, DIM)
  expected = [sum(fields[b, i] @ fields[b, j] for i, j in PAIRS) for b in range(BATCH)]
  output = FactorizationMachine()(tf.constant(fields)).numpy()
  assert output.shape == (BATCH, 1)
  np.testing.assert_allclose(output[:, 0], expected, rtol=1e-5)


def test_bi_interaction_is_the_sum_of_pairwise_elementwise_products():
  fields = _random(BATCH, FIELDS, DIM)
  expected = sum(fields[:, i] * fields[:, j] for i, j in PAIRS)
  np.testing.assert_allclose(expected, 0.5 * (fields.sum(1) ** 2 - (fields ** 2).sum(1)), rtol=1e-4, atol=1e-5)
  output = BiInteractionPooling()(tf.constant(fields)).numpy()
  assert output.shape == (BATCH, DIM)
  np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)


def test_cross_layer():
  x0, x, projected = _random(BATCH, 6, seed=0), _random(BATCH, 6, seed=1), _random(BATCH, 6, seed=2)
  output = CrossLayer()([tf.constant(x0), tf.constant(x), tf.constant(projected)]).numpy()
  np.testing.assert_allclose(output, x0 * projected + x, rtol=1e-6)


def test_self_attention_per_head():
  heads, head_dim = 2, 3
  query, key, value = (_random(BATCH, FIELDS, heads * head_dim, seed=s) for s in range(3))
  output = MultiHeadSelfAttention(heads)([tf.constant(query), tf.constant(key), tf.constant(value)]).numpy()
  assert output.shape == (BATCH, FIELDS, heads * head_dim)
  for h in range(heads):
    part = slice(h * head_dim, (h + 1) * head_dim)
    scores = np.einsum('bmd,bkd->bmk', query[..., part], key[..., part])
    weights = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    np.testing.assert_allclose(output[..., part], weights @ value[..., part], rtol=1e-4, atol=1e-5)


def test_self_attention_keeps_static_shape():
  q = tf_keras.Input((FIELDS, 8))
  assert MultiHeadSelfAttention(2)([q, q, q]).shape.as_list() == [None, FIELDS, 8]


def test_bilinear_interaction_pairs_projected_i_with_field_j():
  fields, projected = _random(BATCH, FIELDS, DIM, seed=0), _random(BATCH, FIELDS, DIM, seed=1)
  output = BilinearInteraction()([tf.constant(fields), tf.constant(projected)]).numpy()
  assert output.shape == (BATCH, len(PAIRS), DIM)
  for p, (i, j) in enumerate(PAIRS):
    np.testing.assert_allclose(output[:, p], projected[:, i] * fields[:, j], rtol=1e-6)


def test_product_layer_inner_then_outer_products():
  fields = _random(BATCH, FIELDS, DIM)
  output = ProductLayer()(tf.constant(fields)).numpy()
  assert output.shape == (BATCH, len(PAIRS) + DIM * DIM)
  inner = np.stack([np.sum(fields[:, i] * fields[:, j], axis=1) for i, j in PAIRS], axis=1)
  superposition = fields.sum(axis=1)
  outer = np.einsum('bi,bj->bij', superposition, superposition).reshape(BATCH, -1)
  np.testing.assert_allclose(output, np.concatenate([inner, outer], axis=1), rtol=1e-5, atol=1e-5)


def test_compressed_interaction_is_the_outer_product_per_embedding_position():
  previous, x0 = _random(BATCH, DIM, 2, seed=0), _random(BATCH, DIM, FIELDS, seed=1)
  output = CompressedInteraction()([tf.constant(previous), tf.constant(x0)]).numpy()
  assert output.shape == (BATCH, DIM, 2 * FIELDS)
  for h, j in itertools.product(range(2), range(FIELDS)):
    np.testing.assert_allclose(output[:, :, h * FIELDS + j], previous[:, :, h] * x0[:, :, j], rtol=1e-6)


@pytest.mark.parametrize('layer', [FactorizationMachine(name='fm'), BiInteractionPooling(name='bi'),
                                   CrossLayer(name='cross'), MultiHeadSelfAttention(3, name='attention'),
                                   BilinearInteraction(name='bilinear'), ProductLayer(name='products'),
                                   CompressedInteraction(name='cin')], ids=lambda layer: type(layer).__name__)
def test_config_round_trip(layer):
  clone = type(layer).from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  assert tf_keras.utils.get_registered_name(type(layer)) == f'mdctr>{type(layer).__name__}'
