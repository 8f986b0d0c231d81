"""Wide & Deep (Cheng et al., 2016): a linear model and a DNN trained jointly on shared embeddings."""
from typing import Sequence

import tf_keras

from models.backbones.mlp import dnn_logit, flat_features


def wdl_logit(features, hidden_units: Sequence[int], adapt):
  """logit = sum_i w_i + DNN([e_1..e_F, numeric]): the wide part is the per-field linear weights (a linear
  model over the one-hot categorical fields), the deep part the MLP."""
  deep = dnn_logit(flat_features(features.fields, features.numeric), hidden_units, adapt)
  return tf_keras.layers.Add(name='wdl_logit')([features.first_order(), deep])
