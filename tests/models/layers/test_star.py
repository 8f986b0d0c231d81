import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models.layers.star import AuxiliaryDomainNetwork, PartitionedNormalization, StarDense

NUM_DOMAINS, D_IN, UNITS = 3, 6, 4


def _batch(n=32, seed=0, shape=(D_IN,)):
  rng = np.random.default_rng(seed)
  return (tf.constant(rng.normal(size=(n,) + shape), tf.float32),
          tf.constant(rng.integers(0, NUM_DOMAINS, size=n), tf.int64))


def _star_dense(shape=(D_IN,), **kwargs):
  layer = StarDense(UNITS, star_domains=NUM_DOMAINS, **kwargs)
  layer.build([(None,) + shape, (None,)])
  return layer


def _randomize(weights, seed=1):
  rng = np.random.default_rng(seed)
  for weight in weights:
    weight.assign(rng.normal(size=weight.shape))


def _short_names(weights):
  return {w.name.split('/')[-1].split(':')[0] for w in weights}


@pytest.mark.parametrize('shape', [(D_IN,), (5, D_IN)])
def test_star_dense_starts_as_the_plain_dense_layer(shape):
  layer = _star_dense(shape, activation='relu')
  x, domains = _batch(shape=shape)
  output = layer([x, domains])
  assert output.shape == (32,) + shape[:-1] + (UNITS,)
  np.testing.assert_array_equal(output.numpy(), tf.nn.relu(tf.tensordot(x, layer.kernel, 1) + layer.bias).numpy())


@pytest.mark.parametrize('shape', [(D_IN,), (5, D_IN)])
def test_star_dense_multiplies_shared_and_own_domain_weights(shape):
  layer = _star_dense(shape, num_domains=NUM_DOMAINS, rank=2)
  _randomize([layer.domain_kernel, layer.domain_bias, layer.lora_b])
  x, domains = _batch(shape=shape)
  output = layer([x, tf.concat([domains[:-1], [NUM_DOMAINS]], 0)]).numpy()  # the last one unknown
  w, b = layer.kernel.numpy(), layer.bias.numpy()
  a, b_lora = layer.lora_a.numpy(), layer.lora_b.numpy()
  for i, d in enumerate(domains.numpy()[:-1]):
    adapter = a[:, 2 * d:2 * d + 2] @ b_lora[2 * d:2 * d + 2]
    expected = x.numpy()[i] @ (w * layer.domain_kernel.numpy()[d] + adapter) + b + layer.domain_bias.numpy()[d]
    np.testing.assert_allclose(output[i], expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(output[-1], x.numpy()[-1] @ w + b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('adapter,freeze_base,trainable,reported', [
    (False, False, {'kernel', 'bias', 'domain_kernel', 'domain_bias'}, set()),  # the star backbone
    (False, True, set(), set()),  # the star backbone, frozen
    (True, True, {'domain_kernel', 'domain_bias'}, {'domain_kernel', 'domain_bias'}),  # the star adaptation
])
def test_star_dense_trainable_split(adapter, freeze_base, trainable, reported):
  layer = _star_dense(adapter=adapter, freeze_base=freeze_base)
  assert _short_names(layer.trainable_weights) == trainable
  assert _short_names(layer.adaptation_weights) == reported


def test_star_dense_with_adapter_reports_lora_and_star_weights():
  layer = _star_dense(num_domains=NUM_DOMAINS, rank=2, adapter=True, freeze_base=True)
  assert _short_names(layer.adaptation_weights) == {'lora_a', 'lora_b', 'domain_kernel', 'domain_bias'}


@pytest.mark.parametrize('layer', [
    StarDense(UNITS, star_domains=NUM_DOMAINS, adapter=True, activation='relu', num_domains=2, rank=3,
              freeze_base=True, name='dense_0'),
    PartitionedNormalization(NUM_DOMAINS, momentum=0.9, epsilon=0.01, freeze_base=True, name='pn_0'),
    AuxiliaryDomainNetwork(NUM_DOMAINS, embedding_dim=5, hidden_units=7, name='star_aux'),
], ids=lambda layer: type(layer).__name__)
def test_config_round_trip(layer):
  clone = type(layer).from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()


def test_star_dense_config_keeps_its_activation():
  layer = StarDense(UNITS, star_domains=NUM_DOMAINS, activation='relu')
  assert StarDense.from_config(layer.get_config()).star_activation is tf_keras.activations.relu


def _domain_batch(n=300, seed=0):
  """Domain d's features ~ N(mean_d, scale_d^2), very different per domain; a few unknown-domain rows."""
  rng = np.random.default_rng(seed)
  domains = rng.integers(0, NUM_DOMAINS + 1, size=n)
  means, scales = np.array([5.0, -3.0, 0.0, 1.0]), np.array([1.0, 2.0, 0.5, 1.0])
  x = rng.normal(size=(n, UNITS)) * scales[domains, None] + means[domains, None]
  return tf.constant(x, tf.float32), tf.constant(domains, tf.int64)


def _pn(**kwargs):
  layer = PartitionedNormalization(NUM_DOMAINS, **kwargs)
  layer.build([(None, UNITS), (None,)])
  return layer


def _per_domain(values, domains):
  return [values[domains == d] for d in range(NUM_DOMAINS + 1)]


def test_partitioned_normalization_normalizes_each_domain_by_its_own_batch_statistics():
  layer = _pn()
  x, domains = _domain_batch()
  output = layer([x, domains], training=True).numpy()
  for d, values in enumerate(_per_domain(output, domains.numpy())[:NUM_DOMAINS]):
    np.testing.assert_allclose(values.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(values.std(axis=0), 1.0, atol=1e-2)
  # The unknown domain's rows are normalized by the whole batch: far from zero mean here.
  unknown = _per_domain(output, domains.numpy())[NUM_DOMAINS]
  expected = (x.numpy()[domains.numpy() == NUM_DOMAINS] - x.numpy().mean(0)) / np.sqrt(x.numpy().var(0) + 1e-3)
  np.testing.assert_allclose(unknown, expected, rtol=1e-4, atol=1e-4)


def test_partitioned_normalization_uses_each_domains_own_moving_statistics_at_inference():
  layer = _pn(momentum=0.0)  # the moving statistics become the last batch's
  x, domains = _domain_batch()
  layer([x, domains], training=True)
  np.testing.assert_allclose(layer.moving_mean.numpy()[:NUM_DOMAINS, 0], [5.0, -3.0, 0.0], atol=0.4)
  np.testing.assert_allclose(layer.moving_mean.numpy()[NUM_DOMAINS], x.numpy().mean(0), rtol=1e-5)
  # New examples, each domain shifted as in training: normalized by their own domain's statistics.
  x_new, domains_new = _domain_batch(seed=1)
  output = layer([x_new, domains_new], training=False).numpy()
  mean, variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
  slots = domains_new.numpy()
  expected = (x_new.numpy() - mean[slots]) / np.sqrt(variance[slots] + 1e-3)
  np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)
  for values in _per_domain(output, slots)[:NUM_DOMAINS]:
    np.testing.assert_allclose(values.mean(axis=0), 0.0, atol=0.4)


def test_partitioned_normalization_keeps_the_statistics_of_domains_absent_from_the_batch():
  layer = _pn(momentum=0.5)
  x, domains = _domain_batch()
  only_domain_0 = domains.numpy() == 0
  layer([x[only_domain_0], domains[only_domain_0]], training=True)
  np.testing.assert_array_equal(layer.moving_mean.numpy()[1:NUM_DOMAINS], 0.0)
  np.testing.assert_array_equal(layer.moving_variance.numpy()[1:NUM_DOMAINS], 1.0)
  assert np.all(layer.moving_mean.numpy()[0] > 2.0)


def test_partitioned_normalization_affine_terms_are_shared_times_own_domain():
  layer = _pn()
  _randomize([layer.gamma, layer.beta, layer.domain_gamma, layer.domain_beta])
  x, domains = _domain_batch(n=20)
  output = layer([x, domains], training=False).numpy()
  slots = domains.numpy()
  known = slots < NUM_DOMAINS
  gamma = layer.gamma.numpy() * np.vstack([layer.domain_gamma.numpy(), np.ones((1, UNITS))])[slots]
  beta = layer.beta.numpy() + np.vstack([layer.domain_beta.numpy(), np.zeros((1, UNITS))])[slots]
  expected = gamma * x.numpy() / np.sqrt(1 + 1e-3) + beta  # moving mean 0, variance 1
  np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)
  assert known.any() and (~known).any()


def test_frozen_partitioned_normalization_uses_and_keeps_its_moving_statistics_in_training():
  layer = _pn(freeze_base=True)
  assert layer.trainable_weights == []
  x, domains = _domain_batch()
  np.testing.assert_array_equal(layer([x, domains], training=True).numpy(),
                                layer([x, domains], training=False).numpy())
  np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)


