"""Multi-task training: per-task masked losses, loss balancing (fixed, uncertainty, DWA), gradient surgery
(PCGrad, GradVac) and constraints (`models.constraints`), in the `train_step` of `MultiTaskModel`, the model
every head (`models.heads`) is built as."""
import dataclasses
import os
import types
from typing import Dict, Optional, Sequence

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models import constraints as constraints_lib  # noqa: E402
from models.heads import HEADS, TARGETS, Target  # noqa: E402

DWA_TEMPERATURE = 2.0
DWA_PERIOD = 100  # steps; the Trainer passes its epoch length
GRADVAC_BETA = 0.01  # the step of GradVac's moving average of each task pair's cosine


def masked_binary_crossentropy(labels, probabilities, mask=None):
  """Mean binary cross-entropy over the samples where `mask` is 1: sum_i m_i l_i / max(sum_i m_i, 1), so a
  masked sample's label and prediction never reach the loss (nor its gradient)."""
  labels = tf.reshape(tf.cast(labels, tf.float32), [-1, 1])
  losses = tf.reshape(tf_keras.backend.binary_crossentropy(labels, tf.reshape(probabilities, [-1, 1])), [-1])
  if mask is None:
    return tf.reduce_mean(losses)
  mask = tf.reshape(tf.cast(mask, tf.float32), [-1])
  return tf.reduce_sum(mask * losses) / tf.maximum(tf.reduce_sum(mask), 1.0)


class LossBalancing(tf.Module):
  """Turns the task losses [K] into the per-task terms of the training objective (their sum is minimized).
  The base form L = sum_t w_t L_t; subclasses say how the weights w_t are found."""

  def task_weights(self):
    """[K] the weights of the current step."""
    raise NotImplementedError

  def objective(self, losses):
    """[K] the per-task terms, given the task losses [K]."""
    return self.task_weights() * losses

  def update(self, losses):
    """Called after every training step with that step's task losses."""
    del losses  # fixed and learned weights keep no loss history


class FixedWeights(LossBalancing):
  """Constant weights (`task_weights`: {task: w}, 1 for a task not named)."""

  def __init__(self, tasks, task_weights: Optional[Dict[str, float]] = None, **unused):
    super().__init__(name='fixed_weights')
    self._weights = tf.constant([float((task_weights or {}).get(t, 1.0)) for t in tasks])

  def task_weights(self):
    return self._weights


class UncertaintyWeighting(LossBalancing):
  """Homoscedastic uncertainty weighting (Kendall et al., CVPR'18), the classification form for every task,
  with learned log-variances s_t = log sigma_t^2:

      L = sum_t exp(-s_t) L_t + s_t

  The weight exp(-s_t) settles at 1 / L_t: a task whose loss stays high (noisy labels) is weighted down.
  s_t starts at 0 (weight 1) and trains with the model."""

  def __init__(self, tasks, **unused):
    super().__init__(name='uncertainty_weighting')
    self.log_variances = tf.Variable(tf.zeros([len(tasks)]), name='log_variances')

  def task_weights(self):
    return tf.exp(-self.log_variances)

  def objective(self, losses):
    return self.task_weights() * losses + self.log_variances


def dwa_weights(older, newer, temperature: float = DWA_TEMPERATURE):
  """Dynamic Weight Average (Liu et al., CVPR'19), from the task losses of the two latest periods:

      w_k = K exp(r_k / T) / sum_i exp(r_i / T),    r_k = L_k(t-1) / L_k(t-2)

  A task whose loss descends slowly (r_k near or above 1) is weighted up; the weights sum to K."""
  ratios = tf.convert_to_tensor(newer, tf.float32) / tf.convert_to_tensor(older, tf.float32)
  return tf.cast(tf.size(ratios), tf.float32) * tf.nn.softmax(ratios / temperature)


