import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models.layers.lora import DomainBias, DomainLoRADense, lora_rank

NUM_DOMAINS, D_IN = 3, 12


def _layer(units=8, **kwargs):
  layer = DomainLoRADense(units, num_domains=NUM_DOMAINS, rank=lora_rank(units, 4), **kwargs)
  layer.build([(None, D_IN), (None,)])
  return layer


def _batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return (tf.constant(rng.normal(size=(n, D_IN)), tf.float32),
          tf.constant(rng.integers(0, NUM_DOMAINS, size=n), tf.int64))


def _set_random_adapters(layer, seed=1):
  rng = np.random.default_rng(seed)
  for weight in layer.adaptation_weights:
    weight.assign(rng.normal(size=weight.shape))


@pytest.mark.parametrize('units,alpha,rank', [(256, 8, 32), (64, 8, 8), (7, 8, 1), (1, 8, 1), (128, 1, 128)])
def test_rank_rule(units, alpha, rank):
  assert lora_rank(units, alpha) == rank


def test_rank_rule_rejects_non_positive_alpha():
  with pytest.raises(ValueError, match='alpha'):
    lora_rank(64, 0)


def test_weight_shapes_follow_rank():
  layer = _layer(units=16)  # rank 16 // 4 = 4
  assert layer.kernel.shape == (D_IN, 16)
  assert layer.lora_a.shape == (D_IN, NUM_DOMAINS * 4)
  assert layer.lora_b.shape == (NUM_DOMAINS * 4, 16)


def test_zero_b_gives_the_frozen_base_output():
  layer = _layer(activation='relu')
  x, domains = _batch()
  expected = tf.nn.relu(x @ layer.kernel + layer.bias)
  np.testing.assert_array_equal(layer([x, domains]).numpy(), expected.numpy())
  assert np.abs(layer.lora_a.numpy()).sum() > 0  # A is Gaussian, only B is zero


