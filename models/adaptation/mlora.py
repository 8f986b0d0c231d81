"""MLoRA (Yang et al., RecSys'24): a per-domain low-rank adapter on every dense layer of any backbone."""
from models.adaptation.base import DomainAdaptation
from models.layers.lora import DomainLoRADense, lora_rank


class MLoRA(DomainAdaptation):
  """Every dense layer becomes `h = W x + b + B_d A_d x` with rank `max(d_out // alpha, 1)` (option
  `alpha`, default 8); `B_d = 0` at init, so the model starts as its backbone. Option
  `trainable_domains` (domain indices) trains those domains' adapters alone: onboarding a new domain."""
  name = 'mlora'
  option_names = ('alpha', 'trainable_domains')

  def dense(self, units, activation, name, layer_class=DomainLoRADense, **layer_kwargs):
    layer = layer_class(units, num_domains=self.spec.num_domains,
                        rank=lora_rank(units, int(self.options.get('alpha', 8))), activation=activation,
                        freeze_base=self.freeze_base, trainable_domains=self.options.get('trainable_domains'),
                        name=name, **layer_kwargs)
    return lambda x: layer([x, self.domain_index])