class DynamicWeightAverage(LossBalancing):
  """DWA weights (`dwa_weights`, T = 2) from the mean task losses of the last two periods of `dwa_period`
  steps; 1 each until two periods have passed."""

  def __init__(self, tasks, dwa_period: int = DWA_PERIOD, **unused):
    super().__init__(name='dynamic_weight_average')
    self.period = dwa_period
    zeros = lambda name: tf.Variable(tf.zeros([len(tasks)]), trainable=False, name=name)  # noqa: E731
    self.loss_sum, self.older, self.newer = zeros('loss_sum'), zeros('older'), zeros('newer')
    self.steps = tf.Variable(0, trainable=False, name='steps')
    self.periods = tf.Variable(0, trainable=False, name='periods')

  def task_weights(self):
    return tf.where(self.periods >= 2, dwa_weights(self.older, self.newer), tf.ones_like(self.newer))

  def update(self, losses):
    self.loss_sum.assign_add(tf.stop_gradient(losses))
    self.steps.assign_add(1)
    done = self.steps >= self.period
    self.older.assign(tf.where(done, self.newer, self.older))
    self.newer.assign(tf.where(done, self.loss_sum / tf.cast(self.steps, tf.float32), self.newer))
    self.periods.assign_add(tf.cast(done, tf.int32))
    self.loss_sum.assign(tf.where(done, tf.zeros_like(self.loss_sum), self.loss_sum))
    self.steps.assign(tf.where(done, 0, self.steps))


BALANCINGS = {'fixed': FixedWeights, 'uncertainty': UncertaintyWeighting, 'dwa': DynamicWeightAverage}


def task_orders(count: int, seed):
  """For each task i of `count`, a random order of all the tasks [count] (i among them), drawn from `seed`
  (a [2] int tensor, e.g. (seed, step)): the order in which gradient surgery visits the other tasks."""
  return [tf.argsort(tf.random.stateless_uniform(
      [count], seed=tf.cast(seed, tf.int64) + tf.constant([0, 1], tf.int64) * i)) for i in range(count)]


def project_conflicting(gradients, seed):
  """PCGrad (Yu et al., NeurIPS'20) on the task gradients [K, P]: for each task i, in a random order of
  the other tasks j (`task_orders`),

      g_i <- g_i - (g_i . g_j) / |g_j|^2 g_j    when g_i . g_j < 0

  (g_j the original gradient), so no task's update works against another's. Returns the projected
  gradients [K, P]."""
  count = gradients.shape[0]
  projected = []
  for i, order in enumerate(task_orders(count, seed)):
    g = gradients[i]
    for position in range(count):
      j = order[position]
      other = tf.gather(gradients, j)
      dot = tf.reduce_sum(g * other)
      conflict = tf.logical_and(dot < 0, tf.not_equal(j, i))
      g -= tf.where(conflict, dot / tf.maximum(tf.reduce_sum(other * other), 1e-12), 0.0) * other
    projected.append(g)
  return tf.stack(projected)


