"""Runs the WeightedDomainAUC TFMA metric and compares it with models.metrics.

Example (domain, label, prediction), see tests/models/test_metrics.py:
  a: (1, .9) (0, .8) (1, .4) (0, .1)  -> AUC 3/4, n 4
  b: (0, .4) (1, .7) (0, .2)          -> AUC 1,   n 3
  c: (0, .1)                          -> single class, skipped
  WAUC = (4 * 3/4 + 3 * 1) / 7 = 6/7
"""
import math
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import tensorflow_model_analysis as tfma  # noqa: E402
from apache_beam.testing import util as beam_util  # noqa: E402
from tensorflow_model_analysis.metrics import metric_specs  # noqa: E402
from tensorflow_model_analysis.metrics import metric_util  # noqa: E402

from components.wauc_metric import WeightedDomainAUC  # noqa: E402
from models import metrics  # noqa: E402

DOMAINS = ['a', 'a', 'a', 'a', 'b', 'b', 'b', 'c']
LABELS = [1, 0, 1, 0, 0, 1, 0, 0]
PREDS = [0.9, 0.8, 0.4, 0.1, 0.4, 0.7, 0.2, 0.1]
WAUC = 6 / 7

METRIC_CONFIG = tfma.MetricConfig(
    class_name='WeightedDomainAUC', module='components.wauc_metric',
    config='{"domain_key": "domain"}')


def _extract(labels, preds, domains, domain_key):
    """One TFMA extract; domains is a bytes array of shape [1] or [batch]."""
    return {'labels': np.array(labels, dtype=np.float32),
            'predictions': np.array(preds, dtype=np.float32),
            'example_weights': np.array(1.0, dtype=np.float32),
            'features': {domain_key: np.array(domains, dtype=object)}}


def _run_combiner(metric, extracts):
    """Runs the metric's single combiner over extracts; returns its value."""
    computations = metric.computations(example_weighted=False)
    assert len(computations) == 1
    computation = computations[0]
    with beam.Pipeline() as pipeline:
        result = (
            pipeline
            | beam.Create(extracts)
            | beam.Map(metric_util.to_standard_metric_inputs,
                       include_features=True)
            | beam.Map(lambda x: ((), x))
            | beam.CombinePerKey(computation.combiner))

        def check(got):
            assert len(got) == 1
            slice_key, values = got[0]
            assert slice_key == ()
            assert values[computation.keys[0]] == pytest.approx(WAUC)

        beam_util.assert_that(result, check)


def test_metric_config_builds_metric():
    metric = metric_specs.metric_instance(METRIC_CONFIG)
    assert isinstance(metric, WeightedDomainAUC)
    assert metric.name == 'wauc'
    assert metric.get_config() == {'name': 'wauc', 'domain_key': 'domain'}


def test_combiner_matches_numpy_wauc():
    assert metrics.wauc(LABELS, PREDS, DOMAINS) == pytest.approx(WAUC)
    key = 'slot'
    # Per-example extracts with domain shape [1] ...
    extracts = [_extract([y], [p], [d.encode()], key)
                for y, p, d in zip(LABELS[:3], PREDS[:3], DOMAINS[:3])]
    # ... plus batched extracts with domain shape [batch], mixing domains.
    extracts.append(_extract(LABELS[3:5], PREDS[3:5],
                             [d.encode() for d in DOMAINS[3:5]], key))
    extracts.append(_extract(LABELS[5:], PREDS[5:],
                             [d.encode() for d in DOMAINS[5:]], key))
    _run_combiner(WeightedDomainAUC(domain_key=key), extracts)


def test_eval_config_overall_and_domain_slices(tmp_path):
    eval_config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(label_key='label',
                                    prediction_key='prediction')],
        metrics_specs=[tfma.MetricsSpec(metrics=[METRIC_CONFIG])],
        slicing_specs=[tfma.SlicingSpec(),
                       tfma.SlicingSpec(feature_keys=['domain'])])
    df = pd.DataFrame({'domain': DOMAINS, 'label': LABELS,
                       'prediction': PREDS})
    result = tfma.analyze_raw_data(df, eval_config, output_path=str(tmp_path))

    got = {dict(slice_key).get('domain'):
           values['']['']['wauc']['doubleValue']
           for slice_key, values in result.slicing_metrics}
    per_domain = metrics.per_domain_auc(LABELS, PREDS, DOMAINS)
    assert got[None] == pytest.approx(WAUC)
    assert got['a'] == pytest.approx(per_domain['a'][0])
    assert got['b'] == pytest.approx(per_domain['b'][0])
    assert math.isnan(float(got['c']))  # NaN is reported as 'NaN'
