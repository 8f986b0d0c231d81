"""Runs the DomainCTRMetrics TFMA metric and compares each value with models.metrics.

Example (domain, label, prediction), see tests/models/test_metrics.py:
  a: (1, .9) (0, .8) (1, .4) (0, .1)  -> AUC 3/4, n 4
  b: (0, .4) (1, .7) (0, .2)          -> AUC 1,   n 3
  c: (0, .1)                          -> single class, skipped by WAUC
  WAUC = (4 * 3/4 + 3 * 1) / 7 = 6/7
"""
import math
import os
import pickle

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import tensorflow_model_analysis as tfma  # noqa: E402
from apache_beam.testing import util as beam_util  # noqa: E402
from tensorflow_model_analysis.metrics import metric_specs  # noqa: E402
from tensorflow_model_analysis.metrics import metric_util  # noqa: E402

from components import domain_metrics  # noqa: E402
from components.domain_metrics import DomainCTRMetrics  # noqa: E402
from models import metrics  # noqa: E402

DOMAINS = ['a', 'a', 'a', 'a', 'b', 'b', 'b', 'c']
LABELS = [1, 0, 1, 0, 0, 1, 0, 0]
PREDS = [0.9, 0.8, 0.4, 0.1, 0.4, 0.7, 0.2, 0.1]
WAUC = 6 / 7

METRIC_CONFIG = tfma.MetricConfig(class_name='DomainCTRMetrics', module='components.domain_metrics',
                                  config='{"domain_key": "domain"}')


def expected(labels=LABELS, preds=PREDS, domains=DOMAINS) -> dict:
  y, p = np.array(labels, float), np.array(preds, float)
  return {'example_count': y.size, 'mean_label': y.mean(), 'mean_prediction': p.mean(),
          'binary_crossentropy': metrics.logloss(y, p), 'auc': metrics.auc(y, p), 'wauc': metrics.wauc(y, p, domains)}


def _extract(labels, preds, domains, domain_key, model_name=None):
  """One TFMA extract; domains is a bytes array of shape [1] or [batch]; with `model_name`, the labels and
  predictions are keyed by it, as TFMA keys them when it evaluates several models."""
  labels, preds = np.array(labels, dtype=np.float32), np.array(preds, dtype=np.float32)
  if model_name:
    labels, preds = {model_name: labels, 'other': 1 - labels}, {model_name: preds, 'other': 1 - preds}
  return {'labels': labels, 'predictions': preds, 'example_weights': np.array(1.0, dtype=np.float32),
          'features': {domain_key: np.array(domains, dtype=object)}}


def _check_combiner(metric, extracts, want: dict, model_name=''):
  """Runs the metric's combiner over extracts in a Beam pipeline and checks its values against `want`."""
  computations = metric.computations(model_names=[model_name], example_weighted=False)
  assert len(computations) == 1
  computation = computations[0]
  with beam.Pipeline() as pipeline:
    result = (pipeline | beam.Create(extracts)
              | beam.Map(metric_util.to_standard_metric_inputs, include_features=True)
              | beam.Map(lambda x: ((), x)) | beam.CombinePerKey(computation.combiner))

    def check(results):
      assert len(results) == 1
      assert all(key.model_name == model_name for key in results[0][1])
      assert {key.name: value for key, value in results[0][1].items()} == pytest.approx(want, abs=1e-6)

    beam_util.assert_that(result, check)


def test_metric_config_builds_metric():
  metric = metric_specs.metric_instance(METRIC_CONFIG)
  assert isinstance(metric, DomainCTRMetrics)
  assert metric.get_config() == {'name': 'domain_ctr_metrics', 'domain_key': 'domain'}


@pytest.mark.parametrize('buffer_rows', [2, domain_metrics.BUFFER_ROWS])  # binned every few rows, or at the end
def test_combiner_matches_numpy(monkeypatch, buffer_rows):
  monkeypatch.setattr(domain_metrics, 'BUFFER_ROWS', buffer_rows)
  key = 'slot'
  # Per-example extracts with domain shape [1] plus batched extracts with domain shape [batch], mixing domains.
  extracts = [_extract([y], [p], [d.encode()], key) for y, p, d in zip(LABELS[:3], PREDS[:3], DOMAINS[:3])]
  extracts += [_extract(LABELS[3:5], PREDS[3:5], [d.encode() for d in DOMAINS[3:5]], key),
               _extract(LABELS[5:], PREDS[5:], [d.encode() for d in DOMAINS[5:]], key)]
  assert expected()['wauc'] == pytest.approx(WAUC)
  _check_combiner(DomainCTRMetrics(domain_key=key), extracts, expected())


def test_combiner_reads_its_model_among_several():
  extracts = [_extract([y], [p], [d.encode()], 'domain', model_name='candidate')
              for y, p, d in zip(LABELS, PREDS, DOMAINS)]
  _check_combiner(DomainCTRMetrics(), extracts, expected(), model_name='candidate')


def test_accumulator_survives_pickling_with_rows_not_binned():
  accumulator = domain_metrics._Accumulator()
  accumulator.domains, accumulator.labels, accumulator.predictions, accumulator.weights = ['a'], [1.0], [0.3], [1.0]
  restored = pickle.loads(pickle.dumps(accumulator)).bin()
  assert restored.sums['a'].tolist() == pytest.approx([1.0, 1.0, 0.3, -math.log(0.3)])


def test_domain_feature_of_the_wrong_length_is_an_error():
  with pytest.raises(ValueError, match='domain feature has 2 values for 3'):
    domain_metrics._domains(np.array([b'a', b'b']), 3)


def test_eval_config_overall_and_domain_slices(tmp_path):
  eval_config = tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(label_key='label', prediction_key='prediction')],
      metrics_specs=[tfma.MetricsSpec(metrics=[METRIC_CONFIG])],
      slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=['domain'])])
  frame = pd.DataFrame({'domain': DOMAINS, 'label': LABELS, 'prediction': PREDS})
  result = tfma.analyze_raw_data(frame, eval_config, output_path=str(tmp_path))

  got = {dict(slice_key).get('domain'): {name: float(value['doubleValue']) for name, value in values[''][''].items()}
         for slice_key, values in result.slicing_metrics}
  assert got[None] == pytest.approx(expected(), abs=1e-6)
  for domain in 'ab':
    rows = [i for i, d in enumerate(DOMAINS) if d == domain]
    assert got[domain] == pytest.approx(expected([LABELS[i] for i in rows], [PREDS[i] for i in rows],
                                                 [domain] * len(rows)), abs=1e-6)
  assert math.isnan(got['c']['auc']) and math.isnan(got['c']['wauc'])  # one class: no AUC
  assert got['c']['example_count'] == 1
