"""xDeepFM (Lian et al., 2018): linear terms, a Compressed Interaction Network and a DNN."""
from typing import Sequence

import tf_keras

from models.backbones.mlp import concat_logit, dnn_hidden, flat_features
from models.layers.interactions import CompressedInteraction


def compressed_interaction_network(fields, layer_units: Sequence[int], adapt):
  """The CIN: X^k = W^k (X^{k-1} outer X^0), each W^k the dense map `cin_{k}` with `layer_units[k]` feature
  maps; returns each layer's feature maps pooled over the embedding, [batch, H_k] per layer."""
  x0 = tf_keras.layers.Permute((2, 1))(fields)  # [batch, dim, F]: feature maps on the axis the maps act on
  x, pooled = x0, []
  for k, units in enumerate(layer_units):
    x = adapt.dense(units, None, f'cin_{k}')(CompressedInteraction()([x, x0]))
    # The paper's sum pooling over dim, divided by dim: the logit layer's weights absorb the constant.
    pooled.append(tf_keras.layers.GlobalAveragePooling1D()(x))
  return pooled


def xdeepfm_logit(features, hidden_units: Sequence[int], adapt, cin_units: Sequence[int] = (128, 128)):
  """logit = sum_i w_i + w^T [p^1..p^K, DNN([e_1..e_F, numeric])], p^k the k-th CIN layer pooled."""
  cin = compressed_interaction_network(features.fields, cin_units, adapt)
  deep = dnn_hidden(flat_features(features.fields, features.numeric), hidden_units, adapt)
  return tf_keras.layers.Add(name='xdeepfm_logit')([features.first_order(), concat_logit(cin + [deep], adapt)])