def test_each_example_uses_its_own_domain_adapter():
  layer = _layer()
  _set_random_adapters(layer)
  x, domains = _batch()
  output = layer([x, domains]).numpy()
  rank = layer.rank
  for i, d in enumerate(domains.numpy()):
    a = layer.lora_a.numpy()[:, d * rank:(d + 1) * rank]
    b = layer.lora_b.numpy()[d * rank:(d + 1) * rank]
    expected = x.numpy()[i] @ layer.kernel.numpy() + layer.bias.numpy() + x.numpy()[i] @ a @ b
    np.testing.assert_allclose(output[i], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('unknown', [NUM_DOMAINS, NUM_DOMAINS + 5, -1])
def test_unknown_domain_uses_no_adapter(unknown):
  layer = _layer()
  _set_random_adapters(layer)
  x, _ = _batch(4)
  output = layer([x, tf.fill([4], tf.constant(unknown, tf.int64))])
  np.testing.assert_allclose(output.numpy(), (x @ layer.kernel + layer.bias).numpy(), rtol=1e-6)


@pytest.mark.parametrize('middle', [(5,), (2, 3)])
def test_zero_b_gives_the_base_output_for_every_position(middle):
  layer = _layer(activation='relu')
  x = tf.constant(np.random.default_rng(0).normal(size=(4, *middle, D_IN)), tf.float32)
  expected = np.maximum(np.einsum('...i,io->...o', x.numpy(), layer.kernel.numpy()) + layer.bias.numpy(), 0)
  output = layer([x, tf.constant([0, 1, 2, 0], tf.int64)]).numpy()
  assert output.shape == (4, *middle, 8)
  np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('middle', [(5,), (2, 3)])
def test_each_example_uses_its_own_domain_adapter_at_every_position(middle):
  layer = _layer()
  _set_random_adapters(layer)
  x = np.random.default_rng(0).normal(size=(5, *middle, D_IN)).astype(np.float32)
  domains = np.array([2, 0, 1, NUM_DOMAINS, 2])  # the fourth is unknown: no adapter
  output = layer([tf.constant(x), tf.constant(domains, tf.int64)]).numpy()
  rank = layer.rank
  for i, d in enumerate(domains):
    update = np.zeros((D_IN, 8))
    if d < NUM_DOMAINS:
      update = layer.lora_a.numpy()[:, d * rank:(d + 1) * rank] @ layer.lora_b.numpy()[d * rank:(d + 1) * rank]
    expected = x[i] @ (layer.kernel.numpy() + update) + layer.bias.numpy()
    np.testing.assert_allclose(output[i], expected, rtol=1e-4, atol=1e-4)


def test_fields_input_keeps_its_static_shape():
  fields = tf_keras.Input((5, D_IN))
  domain_in = tf_keras.Input((), dtype=tf.int64)
  output = DomainLoRADense(8, num_domains=NUM_DOMAINS, rank=2)([fields, domain_in])
  assert output.shape.as_list() == [None, 5, 8]


def test_no_domains_is_a_plain_dense_layer():
  layer = DomainLoRADense(5, num_domains=0)
  layer.build([(None, D_IN), (None,)])
  assert [w.name.split('/')[-1] for w in layer.weights] == ['kernel:0', 'bias:0']
  assert layer.adaptation_weights == []


def test_freeze_base_leaves_only_adapters_trainable():
  layer = _layer(freeze_base=True)
  assert {w.name.split('/')[-1] for w in layer.trainable_weights} == {'lora_a:0', 'lora_b:0'}
  assert {w.name.split('/')[-1] for w in layer.non_trainable_weights} == {'kernel:0', 'bias:0'}


def test_training_step_changes_adapters_and_not_frozen_base():
  x_in = tf_keras.Input((D_IN,))
  domain_in = tf_keras.Input((), dtype=tf.int64)
  layer = DomainLoRADense(4, num_domains=NUM_DOMAINS, rank=2, freeze_base=True)
  model = tf_keras.Model([x_in, domain_in], layer([x_in, domain_in]))
  model.compile(tf_keras.optimizers.SGD(0.1), 'mse')
  kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
  b_before = layer.lora_b.numpy()
  x, domains = _batch()
  model.train_on_batch([x, domains], np.ones((32, 4), np.float32))
  np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
  np.testing.assert_array_equal(layer.bias.numpy(), bias)
  assert not np.array_equal(layer.lora_b.numpy(), b_before)


def test_only_the_batch_domains_adapters_learn():
  x_in = tf_keras.Input((D_IN,))
  domain_in = tf_keras.Input((), dtype=tf.int64)
  layer = DomainLoRADense(4, num_domains=NUM_DOMAINS, rank=2, freeze_base=True)
  model = tf_keras.Model([x_in, domain_in], layer([x_in, domain_in]))
  model.compile(tf_keras.optimizers.SGD(0.1), 'mse')
  x, _ = _batch()
  model.train_on_batch([x, tf.zeros([32], tf.int64)], np.ones((32, 4), np.float32))
  b = layer.lora_b.numpy()
  assert np.abs(b[:2]).sum() > 0  # domain 0's B moved
  np.testing.assert_array_equal(b[2:], 0.0)  # domains 1 and 2 untouched


def test_config_round_trip():
  layer = _layer(activation='relu', freeze_base=True, name='dense_0')
  clone = DomainLoRADense.from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  assert (clone.units, clone.num_domains, clone.rank, clone.freeze_base) == (8, NUM_DOMAINS, 2, True)


def test_trainable_domains_leave_the_other_adapters_bit_identical():
  layer = _layer(freeze_base=True, trainable_domains=[2])
  _set_random_adapters(layer)
  before = [w.numpy() for w in layer.adaptation_weights]
  x, domains = _batch(n=64)
  optimizer = tf_keras.optimizers.Adam(0.1)
  for _ in range(3):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(layer([x, domains])))
    optimizer.apply_gradients(zip(tape.gradient(loss, layer.trainable_weights), layer.trainable_weights))
  lora_a, lora_b = (w.numpy() for w in layer.adaptation_weights)
  r = layer.rank
  np.testing.assert_array_equal(lora_a[:, :2 * r], before[0][:, :2 * r])
  np.testing.assert_array_equal(lora_b[:2 * r], before[1][:2 * r])
  assert not np.allclose(lora_a[:, 2 * r:], before[0][:, 2 * r:])
  assert not np.allclose(lora_b[2 * r:], before[1][2 * r:])
  assert DomainLoRADense.from_config(layer.get_config()).trainable_domains == [2]


def test_domain_bias_starts_at_zero_and_adds_each_domains_own_bias():
  layer = DomainBias(NUM_DOMAINS)
  domains = tf.constant([0, 1, 2, 2, NUM_DOMAINS], tf.int64)  # the last: an unknown domain
  np.testing.assert_array_equal(layer(domains).numpy(), np.zeros((5, 1)))
  layer.bias.assign([[1.0], [2.0], [3.0]])
  np.testing.assert_array_equal(layer(domains).numpy().ravel(), [1.0, 2.0, 3.0, 3.0, 0.0])
  assert layer.adaptation_weights == [layer.bias]


def test_domain_bias_config_round_trip():
  layer = DomainBias.from_config(DomainBias(NUM_DOMAINS, name='bias').get_config())
  assert (layer.num_domains, layer.name) == (NUM_DOMAINS, 'bias')
