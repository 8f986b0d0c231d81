"""Multi-task training: per-task masked losses, loss balancing (fixed, uncertainty, DWA) and PCGrad, in the
`train_step` of `MultiTaskModel`, the model every head (`models.heads`) is built as."""
import dataclasses
import os
import types
from typing import Dict, Optional

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models.heads import HEADS, TARGETS, Target  # noqa: E402

DWA_TEMPERATURE = 2.0
DWA_PERIOD = 100  # steps; the Trainer passes its epoch length


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


def project_conflicting(gradients, seed):
  """PCGrad (Yu et al., NeurIPS'20) on the task gradients [K, P]: for each task i, in a random order of
  the other tasks j,

      g_i <- g_i - (g_i . g_j) / |g_j|^2 g_j    when g_i . g_j < 0

  (g_j the original gradient), so no task's update works against another's. Returns the projected
  gradients [K, P]; the order is drawn from `seed` (a [2] int tensor, e.g. (seed, step))."""
  count = gradients.shape[0]
  projected = []
  for i in range(count):
    keys = tf.random.stateless_uniform([count], seed=tf.cast(seed, tf.int64) + tf.constant([0, 1], tf.int64) * i)
    order = tf.argsort(keys)
    g = gradients[i]
    for position in range(count):
      j = order[position]
      other = tf.gather(gradients, j)
      dot = tf.reduce_sum(g * other)
      conflict = tf.logical_and(dot < 0, tf.not_equal(j, i))
      g -= tf.where(conflict, dot / tf.maximum(tf.reduce_sum(other * other), 1e-12), 0.0) * other
    projected.append(g)
  return tf.stack(projected)


def pcgrad_gradients(tape, terms, variables, seed):
  """The update gradient of every variable from the per-task objective terms: PCGrad on the variables
  two or more tasks reach (the shared ones, as one vector per task), the plain gradient of its only task
  on a task-specific variable (a tower, an uncertainty log-variance); None where no task reaches it."""
  per_task = [tape.gradient(term, variables) for term in terms]
  shared = [v for v in range(len(variables)) if sum(g[v] is not None for g in per_task) > 1]
  gradients = [None if v in shared else next((g[v] for g in per_task if g[v] is not None), None)
               for v in range(len(variables))]
  if not shared:
    return gradients
  flat = tf.stack([tf.concat([tf.reshape(tf.convert_to_tensor(g[v]) if g[v] is not None else
                                         tf.zeros_like(variables[v]), [-1]) for v in shared], axis=0)
                   for g in per_task])
  combined = tf.reduce_sum(project_conflicting(flat, seed), axis=0)
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
  `pcgrad` each term's gradient is projected off the others' on the shared variables
  (`pcgrad_gradients`). Train and test steps log the objective (`loss`), `{task}_loss`, `{task}_auc` on
  the valid samples, and (training) `{task}_weight`.

  Fed (features, {label role: [batch] 0/1}), the roles those of `targets` (`models.heads.CLICK`, ...).
  Balancing state (log-variances, DWA's loss history) is training state: it is not saved with the model.
  """

  def __init__(self, inputs, outputs, targets: Dict[str, Target], balancing: str = 'fixed',
               task_weights: Optional[Dict[str, float]] = None, dwa_period: int = DWA_PERIOD, pcgrad: bool = False,
               seed: int = 0, name: Optional[str] = None):
    super().__init__(inputs=inputs, outputs=outputs, name=name)
    if balancing not in BALANCINGS:
      raise ValueError(f'Unknown loss balancing {balancing!r}; choose one of {sorted(BALANCINGS)}.')
    self.targets = {task: Target(**t) if isinstance(t, dict) else t for task, t in targets.items()}
    self.tasks = list(self.targets)
    self.settings = dict(balancing=balancing, task_weights=task_weights, dwa_period=dwa_period, pcgrad=pcgrad,
                         seed=seed)
    mean = tf_keras.metrics.Mean
    # Training state, held in a plain namespace that Keras does not track: the balancing variables and the
    # step metrics stay out of the model's weights, parameter count and saved files.
    self.step_state = types.SimpleNamespace(
        balancer=BALANCINGS[balancing](self.tasks, task_weights=task_weights, dwa_period=dwa_period),
        trackers={'loss': mean(name='loss'), **{f'{t}_loss': mean(name=f'{t}_loss') for t in self.tasks},
                  **{f'{t}_auc': tf_keras.metrics.AUC(name=f'{t}_auc') for t in self.tasks}})

  @property
  def balancer(self) -> LossBalancing:
    return self.step_state.balancer

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
    with tf.GradientTape(persistent=self.settings['pcgrad']) as tape:
      predictions = self(features, training=True)
      losses = self.task_losses(labels, predictions)
      terms = self.balancer.objective(losses)
      objective = tf.reduce_sum(terms)
      task_terms = tf.unstack(terms)  # inside the tape: PCGrad differentiates each
    variables = self.trainable_variables + list(self.balancer.trainable_variables)
    if self.settings['pcgrad']:
      seed = tf.stack([tf.constant(self.settings['seed'], tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
      gradients = pcgrad_gradients(tape, task_terms, variables, seed)
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
    return self._track(labels, predictions, tf.reduce_sum(self.balancer.objective(losses)), losses)

  @property
  def metrics(self):
    return list(self.step_state.trackers.values())

  def get_config(self):
    network = tf_keras.Model(self.input, dict(zip(self.output_names, self.outputs)), name=self.name)
    settings = dict(self.settings)  # Keras wraps attribute dicts for tracking: back to plain, JSON-ready ones
    settings['task_weights'] = dict(settings['task_weights']) if settings['task_weights'] else None
    return {'network': network.get_config(), 'targets': {t: dataclasses.asdict(v) for t, v in self.targets.items()},
            **settings}

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    network = tf_keras.Model.from_config(config.pop('network'), custom_objects)
    return cls(network.input, dict(zip(network.output_names, network.outputs)), name=network.name, **config)


def multitask_model(head: str, inputs, features, hidden_units, adapt, options: dict, name: str) -> MultiTaskModel:
  """Head `head` on the embedded features, as a `MultiTaskModel` trained on the head's `TARGETS`. `options`
  holds the head's settings (`gate_dropout`, `ple_levels`, ...) and the training step's (`balancing`,
  `task_weights`, `dwa_period`, `pcgrad`, `seed`)."""
  if head not in HEADS:
    raise ValueError(f'Unknown multi-task head {head!r}; choose one of {sorted(HEADS)}.')
  outputs = HEADS[head](features, hidden_units, adapt, options)
  training = {k: options[k] for k in ('balancing', 'task_weights', 'dwa_period', 'pcgrad', 'seed') if k in options}
  return MultiTaskModel(inputs, outputs, TARGETS[head], name=name, **training)
