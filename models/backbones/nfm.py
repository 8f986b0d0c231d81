"""NFM (He & Chua, 2017): bi-interaction pooling of the field embeddings, then a DNN."""
from typing import Sequence

import tf_keras

from models.backbones.mlp import dnn_logit, flat_features
from models.layers.interactions import BiInteractionPooling


def nfm_logit(features, hidden_units: Sequence[int], adapt):
  """logit = sum_i w_i + DNN([f_BI(e_1..e_F), numeric])."""
  pooled = BiInteractionPooling(name='bi_interaction')(features.fields)
  deep = dnn_logit(flat_features(pooled, features.numeric), hidden_units, adapt)
  return tf_keras.layers.Add(name='nfm_logit')([features.first_order(), deep])
