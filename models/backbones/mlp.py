"""The embedding + MLP backbone."""
from typing import Sequence

import tf_keras


def flat_features(fields, numeric):
  """All field embeddings side by side, then the numeric features: the DNN input."""
  flat = tf_keras.layers.Flatten(name='flat_fields')(fields)
  return flat if numeric is None else tf_keras.layers.Concatenate(name='dnn_input')([flat, numeric])


def dnn_logit(x, hidden_units: Sequence[int], dense):
  """ReLU layers `hidden_units`, then a one-unit logit layer. Layer names are stable (`dense_0`, ...,
  `logit`): the fine-tune stage finds the pretrained weights by them."""
  for i, units in enumerate(hidden_units):
    x = dense(units, 'relu', f'dense_{i}')(x)
  return dense(1, None, 'logit')(x)


def mlp_logit(features, hidden_units: Sequence[int], dense):
  """The plain DNN over every embedding and numeric feature."""
  return dnn_logit(flat_features(features.fields, features.numeric), hidden_units, dense)
