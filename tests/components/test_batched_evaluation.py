"""components/batched_evaluation.py: TFMA's metrics from whole batches per slice equal TFMA's example by example;
the models' signatures called by keyword."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_analysis as tfma  # noqa: E402
from tensorflow_model_analysis import constants  # noqa: E402
from tensorflow_model_analysis.api import types  # noqa: E402
from tensorflow_model_analysis.extractors import unbatch_extractor  # noqa: E402

from components import batched_evaluation  # noqa: E402
from components.batched_evaluation import (KeywordSignatures, custom_eval_shared_model, custom_extractors,  # noqa: E402
                                           slice_columns, split_by_values)

DOMAIN_METRICS = tfma.MetricConfig(class_name='DomainCTRMetrics', module='components.domain_metrics',
                                   config='{"domain_key": "domain"}')


def _eval_config(*metrics, slicing_specs=None) -> tfma.EvalConfig:
  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(label_key='label', prediction_key='prediction')],
      metrics_specs=[tfma.MetricsSpec(metrics=list(metrics))],
      slicing_specs=slicing_specs or [tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=['domain'])])


def _metrics_by_slice(frame: pd.DataFrame, eval_config: tfma.EvalConfig, extractors, tmp_path) -> dict:
  result = tfma.analyze_raw_data(frame, eval_config, output_path=str(tmp_path), extractors=extractors)
  return {slice_key: {name: value['doubleValue'] for name, value in values[''][''].items()}
          for slice_key, values in result.slicing_metrics}


def test_metrics_from_slice_batches_equal_tfmas_example_by_example(tmp_path):
  """2,000 rows of 4 domains and 2 regions in random order (every batch mixes them), sliced overall, by domain
  and by domain x region: every value of every slice as TFMA's default extractors compute it."""
  rng = np.random.default_rng(0)
  n = 2000
  frame = pd.DataFrame({'domain': rng.choice(['a', 'b', 'c', 'd'], n, p=[.55, .3, .1, .05]),
                        'region': rng.choice(['x', 'y'], n), 'label': rng.integers(0, 2, n),
                        'prediction': rng.uniform(0.01, 0.99, n)})
  eval_config = _eval_config(DOMAIN_METRICS, slicing_specs=[
      tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=['domain']),
      tfma.SlicingSpec(feature_keys=['domain', 'region'])])
  batched = _metrics_by_slice(frame, eval_config, custom_extractors(None, eval_config), tmp_path / 'batched')
  example_by_example = _metrics_by_slice(frame, eval_config, None, tmp_path / 'default')
  assert len(example_by_example) == 1 + 4 + 8
  assert batched.keys() == example_by_example.keys()
  for slice_key, values in example_by_example.items():
    assert batched[slice_key] == pytest.approx(values, rel=1e-9), slice_key
  assert batched[()]['example_count'] == n


def test_with_the_overall_slice_alone_a_batch_stays_whole(tmp_path):
  frame = pd.DataFrame({'domain': ['a', 'b'] * 50, 'label': [0, 1] * 50, 'prediction': np.linspace(.1, .9, 100)})
  eval_config = _eval_config(DOMAIN_METRICS, slicing_specs=[tfma.SlicingSpec()])
  batched = _metrics_by_slice(frame, eval_config, custom_extractors(None, eval_config), tmp_path)
  assert batched[()]['example_count'] == 100
  assert [len(group[constants.INPUT_KEY]) for group in split_by_values(_batch(), [])] == [5]


def _stage_names(extractors) -> list:
  return [extractor.stage_name for extractor in extractors]


def test_whole_batches_replace_unbatching_only_when_every_metric_reads_batches():
  batched = _stage_names(custom_extractors(None, _eval_config(DOMAIN_METRICS)))
  assert batched_evaluation.STAGE_NAME in batched and unbatch_extractor.UNBATCH_EXTRACTOR_STAGE_NAME not in batched
  # TFMA's own metrics read one example an extract; SQL slices come per example: TFMA's defaults.
  per_example = _eval_config(DOMAIN_METRICS, tfma.MetricConfig(class_name='ExampleCount'))
  sql = _eval_config(DOMAIN_METRICS, slicing_specs=[tfma.SlicingSpec(slice_keys_sql='SELECT STRUCT(domain)')])
  for config in (per_example, sql):
    assert _stage_names(custom_extractors(None, config)) == _stage_names(tfma.default_extractors(eval_config=config))


