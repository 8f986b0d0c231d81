"""Constrained multi-task training: "improve CTR, but CVR AUC must not fall below 0.70" as a Lagrangian with a
learned, non-negative multiplier per constraint, raised by dual ascent on the validation batches while the
constraint is violated, so that the constraint binds only then.

A constraint is written `TASK_METRIC>=BOUND` for an AUC floor (`cvr_auc>=0.70`) or `TASK_METRIC<=BOUND` for
a loss ceiling (`cvr_loss<=0.3`), on a task the multi-task head trains (`models.heads.TARGETS`).
"""
import dataclasses
import logging
import os
import re
from typing import Dict, List, Optional, Sequence

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

_LOG = logging.getLogger(__name__)
AUC, LOSS = 'auc', 'loss'
# An AUC falls short of its floor by hundredths: a step of 10 moves the multiplier by tenths per update
# (an epoch), enough to bind within the Trainer's 5 epochs.
DUAL_STEP = 10.0
_SPEC = re.compile(r'^\s*(?P<task>\w+?)_(?P<metric>auc|loss)\s*(?P<op>>=|<=)\s*(?P<bound>[-+]?[0-9.]+(e[-+]?\d+)?)\s*$')
_FORMAT = 'TASK_auc>=BOUND (an AUC floor) or TASK_loss<=BOUND (a loss ceiling), like cvr_auc>=0.70 or cvr_loss<=0.3'


@dataclasses.dataclass(frozen=True)
class Constraint:
  """`task`'s `metric` (auc, a floor: value >= bound; loss, a ceiling: value <= bound) on the validation
  batches. Its violation is bound - value for a floor, value - bound for a ceiling: positive when broken."""
  task: str
  metric: str
  bound: float

  @property
  def name(self) -> str:
    """The metric's name in the multi-task model's logs (`cvr_auc`; `val_cvr_auc` on validation)."""
    return f'{self.task}_{self.metric}'

  def violation(self, value: float) -> float:
    return self.bound - value if self.metric == AUC else value - self.bound

  def __str__(self) -> str:
    return f'{self.name}{">=" if self.metric == AUC else "<="}{self.bound:g}'


def parse_constraint(text: str, tasks: Optional[Sequence[str]] = None) -> Constraint:
  """The `Constraint` written `text`; with `tasks` (the trained outputs), its task must be one of them.
  ValueError naming the spec and the fix for anything else."""
  match = _SPEC.match(text)
  if not match:
    raise ValueError(f'constraint {text!r}: expected {_FORMAT}.')
  task, metric, op, bound = match.group('task', 'metric', 'op', 'bound')
  bound = float(bound)
  if metric == AUC and op != '>=':
    raise ValueError(f'constraint {text!r}: an AUC constraint is a floor; write {task}_auc>={bound:g}.')
  if metric == LOSS and op != '<=':
    raise ValueError(f'constraint {text!r}: a loss constraint is a ceiling; write {task}_loss<={bound:g}.')
  if metric == AUC and not 0 < bound < 1:
    raise ValueError(f'constraint {text!r}: an AUC bound lies strictly between 0 and 1, like 0.70.')
  if metric == LOSS and not bound > 0:
    raise ValueError(f'constraint {text!r}: a loss bound is positive, like 0.3.')
  if tasks is not None and task not in tasks:
    raise ValueError(f'constraint {text!r}: task {task!r} is not trained by this head; choose one of {list(tasks)}.')
  return Constraint(task, metric, bound)


def check_dual_step(step: float) -> None:
  """ValueError for a dual ascent step that is not positive."""
  if not step > 0:
    raise ValueError(f'dual_step must be positive, like {DUAL_STEP:g}; got {step}.')


