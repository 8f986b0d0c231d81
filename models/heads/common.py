"""Building blocks every head shares: the DNN input, experts, gated mixtures and task towers. Every dense
layer comes from the domain adaptation's `dense`, under a stable name (weights load by name)."""
from typing import List, Sequence

import tf_keras

from models.backbones.mlp import dnn_hidden, flat_features
from models.heads.layers import MixtureOfExperts

GATE_DROPOUT = 0.1


def dnn_input(features):
  """The concatenated field embeddings and numeric features every head's bottom reads."""
  return flat_features(features.fields, features.numeric)


def tower_units(hidden_units: Sequence[int], options: dict) -> List[int]:
  """A task tower's ReLU layers: option `tower_units`, by default one layer as wide as the bottom's last."""
  return list(options.get('tower_units', hidden_units[-1:]))


def experts(x, prefix: str, count: int, hidden_units: Sequence[int], adapt) -> list:
  """`count` expert MLPs `hidden_units` over `x`, named `{prefix}_{e}_{layer}`."""
  return [dnn_hidden(x, hidden_units, adapt, prefix=f'{prefix}_{e}') for e in range(count)]


def mixture(gate_input, expert_outputs: list, name: str, adapt, options: dict):
  """The experts mixed by a softmax gate on `gate_input`; the gate's linear map is the dense layer
  `{name}_gate`, the mixture layer `name`."""
  gate_logits = adapt.dense(len(expert_outputs), None, f'{name}_gate')(gate_input)
  rate = float(options.get('gate_dropout', GATE_DROPOUT))
  return MixtureOfExperts(rate, name=name)([gate_logits] + expert_outputs)


def task_tower(x, task: str, units: Sequence[int], adapt, features):
  """Task `task`'s probability [batch, 1] (the layer named `task`): ReLU layers `{task}_tower_{i}`, the
  one-unit `{task}_logit`, the adaptation's logit hook, a sigmoid."""
  logit = adapt.dense(1, None, f'{task}_logit')(dnn_hidden(x, units, adapt, prefix=f'{task}_tower'))
  return tf_keras.layers.Activation('sigmoid', name=task)(adapt.logit(logit, features, task))
