"""PEPNet (Chang et al., KDD'23) as a domain adaptation: EPNet gates the embeddings, PPNet every hidden layer."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models.adaptation.base import DomainAdaptation  # noqa: E402
from models.features import DOMAIN_INDEX, transformed_name  # noqa: E402
from models.layers.pepnet import GateNU  # noqa: E402


class PEPNet(DomainAdaptation):
  """EPNet: a `GateNU` on the domain's embedding and the stop-gradient of every field embedding scales each
  field of the embedding layer (`fields` [batch, F, d] times a per-field gate [batch, F]). PPNet: for every
  DNN hidden layer a `GateNU` on the persona, the stop-gradient embeddings of the persona fields and the
  domain's embedding, scales that layer's output. Gates start at 1: a fine-tuned model starts as its
  pretrained backbone.

  The domain's embedding is the model's domain field (the paper's domain-side features, trained through
  the gates). The feature contract names a user column but no item column, so the persona fields are
  option `persona_fields` (columns), by default the user column when it is a model feature; with none,
  PPNet's gates see the domain alone. Option `gate_hidden_units`: the Gate NUs' bottleneck (default 64).
  """
  name = 'pepnet'
  option_names = ('gate_hidden_units', 'persona_fields')

  def __init__(self, spec, domain_index, freeze_base=False, options=None):
    super().__init__(spec, domain_index, freeze_base, options)
    self.gate_hidden_units = int(self.options.get('gate_hidden_units', 64))
    model_columns = spec.categorical + list(spec.multivalent)
    self.persona_fields = list(self.options.get('persona_fields', [spec.user] if spec.user in model_columns else []))
    unknown = [c for c in self.persona_fields if c not in model_columns]
    if unknown:
      raise ValueError(f'PEPNet persona fields {unknown} are not categorical features of the model.')

  def features(self, features):
    domain = features.field(DOMAIN_INDEX)
    fields = features.fields
    num_fields = fields.shape[1]
    epnet_input = tf_keras.layers.Concatenate(name='epnet_input')(
        [domain, tf.stop_gradient(tf_keras.layers.Flatten()(fields))])
    gate = GateNU(num_fields, self.gate_hidden_units, name='epnet_gate')(epnet_input)
    scaled = tf_keras.layers.Multiply(name='epnet_fields')([fields, tf_keras.layers.Reshape((num_fields, 1))(gate)])
    # PPNet's input, for the hidden layers the backbone builds next.
    persona = [tf.stop_gradient(features.field(transformed_name(c))) for c in self.persona_fields]
    self._persona = tf_keras.layers.Concatenate(name='ppnet_input')(persona + [domain]) if persona else domain
    return features.with_fields(scaled)

  def hidden(self, x, name):
    gate = GateNU(int(x.shape[-1]), self.gate_hidden_units, name=f'ppnet_{name}')(self._persona)
    return tf_keras.layers.Multiply(name=f'ppnet_{name}_output')([x, gate])
