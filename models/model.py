"""Builds the CTR model on transformed features, and hands the backbone from pretraining to fine-tuning."""
import copy
import functools
import os
from typing import Callable, Dict, Optional, Sequence

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tensorflow.python.autograph.core import config as autograph_config  # noqa: E402
from tensorflow.python.autograph.core import config_lib as autograph_rules  # noqa: E402

from models.adaptation import ADAPTATIONS  # noqa: E402
from models.backbones import BACKBONES  # noqa: E402
from models.multitask import multitask_model  # noqa: E402
from models.features import DOMAIN_INDEX, FeatureSpec, transformed_name  # noqa: E402
from models.layers.calibration import DomainCalibration  # noqa: E402
from models.layers.domain_dropout import DomainDropout  # noqa: E402

PREDICTION = 'ctr'
CALIBRATION = 'domain_calibration'  # the `DomainCalibration` layer's name
# Settings of the model itself that `build_model` reads from `options` (beside the adaptation's and the
# head's): `embedding_l2`, the L2 penalty on every embedding table (field embeddings and first-order
# weights), and `domain_dropout`, the share of training examples scored as an unknown domain
# (`DomainDropout`), whose masks follow `seed`; both act in training only. `calibrate`: the click logit
# goes through a per-domain `DomainCalibration` (identity until the Trainer fits it on the eval split).
MODEL_OPTIONS = ('embedding_l2', 'domain_dropout', 'seed', 'calibrate')


def skip_autograph_for_tf_keras() -> None:
  """Tells AutoGraph not to rewrite tf_keras's own functions, as it never rewrote Keras 2's under its old
  package name `keras` (TensorFlow's AutoGraph CONVERSION_RULES): TF 2.16 does not know the new name, so each
  process transpiled the source of every tf_keras function a training or validation step calls: hundreds of
  them, 23.7 s before the pretrain Trainer's first validation on the 1M-row run, against 0.7 s without. Keras's
  functions run as written in graph mode, as they did under `keras`; the model's own layers are converted
  as before."""
  rules = autograph_config.CONVERSION_RULES
  if not any(isinstance(r, autograph_rules.DoNotConvert) and r.matches('tf_keras') for r in rules):
    autograph_config.CONVERSION_RULES = (autograph_rules.DoNotConvert('tf_keras'),) + rules


skip_autograph_for_tf_keras()


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
  linear part. `field(name)` is one field's embedding [batch, dim].

  Layers are made on first use, so a domain adaptation's `features` hook can `rebuild` the front another
  way (`embedding`: the table maker, `(size, dim, mask_zero, name) -> ids -> embedded`; `exclude`: input
  names left out) before anything of this one is in the model.
  """

  def __init__(self, inputs, spec: FeatureSpec, vocab_sizes: Dict[str, int], embedding_dim: int,
               embedding=tf_keras.layers.Embedding, exclude: Sequence[str] = ()):
    # (input name, vocabulary size) of every categorical field, single- and multi-valued.
    self._vocabularies = [(name, size) for name, size in [(DOMAIN_INDEX, spec.num_domains + 1)] + [
        (transformed_name(c), vocab_sizes[c]) for c in spec.categorical + list(spec.multivalent)]
        if name not in exclude]
    self._inputs = inputs
    self._spec = spec
    self._vocab_sizes = vocab_sizes
    self._dim = embedding_dim
    self._embedding = embedding
    self._exclude = tuple(exclude)

  def rebuild(self, **changes) -> 'EmbeddedFeatures':
    """The same front with other `embedding` or `exclude` arguments."""
    arguments = {'embedding': self._embedding, 'exclude': self._exclude, **changes}
    return EmbeddedFeatures(self._inputs, self._spec, self._vocab_sizes, self._dim, **arguments)

  def with_fields(self, fields) -> 'EmbeddedFeatures':
    """This front with `fields` replaced (e.g. rescaled); `field` still gives the embeddings as looked up."""
    replaced = copy.copy(self)
    replaced.fields = fields
    return replaced

  @functools.cached_property
  def _field_embeddings(self):
    return {name: self._embed(name, size, self._dim, 'embedding') for name, size in self._vocabularies}

  @functools.cached_property
  def fields(self):
    return tf_keras.layers.Concatenate(axis=1, name='fields')(list(self._field_embeddings.values()))

  @functools.cached_property
  def numeric(self):
    numeric = [tf_keras.layers.Reshape((1,))(self._inputs[transformed_name(c)]) for c in self._spec.numeric]
    return tf_keras.layers.Concatenate(name='numeric')(numeric) if len(numeric) > 1 else (
        numeric[0] if numeric else None)

  def field(self, name: str):
    """The embedding [batch, dim] of the categorical field whose input is `name` (e.g. `DOMAIN_INDEX`)."""
    return tf_keras.layers.Flatten()(self._field_embeddings[name])

  def _embed(self, name, size, dim, prefix):
    """[batch, 1, dim]: the field's embedding, averaged over values for a multivalent field (0 pads)."""
    ids = self._inputs[name]
    multivalent = len(ids.shape) > 1
    embedded = self._embedding(size, dim, mask_zero=multivalent, name=f'{prefix}_{name}')(ids)
    if not multivalent:
      return tf_keras.layers.Reshape((1, dim))(embedded)
    pooled = tf_keras.layers.GlobalAveragePooling1D(name=f'pool_{prefix}_{name}')(embedded)
    return tf_keras.layers.Reshape((1, dim))(pooled)

  def first_order(self):
    weights = [self._embed(name, size, 1, 'linear') for name, size in self._vocabularies]
    return tf_keras.layers.Flatten()(tf_keras.layers.Add(name='first_order')(weights))


