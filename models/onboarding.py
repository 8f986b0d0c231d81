"""Onboarding a domain: its MLoRA adapter, trained alone on top of the production model.

A domain appended to `FeatureSpec.domains` after the production model was trained needs no retraining of
anything else: the production model (backbone, embeddings, every existing adapter) is copied into a model
with one more adapter slot per dense layer (`models.warm_start`), and only the new domains' adapters
train. Every other weight stays bit-identical, and the embedding rows of tokens new since then start from
(and keep) the old OOV row, where production put them: the existing domains score as in production, up to
what this span's Transform statistics move (the numeric z-scores).
The fine-tune stage picks its epoch by the new domains' validation AUC alone (`models.trainer`).
"""
import os
from typing import Dict, Sequence

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tf_keras  # noqa: E402

from models import model as model_lib  # noqa: E402
from models import warm_start  # noqa: E402
from models.features import FeatureSpec  # noqa: E402
from models.layers.lora import DomainLoRADense  # noqa: E402


def production_domains(production: tf_keras.Model) -> int:
  """How many domains the production model has adapters for; ValueError when it has none."""
  counts = {layer.num_domains for layer in production.layers if isinstance(layer, DomainLoRADense)} - {0}
  if len(counts) != 1:
    raise ValueError('Onboarding a domain needs an MLoRA production model (adapters on every dense layer); the '
                     f'production model {production.name!r} has none.')
  return counts.pop()


def onboarding_model(spec: FeatureSpec, vocab_sizes: Dict[str, int], new_domains: Sequence[str],
                     production: tf_keras.Model, tf_transform_output, production_dir: str,
                     hidden_units: Sequence[int], embedding_dim: int, backbone: str,
                     options: dict) -> tf_keras.Model:
  """The production model with adapters for `new_domains` added, only those trainable.

  `new_domains` must be the last entries of `spec.domains` (domains are only ever appended: domain i owns
  adapter i) and the production model must have adapters for every domain before them.
  """
  unknown = [d for d in new_domains if d not in spec.domains]
  if unknown:
    raise ValueError(f'Cannot onboard {unknown}: not in the feature spec\'s domains {spec.domains}. Append the '
                     'new domain to `domains` in features.json and to the domain field\'s values in the schema.')
  known = production_domains(production)
  expected = spec.domains[known:]
  if sorted(new_domains) != sorted(expected):
    raise ValueError(f'The production model has adapters for {spec.domains[:known]}; the domains after them, '
                     f'{expected}, are the ones to onboard, not {list(new_domains)}.')
  # The production model's calibration, if it has one, comes along: its unknown-domain row starts the new
  # domains' (as the domain embedding's does), and the Trainer refits the new domains' rows alone.
  model = model_lib.build_model(
      spec, vocab_sizes, hidden_units, embedding_dim, backbone=backbone, adaptation='mlora', freeze_backbone=True,
      options={**options, 'trainable_domains': [spec.domains.index(d) for d in new_domains],
               'calibrate': model_lib.calibration_layer(production) is not None})
  warm_start.warm_start(model, production, spec, tf_transform_output, production_dir, new_tokens_as_oov=True)
  for layer in model.layers:
    if isinstance(layer, tf_keras.layers.Embedding):
      layer.trainable = False  # shared with the other domains: onboarding must not move their scores
  return model
