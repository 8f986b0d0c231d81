"""DCN-v2 (Wang et al., 2021): a stack of full-rank cross layers in parallel with a DNN."""
from typing import Sequence

from models.backbones.mlp import concat_logit, dnn_hidden, flat_features
from models.layers.interactions import CrossLayer


def cross_network(x0, num_layers: int, adapt, prefix: str = 'cross'):
  """x_{l+1} = x_0 * (W_l x_l + b_l) + x_l for l < num_layers, as `tfrs.layers.dcn.Cross` stacks them; each
  W_l (d x d) is the dense map `{prefix}_{l}`."""
  x = x0
  for layer in range(num_layers):
    projected = adapt.dense(x0.shape[-1], None, f'{prefix}_{layer}')(x)
    x = CrossLayer()([x0, x, projected])
  return x


def dcn_logit(features, hidden_units: Sequence[int], adapt, num_cross_layers: int = 3):
  """logit = w^T [cross_network(x_0), DNN(x_0)] with x_0 = [e_1..e_F, numeric]."""
  x0 = flat_features(features.fields, features.numeric)
  return concat_logit([cross_network(x0, num_cross_layers, adapt), dnn_hidden(x0, hidden_units, adapt)], adapt)
