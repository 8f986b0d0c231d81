"""AdaSparse (Yang et al., CIKM'22) as a domain adaptation: a domain-aware pruner on every DNN hidden layer."""
from typing import Dict

import tf_keras

from models.adaptation.base import DomainAdaptation
from models.layers.adasparse import DomainPruner


class AdaSparse(DomainAdaptation):
  """Each DNN hidden layer's output h becomes h * pi, pi from a `DomainPruner` fed by h and the pruner's own
  domain embedding. Pruners start at pi = 1: a fine-tuned model starts as its pretrained backbone.

  Options: `adasparse_form` ('binarization', 'scaling' or 'fusion'; default 'fusion'), `adasparse_epsilon`
  (the binarization threshold, 0.25), `sparsity_range` (the paper's [0.15, 0.25]), `sparsity_weight` (the
  regularizer's weight rises from the first value, the paper's 0.01, to the second: [0.01, 1.0]),
  `anneal_steps` (over which alpha goes from the paper's 0.1 to 5 and the weight rises: 1000).
  """
  name = 'adasparse'
  option_names = ('adasparse_form', 'adasparse_epsilon', 'sparsity_range', 'sparsity_weight', 'anneal_steps')

  def __init__(self, spec, domain_index, freeze_base=False, options=None):
    super().__init__(spec, domain_index, freeze_base, options)
    options = self.options
    self.pruner_config = dict(form=options.get('adasparse_form', 'fusion'),
                              epsilon=float(options.get('adasparse_epsilon', 0.25)),
                              sparsity_range=tuple(options.get('sparsity_range', (0.15, 0.25))),
                              sparsity_weight=tuple(options.get('sparsity_weight', (0.01, 1.0))),
                              anneal_steps=int(options.get('anneal_steps', 1000)))

  def hidden(self, x, name):
    pruner = DomainPruner(self.spec.num_domains, name=f'adasparse_{name}', **self.pruner_config)
    return pruner([x, self.domain_index])


def layer_sparsity(model: tf_keras.Model, features) -> Dict[str, float]:
  """The fraction of neurons each of `model`'s pruners prunes on the batch `features`, by pruner name."""
  pruners = {layer.name: layer for layer in model.layers if isinstance(layer, DomainPruner)}
  pruner_inputs = tf_keras.Model(model.input, {name: pruner.input for name, pruner in pruners.items()})(features)
  return {name: float(pruner.sparsity(pruner_inputs[name])) for name, pruner in pruners.items()}
