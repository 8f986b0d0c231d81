"""STAR (Sheng et al., CIKM'21): star-topology FC, partitioned normalization and the auxiliary network."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models.layers.domain import domain_slots, per_domain_dense  # noqa: E402
from models.layers.lora import DomainLoRADense  # noqa: E402


@tf_keras.utils.register_keras_serializable(package='mdctr')
class StarDense(DomainLoRADense):
  """Star-topology FC layer: the shared weights times each domain's own, plus MLoRA's adapter if any.

      h = activation(x (W * W_d) + b + b_d + B_d A_d x)

  `W`, `b` are shared (weight names `kernel`, `bias`); `W_d` (d_in x d_out, elementwise product) starts at
  ones and `b_d` at zeros, so a fresh layer computes exactly the plain dense layer whose pretrained weights
  load into it. An unknown domain gets W_d = 1, b_d = 0: the shared layer alone. `num_domains`, `rank`
  give MLoRA's adapter as in `DomainLoRADense` (0: none).

  Args:
    units: d_out.
    star_domains: Number of domains with their own (W_d, b_d).
    adapter: (W_d, b_d) belong to a domain adaptation on a pretrained backbone (the `star` adaptation): they
      train under `freeze_base` and are its `adaptation_weights`. Otherwise they are backbone weights (the
      `star` backbone), frozen with W and b by `freeze_base`.
    activation: Applied last.
    **kwargs: `DomainLoRADense`'s (`num_domains`, `rank`, `freeze_base`) and the layer's.
  """

  def __init__(self, units, star_domains=1, adapter=False, activation=None, **kwargs):
    # The parent computes the shared part without activation: the star term is added before it.
    super().__init__(units, **kwargs)
    self.star_domains = star_domains
    self.adapter = adapter
    self.star_activation = tf_keras.activations.get(activation)

  def build(self, input_shape):
    super().build(input_shape)
    d_in = int(input_shape[0][-1])
    trainable = self.adapter or not self.freeze_base
    self.domain_kernel = self.add_weight('domain_kernel', shape=(self.star_domains, d_in, self.units),
                                         initializer='ones', trainable=trainable)
    self.domain_bias = self.add_weight('domain_bias', shape=(self.star_domains, self.units), initializer='zeros',
                                       trainable=trainable)

  def call(self, inputs):
    x, domain_index = inputs
    # x (W * W_d) = x W + x (W * (W_d - 1)): the parent's x W + b (+ adapter) and each domain's correction,
    # zero for the unknown-domain slot.
    corrections = tf.concat([self.kernel * (self.domain_kernel - 1.0), tf.zeros_like(self.kernel)[None]], 0)
    biases = tf.concat([self.domain_bias, tf.zeros_like(self.bias)[None]], 0)
    star = per_domain_dense(x, domain_slots(domain_index, self.star_domains), corrections, biases)
    return self.star_activation(super().call(inputs) + star)

  @property
  def adaptation_weights(self):
    return super().adaptation_weights + ([self.domain_kernel, self.domain_bias] if self.adapter else [])

  def get_config(self):
    config = super().get_config()
    config.update(star_domains=self.star_domains, adapter=self.adapter,
                  activation=tf_keras.activations.serialize(self.star_activation))
    return config


@tf_keras.utils.register_keras_serializable(package='mdctr')
class PartitionedNormalization(tf_keras.layers.Layer):
  """Batch normalization with per-domain statistics and affine terms:

      z = (gamma * gamma_d) (x - mu_d) / sqrt(var_d + epsilon) + (beta + beta_d)

  In training, mu_d and var_d are the batch statistics of the batch's examples of domain d, and domain d's
  moving averages follow them; at inference each example uses its own domain's moving averages. (The paper
  normalizes with the batch's statistics; splitting a mixed batch by domain makes training normalize the
  way inference does. With single-domain batches the two are the same.)
  An unknown domain uses the statistics of all examples (moving ones at inference) and gamma_d = 1,
  beta_d = 0. With `freeze_base` the layer is a frozen backbone layer: affine terms frozen and moving
  statistics used and kept, in training too (as Keras does for a frozen BatchNormalization).

  Called on `(x, domain_index)`, `x` [batch, units].
  """

  def __init__(self, num_domains, momentum=0.99, epsilon=1e-3, freeze_base=False, **kwargs):
    super().__init__(**kwargs)
    self.num_domains = num_domains
    self.momentum = momentum
    self.epsilon = epsilon
    self.freeze_base = freeze_base

  def build(self, input_shape):
    units = int(input_shape[0][-1])
    domains, trainable = self.num_domains, not self.freeze_base
    self.gamma = self.add_weight('gamma', shape=(units,), initializer='ones', trainable=trainable)
    self.beta = self.add_weight('beta', shape=(units,), initializer='zeros', trainable=trainable)
    self.domain_gamma = self.add_weight('domain_gamma', shape=(domains, units), initializer='ones',
                                        trainable=trainable)
    self.domain_beta = self.add_weight('domain_beta', shape=(domains, units), initializer='zeros',
                                       trainable=trainable)
    # One more row: the statistics of all examples, for unknown domains.
    self.moving_mean = self.add_weight('moving_mean', shape=(domains + 1, units), initializer='zeros',
                                       trainable=False)
    self.moving_variance = self.add_weight('moving_variance', shape=(domains + 1, units), initializer='ones',
                                           trainable=False)
    super().build(input_shape)

  def call(self, inputs, training=None):
    x, domain_index = inputs
    slots = domain_slots(domain_index, self.num_domains)
    if training and not self.freeze_base:
      mean, variance = self._batch_statistics(x, slots)
    else:
      mean, variance = self.moving_mean, self.moving_variance
    gamma = self.gamma * tf.concat([self.domain_gamma, tf.ones_like(self.gamma)[None]], 0)
    beta = self.beta + tf.concat([self.domain_beta, tf.zeros_like(self.beta)[None]], 0)
    normalized = (x - tf.gather(mean, slots)) * tf.math.rsqrt(tf.gather(variance, slots) + self.epsilon)
    return tf.gather(gamma, slots) * normalized + tf.gather(beta, slots)

  def _batch_statistics(self, x, slots):
    """Per-slot batch mean and variance [domains + 1, units] (the last row over the whole batch); moves
    the moving averages of the slots present in the batch."""
    slots_total = self.num_domains + 1
    counts = tf.math.unsorted_segment_sum(tf.ones_like(x[:, :1]), slots, slots_total)  # [slots, 1]
    mean = tf.math.unsorted_segment_sum(x, slots, slots_total) / tf.maximum(counts, 1.0)
    variance = tf.math.unsorted_segment_sum(tf.square(x - tf.gather(mean, slots)), slots,
                                            slots_total) / tf.maximum(counts, 1.0)
    batch_mean, batch_variance = tf.nn.moments(x, axes=[0])
    mean = tf.concat([mean[:-1], batch_mean[None]], 0)
    variance = tf.concat([variance[:-1], batch_variance[None]], 0)
    present = tf.concat([counts[:-1] > 0, [[True]]], 0)  # a domain absent from the batch keeps its averages
    for moving, value in ((self.moving_mean, mean), (self.moving_variance, variance)):
      moved = self.momentum * moving + (1.0 - self.momentum) * value
      moving.assign(tf.where(present, moved, moving))
    return mean, variance

  def get_config(self):
    config = super().get_config()
    config.update(num_domains=self.num_domains, momentum=self.momentum, epsilon=self.epsilon,
                  freeze_base=self.freeze_base)
    return config


@tf_keras.utils.register_keras_serializable(package='mdctr')
class AuxiliaryDomainNetwork(tf_keras.layers.Layer):
  """STAR's auxiliary network as a domain adaptation's own module: the domain indicator, embedded, through a
  small two-layer net to a logit that is added to the main one,

      a(d) = w_2^T relu(W_1 e_d + b_1) + b_2

  with `e_d` its own domain embedding (one row for unknown domains). `w_2`, `b_2` start at zero: a fresh
  network adds nothing, so the adapted model starts as its pretrained backbone. (The `star` backbone builds
  its auxiliary network from the adaptation's dense layers instead, so that MLoRA adapts them too.) Called
  on the domain index [batch]; returns [batch, 1].
  """

  def __init__(self, num_domains, embedding_dim=16, hidden_units=32, **kwargs):
    super().__init__(**kwargs)
    self.num_domains = num_domains
    self.embedding_dim = embedding_dim
    self.hidden_units = hidden_units

  def build(self, input_shape):
    self.domain_embedding = self.add_weight('domain_embedding', shape=(self.num_domains + 1, self.embedding_dim),
                                            initializer='uniform')
    self.hidden_kernel = self.add_weight('hidden_kernel', shape=(self.embedding_dim, self.hidden_units),
                                         initializer='glorot_uniform')
    self.hidden_bias = self.add_weight('hidden_bias', shape=(self.hidden_units,), initializer='zeros')
    self.output_kernel = self.add_weight('output_kernel', shape=(self.hidden_units, 1), initializer='zeros')
    self.output_bias = self.add_weight('output_bias', shape=(1,), initializer='zeros')
    super().build(input_shape)

  def call(self, domain_index):
    embedded = tf.gather(self.domain_embedding, domain_slots(domain_index, self.num_domains))
    hidden = tf.nn.relu(tf.matmul(embedded, self.hidden_kernel) + self.hidden_bias)
    return tf.matmul(hidden, self.output_kernel) + self.output_bias

  @property
  def adaptation_weights(self):
    return [self.domain_embedding, self.hidden_kernel, self.hidden_bias, self.output_kernel, self.output_bias]

  def get_config(self):
    config = super().get_config()
    config.update(num_domains=self.num_domains, embedding_dim=self.embedding_dim, hidden_units=self.hidden_units)
    return config
