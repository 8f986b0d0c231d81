"""Hand-computed checks of models/metrics.py."""
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from models import metrics

# Shared example (domain, label, prediction):
#   a: (1, .9) (0, .8) (1, .4) (0, .1)
#   b: (0, .4) (1, .7) (0, .2)
#   c: (0, .1)                      <- single class, skipped by WAUC
DOMAINS = ['a', 'a', 'a', 'a', 'b', 'b', 'b', 'c']
LABELS = [1, 0, 1, 0, 0, 1, 0, 0]
PREDS = [0.9, 0.8, 0.4, 0.1, 0.4, 0.7, 0.2, 0.1]
# AUC_a: pos {.9, .4} vs neg {.8, .1}: .9 wins 2, .4 wins 1 -> 3/4 = 0.75
# AUC_b: pos {.7} vs neg {.4, .2}: wins 2 -> 2/2 = 1.0
# WAUC = (4 * 0.75 + 3 * 1.0) / (4 + 3) = 6/7
# overall: pos {.9, .4, .7} vs neg {.8, .1, .4, .2, .1} (15 pairs):
#   .9 wins 5; .4 wins 3 + tie with .4 (1/2) = 3.5; .7 wins 4 -> 12.5/15
WAUC = 6 / 7
AUC = 12.5 / 15


def test_auc_hand_example_with_tie():
    assert metrics.auc(LABELS, PREDS) == pytest.approx(AUC)


def test_auc_weighted():
    # pairs (pos .8, w1) x (neg .9, w2): loss, weight 1*2 = 2
    #       (pos .8, w1) x (neg .1, w3): win,  weight 1*3 = 3  -> 3/5
    assert metrics.auc([1, 0, 0], [0.8, 0.9, 0.1], [1, 2, 3]) == \
        pytest.approx(0.6)


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    p = np.round(rng.random(2000), 2)  # many ties
    assert metrics.auc(y, p) == pytest.approx(roc_auc_score(y, p))


def test_auc_single_class_is_nan():
    assert math.isnan(metrics.auc([1, 1], [0.2, 0.3]))
    assert math.isnan(metrics.auc([0, 0], [0.2, 0.3]))


def test_logloss():
    # -(ln .8 + ln(1 - .4)) / 2 = (0.223144 + 0.510826) / 2 = 0.366985
    assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx(0.366985,
                                                                abs=1e-6)


def test_logloss_clips_extremes():
    # p = 0 for a positive is clipped to eps: -ln(1e-7) = 16.118
    assert metrics.logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))


def test_calibration():
    # mean p = (.6 + .2 + .2 + .2) / 4 = 0.3; positive rate = 1/4 -> 1.2
    assert metrics.calibration([1, 0, 0, 0], [0.6, 0.2, 0.2, 0.2]) == \
        pytest.approx(1.2)
    assert math.isnan(metrics.calibration([0, 0], [0.1, 0.2]))


def test_per_domain_auc():
    result = metrics.per_domain_auc(LABELS, PREDS, DOMAINS)
    assert set(result) == {'a', 'b', 'c'}
    assert result['a'] == (pytest.approx(0.75), 4)
    assert result['b'] == (pytest.approx(1.0), 3)
    assert math.isnan(result['c'][0]) and result['c'][1] == 1


def test_wauc_skips_single_class_domains():
    assert metrics.wauc(LABELS, PREDS, DOMAINS) == pytest.approx(WAUC)
    assert math.isnan(metrics.wauc([1, 0], [0.3, 0.2], ['a', 'b']))


def test_wauc_accepts_bytes_domains():
    domains = np.array([d.encode() for d in DOMAINS])
    assert metrics.wauc(LABELS, PREDS, domains) == pytest.approx(WAUC)