def dual_ascent(multipliers, violations, step: float = DUAL_STEP) -> np.ndarray:
  """Projected dual ascent on the Lagrangian's multipliers:

      lambda_c <- max(0, lambda_c + eta * v_c)

  with v_c the constraint's violation (positive when broken): lambda grows while the constraint is
  broken, shrinks back to 0 once it holds, and never goes negative (a satisfied constraint never pushes)."""
  return np.maximum(0.0, np.asarray(multipliers, np.float32) + step * np.asarray(violations, np.float32))


class Lagrangian(tf.Module):
  """The constraints' part of the training objective, with one multiplier lambda_c >= 0 per constraint:

      L(theta, lambda) = objective(theta) + sum_c lambda_c L_{t_c}(theta)

  An AUC is not differentiable: the term multiplies a differentiable surrogate, the task's loss L_t (lower
  loss, higher AUC), while lambda's update (`update`, `dual_ascent`) reads the constraint's actual metric.
  The multipliers start at 0 (the unconstrained objective) and are training state, not model weights.

  Args:
    constraints: The parsed constraints.
    tasks: The model's trained tasks, in the order of its task losses.
    step: eta, the dual ascent step.
  """

  def __init__(self, constraints: Sequence[Constraint], tasks: Sequence[str], step: float = DUAL_STEP):
    super().__init__(name='lagrangian')
    check_dual_step(step)
    self.constraints, self.step, self.num_tasks = list(constraints), float(step), len(tasks)
    self.task_indices = [list(tasks).index(c.task) for c in self.constraints]
    self.multipliers = tf.Variable(tf.zeros([len(self.constraints)]), trainable=False, name='multipliers')

  def terms(self, losses):
    """[K] lambda-weighted task losses, added to the per-task objective terms (the task losses [K] given):
    term_t = sum over the constraints c on task t of lambda_c L_t."""
    if not self.constraints:
      return tf.zeros_like(losses)
    weighted = self.multipliers * tf.gather(losses, self.task_indices)
    return tf.scatter_nd([[k] for k in self.task_indices], weighted, [self.num_tasks])

  def update(self, values: Dict[str, float]) -> List[float]:
    """One dual ascent step from the constraints' metrics ({name: value}); the new multipliers."""
    violations = [c.violation(values[c.name]) for c in self.constraints]
    multipliers = dual_ascent(self.multipliers.numpy(), violations, self.step)
    self.multipliers.assign(multipliers)
    return multipliers.tolist()


class DualAscent(tf_keras.callbacks.Callback):
  """At each epoch's end, a dual ascent step of `lagrangian`'s multipliers on the constraints' metrics as
  validation (fit's `validation_data`, the eval batches) measured them; `trajectory` keeps, per constraint
  (`str(constraint)`), every epoch's value and the multiplier after the step."""

  def __init__(self, lagrangian: Lagrangian):
    super().__init__()
    self.lagrangian = lagrangian
    self.trajectory = {str(c): [] for c in lagrangian.constraints}

  def on_epoch_end(self, epoch, logs=None):
    names = {c.name: f'val_{c.name}' for c in self.lagrangian.constraints}
    missing = [v for v in names.values() if v not in (logs or {})]
    if missing:
      raise ValueError(f'DualAscent reads {missing} from the validation logs: pass validation_data to fit.')
    values = {name: float(logs[key]) for name, key in names.items()}
    broken = sorted(name for name, value in values.items() if not np.isfinite(value))
    if broken:  # a NaN multiplier would turn every later step's objective NaN
      raise ValueError(f'DualAscent: validation {broken} not finite at epoch {epoch + 1}: the model diverged; lower '
                       'the learning rate or the dual_step.')
    multipliers = self.lagrangian.update(values)
    for constraint, multiplier in zip(self.lagrangian.constraints, multipliers):
      value = values[constraint.name]
      self.trajectory[str(constraint)].append({'epoch': epoch + 1, 'value': value, 'multiplier': multiplier})
      _LOG.info('constraint %s: %.4f on validation, multiplier %.4f', constraint, value, multiplier)
