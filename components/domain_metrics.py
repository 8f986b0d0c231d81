"""A slice's CTR metrics from one pass, with its domains kept apart: a custom TFMA metric.

Usage in an EvalConfig (the `config` JSON becomes constructor kwargs):

    tfma.MetricConfig(class_name='DomainCTRMetrics', module='components.domain_metrics',
                      config='{"domain_key": "domain"}')

For each slice (and model and output) it reports
  example_count, mean_label, mean_prediction,
  binary_crossentropy = -mean(y log p + (1 - y) log(1 - p)),
  auc (from prediction histograms: models.metrics.N_BUCKETS equal-width buckets on [0, 1]),
  wauc = sum_d n_d * AUC_d / sum_d n_d over the slice's domains d holding both classes,
with n_d the (example-weighted) count of domain d; within a domain slice wauc is that domain's AUC.

Why one metric and not TFMA's ExampleCount, AUC, BinaryCrossentropy, MeanPrediction and MeanLabel: TFMA feeds
every metric's combiner one example at a time, and those five each re-read the example through TFMA's generic
label/prediction accessor (~0.15 ms an example and slice, measured). This combiner takes the label and prediction
as they are, keeps them in a buffer and bins them with numpy a few thousand at a time.
"""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

from typing import Dict, Iterable, List, Optional  # noqa: E402

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_model_analysis as tfma  # noqa: E402
from tensorflow_model_analysis.metrics import metric_types  # noqa: E402
from tensorflow_model_analysis.metrics import metric_util  # noqa: E402
from tensorflow_model_analysis.utils import util  # noqa: E402

from models import metrics  # noqa: E402

NAMES = ('example_count', 'mean_label', 'mean_prediction', 'binary_crossentropy', 'auc', 'wauc')
BUFFER_ROWS = 4096  # rows kept as Python floats before they are binned with numpy
_EPSILON = 1e-7  # predictions are clipped to [eps, 1 - eps] in the log loss, as Keras does


class DomainCTRMetrics(tfma.metrics.Metric):
  """example_count, mean_label, mean_prediction, binary_crossentropy, auc and wauc of a binary output (see the
  module doc)."""

  def __init__(self, name: str = 'domain_ctr_metrics', domain_key: str = 'domain'):
    """Args: name: the metric's name in the config (each value keeps its own name, NAMES); domain_key: the raw
    feature holding each example's domain."""
    super().__init__(metric_util.merge_per_key_computations(_computations), name=name, domain_key=domain_key)


metric_types.register_metric(DomainCTRMetrics)


def _computations(name: str = 'domain_ctr_metrics', domain_key: str = 'domain',
                  eval_config: Optional[tfma.EvalConfig] = None, model_name: str = '', output_name: str = '',
                  sub_key: Optional[metric_types.SubKey] = None,
                  aggregation_type: Optional[metric_types.AggregationType] = None,
                  class_weights: Optional[Dict[int, float]] = None,
                  example_weighted: bool = False) -> metric_types.MetricComputations:
  """One combiner per (model, output, sub_key), reading `domain_key`."""
  del name  # the values are named NAMES
  keys = {value: metric_types.MetricKey(name=value, model_name=model_name, output_name=output_name, sub_key=sub_key,
                                        example_weighted=example_weighted) for value in NAMES}
  generic = dict(eval_config=eval_config, model_name=model_name, output_name=output_name, sub_key=sub_key,
                 aggregation_type=aggregation_type, class_weights=class_weights, example_weighted=example_weighted)
  return [metric_types.MetricComputation(
      keys=list(keys.values()), preprocessors=[metric_types.FeaturePreprocessor(feature_keys=[domain_key])],
      combiner=_DomainCTRCombiner(keys, domain_key, generic))]


class _Accumulator:
  """Rows not binned yet (parallel lists) and, per domain, [2, N_BUCKETS] (positive, negative) weight histograms
  and the sums [weight, weighted label, weighted prediction, weighted log loss]."""
  __slots__ = ('domains', 'labels', 'predictions', 'weights', 'histograms', 'sums')

  def __init__(self):
    self.domains: List = []
    self.labels: List[float] = []
    self.predictions: List[float] = []
    self.weights: List[float] = []
    self.histograms: Dict[object, np.ndarray] = {}
    self.sums: Dict[object, np.ndarray] = {}

  def __getstate__(self):
    return {slot: getattr(self, slot) for slot in self.__slots__}

  def __setstate__(self, state):
    for slot, value in state.items():
      setattr(self, slot, value)

  def bin(self) -> '_Accumulator':
    """Moves the buffered rows into the per-domain histograms (models.metrics.histograms) and sums."""
    if not self.labels:
      return self
    domains = np.asarray(self.domains, dtype=object)
    labels = (np.asarray(self.labels) > 0).astype(np.float64)
    predictions = np.clip(np.asarray(self.predictions, dtype=np.float64), 0.0, 1.0)
    weights = np.asarray(self.weights, dtype=np.float64)
    clipped = np.clip(predictions, _EPSILON, 1 - _EPSILON)
    losses = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    for domain in dict.fromkeys(self.domains):
      rows = domains == domain
      w, y = weights[rows], labels[rows]
      self.add(domain, np.stack(metrics.histograms(y, predictions[rows], w)),
               np.array([w.sum(), (w * y).sum(), (w * predictions[rows]).sum(), (w * losses[rows]).sum()]))
    self.domains, self.labels, self.predictions, self.weights = [], [], [], []
    return self

  def add(self, domain, histogram: np.ndarray, sums: np.ndarray) -> None:
    """Adds a domain's binned histogram and sums to this accumulator's."""
    if domain in self.histograms:
      self.histograms[domain] += histogram
      self.sums[domain] += sums
    else:
      self.histograms[domain], self.sums[domain] = histogram, sums


