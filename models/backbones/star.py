"""STAR (Sheng et al., CIKM'21): a star-topology MLP with partitioned normalization and an auxiliary network."""
from typing import Sequence

import tf_keras

from models.backbones.mlp import flat_features
from models.layers.star import PartitionedNormalization, StarDense


def star_logit(features, hidden_units: Sequence[int], adapt, auxiliary_units: int = 32):
  """logit = FCN(x) + a(d).

  FCN: hidden layers star FC (`dense_i`, x (W * W_d) + b + b_d) -> partitioned normalization (`pn_i`) ->
  ReLU -> the adaptation's `hidden` hook, then a star FC `logit` layer. a(d): the auxiliary network, the
  domain indicator embedded (`aux_domain_embedding`) through dense layers `aux_0` (ReLU, `auxiliary_units`)
  and `aux_logit`. Every dense layer is the adaptation's (the FCN's as `StarDense`), so MLoRA adapts each.
  The per-domain weights and statistics are backbone weights: the fine-tune stage freezes them with the
  shared ones.
  """
  domains = adapt.spec.num_domains
  star = {'layer_class': StarDense, 'star_domains': domains}
  x = flat_features(features.fields, features.numeric)
  for i, units in enumerate(hidden_units):
    name = f'dense_{i}'
    x = adapt.dense(units, None, name, **star)(x)
    x = PartitionedNormalization(domains, freeze_base=adapt.freeze_base, name=f'pn_{i}')([x, adapt.domain_index])
    x = adapt.hidden(tf_keras.layers.ReLU(name=f'relu_{i}')(x), name)
  logit = adapt.dense(1, None, 'logit', **star)(x)
  domain = tf_keras.layers.Embedding(domains + 1, features.fields.shape[-1],
                                     name='aux_domain_embedding')(adapt.domain_index)
  auxiliary = adapt.dense(1, None, 'aux_logit')(adapt.dense(auxiliary_units, 'relu', 'aux_0')(domain))
  return tf_keras.layers.Add(name='star_logit')([logit, auxiliary])
