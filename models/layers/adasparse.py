"""AdaSparse (Yang et al., CIKM'22): a domain-aware pruner of the neurons of each hidden layer."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models.layers.domain import domain_slots  # noqa: E402

FORMS = ('binarization', 'scaling', 'fusion')


@tf_keras.utils.register_keras_serializable(package='mdctr')
class DomainPruner(tf_keras.layers.Layer):
  """Domain-aware neuron-level weighting factors pi on a hidden layer's output h [batch, units]:

      v = W [h, e_d] + c                                  (e_d: the pruner's own domain embedding)
      binarization  pi = 1[sigmoid(alpha v) > epsilon]     (Sign(|sigmoid(alpha v)| - epsilon) as 0/1)
      scaling       pi = beta sigmoid(v),  beta = 2
      fusion        pi = beta sigmoid(v) 1[sigmoid(alpha v) > epsilon]
      output        h * pi

  The step is differentiated straight through, as sigmoid(alpha v), with alpha rising linearly over
  `anneal_steps` training steps (counted by the non-trainable `step`) from `alpha_range[0]` to
  `alpha_range[1]`, so the surrogate sharpens into the step it stands for. W and c start at zero, so
  pi = 1 in every form (sigmoid(0) = 1/2 > epsilon): a fresh pruner passes h unchanged.

  Sparsity r = the fraction of pruned neurons (pi = 0) over the batch. In training the layer adds the
  flexible sparsity regularizer

      lambda (relu(r_min - r) + relu(r - r_max)),   r differentiated straight through,

  lambda rising linearly over `anneal_steps` from `sparsity_weight[0]` to `sparsity_weight[1]`, and reports
  r as the metric `<name>_sparsity`. The scaling form prunes nothing (r = 0): it has no regularizer.

  Called on `(h, domain_index)`.
  """

  def __init__(self, num_domains, form='fusion', domain_dim=16, epsilon=0.25, beta=2.0, alpha_range=(0.1, 5.0),
               sparsity_range=(0.15, 0.25), sparsity_weight=(0.01, 1.0), anneal_steps=1000, **kwargs):
    super().__init__(**kwargs)
    if form not in FORMS:
      raise ValueError(f'Unknown AdaSparse form {form!r}; choose one of {FORMS}.')
    self.num_domains = num_domains
    self.form = form
    self.domain_dim = domain_dim
    self.epsilon = epsilon
    self.beta = beta
    self.alpha_range = tuple(alpha_range)
    self.sparsity_range = tuple(sparsity_range)
    self.sparsity_weight = tuple(sparsity_weight)
    self.anneal_steps = anneal_steps

  def build(self, input_shape):
    units = int(input_shape[0][-1])
    self.domain_embedding = self.add_weight('domain_embedding', shape=(self.num_domains + 1, self.domain_dim),
                                            initializer='uniform')
    self.kernel = self.add_weight('kernel', shape=(units + self.domain_dim, units), initializer='zeros')
    self.bias = self.add_weight('bias', shape=(units,), initializer='zeros')
    self.step = self.add_weight('step', shape=(), dtype=tf.int64, initializer='zeros', trainable=False)
    super().build(input_shape)

  def _annealed(self, value_range):
    progress = tf.minimum(tf.cast(self.step, tf.float32) / self.anneal_steps, 1.0)
    return value_range[0] + (value_range[1] - value_range[0]) * progress

  def weighting_factors(self, inputs):
    """pi [batch, units], and the keep mask 1[sigmoid(alpha v) > epsilon] with its straight-through gradient
    (None in the scaling form, which has none)."""
    h, domain_index = inputs
    domain = tf.gather(self.domain_embedding, domain_slots(domain_index, self.num_domains))
    v = tf.matmul(tf.concat([h, domain], axis=-1), self.kernel) + self.bias
    scale = self.beta * tf.sigmoid(v)
    if self.form == 'scaling':
      return scale, None
    soft = tf.sigmoid(self._annealed(self.alpha_range) * v)
    keep = soft + tf.stop_gradient(tf.cast(soft > self.epsilon, soft.dtype) - soft)
    return (keep if self.form == 'binarization' else scale * keep), keep

  def sparsity(self, inputs):
    """The fraction of neurons pruned (pi = 0) on this batch."""
    factors, _ = self.weighting_factors(inputs)
    return tf.reduce_mean(tf.cast(tf.equal(factors, 0.0), tf.float32))

  def call(self, inputs, training=None):
    factors, keep = self.weighting_factors(inputs)
    if training:  # a served model updates no metric: serving requests leave the model's state as it is
      pruned = tf.zeros([]) if keep is None else 1.0 - tf.reduce_mean(keep)
      self.add_metric(tf.stop_gradient(pruned), name=f'{self.name}_sparsity')
      if keep is not None:
        r_min, r_max = self.sparsity_range
        outside = tf.nn.relu(r_min - pruned) + tf.nn.relu(pruned - r_max)
        self.add_loss(self._annealed(self.sparsity_weight) * outside)
      self.step.assign_add(1)
    return inputs[0] * factors

  @property
  def adaptation_weights(self):
    return [self.domain_embedding, self.kernel, self.bias]

  def get_config(self):
    config = super().get_config()
    config.update(num_domains=self.num_domains, form=self.form, domain_dim=self.domain_dim, epsilon=self.epsilon,
                  beta=self.beta, alpha_range=list(self.alpha_range), sparsity_range=list(self.sparsity_range),
                  sparsity_weight=list(self.sparsity_weight), anneal_steps=self.anneal_steps)
    return config
