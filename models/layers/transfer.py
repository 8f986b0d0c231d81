"""Layers of cross-model transfer (CTNet, Liu et al., arXiv 2208.05728): the gated adapter from a source
model's hidden layer into the target's, and the maps that feed the target's features to the source model."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402


@tf_keras.utils.register_keras_serializable(package='mdctr')
class GatedLinearAdapter(tf_keras.layers.Layer):
  """A gated linear unit (GLU) from a source hidden layer h_s [batch, d_s] to a target one [batch, units]:

      a(h_s) = (W1 h_s + b1) * sigmoid(W2 h_s + b2)

  CTNet adds a(h_s) to the output of the target tower's matching hidden layer. The value path W1, b1 is
  zero at init, so a fresh adapter adds nothing and the model starts as its target tower; the gate W2 is
  Glorot, b2 zero. (W1 gets gradient from the start, W2 once W1 is non-zero, as LoRA's A and B.)

  Args:
    units: The target layer's width.
  """

  def __init__(self, units, **kwargs):
    super().__init__(**kwargs)
    self.units = units

  def build(self, input_shape):
    d_in = int(input_shape[-1])
    self.value_kernel = self.add_weight('value_kernel', shape=(d_in, self.units), initializer='zeros')
    self.value_bias = self.add_weight('value_bias', shape=(self.units,), initializer='zeros')
    self.gate_kernel = self.add_weight('gate_kernel', shape=(d_in, self.units), initializer='glorot_uniform')
    self.gate_bias = self.add_weight('gate_bias', shape=(self.units,), initializer='zeros')
    super().build(input_shape)

  def call(self, source_hidden):
    value = tf.matmul(source_hidden, self.value_kernel) + self.value_bias
    return value * tf.sigmoid(tf.matmul(source_hidden, self.gate_kernel) + self.gate_bias)

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units)
    return config


@tf_keras.utils.register_keras_serializable(package='mdctr')
class IdLookup(tf_keras.layers.Layer):
  """Integer ids through a fixed table, `out = table[ids]`: a target model's feature ids to the ids the
  source model gave the same tokens. The table is a non-trainable weight of `size` entries (saved with
  the weights, not in the config); assign it with `set_table` after the layer is built."""

  def __init__(self, size, **kwargs):
    kwargs.setdefault('trainable', False)
    super().__init__(**kwargs)
    self.size = size

  def build(self, input_shape):
    self.table = self.add_weight('table', shape=(self.size,), dtype=tf.int64, initializer='zeros',
                                 trainable=False)
    super().build(input_shape)

  def set_table(self, table) -> None:
    self.table.assign(tf.constant(table, tf.int64))

  def call(self, ids):
    return tf.gather(self.table, tf.cast(ids, tf.int64))

  def get_config(self):
    config = super().get_config()
    config.update(size=self.size)
    return config


@tf_keras.utils.register_keras_serializable(package='mdctr')
class Affine(tf_keras.layers.Layer):
  """`out = scale * x + shift` with fixed scalars: a target model's z-score of a numeric feature to the
  source model's z-score of the same raw value."""

  def __init__(self, scale=1.0, shift=0.0, **kwargs):
    kwargs.setdefault('trainable', False)
    super().__init__(**kwargs)
    self.scale = float(scale)
    self.shift = float(shift)

  def call(self, x):
    return x * self.scale + self.shift

  def get_config(self):
    config = super().get_config()
    config.update(scale=self.scale, shift=self.shift)
    return config
