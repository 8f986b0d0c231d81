"""The domain-adaptation interface every backbone is built through, and its neutral form.

A backbone asks its `DomainAdaptation` for every dense layer (`dense`; `hidden_dense` for a DNN hidden layer),
passes each DNN hidden layer's output through `hidden`, and the model builder lets it rework the embedded features (`features`) and the
final logit (`logit`). Backbones never know which method they carry: MLoRA, STAR, AdaSparse and PEPNet are
subclasses that override some of these hooks.
"""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

from models.layers.lora import DomainLoRADense  # noqa: E402


class DomainAdaptation:
  """No domain-specific parameters: one shared model, the domain an ordinary embedded feature.

  Args:
    spec: The dataset's FeatureSpec (domains, user field, ...).
    domain_index: The model's domain-index input, [batch] int64.
    freeze_base: Makes every backbone dense weight non-trainable (the fine-tune stage); the adaptation's
      own weights stay trainable.
    options: Method settings (e.g. MLoRA's `alpha`); each method reads its own keys and ignores others.
  """
  name = 'none'
  option_names = ()  # the `options` keys the method reads

  def __init__(self, spec, domain_index, freeze_base: bool = False, options: dict = None):
    self.spec = spec
    self.domain_index = domain_index
    self.freeze_base = freeze_base
    self.options = dict(options or {})

  def features(self, features):
    """The embedded features the backbone reads (an `EmbeddedFeatures`)."""
    return features

  def dense(self, units: int, activation, name: str, layer_class=DomainLoRADense, **layer_kwargs):
    """A dense layer of the backbone, as a function of its input [batch, d_in] -> [batch, units]. The
    layer is named `name` and keeps the weight names `kernel` and `bias`, so a pretrained backbone loads
    into it by name. A backbone with its own dense topology passes its `DomainLoRADense` subclass and that
    class's own arguments (the STAR backbone: `StarDense`, `star_domains`)."""
    layer = layer_class(units, activation=activation, freeze_base=self.freeze_base, name=name, **layer_kwargs)
    return lambda x: layer([x, self.domain_index])

  def hidden_dense(self, units: int, activation, name: str):
    """A DNN hidden layer (`models.backbones.mlp.dnn_hidden`), as `dense` gives it unless a method treats the
    hidden layers apart from the backbone's other dense maps (MLoRA's `placement='hidden'`)."""
    return self.dense(units, activation, name)

  def hidden(self, x, name: str):
    """Applied to the output of each DNN hidden layer `name` (after its activation)."""
    return x

  def logit(self, logit, features, task: str = ''):
    """The model's final logit [batch, 1], given the backbone's; `task` names it in a multi-task model."""
    return logit
