"""Per-domain weights picked by each example's domain index (STAR's and the `separate` baseline's layers)."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402


def domain_slots(domain_index, num_domains: int):
  """[batch] int32: each example's domain in [0, num_domains), or `num_domains` for an unknown one (an index
  outside the known list), the slot a layer keeps for what every domain shares."""
  domain_index = tf.reshape(tf.cast(domain_index, tf.int32), [-1])
  return tf.where((domain_index >= 0) & (domain_index < num_domains), domain_index, num_domains)


def per_domain_dense(x, slots, kernels, biases):
  """x_i K_{s_i} + c_{s_i} for each example i: `x` [batch, ..., d_in], `slots` [batch] (`domain_slots`),
  `kernels` [S, d_in, units], `biases` [S, units]. The batch is split by slot, so each example costs one
  matmul whatever the number of domains."""
  num_slots = kernels.shape[0]
  parts = tf.dynamic_partition(x, slots, num_slots)
  rows = tf.dynamic_partition(tf.range(tf.shape(x)[0]), slots, num_slots)
  outputs = [tf.tensordot(part, kernels[s], axes=1) + biases[s] for s, part in enumerate(parts)]
  return tf.dynamic_stitch(rows, outputs)
