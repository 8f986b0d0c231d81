"""Per-domain Platt scaling of the click logit, fitted after training on the eval split."""
import os
from typing import Optional, Sequence

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models.layers.domain import domain_slots  # noqa: E402

SCALE, SHIFT = 0, 1  # the columns of `DomainCalibration.calibration`
WEAK_PRIOR = 1.0  # `fit_domain_calibration`'s prior weight toward the identity: a few examples' worth


@tf_keras.utils.register_keras_serializable(package='mdctr')
class DomainCalibration(tf_keras.layers.Layer):
  """Platt scaling per domain: the calibrated logit of an example of domain d is

      z' = a_d * z + b_d,        p = sigmoid(z')

  with one (a_d, b_d) per known domain and one for the unknown-domain slot (an index outside the known
  list, `domain_slots`). The weight `calibration` [num_domains + 1, 2] holds (a_d, b_d) row by row, one row
  per domain like the domain embedding, so the cross-run weight copies (`models.warm_start`) map its rows the
  same way. It starts at a = 1, b = 0 (z' = z) and is never trained by gradient: `fit_platt` sets it from a
  model's eval-split logits once training is over (`models.trainer`), which corrects the over-confidence a
  model picks up by memorizing ids, domain by domain, without moving the ranking within a domain.

  Called on [logit [batch, 1], domain index [batch]]; returns the calibrated logit [batch, 1].

  Args:
    num_domains: The number of known domains.
  """

  def __init__(self, num_domains: int, **kwargs):
    kwargs.setdefault('trainable', False)
    super().__init__(**kwargs)
    self.num_domains = int(num_domains)

  def build(self, input_shape):
    identity = np.tile(np.array([[1.0, 0.0]], np.float32), [self.num_domains + 1, 1])
    self.calibration = self.add_weight('calibration', shape=(self.num_domains + 1, 2),
                                       initializer=tf_keras.initializers.Constant(identity), trainable=False)
    super().build(input_shape)

  def call(self, inputs):
    logit, domain_index = inputs
    scale_shift = tf.gather(self.calibration, domain_slots(domain_index, self.num_domains))
    return logit * scale_shift[:, SCALE:SCALE + 1] + scale_shift[:, SHIFT:SHIFT + 1]

  def compute_output_shape(self, input_shape):
    return input_shape[0]

  def get_config(self):
    config = super().get_config()
    config.update(num_domains=self.num_domains)
    return config


def fit_platt(logits: np.ndarray, labels: np.ndarray, prior: Sequence[float] = (1.0, 0.0),
              prior_weight: float = 0.0, iterations: int = 50) -> np.ndarray:
  """(a, b) minimizing the log loss of sigmoid(a * logits + b) on `labels`, plus
  `prior_weight` / 2 * |(a, b) - prior|^2: Newton's method on the two parameters (the problem is convex), each
  step halved until the objective decreases (a full step from far away, e.g. from a = 1 on an overconfident
  model's large logits, overshoots). The prior keeps a domain with few eval examples near it (a domain without
  any gets the prior itself), and bounds the fit on examples of one class alone."""
  x = np.stack([np.asarray(logits, np.float64).ravel(), np.ones(np.size(logits))], axis=1)
  y = np.asarray(labels, np.float64).ravel()
  prior = np.asarray(prior, np.float64)

  def objective(theta):
    z = x @ theta  # log(1 + e^z) - y z, the log loss, without overflow
    return np.sum(np.logaddexp(0.0, z) - y * z) + prior_weight / 2 * np.sum((theta - prior) ** 2)

  theta = prior.copy()
  for _ in range(iterations):
    p = 0.5 * (1.0 + np.tanh(0.5 * (x @ theta)))  # sigmoid, without overflow
    gradient = x.T @ (p - y) + prior_weight * (theta - prior)
    hessian = (x * (p * (1.0 - p))[:, None]).T @ x + (prior_weight + 1e-9) * np.eye(2)  # never singular
    step = np.linalg.solve(hessian, gradient)
    current = objective(theta)
    while not objective(theta - step) <= current and np.abs(step).max() > 1e-12:  # NaN counts as worse
      step /= 2
    theta -= step
    if np.abs(step).max() < 1e-9:
      break
  return theta


def fit_domain_calibration(layer: DomainCalibration, logits: np.ndarray, labels: np.ndarray, slots: np.ndarray,
                           unknown_logits: Optional[np.ndarray] = None, domains: Optional[Sequence[int]] = None,
                           prior_weight: float = 10.0) -> np.ndarray:
  """Sets `layer`'s (a_d, b_d) from uncalibrated eval logits and returns the new weight.

  A pooled fit over every example is the prior of each domain's own fit (`fit_platt`, `prior_weight`), so a
  small domain borrows strength from the others; the pooled fit and the unknown slot's are held near the
  identity by a weak prior (`WEAK_PRIOR`), which only matters on a handful of examples. `unknown_logits`: the
  same examples scored as an unknown domain, which fit the unknown-domain slot. `domains`: the slots to fit
  (all known ones and the unknown slot by default; onboarding fits its new domains alone, the others keep the
  production model's values).
  """
  logits, labels, slots = (np.asarray(a).ravel() for a in (logits, labels, slots))
  pooled = fit_platt(logits, labels, prior_weight=WEAK_PRIOR)
  value = layer.calibration.numpy()
  for slot in range(layer.num_domains) if domains is None else domains:
    rows = slots == slot
    value[slot] = fit_platt(logits[rows], labels[rows], prior=pooled, prior_weight=prior_weight)
  if unknown_logits is not None and domains is None:
    value[layer.num_domains] = fit_platt(unknown_logits, labels, prior_weight=WEAK_PRIOR)
  layer.calibration.assign(value.astype(np.float32))
  return value
