import numpy as np
import tensorflow as tf
import tf_keras

from models.layers.pepnet import GateNU


def _inputs(n=64, d_in=10, seed=0):
  return tf.constant(np.random.default_rng(seed).normal(size=(n, d_in)), tf.float32)


def test_fresh_gate_is_one():
  gate = GateNU(5, hidden_units=8)
  output = gate(_inputs())
  assert output.shape == (64, 5)
  np.testing.assert_array_equal(output.numpy(), 1.0)


def test_gate_lies_in_zero_two():
  gate = GateNU(5, hidden_units=8)
  gate(_inputs())
  rng = np.random.default_rng(1)
  for weight in gate.weights:
    weight.assign(0.5 * rng.normal(size=weight.shape))  # large enough to move, small enough not to saturate
  output = gate(_inputs(seed=2)).numpy()
  assert np.all((output > 0) & (output < 2))
  assert output.min() < 0.5 and output.max() > 1.5  # it both damps and amplifies


def test_gate_trains_away_from_one_within_zero_two():
  tf_keras.utils.set_random_seed(0)
  x_in = tf_keras.Input((10,))
  gate = GateNU(3, hidden_units=4)
  model = tf_keras.Model(x_in, gate(x_in))
  model.compile(tf_keras.optimizers.Adam(0.05), 'mse', run_eagerly=True)
  x = _inputs()
  target = np.where(x.numpy()[:, :3] > 0, 1.5, 0.5)
  model.fit(x, target, batch_size=64, epochs=20, verbose=0)
  output = gate(x).numpy()
  assert np.all((output > 0) & (output < 2)) and np.abs(output - 1).max() > 0.3


def test_adaptation_weights_are_all_its_weights():
  gate = GateNU(5)
  gate(_inputs())
  assert gate.adaptation_weights == gate.trainable_weights and len(gate.weights) == 4


def test_config_round_trip():
  gate = GateNU(7, hidden_units=16, gamma=3.0, name='epnet_gate')
  clone = GateNU.from_config(gate.get_config())
  assert clone.get_config() == gate.get_config()
  assert (clone.units, clone.hidden_units, clone.gamma) == (7, 16, 3.0)
