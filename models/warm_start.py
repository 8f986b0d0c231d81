"""Cross-run warm start: the pretrain stage continues from the production model's backbone.

The production model (the latest blessed one) is an MLoRA model fine-tuned on an earlier span, with that
span's Transform vocabularies. Its shared weights go into the backbone built for this span:

- layers without an embedding table (dense, FM, ...): every weight of the same layer and name and shape;
  the adapters have no counterpart in a backbone and stay behind;
- per-domain weights (a layer's `adaptation_weights`: MLoRA's A and B, ...; a backbone's `domain_*`
  weights: STAR's) when the model has them too:
  they grow along their domain axis as domains are appended, so the old domains' slices are copied and
  a new domain's slice keeps its initial value (MLoRA's B = 0: no adapter yet);
- vocabulary embeddings: row by row through the token each row stands for, since vocabularies are ordered
  by frequency and change between spans (the old vocabulary is the `assets/<column>` file of the old
  SavedModel); tokens new in this span keep their fresh rows; the OOV rows map onto the old OOV rows;
- hashed-id embeddings: as they are when the bucket count did not change;
- the domain embedding and the per-domain calibration (`DomainCalibration`, one row per domain): domain `i`
  keeps row `i`, since domains are only ever appended to `FeatureSpec.domains` (domain `i` owns adapter
  `i`); a domain added since, and the unknown-domain row, start from the old unknown-domain row, which is
  how the old model scored a domain it did not know.

Anything else that does not fit (a changed architecture) keeps its fresh initial value, and is logged.
"""
import logging
import os
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from models.features import DOMAIN_INDEX, FeatureSpec, transformed_name
from models.layers.calibration import DomainCalibration
from models.preprocessing import OOV_BUCKETS

_LOG = logging.getLogger(__name__)
EMBEDDING_PREFIXES = ('embedding', 'linear')  # models.model.EmbeddedFeatures' table names: f'{prefix}_{feature}'
PER_DOMAIN_PREFIX = 'domain_'  # a backbone's per-domain weights (STAR's domain_kernel, domain_gamma, ...)


def read_vocabulary(path: str) -> List[bytes]:
  """A Transform vocabulary file: one token a line, the line number is the token's id."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    return [line.rstrip(b'\n') for line in f]


def vocabulary_rows(old: List[bytes], new: List[bytes], padding: int = 0,
                    new_tokens_as_oov: bool = False) -> np.ndarray:
  """For each row of the new embedding table, the old table's row for the same token; for a token new in
  this span -1 (keep the fresh row), or with `new_tokens_as_oov` the old OOV row, where the old model put
  it (one OOV bucket). Rows are [padding rows][vocabulary][OOV buckets], as `models.preprocessing` lays
  them out."""
  old_ids = {token: i for i, token in enumerate(old)}
  pad = list(range(padding))
  oov = [padding + len(old) + b for b in range(OOV_BUCKETS)]
  tokens = [padding + old_ids[t] if t in old_ids else (oov[0] if new_tokens_as_oov else -1) for t in new]
  return np.array(pad + tokens + oov, dtype=np.int64)


def domain_rows(old_domains: int, new_domains: int) -> np.ndarray:
  """Domain embedding rows: the first `old_domains` keep their row, every later one (new domains and the
  unknown-domain row, the last) starts from the old unknown-domain row."""
  return np.array([min(i, old_domains) for i in range(new_domains + 1)], dtype=np.int64)


def embedding_rows(feature: str, spec: FeatureSpec, old_vocabularies: Dict[str, List[bytes]],
                   new_vocabularies: Dict[str, List[bytes]], old_rows: int, new_rows: int,
                   new_tokens_as_oov: bool = False) -> Optional[np.ndarray]:
  """The old row of each row of `feature`'s embedding table, or None when the tables do not correspond."""
  if feature == DOMAIN_INDEX:
    return domain_rows(old_rows - 1, new_rows - 1)
  for column in list(spec.vocab) + list(spec.multivalent):
    if feature == transformed_name(column):
      if column not in old_vocabularies:  # a column the production model did not have
        return None
      padding = 1 if column in spec.multivalent else 0
      return vocabulary_rows(old_vocabularies[column], new_vocabularies[column], padding, new_tokens_as_oov)
  return np.arange(new_rows) if old_rows == new_rows else None  # hashed ids: same buckets, same rows


