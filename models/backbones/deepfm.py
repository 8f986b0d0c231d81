"""DeepFM (Guo et al., 2017): first-order terms + factorization machine + DNN, on shared embeddings."""
from typing import Sequence

import tf_keras

from models.backbones.mlp import dnn_logit, flat_features
from models.layers.interactions import FactorizationMachine


def deepfm_logit(features, hidden_units: Sequence[int], adapt):
  """logit = sum_i w_i + FM(e_1..e_F) + DNN([e_1..e_F, numeric])."""
  fm = FactorizationMachine(name='fm')(features.fields)
  deep = dnn_logit(flat_features(features.fields, features.numeric), hidden_units, adapt)
  return tf_keras.layers.Add(name='deepfm_logit')([features.first_order(), fm, deep])
