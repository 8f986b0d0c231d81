"""Streaming domain-weighted AUC (WAUC) as a custom TFMA metric.

Usage in an EvalConfig (the `config` JSON becomes constructor kwargs):

    tfma.MetricConfig(class_name='WeightedDomainAUC',
                      module='components.wauc_metric',
                      config='{"domain_key": "domain"}')

WAUC = sum_d n_d * AUC_d / sum_d n_d over domains d holding both classes,
n_d = (example-weighted) count of domain d. AUC_d comes from per-domain
prediction histograms (models.metrics.N_BUCKETS equal-width buckets on
[0, 1]). Within a domain slice the value is that domain's AUC.
"""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

from typing import Dict, Iterable, Optional  # noqa: E402

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_model_analysis as tfma  # noqa: E402
from tensorflow_model_analysis.metrics import metric_types  # noqa: E402
from tensorflow_model_analysis.metrics import metric_util  # noqa: E402
from tensorflow_model_analysis.utils import util  # noqa: E402

from models import metrics  # noqa: E402

WAUC_NAME = 'wauc'
_Accumulator = Dict[object, np.ndarray]  # domain -> [2, N_BUCKETS]


class WeightedDomainAUC(tfma.metrics.Metric):
    """Example-count-weighted mean of per-domain AUCs (see module doc)."""

    def __init__(self, name: str = WAUC_NAME, domain_key: str = 'domain'):
        """Args: name: metric name; domain_key: raw feature holding the
        domain of each example."""
        super().__init__(
            metric_util.merge_per_key_computations(_wauc_computations),
            name=name, domain_key=domain_key)


metric_types.register_metric(WeightedDomainAUC)


def _wauc_computations(
        name: str = WAUC_NAME,
        domain_key: str = 'domain',
        eval_config: Optional[tfma.EvalConfig] = None,
        model_name: str = '',
        output_name: str = '',
        sub_key: Optional[metric_types.SubKey] = None,
        aggregation_type: Optional[metric_types.AggregationType] = None,
        class_weights: Optional[Dict[int, float]] = None,
        example_weighted: bool = False) -> metric_types.MetricComputations:
    """One combiner per (model, output, sub_key) reading `domain_key`."""
    key = metric_types.MetricKey(
        name=name, model_name=model_name, output_name=output_name,
        sub_key=sub_key, example_weighted=example_weighted)
    return [metric_types.MetricComputation(
        keys=[key],
        preprocessors=[metric_types.FeaturePreprocessor(
            feature_keys=[domain_key])],
        combiner=_WAUCCombiner(key, domain_key, eval_config, aggregation_type,
                               class_weights, example_weighted))]


class _WAUCCombiner(beam.CombineFn):
    """Accumulates {domain: array[2, N_BUCKETS]} of (positive, negative)
    summed example weights per prediction bucket."""

    def __init__(self, key, domain_key, eval_config, aggregation_type,
                 class_weights, example_weighted):
        self._key = key
        self._domain_key = domain_key
        self._label_prediction_kwargs = dict(
            eval_config=eval_config, model_name=key.model_name,
            output_name=key.output_name, sub_key=key.sub_key,
            aggregation_type=aggregation_type, class_weights=class_weights,
            example_weighted=example_weighted)

    def create_accumulator(self) -> _Accumulator:
        return {}

    def add_input(self, accumulator: _Accumulator,
                  element: metric_types.StandardMetricInputs
                  ) -> _Accumulator:
        triples = list(metric_util.to_label_prediction_example_weight(
            element, **self._label_prediction_kwargs))
        domains = _domains(
            util.get_by_keys(element.features, [self._domain_key]),
            len(triples))
        for domain, (label, prediction, weight) in zip(domains, triples):
            hist = accumulator.get(domain)
            if hist is None:
                hist = accumulator[domain] = np.zeros((2, metrics.N_BUCKETS))
            row = 0 if np.ravel(label)[0] > 0 else 1  # 0: positive
            hist[row, metrics.bucketize(prediction)[0]] += np.ravel(weight)[0]
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_Accumulator]
                           ) -> _Accumulator:
        accumulators = iter(accumulators)
        result = next(accumulators)
        for accumulator in accumulators:
            for domain, hist in accumulator.items():
                if domain in result:
                    result[domain] += hist
                else:
                    result[domain] = hist
        return result

    def extract_output(self, accumulator: _Accumulator
                       ) -> Dict[metric_types.MetricKey, float]:
        value = metrics.weighted_mean_auc(
            (metrics.auc_from_histograms(pos, neg), pos.sum() + neg.sum())
            for pos, neg in accumulator.values())
        return {self._key: value}


def _domains(value, n: int) -> list:
    """Flattens a domain feature (scalar, shape [1] or [n]) to n hashable
    python values, broadcasting a single value to all n examples."""
    flat = [v.item() if isinstance(v, np.generic) else v
            for v in np.asarray(value, dtype=object).reshape(-1)]
    if len(flat) == 1:
        return flat * n
    if len(flat) != n:
        raise ValueError(f'domain feature has {len(flat)} values for {n} '
                         'label/prediction pairs')
    return flat
