"""PEPNet (Chang et al., KDD'23): the Gate Neural Unit its EPNet and PPNet are made of."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402


@tf_keras.utils.register_keras_serializable(package='mdctr')
class GateNU(tf_keras.layers.Layer):
  """Gate Neural Unit: a two-layer bottleneck whose output, in (0, gamma), scales another tensor.

      g = gamma * sigmoid(W_2 relu(W_1 x + b_1) + b_2),   gamma = 2

  W_2 and b_2 start at zero: g = 1, so a fresh gate leaves what it scales unchanged. Input [batch, d_in];
  output [batch, units].

  Args:
    units: Size of the gate (what it scales: fields, or a hidden layer's units).
    hidden_units: The bottleneck's width.
    gamma: The gate's upper bound; 2 lets it amplify as much as it damps around the neutral 1.
  """

  def __init__(self, units, hidden_units=64, gamma=2.0, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.hidden_units = hidden_units
    self.gamma = gamma

  def build(self, input_shape):
    d_in = int(input_shape[-1])
    self.hidden_kernel = self.add_weight('hidden_kernel', shape=(d_in, self.hidden_units),
                                         initializer='glorot_uniform')
    self.hidden_bias = self.add_weight('hidden_bias', shape=(self.hidden_units,), initializer='zeros')
    self.output_kernel = self.add_weight('output_kernel', shape=(self.hidden_units, self.units), initializer='zeros')
    self.output_bias = self.add_weight('output_bias', shape=(self.units,), initializer='zeros')
    super().build(input_shape)

  def call(self, x):
    hidden = tf.nn.relu(tf.matmul(x, self.hidden_kernel) + self.hidden_bias)
    return self.gamma * tf.sigmoid(tf.matmul(hidden, self.output_kernel) + self.output_bias)

  @property
  def adaptation_weights(self):
    return [self.hidden_kernel, self.hidden_bias, self.output_kernel, self.output_bias]

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units, hidden_units=self.hidden_units, gamma=self.gamma)
    return config