def build_model(spec: FeatureSpec, vocab_sizes: Dict[str, int], hidden_units: Sequence[int] = (256, 128, 64),
                embedding_dim: int = 16, backbone: str = 'mlp', adaptation: str = 'none',
                freeze_backbone: bool = False, options: Optional[dict] = None,
                wrap_adaptation: Optional[Callable] = None, head: Optional[str] = None) -> tf_keras.Model:
  """The click model: features -> backbone (built through a domain adaptation) -> click probability.

  The first stage trains `adaptation='none'` (one shared model, the domain an embedded feature) or a
  method trained end to end; the second stage builds the same backbone with `adaptation='mlora'` (or
  another method) and `freeze_backbone=True`: every backbone dense weight is frozen, the method's own
  weights and the embeddings train. `options` holds method settings (MLoRA's `alpha`, ...) and the model's
  own `MODEL_OPTIONS`: an `embedding_l2` penalty on the embedding tables, and a `domain_dropout` share of
  training examples whose domain index becomes the unknown domain's before anything reads it (the domain
  embedding and every per-domain layer), which trains the unknown-domain path (`DomainDropout`); with
  `calibrate`, the logit of a single-task model passes through a frozen per-domain Platt scaling
  (`DomainCalibration`, named `CALIBRATION`) before the sigmoid.
  `wrap_adaptation(inputs, adaptation)` returns the adaptation the backbone is built through instead
  (`models.ctnet` adds its source tower's adapters to the hidden layers this way).
  With `head` (models/heads: esmm, mmoe, ...) the model is a multi-task `models.multitask.MultiTaskModel`
  with one probability per task (`ctr`, `cvr`, ...) on the head's own MLP bottom instead of a backbone;
  `options` also holds the head's and the training step's settings (`balancing`, `gradient_surgery`, ...).
  """
  if head and backbone != 'mlp':
    raise ValueError(f'A multi-task head builds its own MLP bottom: backbone must be mlp, got {backbone!r}.')
  if backbone not in BACKBONES:
    raise ValueError(f'Unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}.')
  if adaptation not in ADAPTATIONS:
    raise ValueError(f'Unknown domain adaptation {adaptation!r}; choose one of {sorted(ADAPTATIONS)}.')
  inputs = model_inputs(spec)
  options = dict(options or {})
  domain_index = inputs[DOMAIN_INDEX]
  if options.get('domain_dropout'):
    domain_index = DomainDropout(options['domain_dropout'], spec.num_domains, seed=options.get('seed'),
                                 name='domain_dropout')(domain_index)
  adapt = ADAPTATIONS[adaptation](spec, domain_index, freeze_base=freeze_backbone, options=options)
  if wrap_adaptation:
    adapt = wrap_adaptation(inputs, adapt)
  embedding = tf_keras.layers.Embedding
  if options.get('embedding_l2'):
    embedding = functools.partial(embedding,
                                  embeddings_regularizer=tf_keras.regularizers.L2(options['embedding_l2']))
  features = adapt.features(EmbeddedFeatures({**inputs, DOMAIN_INDEX: domain_index}, spec, vocab_sizes,
                                             embedding_dim, embedding=embedding))
  name = (head or backbone) if adaptation == 'none' else f'{head or backbone}_{adaptation}'
  if head:
    return multitask_model(head, inputs, features, hidden_units, adapt, options, name)
  logit = adapt.logit(BACKBONES[backbone](features, hidden_units, adapt), features)
  if options.get('calibrate'):
    logit = DomainCalibration(spec.num_domains, name=CALIBRATION)([logit, domain_index])
  probability = tf_keras.layers.Activation('sigmoid', name=PREDICTION)(logit)
  return tf_keras.Model(inputs=inputs, outputs=probability, name=name)


def parameter_matched_units(build: Callable[[Sequence[int]], tf_keras.Model], hidden_units: Sequence[int],
                            target: int) -> list:
  """`hidden_units`, every layer scaled by one factor, whose model `build(units)` has the parameter count
  closest above `target`: the parameter-matched control of a method that adds `target` minus the backbone's
  parameters (a wider backbone, with no per-domain weight)."""
  def units(scale):
    return [max(1, round(u * scale)) for u in hidden_units]

  def parameters(scale):
    return build(units(scale)).count_params()

  low, high = 1.0, 2.0
  while parameters(high) < target:
    low, high = high, high * 2
  for _ in range(8):  # bisection to 1/256 of the factor's bracket
    middle = (low + high) / 2
    low, high = (middle, high) if parameters(middle) < target else (low, middle)
  return units(high)


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


def calibration_layer(model: tf_keras.Model) -> Optional[DomainCalibration]:
  """The model's `DomainCalibration`; None for a model built without `calibrate` (or multi-task)."""
  return next((layer for layer in model.layers if isinstance(layer, DomainCalibration)), None)


def adaptation_weights(model: tf_keras.Model):
  """The weights a domain-adaptation method added to the backbone (MLoRA's A and B, ...)."""
  return [w for layer in model.layers for w in getattr(layer, 'adaptation_weights', [])]


def _short_name(weight) -> str:
  return weight.name.split('/')[-1].split(':')[0]
