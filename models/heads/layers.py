"""The mixture layer of MMoE and PLE: softmax-gated sum of expert outputs."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402


@tf_keras.utils.register_keras_serializable(package='mdctr')
class MixtureOfExperts(tf_keras.layers.Layer):
  """Mixes E expert outputs with one gate (Ma et al., KDD'18):

      g = dropout(softmax(z)),    y = sum_e g_e f_e(x)

  Called on `[z, f_1(x), ..., f_E(x)]`: the gate logits z = W_g x [batch, E] (a dense layer the caller
  builds through the domain adaptation, so MLoRA adapts it too) and the experts' outputs, each [batch, d].
  Dropout on the gate values (training only, rate `gate_dropout`) keeps a task from leaning on a single
  expert (gate polarization); the inverted-dropout scale keeps the expected mixture unchanged.
  """

  def __init__(self, gate_dropout: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.gate_dropout = gate_dropout
    self._dropout = tf_keras.layers.Dropout(gate_dropout)

  def call(self, inputs, training=None):
    gate_logits, *experts = inputs
    gates = self._dropout(tf.nn.softmax(gate_logits, axis=-1), training=training)
    return tf.einsum('be,bed->bd', gates, tf.stack(experts, axis=1))

  def get_config(self):
    config = super().get_config()
    config.update(gate_dropout=self.gate_dropout)
    return config
