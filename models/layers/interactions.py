"""Feature-interaction layers over stacked field embeddings [batch, fields, dim]."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402


@tf_keras.utils.register_keras_serializable(package='mdctr')
class FactorizationMachine(tf_keras.layers.Layer):
  """Second-order factorization machine term (Rendle, 2010), in O(fields * dim):

      y = sum_{i<j} <e_i, e_j> = 1/2 * sum_k [ (sum_i e_ik)^2 - sum_i e_ik^2 ]

  Input [batch, fields, dim]; output [batch, 1].
  """

  def call(self, fields):
    square_of_sum = tf.square(tf.reduce_sum(fields, axis=1))
    sum_of_squares = tf.reduce_sum(tf.square(fields), axis=1)
    return 0.5 * tf.reduce_sum(square_of_sum - sum_of_squares, axis=1, keepdims=True)
