"""models/significance.py against direct computations, a brute-force DeLong and simulated coverage."""
import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from models import metrics
from models import significance as sig

Z95 = stats.norm.ppf(0.975)


def _tied_data(n=600, k=3, seed=0):
  """Labels and k correlated score vectors rounded to 2 decimals: many ties within and across classes."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  base = y * 0.6 + rng.normal(size=n)
  scores = np.stack([np.round(stats.norm.cdf(base + rng.normal(0, 0.5 + i, n)), 2) for i in range(k)])
  return y, scores


def _brute_force_delong(y, scores):
  """DeLong from the definition, O(K m n): psi = 1 if x > y, 1/2 if x == y, else 0 per (positive, negative)
  pair; placements V10 = mean over negatives, V01 = mean over positives; S = S10 / m + S01 / n with
  S10[k, l] = sum_i (V10_k,i - AUC_k)(V10_l,i - AUC_l) / (m - 1)."""
  pos, neg = scores[:, y == 1], scores[:, y == 0]
  m, n = pos.shape[1], neg.shape[1]
  psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
  aucs = psi.mean(axis=(1, 2))
  v10 = psi.mean(axis=2) - aucs[:, None]
  v01 = psi.mean(axis=1) - aucs[:, None]
  return aucs, v10 @ v10.T / (m - 1) / m + v01 @ v01.T / (n - 1) / n


def test_delong_auc_matches_metrics_and_sklearn_with_ties():
  y, scores = _tied_data()
  result = sig.delong(y, scores)
  for k in range(scores.shape[0]):
    assert result.aucs[k] == pytest.approx(metrics.auc(y, scores[k]), abs=1e-12)
    assert result.aucs[k] == pytest.approx(roc_auc_score(y, scores[k]), abs=1e-12)
  assert (result.positives, result.negatives) == (int(y.sum()), int((1 - y).sum()))


def test_delong_covariance_equals_brute_force_placements_with_ties():
  y, scores = _tied_data()
  aucs, covariance = _brute_force_delong(y, scores)
  result = sig.delong(y, scores)
  np.testing.assert_allclose(result.aucs, aucs, rtol=0, atol=1e-12)
  np.testing.assert_allclose(result.covariance, covariance, rtol=0, atol=1e-12)


def test_auc_difference_is_the_paired_delong_z_test():
  y, scores = _tied_data()
  aucs, s = _brute_force_delong(y, scores[:2])
  diff = sig.auc_difference(y, scores[0], scores[1], confidence=0.9)
  se = math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
  assert diff.value == pytest.approx(aucs[0] - aucs[1], abs=1e-12)
  assert diff.se == pytest.approx(se, rel=1e-9)
  z90 = stats.norm.ppf(0.95)
  assert (diff.lower, diff.upper) == pytest.approx((diff.value - z90 * se, diff.value + z90 * se), rel=1e-9)
  assert diff.p_value == pytest.approx(2 * stats.norm.sf(abs(diff.value) / se), rel=1e-9)
  single = sig.auc_interval(y, scores[0])
  assert single.se == pytest.approx(math.sqrt(s[0, 0]), rel=1e-9) and math.isnan(single.p_value)


def test_identical_scores_give_difference_zero_with_se_zero():
  y, scores = _tied_data()
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # no division warnings
    diff = sig.auc_difference(y, scores[0], scores[0])
  assert (diff.value, diff.se, diff.lower, diff.upper, diff.p_value) == (0.0, 0.0, 0.0, 0.0, 1.0)


def test_single_class_and_single_positive_cannot_be_computed_without_raising():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    none = sig.auc_interval([0, 0, 0], [0.1, 0.2, 0.3])
    one = sig.auc_difference([1, 0, 0], [0.9, 0.2, 0.3], [0.1, 0.2, 0.3])
  assert math.isnan(none.value) and math.isnan(none.upper)
  assert one.value == pytest.approx(1.0) and math.isnan(one.se) and math.isnan(one.p_value)
  assert sig.to_jsonable(none) == {'value': None, 'se': None, 'lower': None, 'upper': None,
                                   'confidence': 0.95, 'p_value': None}


def test_interval_covers_the_true_auc_and_wauc_difference_about_95_percent():
  """Binormal scores: positives N(mu_k, 1), negatives N(0, 1), the two models' scores of an example
  correlated (rho), so AUC_k = Phi(mu_k / sqrt(2)). Domain a: 100 + 100, domain b: 60 + 140 examples."""
  rng = np.random.default_rng(7)
  reps, rho = 400, 0.5
  domains = [('a', 100, 100, (1.2, 0.9)), ('b', 60, 140, (0.6, 0.8))]
  true = {d: stats.norm.cdf(mu[0] / math.sqrt(2)) - stats.norm.cdf(mu[1] / math.sqrt(2))
          for d, _, _, mu in domains}
  true_wauc = sum(0.5 * t for t in true.values())  # both domains hold 200 examples
  labels = np.concatenate([np.r_[np.ones(m), np.zeros(n)] for _, m, n, _ in domains])
  names = np.concatenate([[d] * (m + n) for d, m, n, _ in domains])
  covered_auc = covered_wauc = 0
  for _ in range(reps):
    scores = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=labels.size)
    scores[(labels == 1) & (names == 'a')] += domains[0][3]
    scores[(labels == 1) & (names == 'b')] += domains[1][3]
    a = names == 'a'
    diff = sig.auc_difference(labels[a], scores[a, 0], scores[a, 1])
    covered_auc += diff.lower <= true['a'] <= diff.upper
    wauc = sig.wauc_difference(labels, names, scores[:, 0], scores[:, 1])
    covered_wauc += wauc.lower <= true_wauc <= wauc.upper
  low, high = stats.binom.interval(0.999, reps, 0.95)
  assert low <= covered_auc <= high
  assert low <= covered_wauc <= high


def test_logloss_difference_against_direct_computation():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 500)
  candidate, baseline = rng.random(500), rng.random(500)
  candidate[:3] = [0.0, 1.0, 1.0]  # clipped like metrics.logloss
  diff = sig.logloss_difference(y, candidate, baseline)
  assert diff.value == pytest.approx(metrics.logloss(y, candidate) - metrics.logloss(y, baseline), abs=1e-12)

  def losses(p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))
  d = losses(candidate) - losses(baseline)
  se = d.std(ddof=1) / math.sqrt(d.size)
  assert diff.se == pytest.approx(se, rel=1e-9)
  assert (diff.lower, diff.upper) == pytest.approx((d.mean() - Z95 * se, d.mean() + Z95 * se), rel=1e-9)
  assert diff.p_value == pytest.approx(2 * stats.norm.sf(abs(d.mean()) / se), rel=1e-9)
  single = sig.logloss_interval(y, candidate)
  assert single.value == pytest.approx(metrics.logloss(y, candidate), abs=1e-12)
  assert single.se == pytest.approx(losses(candidate).std(ddof=1) / math.sqrt(500), rel=1e-9)


def test_wauc_difference_against_direct_computation():
  y, scores = _tied_data(n=900)
  domains = np.array(['a'] * 400 + ['b'] * 300 + ['c'] * 197 + ['d'] * 3)
  y[700:897] = 0  # c: a single class, left out of the weights
  y[897:] = [1, 0, 0]  # d: one positive, AUC defined, DeLong variance not
  diff = sig.wauc_difference(y, domains, scores[0], scores[1])
  assert diff.value == pytest.approx(
      metrics.wauc(y, scores[0], domains) - metrics.wauc(y, scores[1], domains), abs=1e-12)
  weights = {'a': 400 / 703, 'b': 300 / 703, 'd': 3 / 703}
  variance = sum(weights[d] ** 2 * sig.auc_difference(y[domains == d], scores[0][domains == d],
                                                      scores[1][domains == d]).se ** 2 for d in 'ab')
  variance += weights['d'] ** 2 * 1.0  # the largest variance of a difference in [-1, 1]
  assert diff.se == pytest.approx(math.sqrt(variance), rel=1e-9)
  single = sig.wauc_interval(y, domains, scores[0])
  assert single.value == pytest.approx(metrics.wauc(y, scores[0], domains), abs=1e-12)
  single_variance = sum(weights[d] ** 2 * sig.auc_interval(
      y[domains == d], scores[0][domains == d]).se ** 2 for d in 'ab') + weights['d'] ** 2 / 4
  assert single.se == pytest.approx(math.sqrt(single_variance), rel=1e-9)


def test_wauc_of_single_class_domains_only_cannot_be_computed():
  diff = sig.wauc_difference([0, 0, 1], ['a', 'a', 'b'], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
  assert math.isnan(diff.value) and math.isnan(diff.upper)


def test_constant_logloss_is_the_label_entropy():
  y = np.r_[np.ones(37), np.zeros(163)]
  r = 37 / 200
  assert sig.constant_logloss(y) == pytest.approx(stats.entropy([r, 1 - r]), rel=1e-12)
  assert sig.constant_logloss(y) == pytest.approx(metrics.logloss(y, np.full(200, r)), rel=1e-12)
  # The model that predicts the rate is the constant: difference 0, SE 0.
  versus = sig.logloss_versus_constant(y, np.full(200, r))
  assert (versus.value, versus.se, versus.p_value) == (pytest.approx(0.0, abs=1e-15), 0.0, 1.0)


def test_calibration_figures():
  rng = np.random.default_rng(2)
  p = rng.random(1003) * 0.2
  y = (rng.random(1003) < p).astype(int)
  figures = sig.calibration_figures(y, p)
  assert figures.ratio == pytest.approx(metrics.calibration(y, p), rel=1e-12)
  assert figures.logloss == pytest.approx(metrics.logloss(y, p), rel=1e-12)
  assert figures.constant_logloss == pytest.approx(stats.entropy([y.mean(), 1 - y.mean()]), rel=1e-12)
  bins = figures.reliability
  assert len(bins) == 10 and {b.count for b in bins} == {100, 101} and sum(b.count for b in bins) == 1003
  assert all(a.upper <= b.lower for a, b in zip(bins, bins[1:]))
  assert sum(b.observed_rate * b.count for b in bins) == pytest.approx(y.sum())
  assert sum(b.mean_prediction * b.count for b in bins) == pytest.approx(p.sum())
  assert len(sig.calibration_figures([1, 0, 0], [0.3, 0.1, 0.2]).reliability) == 3


def test_calibration_figures_without_positives_or_examples():
  no_clicks = sig.calibration_figures([0, 0], [0.1, 0.2])
  assert math.isnan(no_clicks.ratio) and no_clicks.click_rate == 0.0
  empty = sig.to_jsonable(sig.calibration_figures([], []))
  assert empty['count'] == 0 and empty['logloss'] is None and empty['reliability'] == []


def test_normal_estimate_and_json():
  estimate = sig.normal_estimate(Z95, 1.0, 0.95, test=True)
  assert estimate.p_value == pytest.approx(0.05) and estimate.lower == pytest.approx(0.0, abs=1e-12)
  assert math.isnan(sig.normal_estimate(1.0, math.nan, 0.95, test=True).p_value)
  assert sig.normal_estimate(0.2, 0.0, 0.95, test=True).p_value == 0.0
  value = {'a': [np.float64(np.nan), np.int64(3), np.inf], b'k': (np.bool_(True), 'x')}
  assert json.dumps(sig.to_jsonable(value), allow_nan=False) == '{"a": [null, 3, null], "b\'k\'": [true, "x"]}'


def test_split_by_domain():
  groups = sig.split_by_domain(np.array(['b', 'a', 'b', 'c', 'a']))
  assert list(groups) == ['a', 'b', 'c']
  assert [idx.tolist() for idx in groups.values()] == [[1, 4], [0, 2], [3]]
