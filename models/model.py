"""Builds the CTR model on transformed features, and hands the backbone from pretraining to fine-tuning."""
import os
from typing import Dict, Optional, Sequence

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models.adaptation import ADAPTATIONS  # noqa: E402
from models.backbones import BACKBONES  # noqa: E402
from models.features import DOMAIN_INDEX, FeatureSpec, transformed_name  # noqa: E402

PREDICTION = 'ctr'


def model_inputs(spec: FeatureSpec) -> Dict[str, tf_keras.Input]:
  """One Keras input per transformed feature the model reads."""
  inputs = {DOMAIN_INDEX: tf_keras.Input(shape=(), name=DOMAIN_INDEX, dtype=tf.int64)}
  for column in spec.categorical:
    inputs[transformed_name(column)] = tf_keras.Input(shape=(), name=transformed_name(column), dtype=tf.int64)
  for column, max_values in spec.multivalent.items():
    inputs[transformed_name(column)] = tf_keras.Input(
        shape=(max_values,), name=transformed_name(column), dtype=tf.int64)
  for column in spec.numeric:
    inputs[transformed_name(column)] = tf_keras.Input(shape=(), name=transformed_name(column), dtype=tf.float32)
  return inputs


class EmbeddedFeatures:
  """The shared feature front every backbone reads.

  `fields`: [batch, F, dim], one embedding per categorical field (the domain among them, multivalent
  fields mean-pooled over their non-padding values); `numeric`: [batch, n] z-scored numeric features, or
  None. `first_order()` adds the per-field scalar weights sum_i w_i, [batch, 1], for backbones with a
  linear part.
  """

  def __init__(self, inputs, spec: FeatureSpec, vocab_sizes: Dict[str, int], embedding_dim: int):
    # (input name, vocabulary size) of every categorical field, single- and multi-valued.
    self._vocabularies = [(DOMAIN_INDEX, spec.num_domains + 1)] + [
        (transformed_name(c), vocab_sizes[c]) for c in spec.categorical + list(spec.multivalent)]
    self._inputs = inputs
    fields = [self._embed(name, size, embedding_dim, 'embedding') for name, size in self._vocabularies]
    self.fields = tf_keras.layers.Concatenate(axis=1, name='fields')(fields)
    numeric = [tf_keras.layers.Reshape((1,))(inputs[transformed_name(c)]) for c in spec.numeric]
    self.numeric = tf_keras.layers.Concatenate(name='numeric')(numeric) if len(numeric) > 1 else (
        numeric[0] if numeric else None)

  def _embed(self, name, size, dim, prefix):
    """[batch, 1, dim]: the field's embedding, averaged over values for a multivalent field (0 pads)."""
    ids = self._inputs[name]
    if len(ids.shape) == 1:
      return tf_keras.layers.Reshape((1, dim))(tf_keras.layers.Embedding(size, dim, name=f'{prefix}_{name}')(ids))
    embedded = tf_keras.layers.Embedding(size, dim, mask_zero=True, name=f'{prefix}_{name}')(ids)
    pooled = tf_keras.layers.GlobalAveragePooling1D(name=f'pool_{prefix}_{name}')(embedded)
    return tf_keras.layers.Reshape((1, dim))(pooled)

  def first_order(self):
    weights = [self._embed(name, size, 1, 'linear') for name, size in self._vocabularies]
    return tf_keras.layers.Flatten()(tf_keras.layers.Add(name='first_order')(weights))


def build_model(spec: FeatureSpec, vocab_sizes: Dict[str, int], hidden_units: Sequence[int] = (256, 128, 64),
                embedding_dim: int = 16, backbone: str = 'mlp', adaptation: str = 'none',
                freeze_backbone: bool = False, options: Optional[dict] = None) -> tf_keras.Model:
  """The click model: features -> backbone (built through a domain adaptation) -> click probability.

  The first stage trains `adaptation='none'` (one shared model, the domain an embedded feature) or a
  method trained end to end; the second stage builds the same backbone with `adaptation='mlora'` (or
  another method) and `freeze_backbone=True`: every backbone dense weight is frozen, the method's own
  weights and the embeddings train. `options` holds method settings (MLoRA's `alpha`, ...).
  """
  if backbone not in BACKBONES:
    raise ValueError(f'Unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}.')
  if adaptation not in ADAPTATIONS:
    raise ValueError(f'Unknown domain adaptation {adaptation!r}; choose one of {sorted(ADAPTATIONS)}.')
  inputs = model_inputs(spec)
  adapt = ADAPTATIONS[adaptation](spec, inputs[DOMAIN_INDEX], freeze_base=freeze_backbone, options=options)
  features = adapt.features(EmbeddedFeatures(inputs, spec, vocab_sizes, embedding_dim))
  logit = adapt.logit(BACKBONES[backbone](features, hidden_units, adapt), features)
  probability = tf_keras.layers.Activation('sigmoid', name=PREDICTION)(logit)
  name = backbone if adaptation == 'none' else f'{backbone}_{adaptation}'
  return tf_keras.Model(inputs=inputs, outputs=probability, name=name)


def load_backbone_weights(model: tf_keras.Model, pretrained: tf_keras.Model) -> None:
  """Copies every pretrained weight into the layer of the same name in `model`.

  The adaptation's weights have no counterpart in the backbone and keep their initial values (MLoRA's
  B = 0, ...), so right after this call `model` computes exactly what `pretrained` does.
  """
  for source in pretrained.layers:
    if not source.weights:
      continue
    target = model.get_layer(source.name)
    target_weights = {_short_name(w): w for w in target.weights}
    for weight in source.weights:
      target_weights[_short_name(weight)].assign(weight)


def adaptation_weights(model: tf_keras.Model):
  """The weights a domain-adaptation method added to the backbone (MLoRA's A and B, ...)."""
  return [w for layer in model.layers for w in getattr(layer, 'adaptation_weights', [])]


def _short_name(weight) -> str:
  return weight.name.split('/')[-1].split(':')[0]
