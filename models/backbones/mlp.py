"""The embedding + MLP backbone, every dense layer a `DomainLoRADense`."""
from typing import Sequence

from models.layers.lora import DomainLoRADense, lora_rank


def mlp_logit(x, domain_index, hidden_units: Sequence[int], num_domains: int, alpha: int, freeze_base: bool):
  """ReLU hidden layers `hidden_units` then a one-unit logit layer, each with MLoRA adapters when
  `num_domains` > 0. Layer names are stable (`dense_0`, ..., `logit`): the fine-tune stage finds the
  pretrained weights by them."""
  def dense(units, activation, name):
    return DomainLoRADense(units, num_domains=num_domains, rank=lora_rank(units, alpha), activation=activation,
                           freeze_base=freeze_base, name=name)

  for i, units in enumerate(hidden_units):
    x = dense(units, 'relu', f'dense_{i}')([x, domain_index])
  return dense(1, None, 'logit')([x, domain_index])
