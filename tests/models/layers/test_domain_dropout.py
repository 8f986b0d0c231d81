import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models.layers.domain_dropout import DomainDropout

NUM_DOMAINS = 3


def _domains(n=4000, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, NUM_DOMAINS, n), tf.int64)


def test_training_drops_a_rate_share_to_the_unknown_domain():
  domains = _domains()
  dropped = DomainDropout(0.2, NUM_DOMAINS, seed=1)(domains, training=True).numpy()
  unknown = dropped == NUM_DOMAINS
  assert 0.17 < unknown.mean() < 0.23
  np.testing.assert_array_equal(dropped[~unknown], domains.numpy()[~unknown])  # the others keep their domain


def test_inference_and_an_unknown_domain_pass_through():
  domains = _domains()
  layer = DomainDropout(0.5, NUM_DOMAINS, seed=1)
  np.testing.assert_array_equal(layer(domains, training=False).numpy(), domains.numpy())
  unknown = tf.fill([100], tf.constant(NUM_DOMAINS, tf.int64))
  np.testing.assert_array_equal(layer(unknown, training=True).numpy(), unknown.numpy())


def test_rate_out_of_range_is_refused():
  with pytest.raises(ValueError, match=r'\[0, 1\)'):
    DomainDropout(1.0, NUM_DOMAINS)


def test_config_round_trip():
  layer = DomainDropout(0.1, NUM_DOMAINS, seed=7, name='domain_dropout')
  restored = tf_keras.layers.deserialize(tf_keras.layers.serialize(layer))
  assert (restored.rate, restored.num_domains, restored.seed) == (0.1, NUM_DOMAINS, 7)