def test_slice_columns_are_every_feature_a_slicing_spec_reads():
  config = _eval_config(DOMAIN_METRICS, slicing_specs=[
      tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=['domain']),
      tfma.SlicingSpec(feature_values={'region': 'x'})])
  config.cross_slicing_specs.add(baseline_spec=tfma.SlicingSpec(feature_keys=['device']))
  assert slice_columns(config) == ['device', 'domain', 'region']


def _batch() -> dict:
  """A batched extract of 5 rows as TFMA's extractors leave it: features (one of them of variable length),
  labels, the predictions of two models, the serialized inputs and the Arrow record batch."""
  domains = np.array([b'a', b'b', b'a', b'c', b'b'], dtype=object)
  return {
      constants.ARROW_RECORD_BATCH_KEY: pa.RecordBatch.from_arrays([pa.array(range(5))], ['row']),
      constants.INPUT_KEY: np.array([b'r0', b'r1', b'r2', b'r3', b'r4'], dtype=object),
      constants.FEATURES_KEY: {
          'domain': domains.reshape(5, 1),
          'tags': types.VarLenTensorValue(values=np.array([1, 2, 3, 4]), indices=np.array([[0, 0], [2, 0], [2, 1],
                                                                                           [4, 0]]),
                                          dense_shape=np.array([5, 2])),
      },
      constants.LABELS_KEY: np.array([1., 0., 0., 1., 1.]),
      constants.PREDICTIONS_KEY: {'candidate': np.arange(5) / 10, 'baseline': np.arange(5) / 20},
      constants.EXAMPLE_WEIGHTS_KEY: None,
  }


def test_a_batch_splits_into_one_extract_per_slice_value_keeping_each_rows_values_together():
  groups = list(split_by_values(_batch(), ['domain']))
  rows = {group[constants.FEATURES_KEY]['domain'][0, 0]: group[constants.INPUT_KEY].tolist() for group in groups}
  assert rows == {b'a': [b'r0', b'r2'], b'b': [b'r1', b'r4'], b'c': [b'r3']}
  [a] = [group for group in groups if group[constants.INPUT_KEY][0] == b'r0']
  assert constants.ARROW_RECORD_BATCH_KEY not in a
  assert a[constants.LABELS_KEY].tolist() == [1., 0.]
  assert a[constants.PREDICTIONS_KEY]['candidate'].tolist() == [0., .2]
  assert a[constants.PREDICTIONS_KEY]['baseline'].tolist() == [0., .1]
  assert [row.tolist() for row in a[constants.FEATURES_KEY]['tags']] == [[1], [2, 3]]
  assert a[constants.EXAMPLE_WEIGHTS_KEY] is None


def test_a_variable_length_slicing_feature_groups_rows_by_their_whole_list():
  groups = list(split_by_values(_batch(), ['tags']))
  assert sorted(group[constants.INPUT_KEY].tolist() for group in groups) == [[b'r0'], [b'r1', b'r3'], [b'r2'],
                                                                              [b'r4']]


def test_a_slicing_feature_the_examples_lack_is_named():
  with pytest.raises(ValueError, match="Slicing feature 'device' is not among"):
    list(split_by_values(_batch(), ['device']))


def test_an_entry_without_a_row_per_example_is_refused_with_the_way_out():
  batch = _batch()
  batch['odd'] = np.zeros(3)
  with pytest.raises(ValueError, match='evaluate without components.batched_evaluation'):
    list(split_by_values(batch, ['domain']))


class _Scorer(tf.Module):
  """A SavedModel whose serving signature scores serialized examples by their length."""

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
  def serve(self, examples):
    return {'ctr': tf.cast(tf.strings.length(examples), tf.float32)}


def test_signatures_of_one_input_take_it_positionally_as_tfma_passes_it(tmp_path):
  path = str(tmp_path / 'model')
  module = _Scorer()
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
  batch = tf.constant([b'a', b'abc'])
  loader = custom_eval_shared_model(path, '', _eval_config(DOMAIN_METRICS)).model_loader
  model = loader.construct_fn()
  assert isinstance(model, KeywordSignatures)
  serve = model.signatures['serving_default']
  assert serve(batch)['ctr'].numpy().tolist() == serve(examples=batch)['ctr'].numpy().tolist() == [1.0, 3.0]
  assert list(serve.structured_input_signature[1]) == ['examples']  # what TFMA reads of the signature
  assert loader.tags == [tf.saved_model.SERVING]
