"""Builds the CTR model on transformed features, and hands the backbone from pretraining to fine-tuning."""
import os
from typing import Dict, Sequence

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models.backbones import BACKBONES  # noqa: E402
from models.features import DOMAIN_INDEX, FeatureSpec, transformed_name  # noqa: E402
from models.layers.lora import DomainLoRADense, lora_rank  # noqa: E402

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
                embedding_dim: int = 16, adapters: bool = False, alpha: int = 8,
                backbone: str = 'mlp') -> tf_keras.Model:
  """The click model: features -> backbone -> click probability.

  With `adapters=False` it is the plain backbone trained in the first stage. With `adapters=True` every
  dense layer carries one MLoRA adapter per domain and its shared weights are frozen (the second stage).
  """
  if backbone not in BACKBONES:
    raise ValueError(f'Unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}.')
  inputs = model_inputs(spec)
  domain_index = inputs[DOMAIN_INDEX]
  num_domains = spec.num_domains if adapters else 0

  def dense(units, activation, name):
    layer = DomainLoRADense(units, num_domains=num_domains, rank=lora_rank(units, alpha), activation=activation,
                            freeze_base=adapters, name=name)
    return lambda x: layer([x, domain_index])

  logit = BACKBONES[backbone](EmbeddedFeatures(inputs, spec, vocab_sizes, embedding_dim), hidden_units, dense)
  probability = tf_keras.layers.Activation('sigmoid', name=PREDICTION)(logit)
  return tf_keras.Model(inputs=inputs, outputs=probability, name=f'{backbone}_mlora' if adapters else backbone)


def load_backbone_weights(model: tf_keras.Model, pretrained: tf_keras.Model) -> None:
  """Copies every pretrained weight into the layer of the same name in `model`.

  The adapters have no counterpart in the backbone and keep their initial values (B = 0), so right
  after this call `model` computes exactly what `pretrained` does.
  """
  for source in pretrained.layers:
    if not source.weights:
      continue
    target = model.get_layer(source.name)
    target_weights = {_short_name(w): w for w in target.weights}
    for weight in source.weights:
      target_weights[_short_name(weight)].assign(weight)


def adapter_weights(model: tf_keras.Model):
  return [w for layer in model.layers if isinstance(layer, DomainLoRADense) for w in layer.adapter_weights]


def _short_name(weight) -> str:
  return weight.name.split('/')[-1].split(':')[0]