def vaccinate(gradients, targets, seed, beta: float = GRADVAC_BETA):
  """Gradient Vaccine (Wang et al., ICLR'21) on the task gradients [K, P], with the target cosines
  `targets` [K, K] (phi_hat_ij, an exponential moving average of the observed ones). For each task i, in a
  random order of the other tasks j (`task_orders`), with phi = cos(g_i, g_j) (g_i as adjusted so far, g_j
  the original gradient):

      g_i <- g_i + g_j |g_i| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (|g_j| sqrt(1 - phi_hat^2))
                                                                                  when phi < phi_hat_ij
      phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi

  The step turns g_i in the plane of (g_i, g_j) until cos(g_i, g_j) = phi_hat_ij: where PCGrad only lifts a
  negative cosine to 0, GradVac lifts any cosine below the pair's usual similarity up to it. Returns the
  adjusted gradients [K, P] and the new targets [K, K]."""
  count = gradients.shape[0]
  norms = tf.norm(gradients, axis=1)
  adjusted, rows = [], []
  for i, order in enumerate(task_orders(count, seed)):
    g, row = gradients[i], targets[i]
    for position in range(count):
      j = order[position]
      other, other_norm, target = tf.gather(gradients, j), tf.gather(norms, j), tf.gather(row, j)
      norm = tf.norm(g)
      phi = tf.reduce_sum(g * other) / tf.maximum(norm * other_norm, 1e-12)
      sine, target_sine = tf.sqrt(tf.maximum(1.0 - phi ** 2, 0.0)), tf.sqrt(tf.maximum(1.0 - target ** 2, 1e-12))
      step = norm * (target * sine - phi * target_sine) / (tf.maximum(other_norm, 1e-12) * target_sine)
      below = tf.logical_and(phi < target, tf.not_equal(j, i))
      g += tf.where(below, step, 0.0) * other
      updated = tf.where(tf.not_equal(j, i), (1.0 - beta) * target + beta * phi, target)
      row = tf.tensor_scatter_nd_update(row, [[j]], [updated])
    adjusted.append(g)
    rows.append(row)
  return tf.stack(adjusted), tf.stack(rows)


class GradientSurgery(tf.Module):
  """Adjusts the task gradients [K, P] on the shared variables before they are summed into the update."""

  def __call__(self, gradients, seed):
    """[K, P] the adjusted gradients; `seed` ([2] int tensor) draws the order in which tasks are visited."""
    raise NotImplementedError


class PCGrad(GradientSurgery):
  """`project_conflicting`: a conflicting component (negative dot product) is projected off."""

  def __init__(self, tasks, **unused):
    super().__init__(name='pcgrad')

  def __call__(self, gradients, seed):
    return project_conflicting(gradients, seed)


class GradVac(GradientSurgery):
  """`vaccinate`, with the target cosine of every task pair kept from step to step (`targets` [K, K], 0 at
  the start, as in the paper)."""

  def __init__(self, tasks, beta: float = GRADVAC_BETA, **unused):
    super().__init__(name='gradvac')
    self.beta = beta
    self.targets = tf.Variable(tf.zeros([len(tasks), len(tasks)]), trainable=False, name='targets')

  def __call__(self, gradients, seed):
    adjusted, targets = vaccinate(gradients, self.targets, seed, self.beta)
    self.targets.assign(targets)
    return adjusted


SURGERIES = {'pcgrad': PCGrad, 'gradvac': GradVac}


def surgery_gradients(tape, terms, variables, surgery):
  """The update gradient of every variable from the per-task objective terms: `surgery` ([K, P] -> [K, P],
  a `GradientSurgery` with its seed bound) on the variables two or more tasks reach (the shared ones, as one
  vector per task), the plain gradient of its only task on a task-specific variable (a tower, an uncertainty
  log-variance); None where no task reaches it."""
  per_task = [tape.gradient(term, variables) for term in terms]
  shared = [v for v in range(len(variables)) if sum(g[v] is not None for g in per_task) > 1]
  gradients = [None if v in shared else next((g[v] for g in per_task if g[v] is not None), None)
               for v in range(len(variables))]
  if not shared:
    return gradients
  flat = tf.stack([tf.concat([tf.reshape(tf.convert_to_tensor(g[v]) if g[v] is not None else
                                         tf.zeros_like(variables[v]), [-1]) for v in shared], axis=0)
                   for g in per_task])
  combined = tf.reduce_sum(surgery(flat), axis=0)
  sizes = [variables[v].shape.num_elements() for v in shared]
  for v, part in zip(shared, tf.split(combined, sizes)):
    gradients[v] = tf.reshape(part, variables[v].shape)
  return gradients