def _embedding_feature(layer_name: str) -> Optional[str]:
  for prefix in EMBEDDING_PREFIXES:
    if layer_name.startswith(prefix + '_'):
      return layer_name[len(prefix) + 1:]
  return None


def _short_name(weight) -> str:
  return weight.name.split('/')[-1].split(':')[0]


def _value_from(old: Optional[np.ndarray], weight, embedding: bool, rows: Optional[np.ndarray],
                per_domain: bool = False) -> Optional[np.ndarray]:
  """`weight`'s new value from its old counterpart: an embedding table through `rows` (`embedding_rows`),
  keeping the fresh rows marked -1; a per-domain weight grown along one axis with the old values first;
  any other weight as it is; None when they do not correspond."""
  current = weight.numpy()
  if old is None:
    return None
  if not embedding:
    if old.shape == current.shape:
      return old
    grown = [axis for axis, (o, c) in enumerate(zip(old.shape, current.shape)) if o != c]
    if not per_domain or old.ndim != current.ndim or len(grown) != 1 or old.shape[grown[0]] > current.shape[grown[0]]:
      return None
    value = current.copy()
    value[tuple(slice(0, n) for n in old.shape)] = old
    return value
  if rows is None or len(rows) != current.shape[0] or old.shape[1:] != current.shape[1:]:
    return None
  return np.where((rows >= 0)[:, None], old[np.maximum(rows, 0)], current)


def warm_start(model, base, spec: FeatureSpec, tf_transform_output, base_serving_dir: str,
               new_tokens_as_oov: bool = False) -> None:
  """Copies `base`'s weights into the freshly built `model` (see the module docstring).

  Args:
    model: The model built for this span's Transform output: a backbone, or (onboarding a domain) the
      MLoRA model with one more domain.
    base: The production model's Keras model (with or without adapters).
    spec: This span's feature contract.
    tf_transform_output: This span's Transform output (its vocabularies).
    base_serving_dir: The production model's SavedModel, whose `assets/` hold its vocabularies.
    new_tokens_as_oov: Start the rows of tokens new in this span from the old OOV row instead of fresh
      values: the model then scores every example as `base` did (onboarding, whose embeddings stay frozen).
  """
  columns = list(spec.vocab) + list(spec.multivalent)
  assets = os.path.join(base_serving_dir, 'assets')
  old_vocabularies = {c: read_vocabulary(os.path.join(assets, c)) for c in columns
                      if tf.io.gfile.exists(os.path.join(assets, c))}
  new_vocabularies = {c: tf_transform_output.vocabulary_by_name(c) for c in columns}
  base_layers = {layer.name: layer for layer in base.layers}
  copied, kept = 0, []
  for layer in model.layers:
    source = base_layers.get(layer.name)
    old_weights = {_short_name(w): w.numpy() for w in source.weights} if source else {}
    # The calibration's rows are domains: they map as the domain embedding's do.
    feature = DOMAIN_INDEX if isinstance(layer, DomainCalibration) else _embedding_feature(layer.name)
    per_domain = {id(w) for w in getattr(layer, 'adaptation_weights', [])} | {
        id(w) for w in layer.weights if _short_name(w).startswith(PER_DOMAIN_PREFIX)}
    for weight in layer.weights:
      old = old_weights.get(_short_name(weight))
      rows = None if feature is None or old is None else embedding_rows(
          feature, spec, old_vocabularies, new_vocabularies, old.shape[0], weight.shape[0], new_tokens_as_oov)
      value = _value_from(old, weight, feature is not None, rows, per_domain=id(weight) in per_domain)
      if value is None:
        kept.append(weight.name)
      else:
        weight.assign(value)
        copied += 1
  _LOG.info('warm start: %d weights from the production model, %d kept fresh%s', copied, len(kept),
            f': {kept}' if kept else '')
