"""AutoInt+ (Song et al., 2019): stacked multi-head self-attention over the field embeddings, in parallel
with a DNN."""
from typing import Sequence

import tf_keras

from models.backbones.mlp import concat_logit, dnn_hidden, flat_features
from models.layers.interactions import MultiHeadSelfAttention


def interacting_layer(fields, adapt, num_heads: int, head_units: int, name: str):
  """AutoInt's interacting layer: e^res_m = ReLU(MultiHeadSelfAttention(e)_m + W_res e_m), [batch, F, d]
  -> [batch, F, num_heads * head_units]. W_q, W_k, W_v (all heads side by side) and W_res are the dense
  maps `{name}_query`, `{name}_key`, `{name}_value`, `{name}_residual`, each applied to every field."""
  units = num_heads * head_units
  query, key, value = (adapt.dense(units, None, f'{name}_{role}')(fields) for role in ('query', 'key', 'value'))
  attended = MultiHeadSelfAttention(num_heads)([query, key, value])
  residual = adapt.dense(units, None, f'{name}_residual')(fields)
  return tf_keras.layers.ReLU()(tf_keras.layers.Add()([attended, residual]))


def autoint_logit(features, hidden_units: Sequence[int], adapt, num_layers: int = 3, num_heads: int = 2,
                  head_units: int = 8):
  """logit = w^T [the last interacting layer's fields, DNN([e_1..e_F, numeric])]."""
  x = features.fields
  for layer in range(num_layers):
    x = interacting_layer(x, adapt, num_heads, head_units, f'attention_{layer}')
  deep = dnn_hidden(flat_features(features.fields, features.numeric), hidden_units, adapt)
  return concat_logit([tf_keras.layers.Flatten()(x), deep], adapt)
