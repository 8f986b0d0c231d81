"""Builds the CTR model on transformed features, and hands the backbone from pretraining to fine-tuning."""
import os
from typing import Dict, Sequence

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models.backbones.mlp import mlp_logit  # noqa: E402
from models.features import DOMAIN_INDEX, FeatureSpec, transformed_name  # noqa: E402
from models.layers.lora import DomainLoRADense  # noqa: E402

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


def embed_features(inputs, spec: FeatureSpec, vocab_sizes: Dict[str, int], embedding_dim: int):
  """Concatenates the embeddings of the categorical features (the domain among them, multivalent ones
  mean-pooled over their non-padding values) with the numeric features."""
  parts = []
  fields = [(DOMAIN_INDEX, spec.num_domains + 1)] + [(transformed_name(c), vocab_sizes[c]) for c in spec.categorical]
  for name, size in fields:
    parts.append(tf_keras.layers.Embedding(size, embedding_dim, name=f'embedding_{name}')(inputs[name]))
  for column in spec.multivalent:
    name = transformed_name(column)
    # Index 0 is padding: mask_zero makes the pooling skip it.
    embedded = tf_keras.layers.Embedding(vocab_sizes[column], embedding_dim, mask_zero=True,
                                         name=f'embedding_{name}')(inputs[name])
    parts.append(tf_keras.layers.GlobalAveragePooling1D(name=f'pool_{name}')(embedded))
  if spec.numeric:
    numeric = [tf_keras.layers.Reshape((1,))(inputs[transformed_name(c)]) for c in spec.numeric]
    parts.extend(numeric)
  return tf_keras.layers.Concatenate(name='features')(parts)


def build_model(spec: FeatureSpec, vocab_sizes: Dict[str, int], hidden_units: Sequence[int] = (256, 128, 64),
                embedding_dim: int = 16, adapters: bool = False, alpha: int = 8) -> tf_keras.Model:
  """The click model: features -> backbone -> click probability.

  With `adapters=False` it is the plain backbone trained in the first stage. With `adapters=True` every
  dense layer carries one MLoRA adapter per domain and its shared weights are frozen (the second stage).
  """
  inputs = model_inputs(spec)
  x = embed_features(inputs, spec, vocab_sizes, embedding_dim)
  logit = mlp_logit(x, inputs[DOMAIN_INDEX], hidden_units, num_domains=spec.num_domains if adapters else 0,
                    alpha=alpha, freeze_base=adapters)
  probability = tf_keras.layers.Activation('sigmoid', name=PREDICTION)(tf_keras.layers.Flatten()(logit))
  return tf_keras.Model(inputs=inputs, outputs=probability, name='mlora_ctr' if adapters else 'backbone_ctr')


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