def test_partitioned_normalization_trains_in_a_model():
  x_in, domain_in = tf_keras.Input((UNITS,)), tf_keras.Input((), dtype=tf.int64)
  layer = PartitionedNormalization(NUM_DOMAINS, momentum=0.0)
  model = tf_keras.Model([x_in, domain_in], tf_keras.layers.Dense(1)(layer([x_in, domain_in])))
  model.compile('sgd', 'mse')
  x, domains = _domain_batch()
  model.fit([x, domains], np.zeros((300, 1)), batch_size=300, epochs=1, verbose=0)
  np.testing.assert_allclose(layer.moving_mean.numpy()[0, 0], 5.0, atol=0.4)


def test_auxiliary_network_starts_at_zero_and_depends_on_the_domain_only():
  layer = AuxiliaryDomainNetwork(NUM_DOMAINS)
  domains = tf.constant([0, 1, 2, NUM_DOMAINS, 0], tf.int64)
  np.testing.assert_array_equal(layer(domains).numpy(), np.zeros((5, 1)))
  _randomize([layer.output_kernel])
  output = layer(domains).numpy()
  assert output.shape == (5, 1)
  assert output[0, 0] == output[4, 0] and len(np.unique(output[:4])) == 4


def test_auxiliary_network_weights_are_all_adaptation_weights():
  layer = AuxiliaryDomainNetwork(NUM_DOMAINS)
  layer(tf.constant([0], tf.int64))
  assert len(layer.adaptation_weights) == len(layer.trainable_weights) == 5
