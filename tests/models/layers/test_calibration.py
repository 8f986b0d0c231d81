import numpy as np
import tensorflow as tf
import tf_keras

from models.layers.calibration import WEAK_PRIOR, DomainCalibration, fit_domain_calibration, fit_platt

NUM_DOMAINS = 3


def _layer():
  layer = DomainCalibration(NUM_DOMAINS)
  layer.build([(None, 1), (None,)])
  return layer


def _platt_data(n, scale, shift, seed=0):
  """Logits and labels drawn from p = sigmoid(scale * logit + shift)."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=n) * 2.0
  labels = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-(scale * logits + shift)))).astype(np.float64)
  return logits, labels


def test_starts_as_the_identity_and_never_trains():
  layer = _layer()
  logits = tf.constant([[0.5], [-2.0], [3.0]])
  np.testing.assert_array_equal(layer([logits, tf.constant([0, 2, 7], tf.int64)]).numpy(), logits.numpy())
  assert not layer.trainable_weights


def test_each_example_uses_its_own_domain_row_and_an_unknown_domain_the_last():
  layer = _layer()
  layer.calibration.assign([[1.0, 0.0], [2.0, 1.0], [0.5, -1.0], [3.0, 0.5]])
  output = layer([tf.constant([[1.0], [1.0], [1.0], [1.0]]), tf.constant([0, 1, 2, 9], tf.int64)]).numpy()
  np.testing.assert_allclose(output.ravel(), [1.0, 3.0, -0.5, 3.5])


def test_platt_fit_recovers_the_scale_and_shift():
  logits, labels = _platt_data(20_000, scale=0.5, shift=-1.0)
  np.testing.assert_allclose(fit_platt(logits, labels), [0.5, -1.0], atol=0.05)


def test_prior_holds_a_domain_without_examples_and_pulls_a_small_one():
  assert np.array_equal(fit_platt(np.zeros(0), np.zeros(0), prior=(0.7, 0.2), prior_weight=10.0), [0.7, 0.2])
  assert np.all(np.isfinite(fit_platt(np.array([0.1, 2.0, -1.0]), np.zeros(3), prior_weight=1.0)))  # one class
  logits, labels = _platt_data(30, scale=3.0, shift=2.0)
  free, held = fit_platt(logits, labels), fit_platt(logits, labels, prior=(1.0, 0.0), prior_weight=50.0)
  assert np.abs(held - [1.0, 0.0]).sum() < np.abs(free - [1.0, 0.0]).sum()


def test_fit_per_domain_then_unknown_slot():
  layer = _layer()
  parts = [_platt_data(5_000, scale, shift, seed=d) for d, (scale, shift) in enumerate([(0.5, 0.0), (1.0, -1.0),
                                                                                          (2.0, 0.5)])]
  logits, labels = (np.concatenate(p) for p in zip(*parts))
  slots = np.repeat(np.arange(NUM_DOMAINS), 5_000)
  unknown_logits, _ = _platt_data(len(labels), 1.0, 0.0, seed=9)
  value = fit_domain_calibration(layer, logits, labels, slots, unknown_logits=unknown_logits)
  np.testing.assert_allclose(value[:NUM_DOMAINS], [[0.5, 0.0], [1.0, -1.0], [2.0, 0.5]], atol=0.15)
  np.testing.assert_allclose(layer.calibration.numpy(), value, rtol=1e-6)
  np.testing.assert_allclose(value[NUM_DOMAINS], fit_platt(unknown_logits, labels, prior_weight=WEAK_PRIOR), rtol=1e-5)

  onboarded = layer.calibration.numpy()
  fit_domain_calibration(layer, logits, 1.0 - labels, slots, domains=[2])  # only domain 2's row moves
  np.testing.assert_array_equal(np.delete(layer.calibration.numpy(), 2, axis=0), np.delete(onboarded, 2, axis=0))
  assert not np.allclose(layer.calibration.numpy()[2], onboarded[2])


def test_serializes_with_its_weights():
  logit = tf_keras.Input(shape=(1,))
  domain = tf_keras.Input(shape=(), dtype=tf.int64)
  model = tf_keras.Model([logit, domain], DomainCalibration(NUM_DOMAINS, name='calibration')([logit, domain]))
  model.get_layer('calibration').calibration.assign(np.arange(8, dtype=np.float32).reshape(4, 2))
  restored = tf_keras.Model.from_config(model.get_config())
  restored.set_weights(model.get_weights())
  assert restored.get_layer('calibration').get_config()['num_domains'] == NUM_DOMAINS
  assert not restored.get_layer('calibration').trainable
  inputs = [tf.constant([[1.0], [2.0]]), tf.constant([1, 3], tf.int64)]
  np.testing.assert_allclose(restored(inputs).numpy(), model(inputs).numpy())


def test_platt_fit_converges_from_far_on_large_logits():
  logits, labels = _platt_data(20_000, scale=0.05, shift=-1.0)
  np.testing.assert_allclose(fit_platt(logits * 40.0, labels), [0.05 / 40.0, -1.0], atol=0.05)
