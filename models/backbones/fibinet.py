"""FiBiNET (Huang et al., 2019): SENET field re-weighting and bilinear interactions, then a DNN."""
from typing import Sequence

import tf_keras

from models.backbones.mlp import dnn_logit, flat_features
from models.layers.interactions import BilinearInteraction

BILINEAR_TYPES = ('field_each', 'field_all')


def squeeze_excitation(fields, adapt, reduction_ratio: int):
  """SENET: z_i = mean_k e_ik, a = ReLU(W_2 ReLU(W_1 z)), v_i = a_i e_i. W_1 (F -> F / ratio) and W_2
  (-> F) are the dense maps `senet_squeeze` and `senet_excite`."""
  num_fields = fields.shape[1]
  # channels_first: each field is a channel, pooled over its embedding.
  squeezed = tf_keras.layers.GlobalAveragePooling1D(data_format='channels_first')(fields)
  hidden = adapt.dense(max(num_fields // reduction_ratio, 1), 'relu', 'senet_squeeze')(squeezed)
  weights = adapt.dense(num_fields, 'relu', 'senet_excite')(hidden)
  return tf_keras.layers.Multiply()([fields, tf_keras.layers.Reshape((num_fields, 1))(weights)])


def bilinear_interaction(fields, adapt, bilinear_type: str, name: str):
  """p_ij = (v_i W) * v_j for i < j, [batch, F (F - 1) / 2, d]. "field_all": one W, the dense map `name`
  applied to every field; "field_each": W_i, the dense map `{name}_{i}` applied to field i."""
  num_fields, dim = fields.shape[1], fields.shape[2]
  if bilinear_type == 'field_all':
    projected = adapt.dense(dim, None, name)(fields)
  else:
    projected = tf_keras.layers.Concatenate(axis=1)([
        tf_keras.layers.Reshape((1, dim))(adapt.dense(dim, None, f'{name}_{i}')(fields[:, i]))
        for i in range(num_fields)])
  return BilinearInteraction()([fields, projected])


def fibinet_logit(features, hidden_units: Sequence[int], adapt, reduction_ratio: int = 3,
                  bilinear_type: str = 'field_each'):
  """logit = sum_i w_i + DNN([bilinear(E), bilinear(SENET(E)), numeric]), each bilinear with its own W."""
  if bilinear_type not in BILINEAR_TYPES:
    raise ValueError(f'Unknown bilinear type {bilinear_type!r}; choose one of {BILINEAR_TYPES}.')
  fields = features.fields
  reweighted = squeeze_excitation(fields, adapt, reduction_ratio)
  interactions = tf_keras.layers.Concatenate(axis=1)([
      bilinear_interaction(fields, adapt, bilinear_type, 'bilinear'),
      bilinear_interaction(reweighted, adapt, bilinear_type, 'senet_bilinear')])
  deep = dnn_logit(flat_features(interactions, features.numeric), hidden_units, adapt)
  return tf_keras.layers.Add(name='fibinet_logit')([features.first_order(), deep])
