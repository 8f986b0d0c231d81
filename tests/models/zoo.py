"""The model tests' tiny zoo: one feature spec and its synthetic transformed features, builds of every backbone,
domain adaptation and multi-task head at tiny shapes (embedding 4, hidden 8-4, batch 32), eager fits, and the
expensive results every test reads: each model trained end to end and each fine-tune stage run, made once per
session (`trained`, `fine_tuned`). Those are shared: read them, never train or change them; a test that does
builds its own model (`build`, `fine_tune_model`)."""
import dataclasses
import functools
import os
from typing import Dict, Optional, Sequence

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import model as model_lib
from models.adaptation import ADAPTATIONS
from models.backbones import BACKBONES
from models.features import DOMAIN_INDEX, FeatureSpec, transformed_name

SPEC = FeatureSpec(domain='domain', domains=['a', 'b', 'c'], label='click', vocab=['item'], hashed={'user': 50},
                   numeric=['price'], multivalent={'tags': 3}, user='user')
MULTITASK_SPEC = dataclasses.replace(SPEC, extra_labels=['conversion'])
VOCAB_SIZES = {'item': 20, 'user': 50, 'tags': 9}
HIDDEN = (8, 4)
EMBEDDING_DIM = 4
BATCH_SIZE = 32
LEARNING_RATE = 0.05
ALPHA = 2  # MLoRA's ranks on the 8-4 DNN and its logit: 8 // 2, 4 // 2 and max(1 // 2, 1), all different
OPTIONS = {'alpha': ALPHA, 'anneal_steps': 20}

BACKBONE_NAMES = tuple(sorted(BACKBONES))
ADAPTATION_NAMES = tuple(sorted(ADAPTATIONS))
# Weights that are not trainable by nature (moving statistics, step counters), not because they are frozen.
STATE = ('moving_mean', 'moving_variance', 'step')


def features(n=64, seed=0, domains=None, num_domains=SPEC.num_domains) -> Dict[str, tf.Tensor]:
  """`n` examples of SPEC's transformed features; the domain index drawn below `num_domains` (one more than
  SPEC's: some of Transform's unknown domain too) or given per example by `domains`."""
  rng = np.random.default_rng(seed)
  return {
      DOMAIN_INDEX: tf.constant(rng.integers(0, num_domains, n) if domains is None else domains, tf.int64),
      transformed_name('item'): tf.constant(rng.integers(0, 20, n), tf.int64),
      transformed_name('user'): tf.constant(rng.integers(0, 50, n), tf.int64),
      transformed_name('tags'): tf.constant(rng.integers(0, 9, (n, 3)), tf.int64),
      transformed_name('price'): tf.constant(rng.normal(size=n), tf.float32),
  }


def clicks(examples) -> np.ndarray:
  """Learnable, by a model without the domain too: the item decides the click."""
  return (examples[transformed_name('item')].numpy() < 10).astype(np.float32)


def coin_flips(n=64, seed=1) -> np.ndarray:
  """Clicks that carry no signal."""
  return np.random.default_rng(seed).integers(0, 2, n)


def multitask_labels(n=64, seed=1) -> Dict[str, np.ndarray]:
  """Random clicks, and conversions that only follow a click."""
  rng = np.random.default_rng(seed)
  click = rng.integers(0, 2, n)
  return {'click': click, 'conversion': click * rng.integers(0, 2, n)}


def build(backbone='mlp', adaptation='none', freeze_backbone=False, spec=SPEC, vocab_sizes=VOCAB_SIZES,
          options=None, hidden_units=HIDDEN, **kwargs) -> tf_keras.Model:
  """A fresh, seeded model at the zoo's tiny shapes (`kwargs`: `head`, `wrap_adaptation`)."""
  tf_keras.utils.set_random_seed(0)
  return model_lib.build_model(spec, vocab_sizes, hidden_units, embedding_dim=EMBEDDING_DIM, backbone=backbone,
                               adaptation=adaptation, freeze_backbone=freeze_backbone,
                               options=OPTIONS if options is None else options, **kwargs)


def fit(model, x, y, epochs=1, learning_rate=LEARNING_RATE, loss='binary_crossentropy', batch_size=BATCH_SIZE):
  """Trains `model` with the Trainer's optimizer, eagerly: a few steps on tiny data cost far less than tracing
  them into a graph. `loss=None` for a multi-task model (its own train step). Returns the model."""
  model.compile(tf_keras.optimizers.Adam(learning_rate), loss, run_eagerly=True)
  model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
  return model


def cross_entropy(model, examples, labels, training=False) -> float:
  """The mean binary cross-entropy of `model`'s scores, in training or inference mode (no regularizer)."""
  scores = model(examples, training=training)
  return float(tf.reduce_mean(tf_keras.losses.binary_crossentropy(np.reshape(labels, (-1, 1)), scores)))


