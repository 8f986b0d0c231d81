"""The baselines a domain adaptation is compared with, beside `none` (one shared model, the domain a feature):
`no_domain` (one shared model that never sees the domain) and `separate` (one model per domain)."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402

from models.adaptation.base import DomainAdaptation  # noqa: E402
from models.features import DOMAIN_INDEX  # noqa: E402
from models.layers.separate import SeparateDense, SeparateEmbedding  # noqa: E402


class NoDomain(DomainAdaptation):
  """One shared model with no domain input: the domain field is left out of the embedded features and the
  first-order terms, and every per-domain layer of the backbone (STAR's) scores every example as an unknown
  domain, i.e. by its shared part. Its pretrained backbone is a `no_domain` one (a `none` backbone's first
  layer reads the domain embedding too)."""
  name = 'no_domain'

  def __init__(self, spec, domain_index, freeze_base=False, options=None):
    super().__init__(spec, domain_index, freeze_base, options)
    self.domain_index = tf.zeros_like(domain_index) + spec.num_domains

  def features(self, features):
    return features.rebuild(exclude=(DOMAIN_INDEX,))


class Separate(DomainAdaptation):
  """One model per domain: every dense layer (`SeparateDense`) and every embedding table (`SeparateEmbedding`)
  has a copy per domain that trains on that domain's examples only; nothing trained is shared. Each copy
  starts from the same frozen point, the pretrained backbone in the fine-tune stage (each domain's model is
  then the shared model fine-tuned on that domain alone) or a random initialization end to end, and an
  unknown domain is scored by that starting point. Weights a backbone keeps outside its dense layers and
  embeddings (none in mlp and deepfm; STAR's normalization and auxiliary network) stay shared."""
  name = 'separate'

  def features(self, features):
    return features.rebuild(embedding=self._embedding)

  def _embedding(self, size, dim, mask_zero, name):
    layer = SeparateEmbedding(size, dim, self.spec.num_domains, mask_zero=mask_zero, name=name)
    return lambda ids: layer([ids, self.domain_index])

  def dense(self, units, activation, name, layer_class=None, **layer_kwargs):
    del layer_class, layer_kwargs  # one plain dense layer per domain, whatever the backbone's
    layer = SeparateDense(units, self.spec.num_domains, activation=activation, name=name)
    return lambda x: layer([x, self.domain_index])
