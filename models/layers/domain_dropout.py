"""Domain dropout: trains the unknown-domain path with the model, on a share of the training examples."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402


@tf_keras.utils.register_keras_serializable(package='mdctr')
class DomainDropout(tf_keras.__internal__.layers.BaseRandomLayer):
  """While training, replaces each example's domain index by the unknown-domain index `num_domains` with
  probability `rate`; at inference (and in the exported serving graph) it passes the index through.

  Transform maps a domain outside the known list to `num_domains` (`models.preprocessing.domain_index`):
  the domain embedding's last row, no MLoRA adapter (the shared backbone alone), STAR's shared slot. No
  training example carries that index, so without this layer the unknown-domain row keeps its random
  initial value and an unseen domain is scored by an untrained path. With it, a `rate` share of the
  training examples teaches that path to score "some domain": the unknown-domain row learns the
  traffic-weighted average domain, and onboarding (`models.onboarding`, `models.warm_start`) starts a new
  domain from that trained row. An index already unknown stays unknown.

  Called on the domain index, [batch] or [batch, 1] integers; returns the same shape and dtype. Seeded
  like `tf_keras.layers.Dropout` (with `seed`, the sequence of masks is reproducible). No weights.

  Args:
    rate: Share of training examples whose domain is dropped, in [0, 1).
    num_domains: The number of known domains; the unknown-domain index.
    seed: Optional integer seed of the masks.
  """

  def __init__(self, rate: float, num_domains: int, seed=None, **kwargs):
    super().__init__(seed=seed, **kwargs)
    if not 0.0 <= rate < 1.0:
      raise ValueError(f'DomainDropout rate must be in [0, 1), got {rate}.')
    self.rate = float(rate)
    self.num_domains = int(num_domains)
    self.seed = seed

  def call(self, domain_index, training=None):
    if training is None:
      training = tf_keras.backend.learning_phase()
    if self.rate == 0.0:
      return domain_index

    def dropped():
      drop = self._random_generator.random_uniform(tf.shape(domain_index)) < self.rate
      return tf.where(drop, tf.cast(self.num_domains, domain_index.dtype), domain_index)
    return tf.__internal__.smart_cond.smart_cond(training, dropped, lambda: tf.identity(domain_index))

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(rate=self.rate, num_domains=self.num_domains, seed=self.seed)
    return config
