"""PNN* (Qu et al., 2016): a product layer with inner and outer products, then a DNN."""
from typing import Sequence

import tf_keras

from models.backbones.mlp import dnn_logit, flat_features
from models.layers.interactions import ProductLayer


def pnn_logit(features, hidden_units: Sequence[int], adapt):
  """logit = DNN([z, p]) with z = [e_1..e_F, numeric] and p the inner and outer products of the fields. The
  first DNN layer (`dense_0`) is the product layer l_1 = ReLU(W_z z + W_p p + b)."""
  products = ProductLayer(name='products')(features.fields)
  signals = tf_keras.layers.Concatenate(name='product_signals')(
      [flat_features(features.fields, features.numeric), products])
  return dnn_logit(signals, hidden_units, adapt)