@tf_keras.utils.register_keras_serializable(package='mdctr')
class MultiTaskModel(tf_keras.Model):
  """A functional model with one probability output per task, and the multi-task training step.

  Each trained output t (`targets`: {task: Target}) has the loss L_t = masked binary cross-entropy against
  its label, over the samples its mask keeps (`masked_binary_crossentropy`). `balancing` (`BALANCINGS`:
  fixed, uncertainty, dwa) turns them into per-task objective terms; their sum is minimized, or with
  `gradient_surgery` (`SURGERIES`: pcgrad, gradvac) each term's gradient is adjusted against the others' on
  the shared variables (`surgery_gradients`). `constraints` (`models.constraints`: `cvr_auc>=0.70`, ...) add
  the Lagrangian's terms lambda_c L_t to the task terms; a `constraints.DualAscent` callback raises lambda_c
  (step `dual_step`) while its constraint is broken on validation. Train and test steps log the objective
  (`loss`), `{task}_loss`, `{task}_auc` on the valid samples, and (training) `{task}_weight`.

  Fed (features, {label role: [batch] 0/1}), the roles those of `targets` (`models.heads.CLICK`, ...).
  Balancing, surgery and constraint state (log-variances, DWA's loss history, GradVac's target cosines, the
  multipliers) is training state: it is not saved with the model.
  """

  def __init__(self, inputs, outputs, targets: Dict[str, Target], balancing: str = 'fixed',
               task_weights: Optional[Dict[str, float]] = None, dwa_period: int = DWA_PERIOD,
               gradient_surgery: Optional[str] = None, seed: int = 0, constraints: Sequence[str] = (),
               dual_step: float = constraints_lib.DUAL_STEP, name: Optional[str] = None):
    super().__init__(inputs=inputs, outputs=outputs, name=name)
    if balancing not in BALANCINGS:
      raise ValueError(f'Unknown loss balancing {balancing!r}; choose one of {sorted(BALANCINGS)}.')
    if gradient_surgery is not None and gradient_surgery not in SURGERIES:
      raise ValueError(f'Unknown gradient surgery {gradient_surgery!r}; choose one of {sorted(SURGERIES)}, or None '
                       'for the plain gradient of the summed objective.')
    self.targets = {task: Target(**t) if isinstance(t, dict) else t for task, t in targets.items()}
    self.tasks = list(self.targets)
    self.settings = dict(balancing=balancing, task_weights=task_weights, dwa_period=dwa_period,
                         gradient_surgery=gradient_surgery, seed=seed, constraints=list(constraints),
                         dual_step=dual_step)
    mean = tf_keras.metrics.Mean
    # Training state, held in a plain namespace that Keras does not track: the balancing variables and the
    # step metrics stay out of the model's weights, parameter count and saved files.
    self.step_state = types.SimpleNamespace(
        balancer=BALANCINGS[balancing](self.tasks, task_weights=task_weights, dwa_period=dwa_period),
        surgery=SURGERIES[gradient_surgery](self.tasks) if gradient_surgery else None,
        lagrangian=constraints_lib.Lagrangian([constraints_lib.parse_constraint(c, self.tasks) for c in constraints],
                                              self.tasks, dual_step),
        trackers={'loss': mean(name='loss'), **{f'{t}_loss': mean(name=f'{t}_loss') for t in self.tasks},
                  **{f'{t}_auc': tf_keras.metrics.AUC(name=f'{t}_auc') for t in self.tasks}})

  @property
  def balancer(self) -> LossBalancing:
    return self.step_state.balancer

  @property
  def lagrangian(self) -> constraints_lib.Lagrangian:
    return self.step_state.lagrangian

  def objective_terms(self, losses):
    """[K] the per-task terms whose sum is minimized: the balanced losses plus the constraints' terms."""
    return self.balancer.objective(losses) + self.lagrangian.terms(losses)

  def task_losses(self, labels, predictions):
    """[K] the loss of every trained task on one batch."""
    return tf.stack([masked_binary_crossentropy(labels[t.label], predictions[task],
                                                labels[t.mask] if t.mask else None)
                     for task, t in self.targets.items()])

  def _track(self, labels, predictions, objective, losses):
    trackers = self.step_state.trackers
    trackers['loss'].update_state(objective)
    for k, (task, target) in enumerate(self.targets.items()):
      trackers[f'{task}_loss'].update_state(losses[k])
      mask = labels[target.mask] if target.mask else None
      trackers[f'{task}_auc'].update_state(tf.reshape(labels[target.label], [-1]), tf.reshape(predictions[task], [-1]),
                                           sample_weight=None if mask is None else tf.reshape(mask, [-1]))
    return {name: tracker.result() for name, tracker in trackers.items()}

  def train_step(self, data):
    features, labels = data
    weights = self.balancer.task_weights()  # this step's, before the update changes them
    surgery = self.step_state.surgery
    with tf.GradientTape(persistent=surgery is not None) as tape:
      predictions = self(features, training=True)
      losses = self.task_losses(labels, predictions)
      terms = self.objective_terms(losses)
      objective = tf.reduce_sum(terms)
      task_terms = tf.unstack(terms)  # inside the tape: gradient surgery differentiates each
    variables = self.trainable_variables + list(self.balancer.trainable_variables)
    if surgery is not None:
      seed = tf.stack([tf.constant(self.settings['seed'], tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
      gradients = surgery_gradients(tape, task_terms, variables, lambda flat: surgery(flat, seed))
    else:
      gradients = tape.gradient(objective, variables)
    self.optimizer.apply_gradients((g, v) for g, v in zip(gradients, variables) if g is not None)
    self.balancer.update(losses)
    logs = self._track(labels, predictions, objective, losses)
    logs.update({f'{task}_weight': weights[k] for k, task in enumerate(self.tasks)})
    return logs

  def test_step(self, data):
    features, labels = data
    predictions = self(features, training=False)
    losses = self.task_losses(labels, predictions)
    return self._track(labels, predictions, tf.reduce_sum(self.objective_terms(losses)), losses)

  @property
  def metrics(self):
    return list(self.step_state.trackers.values())

  def get_config(self):
    network = tf_keras.Model(self.input, dict(zip(self.output_names, self.outputs)), name=self.name)
    settings = dict(self.settings)  # Keras wraps attribute dicts for tracking: back to plain, JSON-ready ones
    settings['task_weights'] = dict(settings['task_weights']) if settings['task_weights'] else None
    settings['constraints'] = list(settings['constraints'])
    return {'network': network.get_config(), 'targets': {t: dataclasses.asdict(v) for t, v in self.targets.items()},
            **settings}

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    if config.pop('pcgrad', False):  # models saved before GradVac joined PCGrad
      config['gradient_surgery'] = 'pcgrad'
    network = tf_keras.Model.from_config(config.pop('network'), custom_objects)
    return cls(network.input, dict(zip(network.output_names, network.outputs)), name=network.name, **config)


# The settings of `MultiTaskModel`'s training step among a head's options.
TRAINING_OPTIONS = ('balancing', 'task_weights', 'dwa_period', 'gradient_surgery', 'seed', 'constraints', 'dual_step')


def multitask_model(head: str, inputs, features, hidden_units, adapt, options: dict, name: str) -> MultiTaskModel:
  """Head `head` on the embedded features, as a `MultiTaskModel` trained on the head's `TARGETS`. `options`
  holds the head's settings (`gate_dropout`, `ple_levels`, ...) and the training step's (`TRAINING_OPTIONS`)."""
  if head not in HEADS:
    raise ValueError(f'Unknown multi-task head {head!r}; choose one of {sorted(HEADS)}.')
  outputs = HEADS[head](features, hidden_units, adapt, options)
  training = {k: options[k] for k in TRAINING_OPTIONS if k in options}
  return MultiTaskModel(inputs, outputs, TARGETS[head], name=name, **training)
