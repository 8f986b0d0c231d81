"""MLoRA (Yang et al., RecSys'24): a per-domain low-rank adapter on the dense layers of any backbone."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tf_keras  # noqa: E402

from models.adaptation.base import DomainAdaptation  # noqa: E402
from models.layers.lora import DomainBias, DomainLoRADense, lora_rank  # noqa: E402

PLACEMENTS = ('all', 'hidden')


class MLoRA(DomainAdaptation):
  """Dense layers become `h = W x + b + B_d A_d x` with rank `max(d_out // alpha, 1)` (option `alpha`,
  default 8); `B_d = 0` at init, so the model starts as its backbone.

  Options, the recipe's named settings: `placement` `all` (default) puts an adapter on every dense map of
  the backbone (interaction layers and the logit too), `hidden` on the DNN hidden layers alone, as the
  authors' code does (the other maps stay the backbone's); `domain_bias` adds a trained per-domain bias to
  the logit (`DomainBias`, zero at init), the authors' other per-domain weight. `trainable_domains`
  (domain indices) trains those domains' adapters alone: onboarding a new domain.
  """
  name = 'mlora'
  option_names = ('alpha', 'trainable_domains', 'placement', 'domain_bias')

  def __init__(self, spec, domain_index, freeze_base=False, options=None):
    super().__init__(spec, domain_index, freeze_base, options)
    if self.options.get('placement', 'all') not in PLACEMENTS:
      raise ValueError(f'MLoRA placement {self.options["placement"]!r}: choose one of {PLACEMENTS}.')

  def dense(self, units, activation, name, layer_class=DomainLoRADense, **layer_kwargs):
    adapted = self.options.get('placement', 'all') == 'all'
    return self._dense(units, activation, name, adapted, layer_class, **layer_kwargs)

  def hidden_dense(self, units, activation, name):
    return self._dense(units, activation, name, adapted=True)

  def _dense(self, units, activation, name, adapted, layer_class=DomainLoRADense, **layer_kwargs):
    layer = layer_class(units, num_domains=self.spec.num_domains if adapted else 0,
                        rank=lora_rank(units, int(self.options.get('alpha', 8))), activation=activation,
                        freeze_base=self.freeze_base, trainable_domains=self.options.get('trainable_domains'),
                        name=name, **layer_kwargs)
    return lambda x: layer([x, self.domain_index])

  def logit(self, logit, features, task: str = ''):
    if not self.options.get('domain_bias'):
      return logit
    suffix = f'_{task}' if task else ''
    bias = DomainBias(self.spec.num_domains, name=f'mlora_domain_bias{suffix}')(self.domain_index)
    return tf_keras.layers.Add(name=f'mlora_biased_logit{suffix}')([logit, bias])