def test_gauc_skips_single_class_users():
    # u1: (1, .6) (0, .3)          -> AUC 1.0, 2 impressions
    # u2: (1, .2) (0, .5) (0, .1)  -> .2 beats .1 only -> 1/2, 3 impressions
    # u3: (1, .9) (1, .4)          -> single class, skipped
    # GAUC = (2 * 1.0 + 3 * 0.5) / 5 = 0.7
    users = ['u1', 'u1', 'u2', 'u2', 'u2', 'u3', 'u3']
    labels = [1, 0, 1, 0, 0, 1, 1]
    preds = [0.6, 0.3, 0.2, 0.5, 0.1, 0.9, 0.4]
    assert metrics.gauc(labels, preds, users) == pytest.approx(0.7)


def test_domain_report():
    users = ['u1', 'u1', 'u1', 'u1', 'u2', 'u2', 'u2', 'u2']
    report = metrics.domain_report(LABELS, PREDS, DOMAINS, users=users)
    assert report['auc'] == pytest.approx(AUC)
    assert report['wauc'] == pytest.approx(WAUC)
    # u1 = domain a (AUC .75, n 4); u2 = b + c: pos {.7} vs neg {.4, .2, .1}
    # -> 1.0, n 4; GAUC = (4 * .75 + 4 * 1) / 8 = 0.875
    assert report['gauc'] == pytest.approx(0.875)
    assert report['logloss'] == pytest.approx(metrics.logloss(LABELS, PREDS))
    assert report['count'] == 8
    a = report['domains']['a']
    # domain a: mean p = 2.2 / 4 = .55, positive rate 2/4 -> 1.1
    assert a['auc'] == pytest.approx(0.75)
    assert a['calibration'] == pytest.approx(1.1)
    assert a['count'] == 4
    assert a['logloss'] == pytest.approx(
        metrics.logloss([1, 0, 1, 0], [0.9, 0.8, 0.4, 0.1]))
    assert 'gauc' not in metrics.domain_report(LABELS, PREDS, DOMAINS)


def test_histogram_auc_hand_example():
    # Each distinct prediction falls in its own bucket and the .4/.4 tie
    # shares one, so the histogram AUC is exact here.
    pos, neg = metrics.histograms(LABELS, PREDS)
    assert pos.shape == neg.shape == (metrics.N_BUCKETS,)
    assert metrics.auc_from_histograms(pos, neg) == pytest.approx(AUC)


def test_bucketize_edges():
    n = metrics.N_BUCKETS
    np.testing.assert_array_equal(
        metrics.bucketize([-0.5, 0.0, 0.5, 1.0, 1.5]),
        [0, 0, n // 2, n - 1, n - 1])


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_histogram_auc_close_to_exact_auc(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 20_000)
    p = 1 / (1 + np.exp(-(rng.normal(size=y.size) + y)))
    pos, neg = metrics.histograms(y, p)
    assert metrics.auc_from_histograms(pos, neg) == pytest.approx(
        metrics.auc(y, p), abs=1e-3)


def test_histogram_auc_single_class_is_nan():
    pos, neg = metrics.histograms([1, 1], [0.2, 0.9])
    assert math.isnan(metrics.auc_from_histograms(pos, neg))


def test_revenue_at_k_by_hand():
    revenue = [5.0, 0.0, 1.0, -2.0, 3.0, 0.0]
    scores = [0.9, 0.8, 0.1, 0.7, 0.2, 0.6]
    domains = ['a', 'a', 'a', 'b', 'b', 'b']
    # a ranks 5, 0, 1; b ranks -2, 0, 3
    assert metrics.revenue_at_k(revenue, scores, domains, 1) == {'a': 5.0, 'b': -2.0}
    assert metrics.revenue_at_k(revenue, scores, domains, 2) == {'a': 2.5, 'b': -1.0}
    assert metrics.revenue_at_k(revenue, scores, domains, 10) == pytest.approx({'a': 2.0, 'b': 1 / 3})  # all rows
    better = metrics.revenue_at_k(revenue, revenue, domains, 1)  # ranked by the revenue itself: the best
    assert better == {'a': 5.0, 'b': 3.0}
    with pytest.raises(ValueError, match='k is the number of top-ranked exposures'):
        metrics.revenue_at_k(revenue, scores, domains, 0)
