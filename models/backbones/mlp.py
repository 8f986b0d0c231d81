"""The embedding + MLP backbone."""
from typing import Sequence

import tf_keras


def flat_features(fields, numeric):
  """All field embeddings (or interaction vectors, [batch, ...]) side by side, then the numeric features:
  the DNN input."""
  flat = tf_keras.layers.Flatten(name='flat_fields')(fields)
  return flat if numeric is None else tf_keras.layers.Concatenate(name='dnn_input')([flat, numeric])


def dnn_hidden(x, hidden_units: Sequence[int], adapt, prefix: str = 'dense'):
  """ReLU layers `hidden_units`, each followed by the adaptation's `hidden` hook. Layer names are stable
  (`dense_0`, `dense_1`, ...): the fine-tune stage finds the pretrained weights by them."""
  for i, units in enumerate(hidden_units):
    name = f'{prefix}_{i}'
    x = adapt.hidden(adapt.hidden_dense(units, 'relu', name)(x), name)
  return x


def dnn_logit(x, hidden_units: Sequence[int], adapt):
  """`dnn_hidden`, then a one-unit `logit` layer."""
  return adapt.dense(1, None, 'logit')(dnn_hidden(x, hidden_units, adapt))


def concat_logit(parts, adapt):
  """One `logit` layer over several parts side by side (an interaction network's output and the DNN's
  last hidden layer): the parallel structure of DCN, AutoInt+ and xDeepFM."""
  return adapt.dense(1, None, 'logit')(tf_keras.layers.Concatenate(name='logit_input')(parts))


def mlp_logit(features, hidden_units: Sequence[int], adapt):
  """The plain DNN over every embedding and numeric feature."""
  return dnn_logit(flat_features(features.fields, features.numeric), hidden_units, adapt)
