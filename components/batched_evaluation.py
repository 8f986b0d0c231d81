"""TFMA evaluating whole batches: the TFX Evaluator's module (`module_path`), with the two functions TFX looks
up in it by name.

`custom_extractors`: TFMA's default extractors end with an UnbatchExtractor: every example becomes an extract
of its own, and the slicing, the metrics' preprocessing and each combiner's `add_input` then run once per
example and slice, in Python. On the 1M-row run's 200k test rows that path, not the model, was most of the
Evaluator's time. `SliceBatchExtractor` takes the UnbatchExtractor's place. It splits each batch into one
extract per combination of values of the features the slicing specs read, so all examples of an extract fall
into the same slices; TFMA's SliceKeyExtractor then slices the extract as a whole, and every stage after it
runs once per batch and slice. A metric must read the extract's arrays of labels and predictions
(DomainCTRMetrics does); `custom_extractors` keeps TFMA's defaults, example by example, for a config with any
other metric or with SQL slicing.

`custom_eval_shared_model`: TFMA calls a serving signature with its batch of serialized examples as the one
positional argument. A loaded SavedModel's signatures take keywords only, so each such call failed first, and
TensorFlow wrote the whole batch into that failure's message before it retried: 6.6 ms a call of 880
examples against 2.7 ms by keyword. The models are loaded as `KeywordSignatures`, which call by keyword.

Usage: `tfx.components.Evaluator(..., module_path='components.batched_evaluation')`.
"""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import functools  # noqa: E402
from typing import Dict, Iterator, List, Sequence, Tuple  # noqa: E402

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_analysis as tfma  # noqa: E402
from absl import logging  # noqa: E402
from tensorflow_model_analysis import constants  # noqa: E402
from tensorflow_model_analysis.api import types  # noqa: E402
from tensorflow_model_analysis.extractors import unbatch_extractor  # noqa: E402
from tensorflow_model_analysis.utils import util  # noqa: E402

from components import domain_metrics  # noqa: E402

STAGE_NAME = 'ExtractSliceBatches'
BATCHED_METRICS = frozenset({domain_metrics.DomainCTRMetrics.__name__})  # metrics that read an extract's arrays


def custom_extractors(eval_shared_model, eval_config: tfma.EvalConfig,
                      tensor_adapter_config=None) -> List[tfma.extractors.Extractor]:
  """TFMA's default extractors, with SliceBatchExtractor in the UnbatchExtractor's place when every metric
  of `eval_config` reads batches (the TFX Evaluator's `custom_extractors` hook)."""
  extractors = tfma.default_extractors(eval_shared_model=eval_shared_model, eval_config=eval_config,
                                       tensor_adapter_config=tensor_adapter_config)
  others = sorted({metric.class_name for spec in eval_config.metrics_specs for metric in spec.metrics}
                  - BATCHED_METRICS)
  if others or any(spec.slice_keys_sql for spec in _slicing_specs(eval_config)):
    logging.info('TFMA evaluates example by example: %s reads one example an extract.',
                 ', '.join(others) or 'SQL slicing')
    return extractors
  return [SliceBatchExtractor(slice_columns(eval_config))
          if extractor.stage_name == unbatch_extractor.UNBATCH_EXTRACTOR_STAGE_NAME else extractor
          for extractor in extractors]


def SliceBatchExtractor(columns: Sequence[str]) -> tfma.extractors.Extractor:  # pylint: disable=invalid-name
  """Splits each batched extract into one extract per combination of values of the raw features `columns`
  (split_by_values)."""
  return tfma.extractors.Extractor(stage_name=STAGE_NAME,
                                   ptransform=beam.FlatMap(split_by_values, columns=list(columns)))


def slice_columns(eval_config: tfma.EvalConfig) -> List[str]:
  """The features the slicing specs (cross-slicing ones too) slice by."""
  return sorted({column for spec in _slicing_specs(eval_config)
                 for column in list(spec.feature_keys) + list(spec.feature_values)})


