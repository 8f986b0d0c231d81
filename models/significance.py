"""Confidence intervals and paired tests for the promotion gate: AUC, WAUC, log loss, calibration.

Plain NumPy/SciPy, importable without TensorFlow. Labels are binary (> 0 is a positive), predictions
are probabilities in [0, 1]; every model is scored on the same examples, so model differences are
paired. Intervals are normal (Wald) intervals, value +- z * SE with z = Phi^-1((1 + confidence) / 2),
not clipped to the figure's range (an AUC near 1 may get an upper bound above 1).

- AUC: fast DeLong (DeLong et al., Biometrics 44:837, 1988) with the midrank algorithm of Sun & Xu
  (IEEE SPL 21(11):1389, 2014): the AUCs of K models and their K x K covariance in O(K N log N).
- Log loss: the mean of i.i.d. per-example losses, SE = sd / sqrt(n); a difference of two models is the
  mean of the per-example loss differences (paired).
- WAUC = sum_d w_d AUC_d, w_d = n_d / sum n_d over the domains holding both classes (as
  models.metrics.wauc). Domains are disjoint sets of examples, so Var(WAUC) = sum_d w_d^2 Var(AUC_d).

A figure that cannot be computed (a single class, too few examples) is nan, never an exception;
`to_jsonable` writes it as None.
"""
import dataclasses
import math
from typing import Any, Dict, Hashable, List, Sequence, Tuple

import numpy as np
from scipy import stats

