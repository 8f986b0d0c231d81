"""Metric definitions shared by the TFX Evaluator and the benchmark harness.

Plain numpy: importable without TensorFlow. Labels are binary (> 0 is a
positive), predictions are probabilities in [0, 1].
"""
import numpy as np

N_BUCKETS = 10_000
"""Equal-width prediction buckets on [0, 1] used by the streaming (histogram)
AUC; with 1e-4 wide buckets it agrees with the exact AUC to ~1e-3."""


def auc_from_histograms(pos_hist, neg_hist):
    """ROC AUC from positive/negative weight histograms over ordered scores.

    Bucket b holds the positive weight pos_b and negative weight neg_b of the
    b-th lowest score (bucket). With P = sum(pos), N = sum(neg):

        AUC = sum_b pos_b * (sum_{c<b} neg_c + neg_b / 2) / (P * N)

    i.e. P(score+ > score-) + 1/2 P(score+ == score-); pairs in the same
    bucket count 1/2. Returns nan when P == 0 or N == 0 (only one class).
    """
    pos = np.asarray(pos_hist, dtype=np.float64)
    neg = np.asarray(neg_hist, dtype=np.float64)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float('nan')
    neg_below = np.cumsum(neg) - neg
    return float(np.dot(pos, neg_below + 0.5 * neg) / (total_pos * total_neg))


def bucketize(predictions, n_buckets=N_BUCKETS):
    """Bucket index of each prediction: min(floor(p * n_buckets), n_buckets-1),
    with p clipped to [0, 1]."""
    p = np.clip(_floats(predictions), 0.0, 1.0)
    return np.minimum((p * n_buckets).astype(np.int64), n_buckets - 1)


def histograms(labels, predictions, weights=None, n_buckets=N_BUCKETS):
    """(pos_hist, neg_hist): per-bucket summed weight of positives and of
    negatives (weights default to 1, i.e. counts)."""
    labels, weights = _labels_and_weights(labels, weights)
    idx = bucketize(predictions, n_buckets)
    pos = np.bincount(idx, weights=weights * labels, minlength=n_buckets)
    neg = np.bincount(idx, weights=weights * (1 - labels), minlength=n_buckets)
    return pos, neg


def auc(labels, predictions, weights=None):
    """Exact ROC AUC (Mann-Whitney): P(s+ > s-) + 1/2 P(s+ == s-).

    Each (positive i, negative j) pair counts w_i * w_j; ties count 1/2.
    Computed as auc_from_histograms with one bucket per distinct prediction.
    Returns nan if only one class is present.
    """
    labels, weights = _labels_and_weights(labels, weights)
    _, idx = np.unique(_floats(predictions), return_inverse=True)
    pos = np.bincount(idx, weights=weights * labels)
    neg = np.bincount(idx, weights=weights * (1 - labels))
    return auc_from_histograms(pos, neg)


def logloss(labels, predictions, eps=1e-7):
    """Mean binary cross-entropy: -mean(y log p + (1 - y) log(1 - p)),
    with p clipped to [eps, 1 - eps]."""
    y = _binary(labels)
    p = np.clip(_floats(predictions), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration(labels, predictions):
    """mean(p) / mean(y): 1 is calibrated, > 1 over-predicts. nan if no
    positives."""
    y = _binary(labels)
    if y.sum() == 0:
        return float('nan')
    return float(_floats(predictions).mean() / y.mean())


def per_domain_auc(labels, predictions, domains):
    """{domain: (auc, count)} with auc over that domain's examples (nan if the
    domain has a single class) and count its number of examples."""
    labels, predictions = _binary(labels), _floats(predictions)
    return {d: (auc(labels[idx], predictions[idx]), len(idx))
            for d, idx in _groups(domains)}


def weighted_mean_auc(aucs_and_counts):
    """sum_g n_g * auc_g / sum_g n_g over (auc_g, n_g) pairs, skipping groups
    whose AUC is nan (single class). nan if no group is left."""
    pairs = [(a, n) for a, n in aucs_and_counts if not np.isnan(a)]
    total = sum(n for _, n in pairs)
    if total <= 0:
        return float('nan')
    return float(sum(a * n for a, n in pairs) / total)


def wauc(labels, predictions, domains):
    """Domain-weighted AUC: sum_d n_d * AUC_d / sum_d n_d, n_d = number of
    examples of domain d; single-class domains are skipped."""
    return weighted_mean_auc(
        per_domain_auc(labels, predictions, domains).values())


def gauc(labels, predictions, users):
    """Group (user) AUC: sum_u n_u * AUC_u / sum_u n_u, n_u = impressions of
    user u; users with only one class are skipped."""
    per_user = per_domain_auc(labels, predictions, users)
    return weighted_mean_auc(per_user.values())


def revenue_at_k(revenue, scores, domains, k):
    """{domain: revenue per exposure of its top k}: within each domain, the
    mean revenue of the k exposures with the highest scores (all of them in a
    domain with fewer than k; equal scores keep their row order),

        revenue@k_d = (1 / k) sum_{i in top_k(s | d)} r_i

    the value a ranker that shows k of a domain's candidates earns per slot."""
    if int(k) != k or k < 1:
        raise ValueError(f'k is the number of top-ranked exposures per domain, '
                         f'a whole number >= 1; got {k}.')
    revenue, scores = _floats(revenue), _floats(scores)
    result = {}
    for domain, idx in _groups(domains):
        top = idx[np.argsort(-scores[idx], kind='stable')[:int(k)]]
        result[domain] = float(revenue[top].mean())
    return result


def domain_report(labels, predictions, domains, users=None):
    """Per-domain and overall metrics.

    Returns {'domains': {d: {'auc', 'logloss', 'calibration', 'count'}},
    'auc', 'logloss', 'calibration', 'wauc', 'count'} plus 'gauc' if users
    is given.
    """
    labels, predictions = _binary(labels), _floats(predictions)
    report = {'domains': {d: _summary(labels[idx], predictions[idx])
                          for d, idx in _groups(domains)}}
    report.update(_summary(labels, predictions))
    report['wauc'] = wauc(labels, predictions, domains)
    if users is not None:
        report['gauc'] = gauc(labels, predictions, users)
    return report


def _summary(labels, predictions):
    """auc / logloss / calibration / count of one set of examples."""
    return {'auc': auc(labels, predictions),
            'logloss': logloss(labels, predictions),
            'calibration': calibration(labels, predictions),
            'count': int(len(labels))}


def _binary(labels):
    """Labels as float64 0/1 (label > 0 is a positive)."""
    return (_floats(labels) > 0).astype(np.float64)


def _labels_and_weights(labels, weights):
    """Binary labels and float weights (ones when weights is None)."""
    y = _binary(labels)
    w = np.ones_like(y) if weights is None else _floats(weights)
    return y, w


def _floats(values):
    """values as a flat float64 array."""
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _groups(keys):
    """Yields (key, indices of the examples with that key) for each distinct
    key in sorted order; O(n log n), so cheap for many users too."""
    values, inverse, counts = np.unique(
        np.asarray(keys).reshape(-1), return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind='stable')
    splits = np.split(order, np.cumsum(counts)[:-1])
    for value, idx in zip(values, splits):
        yield (value.item() if isinstance(value, np.generic) else value), idx
