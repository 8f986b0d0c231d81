"""The `separate` baseline's layers: every dense layer and embedding table has one copy per domain."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models.layers.domain import domain_slots, per_domain_dense  # noqa: E402


@tf_keras.utils.register_keras_serializable(package='mdctr')
class SeparateDense(tf_keras.layers.Layer):
  """A dense layer of its own for each domain:

      h = activation(x (W + V_d) + b + c_d)

  W, b (weight names `kernel`, `bias`) are the common starting point and never train: the pretrained
  backbone's layer in the fine-tune stage, a random initialization end to end. V_d, c_d (`kernel_delta`,
  `bias_delta`) start at zero and are all that trains, each only on its domain's examples: domains share
  no trained weight, and each domain's layer starts as the same one. An unknown domain gets the starting
  point alone.

  Called on `(x, domain_index)`, `x` [batch, ..., d_in].
  """

  def __init__(self, units, num_domains, activation=None, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.num_domains = num_domains
    self.activation = tf_keras.activations.get(activation)

  def build(self, input_shape):
    d_in = int(input_shape[0][-1])
    self.kernel = self.add_weight('kernel', shape=(d_in, self.units), initializer='glorot_uniform', trainable=False)
    self.bias = self.add_weight('bias', shape=(self.units,), initializer='zeros', trainable=False)
    self.kernel_delta = self.add_weight('kernel_delta', shape=(self.num_domains, d_in, self.units),
                                        initializer='zeros')
    self.bias_delta = self.add_weight('bias_delta', shape=(self.num_domains, self.units), initializer='zeros')
    super().build(input_shape)

  def call(self, inputs):
    x, domain_index = inputs
    kernels = self.kernel + tf.concat([self.kernel_delta, tf.zeros_like(self.kernel)[None]], 0)
    biases = self.bias + tf.concat([self.bias_delta, tf.zeros_like(self.bias)[None]], 0)
    return self.activation(per_domain_dense(x, domain_slots(domain_index, self.num_domains), kernels, biases))

  @property
  def adaptation_weights(self):
    return [self.kernel_delta, self.bias_delta]

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units, num_domains=self.num_domains,
                  activation=tf_keras.activations.serialize(self.activation))
    return config


@tf_keras.utils.register_keras_serializable(package='mdctr')
class SeparateEmbedding(tf_keras.layers.Layer):
  """An embedding table of its own for each domain, on the pattern of `SeparateDense`:

      e = E[id] + E_d[id]

  E (weight name `embeddings`, as a Keras `Embedding`'s, so a pretrained table loads into it) is the common
  starting point and never trains; E_d (`embeddings_delta`) starts at zero and trains on domain d's
  examples only. Its rows are the vocabulary's, each holding every domain's vector side by side, so a
  lookup touches the example's rows alone and a warm start maps them like any embedding table's. An
  unknown domain gets E alone.

  Called on `(ids, domain_index)`, `ids` [batch] or [batch, values]; with `mask_zero`, id 0 is padding and
  masked, as in `Embedding`.
  """

  def __init__(self, input_dim, output_dim, num_domains, mask_zero=False, **kwargs):
    super().__init__(**kwargs)
    self.input_dim = input_dim
    self.output_dim = output_dim
    self.num_domains = num_domains
    self.mask_zero = mask_zero

  def build(self, input_shape):
    self.embeddings = self.add_weight('embeddings', shape=(self.input_dim, self.output_dim), initializer='uniform',
                                      trainable=False)
    self.embeddings_delta = self.add_weight('embeddings_delta', initializer='zeros',
                                            shape=(self.input_dim, self.num_domains * self.output_dim))
    super().build(input_shape)

  def call(self, inputs):
    ids, domain_index = inputs
    rows = tf.gather(self.embeddings_delta, ids)
    rows = tf.reshape(rows, [-1] + ids.shape[1:].as_list() + [self.num_domains, self.output_dim])
    # The one-hot of the unknown-domain slot is all zeros: no domain vector.
    own = tf.one_hot(domain_slots(domain_index, self.num_domains), self.num_domains, dtype=rows.dtype)
    own = tf.reshape(own, [-1] + [1] * (len(ids.shape) - 1) + [self.num_domains, 1])
    return tf.gather(self.embeddings, ids) + tf.reduce_sum(rows * own, axis=-2)

  def compute_mask(self, inputs, mask=None):
    return tf.not_equal(inputs[0], 0) if self.mask_zero else None

  @property
  def adaptation_weights(self):
    return [self.embeddings_delta]

  def get_config(self):
    config = super().get_config()
    config.update(input_dim=self.input_dim, output_dim=self.output_dim, num_domains=self.num_domains,
                  mask_zero=self.mask_zero)
    return config