EPS = 1e-7
"""Prediction clipping of the log loss, as models.metrics.logloss."""


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A figure with its standard error and two-sided interval [lower, upper] at `confidence`.

  `p_value`: two-sided p-value of H0: value == 0, for differences; nan for a single model's figure.
  """
  value: float
  se: float
  lower: float
  upper: float
  confidence: float
  p_value: float = math.nan


@dataclasses.dataclass(frozen=True)
class DeLong:
  """AUCs of K models scored on the same examples and their DeLong covariance.

  `aucs` [K]; `covariance` [K, K], nan when a class has fewer than 2 examples (the placement
  variances are undefined) and `aucs` nan when a class has none.
  """
  aucs: np.ndarray
  covariance: np.ndarray
  positives: int
  negatives: int

  def contrast(self, weights: Sequence[float]) -> Tuple[float, float]:
    """(c . AUC, c' S c) for contrast weights c: c = e_k is model k's AUC, e_a - e_b the difference a - b."""
    c = np.asarray(weights, dtype=np.float64)
    # Clipped at 0: for near-identical models rounding can leave c' S c a hair below 0.
    return float(c @ self.aucs), float(max(c @ self.covariance @ c, 0.0))


@dataclasses.dataclass(frozen=True)
class ReliabilityBin:
  """One bin of the reliability curve: the predictions in [lower, upper]."""
  lower: float
  upper: float
  mean_prediction: float
  observed_rate: float
  count: int


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Calibration figures of one set of examples.

  `constant_logloss`: the log loss of predicting the set's own click rate r for every example, the
  best constant, H(r) = -(r log r + (1 - r) log(1 - r)); `ratio` = mean prediction / click rate
  (1 calibrated, > 1 over-predicts); `reliability`: equal-count bins, see `calibration_figures`.
  """
  count: int
  click_rate: float
  mean_prediction: float
  ratio: float
  logloss: float
  constant_logloss: float
  reliability: List[ReliabilityBin]


def delong(labels, scores) -> DeLong:
  """Fast DeLong: AUCs and covariance of K score vectors (`scores` [K, N] or one vector) on N examples.

  With m positives X and n negatives Y, and midranks (ties share the mean rank) of each model's scores
  among the positives (Tx), among the negatives (Ty) and pooled (Tz):

      AUC = (sum_i Tz(X_i) - m (m + 1) / 2) / (m n)     (ties count 1/2, as models.metrics.auc)
      V10(X_i) = (Tz(X_i) - Tx(X_i)) / n       fraction of negatives below positive i
      V01(Y_j) = 1 - (Tz(Y_j) - Ty(Y_j)) / m   fraction of positives above negative j
      S = cov(V10) / m + cov(V01) / n           (K x K sample covariances over positives, negatives)
  """
  y = _binary(labels)
  s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
  if s.shape[1] != y.size:
    raise ValueError(f'scores hold {s.shape[1]} examples, labels {y.size}')
  k = s.shape[0]
  positive = y > 0
  m, n = int(positive.sum()), int((~positive).sum())
  if m == 0 or n == 0:
    return DeLong(np.full(k, np.nan), np.full((k, k), np.nan), m, n)
  x, v = s[:, positive], s[:, ~positive]
  tx = stats.rankdata(x, axis=1)
  ty = stats.rankdata(v, axis=1)
  tz = stats.rankdata(np.concatenate([x, v], axis=1), axis=1)
  # Sums of midranks are exact in float64, so one rounding: the AUC never leaves [0, 1].
  aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
  if m < 2 or n < 2:
    return DeLong(aucs, np.full((k, k), np.nan), m, n)
  v10 = (tz[:, :m] - tx) / n
  v01 = 1.0 - (tz[:, m:] - ty) / m
  covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
  return DeLong(aucs, covariance, m, n)


def normal_estimate(value: float, variance: float, confidence: float, test: bool = False) -> Estimate:
  """value +- z * sqrt(variance), z = Phi^-1((1 + confidence) / 2); with `test`, the two-sided p-value
  2 (1 - Phi(|value| / SE)) of H0: value == 0 (SE 0: p = 1 if value == 0, else 0)."""
  se = math.sqrt(variance) if variance >= 0 else math.nan  # nan >= 0 is False: nan stays nan
  z = stats.norm.ppf(0.5 + confidence / 2)
  p_value = math.nan
  if test and not (math.isnan(value) or math.isnan(se)):
    p_value = float(2 * stats.norm.sf(abs(value) / se)) if se > 0 else float(value == 0)
  return Estimate(float(value), se, float(value - z * se), float(value + z * se), confidence, p_value)


def delong_estimate(result: DeLong, weights: Sequence[float], confidence: float = 0.95) -> Estimate:
  """The interval of a contrast c . AUC of a DeLong result; a test when c sums to 0 (a difference)."""
  value, variance = result.contrast(weights)
  return normal_estimate(value, variance, confidence, test=_compares(weights))


def auc_interval(labels, scores, confidence: float = 0.95) -> Estimate:
  """One model's AUC with its DeLong interval."""
  return delong_estimate(delong(labels, scores), [1.0], confidence)


def auc_difference(labels, candidate, baseline, confidence: float = 0.95) -> Estimate:
  """Paired DeLong test of AUC(candidate) - AUC(baseline) on the same examples:
  Var = S_cc + S_bb - 2 S_cb, z = diff / sqrt(Var)."""
  return delong_estimate(delong(labels, [candidate, baseline]), [1.0, -1.0], confidence)


def weighted_estimate(parts: Sequence[Tuple[int, DeLong]], weights: Sequence[float],
                      confidence: float = 0.95) -> Estimate:
  """WAUC-style combination of per-domain DeLong results (n_d, result_d) for the contrast `weights`.

      value = sum_d w_d c . AUC_d,   Var = sum_d w_d^2 c' S_d c,   w_d = n_d / sum n_d

  over the domains holding both classes. A domain with a single example of a class has a defined AUC
  but no DeLong variance: its term takes the largest variance a figure in [a, b] can have, (b - a)^2 / 4
  (Popoviciu), with b - a = sum_k |c_k| (1/4 for an AUC, 1 for a difference), so the interval stays
  conservative instead of becoming nan.
  """
  kept = [(count, result) for count, result in parts if not np.isnan(result.aucs).any()]
  total = sum(count for count, _ in kept)
  test = _compares(weights)
  if total == 0:
    return normal_estimate(math.nan, math.nan, confidence, test)
  bound = float(np.abs(weights).sum()) ** 2 / 4
  value = variance = 0.0
  for count, result in kept:
    w = count / total
    value_d, variance_d = result.contrast(weights)
    value += w * value_d
    variance += w * w * (bound if math.isnan(variance_d) else variance_d)
  return normal_estimate(value, variance, confidence, test)


def wauc_interval(labels, domains, scores, confidence: float = 0.95) -> Estimate:
  """One model's WAUC (domains weighted by examples) with its interval."""
  return weighted_estimate(_domain_delongs(labels, domains, [scores]), [1.0], confidence)


def wauc_difference(labels, domains, candidate, baseline, confidence: float = 0.95) -> Estimate:
  """Paired WAUC(candidate) - WAUC(baseline): Var = sum_d w_d^2 Var(AUC_c,d - AUC_b,d)."""
  return weighted_estimate(_domain_delongs(labels, domains, [candidate, baseline]), [1.0, -1.0], confidence)


def example_losses(labels, predictions, eps: float = EPS) -> np.ndarray:
  """Per-example binary cross-entropy -(y log p + (1 - y) log(1 - p)), p clipped to [eps, 1 - eps]."""
  y = _binary(labels)
  p = np.clip(_floats(predictions), eps, 1 - eps)
  return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def mean_estimate(values: np.ndarray, confidence: float = 0.95, test: bool = False) -> Estimate:
  """mean +- z * sd / sqrt(n) of i.i.d. values (sd with n - 1); nan SE below 2 values."""
  n = values.size
  mean = float(values.mean()) if n else math.nan
  variance = float(values.var(ddof=1)) / n if n > 1 else math.nan
  return normal_estimate(mean, variance, confidence, test)


def logloss_interval(labels, predictions, confidence: float = 0.95, eps: float = EPS) -> Estimate:
  """Log loss (models.metrics.logloss) with the interval of a mean of i.i.d. per-example losses."""
  return mean_estimate(example_losses(labels, predictions, eps), confidence)


def logloss_difference(labels, candidate, baseline, confidence: float = 0.95, eps: float = EPS) -> Estimate:
  """Paired logloss(candidate) - logloss(baseline) (> 0: the candidate is worse).

      d_i = l_i(candidate) - l_i(baseline),   mean(d) +- z * sd(d) / sqrt(n)
  """
  losses = example_losses(labels, candidate, eps) - example_losses(labels, baseline, eps)
  return mean_estimate(losses, confidence, test=True)


def constant_rate(labels, eps: float = EPS) -> float:
  """The click rate of the examples, clipped like a prediction; nan without examples."""
  y = _binary(labels)
  return float(np.clip(y.mean(), eps, 1 - eps)) if y.size else math.nan


def constant_logloss(labels, eps: float = EPS) -> float:
  """Log loss of predicting the examples' own click rate r for all: the label entropy H(r)."""
  r = constant_rate(labels, eps)
  return float(-(r * math.log(r) + (1 - r) * math.log1p(-r))) if not math.isnan(r) else math.nan


def logloss_versus_constant(labels, predictions, confidence: float = 0.95, eps: float = EPS) -> Estimate:
  """Paired logloss(model) - logloss(constant click rate) (> 0: worse than predicting the rate)."""
  y = _binary(labels)
  return logloss_difference(y, predictions, np.full(y.size, constant_rate(y, eps)), confidence, eps)


def calibration_figures(labels, predictions, n_bins: int = 10, eps: float = EPS) -> Calibration:
  """Log loss, constant-rate log loss, calibration ratio and the reliability curve of one set of examples.

  Reliability bins hold equal counts (the examples sorted by prediction, cut into `n_bins` near-equal
  runs; tied predictions may straddle a cut): CTR predictions crowd near 0, so equal-width bins on
  [0, 1] would put nearly every example into the first bin. Each bin reports its prediction range,
  mean prediction, observed click rate and count; a set of fewer than `n_bins` examples gets one bin
  per example.
  """
  y, p = _binary(labels), _floats(predictions)
  if y.size == 0:
    return Calibration(0, math.nan, math.nan, math.nan, math.nan, math.nan, [])
  order = np.argsort(p, kind='stable')
  bins = [ReliabilityBin(float(p[idx[0]]), float(p[idx[-1]]), float(p[idx].mean()), float(y[idx].mean()),
                         int(idx.size))
          for idx in np.array_split(order, min(n_bins, y.size))]
  rate = float(y.mean())
  return Calibration(
      count=int(y.size), click_rate=rate, mean_prediction=float(p.mean()),
      ratio=float(p.mean() / rate) if rate > 0 else math.nan,
      logloss=float(example_losses(y, p, eps).mean()), constant_logloss=constant_logloss(y, eps),
      reliability=bins)


def split_by_domain(domains) -> Dict[Hashable, np.ndarray]:
  """{domain: indices of its examples}, domains in sorted order."""
  values, inverse = np.unique(np.asarray(domains).reshape(-1), return_inverse=True)
  order = np.argsort(inverse, kind='stable')
  splits = np.split(order, np.cumsum(np.bincount(inverse, minlength=values.size))[:-1])
  return {(v.item() if isinstance(v, np.generic) else v): idx for v, idx in zip(values, splits)}


def to_jsonable(value: Any) -> Any:
  """Dataclasses, dicts, sequences and NumPy scalars as JSON types; nan and inf become None."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
  if isinstance(value, dict):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


def _compares(weights) -> bool:
  """Whether a contrast compares models (its weights sum to 0, so equal models give 0): then it is tested."""
  return abs(float(np.sum(weights))) < 1e-12


def _domain_delongs(labels, domains, scores) -> List[Tuple[int, DeLong]]:
  """(n_d, DeLong of every model on domain d) per domain."""
  y = _binary(labels)
  s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
  return [(idx.size, delong(y[idx], s[:, idx])) for idx in split_by_domain(domains).values()]


def _binary(labels) -> np.ndarray:
  """Labels as float64 0/1 (label > 0 is a positive)."""
  return (_floats(labels) > 0).astype(np.float64)


def _floats(values) -> np.ndarray:
  """values as a flat float64 array."""
  return np.asarray(values, dtype=np.float64).reshape(-1)
