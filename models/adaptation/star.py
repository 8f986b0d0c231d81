"""STAR (Sheng et al., CIKM'21) as a domain adaptation of any backbone."""
import tf_keras

from models.adaptation.base import DomainAdaptation
from models.layers.star import AuxiliaryDomainNetwork, StarDense


class Star(DomainAdaptation):
  """Every dense layer becomes a star-topology FC layer, `x (W * W_d) + b + b_d` (`StarDense`, W_d = 1 and
  b_d = 0 at init), whatever layer the backbone asked for, and STAR's auxiliary network on the domain adds
  its logit (zero at init): a fine-tuned model starts as its pretrained backbone.

  Partitioned normalization is left to the `star` backbone: on a pretrained backbone without normalization
  it cannot start as the identity (it normalizes whatever the pretrained layer computed), so the model
  would not start where pretraining ended.
  """
  name = 'star'

  def dense(self, units, activation, name, layer_class=None, **layer_kwargs):
    del layer_class, layer_kwargs  # the backbone's own dense layer gives way to STAR's
    layer = StarDense(units, star_domains=self.spec.num_domains, adapter=True, activation=activation,
                      freeze_base=self.freeze_base, name=name)
    return lambda x: layer([x, self.domain_index])

  def logit(self, logit, features, task: str = ''):
    suffix = f'_{task}' if task else ''  # one auxiliary network per task of a multi-task model
    auxiliary = AuxiliaryDomainNetwork(self.spec.num_domains, name=f'star_aux{suffix}')(self.domain_index)
    return tf_keras.layers.Add(name=f'star_aux_logit{suffix}')([logit, auxiliary])
