"""Feature-interaction layers over stacked field embeddings [batch, fields, dim].

None of them owns a dense map: where an interaction has one (attention projections, the bilinear W, the
CIN's compression, the cross layer's W), the backbone builds it with `DomainAdaptation.dense` and passes
its output in, so MLoRA and the other methods reach every dense map of every backbone.
"""
import itertools
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402


def field_pairs(num_fields: int):
  """The indices (i, j) of every field pair i < j, as two lists."""
  pairs = list(itertools.combinations(range(num_fields), 2))
  return [i for i, _ in pairs], [j for _, j in pairs]


def bi_interaction(fields):
  """sum_{i<j} e_i * e_j = 1/2 [ (sum_i e_i)^2 - sum_i e_i^2 ], elementwise: [batch, F, dim] -> [batch, dim]."""
  square_of_sum = tf.square(tf.reduce_sum(fields, axis=1))
  sum_of_squares = tf.reduce_sum(tf.square(fields), axis=1)
  return 0.5 * (square_of_sum - sum_of_squares)


@tf_keras.utils.register_keras_serializable(package='mdctr')
class FactorizationMachine(tf_keras.layers.Layer):
  """Second-order factorization machine term (Rendle, 2010), in O(fields * dim):

      y = sum_{i<j} <e_i, e_j> = 1/2 * sum_k [ (sum_i e_ik)^2 - sum_i e_ik^2 ]

  Input [batch, fields, dim]; output [batch, 1].
  """

  def call(self, fields):
    return tf.reduce_sum(bi_interaction(fields), axis=1, keepdims=True)


@tf_keras.utils.register_keras_serializable(package='mdctr')
class BiInteractionPooling(tf_keras.layers.Layer):
  """NFM's bi-interaction pooling (He & Chua, 2017): the FM's pairwise products kept as a vector,

      f_BI = sum_{i<j} e_i * e_j = 1/2 [ (sum_i e_i)^2 - sum_i e_i^2 ]

  Input [batch, fields, dim]; output [batch, dim].
  """

  def call(self, fields):
    return bi_interaction(fields)


@tf_keras.utils.register_keras_serializable(package='mdctr')
class CrossLayer(tf_keras.layers.Layer):
  """The cross layer of DCN-v2 (Wang et al., 2021), given its full-rank linear map's output:

      x_{l+1} = x_0 * (W x_l + b) + x_l

  Called on `[x_0, x_l, W x_l + b]`, each [batch, d]; output [batch, d].
  """

  def call(self, inputs):
    x0, x, projected = inputs
    return x0 * projected + x


@tf_keras.utils.register_keras_serializable(package='mdctr')
class MultiHeadSelfAttention(tf_keras.layers.Layer):
  """AutoInt's multi-head self-attention over fields (Song et al., 2019), given the projections:

      a^h_{m,k} = softmax_k <W^h_q e_m, W^h_k e_k>,   e~_m = concat_h sum_k a^h_{m,k} W^h_v e_k

  Called on `[query, key, value]`, each [batch, fields, heads * d'] (heads side by side on the last axis);
  output [batch, fields, heads * d']. Dot products are unscaled, as in the paper.
  """

  def __init__(self, num_heads, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads

  def call(self, inputs):
    query, key, value = (self._split_heads(x) for x in inputs)
    weights = tf.nn.softmax(tf.matmul(query, key, transpose_b=True), axis=-1)
    attended = tf.transpose(tf.matmul(weights, value), [0, 2, 1, 3])  # [batch, fields, heads, d']
    return tf.reshape(attended, [-1, inputs[0].shape[1], inputs[0].shape[2]])

  def _split_heads(self, x):
    """[batch, fields, heads * d'] -> [batch, heads, fields, d']."""
    heads = tf.reshape(x, [-1, x.shape[1], self.num_heads, x.shape[2] // self.num_heads])
    return tf.transpose(heads, [0, 2, 1, 3])

  def get_config(self):
    config = super().get_config()
    config.update(num_heads=self.num_heads)
    return config


@tf_keras.utils.register_keras_serializable(package='mdctr')
class BilinearInteraction(tf_keras.layers.Layer):
  """FiBiNET's bilinear interaction (Huang et al., 2019), given the projected fields v_i W:

      p_ij = (v_i W) * v_j,   i < j

  with one W for all fields ("field-all") or one W_i per field ("field-each"). Called on
  `[fields, projected]`, both [batch, F, dim]; output [batch, F (F - 1) / 2, dim].
  """

  def call(self, inputs):
    fields, projected = inputs
    left, right = field_pairs(fields.shape[1])
    return tf.gather(projected, left, axis=1) * tf.gather(fields, right, axis=1)


@tf_keras.utils.register_keras_serializable(package='mdctr')
class ProductLayer(tf_keras.layers.Layer):
  """The quadratic signals of PNN's product layer (Qu et al., 2016), inner and outer ("PNN*"):

      inner p_ij = <e_i, e_j>, i < j;   outer p = f f^T with f = sum_i e_i (the paper's superposition)

  Input [batch, F, dim]; output [batch, F (F - 1) / 2 + dim * dim]: the inner products, then the outer
  product matrix row by row. The product layer's learned maps W_z z + W_p p are the first DNN layer over
  [z, p], so they are ordinary dense maps.
  """

  def call(self, fields):
    left, right = field_pairs(fields.shape[1])
    inner = tf.reduce_sum(tf.gather(fields, left, axis=1) * tf.gather(fields, right, axis=1), axis=2)
    superposition = tf.reduce_sum(fields, axis=1)
    outer = superposition[:, :, None] * superposition[:, None, :]
    return tf.concat([inner, tf.reshape(outer, [-1, fields.shape[2] ** 2])], axis=1)


@tf_keras.utils.register_keras_serializable(package='mdctr')
class CompressedInteraction(tf_keras.layers.Layer):
  """The interaction step of xDeepFM's Compressed Interaction Network (Lian et al., 2018):

      Z^k_{d,(h,j)} = X^{k-1}_{h,d} X^0_{j,d},   then   X^k_{h',d} = sum_{h,j} W^{k,h'}_{h,j} Z^k_{d,(h,j)}

  Feature maps lie on the last axis, so the compression W^k (built by the backbone) is a dense map of the
  last axis, shared over the embedding positions d. Called on `[x_prev, x_0]`, [batch, dim, H] and
  [batch, dim, m]; output [batch, dim, H * m].
  """

  def call(self, inputs):
    previous, x0 = inputs
    outer = previous[:, :, :, None] * x0[:, :, None, :]
    return tf.reshape(outer, [-1, x0.shape[1], previous.shape[2] * x0.shape[2]])
