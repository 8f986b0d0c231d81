"""MLoRA: a dense layer with one low-rank adapter per domain (Yang et al., RecSys'24)."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402


def lora_rank(units: int, alpha: int) -> int:
  """The adapter rank MLoRA gives a layer with `units` outputs: `max(units // alpha, 1)`."""
  if alpha < 1:
    raise ValueError(f'LoRA alpha must be a positive integer, got {alpha}.')
  return max(units // alpha, 1)


@tf_keras.utils.register_keras_serializable(package='mdctr')
class DomainLoRADense(tf_keras.layers.Layer):
  """Dense layer plus a per-domain low-rank adapter.

      h = activation(W x + b + B_d A_d x)

  `W` (d_in x d_out) and `b` are the shared backbone weights; `A_d` (d_in x r) and `B_d` (r x d_out) belong
  to domain `d`. `A_d` starts Gaussian and `B_d` zero, so a fresh adapter leaves the layer's output
  exactly as the backbone's. An example whose domain index is outside `[0, num_domains)` (an unknown
  domain) gets no adapter: the shared backbone alone scores it. With `num_domains=0` this is a plain
  dense layer, which is how the pretrained backbone is built.

  Called on `(x, domain_index)` with `x` of shape [batch, ..., d_in] and `domain_index` of shape [batch] or
  [batch, 1] (integers). Like `Dense`, the map acts on the last axis; every position of an example (each
  field of [batch, fields, d_in], ...) uses that example's domain adapter.

  Args:
    units: d_out.
    num_domains: Number of per-domain adapters; 0 for none.
    rank: Adapter rank r (see `lora_rank`); ignored when `num_domains` is 0.
    activation: Applied after the adapter is added.
    freeze_base: Makes `W` and `b` non-trainable, so only the adapters learn (MLoRA's second stage).
    trainable_domains: The domains whose adapters learn; None for all. Onboarding a new domain trains
      its adapter alone: the other domains' columns of A and rows of B get no gradient, so they stay
      bit-identical.
  """

  def __init__(self, units, num_domains=0, rank=1, activation=None, freeze_base=False, trainable_domains=None,
               **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.num_domains = num_domains
    self.rank = rank
    self.activation = tf_keras.activations.get(activation)
    self.freeze_base = freeze_base
    self.trainable_domains = None if trainable_domains is None else sorted(int(d) for d in trainable_domains)

  def build(self, input_shape):
    x_shape, _ = input_shape
    d_in = int(x_shape[-1])
    self.kernel = self.add_weight('kernel', shape=(d_in, self.units), initializer='glorot_uniform',
                                  trainable=not self.freeze_base)
    self.bias = self.add_weight('bias', shape=(self.units,), initializer='zeros', trainable=not self.freeze_base)
    if self.num_domains:
      # A and B of every domain side by side, so one matmul projects x into all domains' subspaces.
      self.lora_a = self.add_weight('lora_a', shape=(d_in, self.num_domains * self.rank),
                                    initializer=tf_keras.initializers.RandomNormal(stddev=d_in ** -0.5))
      self.lora_b = self.add_weight('lora_b', shape=(self.num_domains * self.rank, self.units),
                                    initializer='zeros')
    super().build(input_shape)

  def call(self, inputs):
    x, domain_index = inputs
    h = tf.tensordot(x, self.kernel, axes=1) + self.bias
    if self.num_domains:
      domain_index = tf.reshape(tf.cast(domain_index, tf.int32), [-1])
      # one_hot of an out-of-range index is all zeros: unknown domains get no adapter. Repeated per rank
      # column and broadcast over the middle axes, it keeps only the example's own domain's r columns of
      # the all-domain projection x A.
      mask = tf.repeat(tf.one_hot(domain_index, self.num_domains, dtype=x.dtype), self.rank, axis=1)
      mask = tf.reshape(mask, [-1] + [1] * (x.shape.rank - 2) + [self.num_domains * self.rank])
      lora_a, lora_b = self._trainable_part(self.lora_a, axis=1), self._trainable_part(self.lora_b, axis=0)
      h += tf.tensordot(tf.tensordot(x, lora_a, axes=1) * mask, lora_b, axes=1)
    return self.activation(h)

  def _trainable_part(self, weight, axis):
    """`weight` with the gradient cut off along `axis` (the domains' r-wide slices) outside
    `trainable_domains`; its value is unchanged."""
    if self.trainable_domains is None:
      return weight
    trainable = tf.repeat(tf.reduce_sum(tf.one_hot(self.trainable_domains, self.num_domains), axis=0), self.rank)
    trainable = tf.reshape(trainable, [-1, 1] if axis == 0 else [1, -1])
    return weight * trainable + tf.stop_gradient(weight) * (1.0 - trainable)

  @property
  def adaptation_weights(self):
    return [self.lora_a, self.lora_b] if self.num_domains else []

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units, num_domains=self.num_domains, rank=self.rank,
                  activation=tf_keras.activations.serialize(self.activation), freeze_base=self.freeze_base,
                  trainable_domains=self.trainable_domains)
    return config


@tf_keras.utils.register_keras_serializable(package='mdctr')
class DomainBias(tf_keras.layers.Layer):
  """A trained bias per domain, added to the logit by MLoRA's `domain_bias` recipe:

      logit_d = logit + c_d

  `c_d` starts at zero (the model starts as its backbone); an unknown domain (an index outside
  `[0, num_domains)`) gets none. Called on `domain_index` [batch] or [batch, 1]; returns [batch, 1].
  """

  def __init__(self, num_domains, **kwargs):
    super().__init__(**kwargs)
    self.num_domains = num_domains

  def build(self, input_shape):
    self.bias = self.add_weight('bias', shape=(self.num_domains, 1), initializer='zeros')
    super().build(input_shape)

  def call(self, domain_index):
    one_hot = tf.one_hot(tf.reshape(tf.cast(domain_index, tf.int32), [-1]), self.num_domains, dtype=self.bias.dtype)
    return tf.matmul(one_hot, self.bias)

  @property
  def adaptation_weights(self):
    return [self.bias]

  def get_config(self):
    return {**super().get_config(), 'num_domains': self.num_domains}