def round_trip(model, directory) -> tf_keras.Model:
  """`model` saved as a `.keras` file, as the Trainer hands it to the next stage, and loaded back."""
  path = os.path.join(str(directory), 'model.keras')
  model.save(path)
  return tf_keras.models.load_model(path)


def short_name(weight) -> str:
  return weight.name.split('/')[-1].split(':')[0]


def embedding_weights(model) -> list:
  return [w for layer in model.layers if isinstance(layer, tf_keras.layers.Embedding) for w in layer.weights]


@dataclasses.dataclass(frozen=True)
class Trained:
  """A model trained end to end, and its cross-entropy on its training data before and after."""
  model: tf_keras.Model
  loss_before: float  # inference mode
  loss_after: float
  training_loss_before: float  # training mode: STAR's moving statistics need more steps than a test takes
  training_loss_after: float


TRAIN = features(n=64, seed=1)  # 2 batches; 4 epochs: 8 steps, in which every backbone learns clicks()


def trained(backbone: str, adaptation: str = 'none') -> Trained:
  """`backbone` through `adaptation` trained end to end, once per session. With `none` (or `no_domain`) it is
  the pretrain stage's backbone that the fine-tune stage continues. Shared: never train or change it."""
  return _trained(backbone, adaptation)  # one cache key however the arguments are passed


@functools.lru_cache(maxsize=None)
def _trained(backbone: str, adaptation: str) -> Trained:
  model = build(backbone, adaptation)
  labels = clicks(TRAIN)
  before = cross_entropy(model, TRAIN, labels), cross_entropy(model, TRAIN, labels, training=True)
  fit(model, TRAIN, labels, epochs=4)
  return Trained(model, before[0], cross_entropy(model, TRAIN, labels),
                 before[1], cross_entropy(model, TRAIN, labels, training=True))


def pretrain_adaptation(adaptation: str) -> str:
  # A no_domain model's first layer has no domain embedding among its inputs: it continues a no_domain backbone.
  return 'no_domain' if adaptation == 'no_domain' else 'none'


def pretrained(backbone: str, adaptation: str = 'mlora') -> tf_keras.Model:
  """The session's pretrained backbone that `adaptation`'s fine-tune stage continues."""
  return trained(backbone, pretrain_adaptation(adaptation)).model


def fine_tune_model(backbone: str, adaptation: str = 'mlora') -> tf_keras.Model:
  """A fresh fine-tune stage model (backbone frozen) on the session's pretrained weights: this one may change."""
  model = build(backbone, adaptation, freeze_backbone=True)
  model_lib.load_backbone_weights(model, pretrained(backbone, adaptation))
  return model


PROBE = features(n=128, seed=3)  # what fine-tuned models are scored on
FINE_TUNE = features(n=64, seed=4)  # 2 steps


@dataclasses.dataclass(frozen=True)
class FineTuned:
  """A fine-tune stage run: the pretrained backbone, the model after a few steps, and what it was before."""
  pretrained: tf_keras.Model
  model: tf_keras.Model
  start_weights: Dict[str, np.ndarray]  # every weight by name, before training
  start_scores: np.ndarray  # on PROBE, before training


def fine_tuned(backbone: str, adaptation: str = 'mlora') -> FineTuned:
  """`adaptation`'s fine-tune stage on `backbone`, trained a few steps, once per session. Shared: never train
  or change it."""
  return _fine_tuned(backbone, adaptation)


@functools.lru_cache(maxsize=None)
def _fine_tuned(backbone: str, adaptation: str) -> FineTuned:
  model = fine_tune_model(backbone, adaptation)
  start_weights = {w.name: w.numpy() for w in model.weights}
  start_scores = model(PROBE).numpy()
  fit(model, FINE_TUNE, clicks(FINE_TUNE))
  return FineTuned(pretrained(backbone, adaptation), model, start_weights, start_scores)


def covering_pairs(rows: Sequence[str], columns: Sequence[str], anchor: Optional[tuple] = None) -> list:
  """max(len(rows), len(columns)) (row, column) pairs in which every row and every column appears: row k
  (cyclically) with column k + offset, the offset chosen so that `anchor` (a default) is among them."""
  offset = (columns.index(anchor[1]) - rows.index(anchor[0])) % len(columns) if anchor else 0
  return [(rows[k % len(rows)], columns[(k + offset) % len(columns)])
          for k in range(max(len(rows), len(columns)))]


def matrix(cells: Sequence[tuple], fast: Sequence[tuple]) -> list:
  """`cells` as pytest parameters: those in `fast` in the fast suite, the others marked `slow`."""
  return [pytest.param(*cell, marks=() if cell in fast else pytest.mark.slow, id='-'.join(cell)) for cell in cells]