class _DomainCTRCombiner(beam.CombineFn):
  """Buffers (domain, label, prediction, weight) rows and bins them per domain (_Accumulator)."""

  def __init__(self, keys: Dict[str, metric_types.MetricKey], domain_key: str, generic: dict):
    self._keys, self._domain_key, self._generic = keys, domain_key, generic
    self._model_name, self._output_name = generic['model_name'], generic['output_name']

  def create_accumulator(self) -> _Accumulator:
    return _Accumulator()

  def add_input(self, accumulator: _Accumulator, element: metric_types.StandardMetricInputs) -> _Accumulator:
    labels, predictions, weights = self._rows(element)
    domains = _domains(util.get_by_keys(element.features, [self._domain_key]), len(labels))
    accumulator.domains.extend(domains)
    accumulator.labels.extend(labels)
    accumulator.predictions.extend(predictions)
    accumulator.weights.extend(weights)
    return accumulator.bin() if len(accumulator.labels) >= BUFFER_ROWS else accumulator

  def _rows(self, element: metric_types.StandardMetricInputs):
    """The element's labels, predictions and weights as lists of floats: read directly when they are arrays of
    this model's output, through TFMA's generic accessor otherwise (sub keys, aggregation, class weights)."""
    label, prediction = self._pick(element.label), self._pick(element.prediction)
    direct = (isinstance(label, np.ndarray) and isinstance(prediction, np.ndarray) and label.size == prediction.size
              and self._generic['sub_key'] is None and self._generic['aggregation_type'] is None
              and not self._generic['example_weighted'])
    if direct:
      return label.ravel().tolist(), prediction.ravel().tolist(), [1.0] * label.size
    triples = list(metric_util.to_label_prediction_example_weight(element, flatten=True, **self._generic))
    return ([float(np.ravel(y)[0]) for y, _, _ in triples], [float(np.ravel(p)[0]) for _, p, _ in triples],
            [float(np.ravel(w)[0]) for _, _, w in triples])

  def _pick(self, value):
    """`value` for this model and output when it is keyed by them (several models or outputs)."""
    for name in (self._model_name, self._output_name):
      if isinstance(value, dict) and name in value:
        value = value[name]
    return value

  def merge_accumulators(self, accumulators: Iterable[_Accumulator]) -> _Accumulator:
    accumulators = iter(accumulators)
    result = next(accumulators).bin()
    for accumulator in accumulators:
      for domain, histogram in accumulator.bin().histograms.items():
        result.add(domain, histogram, accumulator.sums[domain])
    return result

  def compact(self, accumulator: _Accumulator) -> _Accumulator:
    return accumulator.bin()

  def extract_output(self, accumulator: _Accumulator) -> Dict[metric_types.MetricKey, float]:
    accumulator.bin()
    if not accumulator.sums:
      return {key: float('nan') for key in self._keys.values()}
    weight, label, prediction, loss = np.sum(list(accumulator.sums.values()), axis=0)
    positives, negatives = np.sum(list(accumulator.histograms.values()), axis=0)
    values = {'example_count': weight, 'mean_label': label / weight, 'mean_prediction': prediction / weight,
              'binary_crossentropy': loss / weight, 'auc': metrics.auc_from_histograms(positives, negatives),
              'wauc': metrics.weighted_mean_auc((metrics.auc_from_histograms(*accumulator.histograms[d]),
                                                  accumulator.sums[d][0]) for d in accumulator.histograms)}
    return {self._keys[name]: float(value) for name, value in values.items()}


def _domains(value, n: int) -> list:
  """A domain feature (scalar, shape [1] or [n]) as n hashable Python values; one value is every example's."""
  flat = [v.item() if isinstance(v, np.generic) else v for v in np.asarray(value, dtype=object).reshape(-1)]
  if len(flat) == 1:
    return flat * n
  if len(flat) != n:
    raise ValueError(f'The domain feature has {len(flat)} values for {n} label/prediction pairs.')
  return flat