def _slicing_specs(eval_config: tfma.EvalConfig) -> list:
  return list(eval_config.slicing_specs) + [spec for cross in eval_config.cross_slicing_specs
                                            for spec in [cross.baseline_spec, *cross.slicing_specs]]


def split_by_values(batch: types.Extracts, columns: Sequence[str]) -> Iterator[types.Extracts]:
  """The batch's rows grouped by their values of `columns` (raw features), each group an extract with the
  batch's keys (the Arrow record batch left out, as the UnbatchExtractor does) holding that group's rows."""
  features = batch[constants.FEATURES_KEY]
  size = util.batch_size(features)
  keys = zip(*(_row_values(features, column, size) for column in columns)) if columns else [()] * size
  groups: Dict[Tuple, List[int]] = {}
  for row, key in enumerate(keys):
    groups.setdefault(key, []).append(row)
  for rows in groups.values():
    index = np.asarray(rows)
    yield {key: _take(value, index, size) for key, value in batch.items()
           if key != constants.ARROW_RECORD_BATCH_KEY}


def _row_values(features: dict, column: str, size: int) -> List[Tuple]:
  """Each row's values of the feature `column`, as a tuple."""
  if column not in features:
    raise ValueError(f'Slicing feature {column!r} is not among the evaluated examples\' features '
                     f'({sorted(features)}): slice by a raw feature of the examples.')
  values = features[column]
  if isinstance(values, types.VarLenTensorValue):
    return [tuple(row.tolist()) for row in values.dense_rows()]
  return [tuple(row) for row in np.asarray(values).reshape(size, -1).tolist()]


def _take(value, rows: np.ndarray, size: int):
  """`value` (an extract's entry: arrays and lists with the batch's rows first, in nested dicts) at `rows`."""
  if isinstance(value, dict):
    return {key: _take(item, rows, size) for key, item in value.items()}
  if isinstance(value, types.VarLenTensorValue):
    value = list(value.dense_rows())
  if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == size:
    return value[rows]
  if isinstance(value, list) and len(value) == size:
    return [value[row] for row in rows]
  if value is None:
    return None
  raise ValueError(f'An extract entry of type {type(value).__name__} has no row per example of the batch '
                   f'({size} rows): evaluate without components.batched_evaluation.')


def custom_eval_shared_model(eval_saved_model_path: str, model_name: str, eval_config: tfma.EvalConfig,
                             **kwargs) -> tfma.types.EvalSharedModel:
  """TFMA's shared model of the SavedModel at `eval_saved_model_path`, loaded as KeywordSignatures (the TFX
  Evaluator's `custom_eval_shared_model` hook)."""
  loader = tfma.types.ModelLoader(construct_fn=functools.partial(KeywordSignatures.load, eval_saved_model_path),
                                  tags=[tf.saved_model.SERVING])
  return tfma.default_eval_shared_model(eval_saved_model_path=eval_saved_model_path, model_name=model_name,
                                        eval_config=eval_config, custom_model_loader=loader, **kwargs)


class KeywordSignatures:
  """A loaded SavedModel whose signatures of one input also take it positionally and pass it on by keyword;
  everything else is the model's."""

  def __init__(self, model):
    self._model = model
    self.signatures = {name: _KeywordCall(signature) if len(signature.structured_input_signature[1]) == 1
                       else signature for name, signature in model.signatures.items()}

  @classmethod
  def load(cls, path: str) -> 'KeywordSignatures':
    return cls(tf.saved_model.load(path, tags=[tf.saved_model.SERVING]))

  def __getattr__(self, name):
    return getattr(self._model, name)


class _KeywordCall:
  """A signature of one input, called with that input positionally or by keyword."""

  def __init__(self, signature):
    self._signature = signature
    [self._input_name] = signature.structured_input_signature[1]

  def __call__(self, *args, **kwargs):
    if args:
      (kwargs[self._input_name],) = args  # the one input, as TFMA passes it
    return self._signature(**kwargs)

  def __getattr__(self, name):
    return getattr(self._signature, name)
