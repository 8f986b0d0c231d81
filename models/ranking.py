"""Pairwise ranking loss for sparse clicks (RankNet), alone or beside log loss, and the training step of a
single-task click model on it (`RankingLossModel`).

With log loss the gradient on a negative is its predicted probability p, which is tiny where clicks are rare:
negatives barely teach the model. RankNet's pairwise loss gives a negative a gradient set by its score gap to
the positives it is paired with.
"""
import os
from typing import Optional

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models.features import DOMAIN_INDEX  # noqa: E402

# The click model's training losses (`PipelineConfig.loss`): log loss (the Trainer's compiled
# BinaryCrossentropy), the pairwise loss alone, or both (`click_objective`).
LOGLOSS, RANKNET, RANKNET_LOGLOSS = 'logloss', 'ranknet', 'ranknet+logloss'
LOSSES = (LOGLOSS, RANKNET, RANKNET_LOGLOSS)


def check_loss(loss: str) -> None:
  """ValueError naming the choices for a `loss` not in `LOSSES`."""
  if loss not in LOSSES:
    raise ValueError(f'loss {loss!r}: choose one of {list(LOSSES)}.')


def ranknet_loss(labels, logits, domains):
  """RankNet's pairwise loss over the positive/negative pairs of one batch that share a domain:

      L = 1/|P| sum_{(i, j) in P} -log sigmoid(s_i - s_j),    P = {(i, j): y_i = 1, y_j = 0, d_i = d_j}

  with s the logits, y the 0/1 labels and d the domains ([batch] or [batch, 1] each). A pair across domains
  never counts (their scores need not compare); a batch without a pair gives 0, with a zero gradient. Its
  gradient on a negative j, dL/ds_j = 1/|P| sum_i sigmoid(s_j - s_i), grows with how far j scores above
  its positives, whatever the click rate."""
  labels = tf.reshape(tf.cast(labels, tf.float32), [-1])
  logits = tf.reshape(tf.cast(logits, tf.float32), [-1])
  domains = tf.reshape(domains, [-1])
  pairs = tf.cast((labels[:, None] > 0.5) & (labels[None, :] < 0.5) & tf.equal(domains[:, None], domains[None, :]),
                  tf.float32)
  losses = tf.nn.softplus(logits[None, :] - logits[:, None])  # -log sigmoid(s_i - s_j), without overflow
  return tf.reduce_sum(pairs * losses) / tf.maximum(tf.reduce_sum(pairs), 1.0)


def click_objective(loss: str, rank_weight: float, labels, logits, domains):
  """The training loss of a click model on one batch:

      logloss:          L = mean_i BCE(y_i, sigmoid(s_i))
      ranknet:          L = W * ranknet_loss
      ranknet+logloss:  L = mean_i BCE(y_i, sigmoid(s_i)) + W * ranknet_loss

  with W = `rank_weight`. The pairwise loss alone fixes the order of the scores within a domain, not their
  level: the served probability then comes from the per-domain calibration fitted after training."""
  check_loss(loss)
  labels = tf.reshape(tf.cast(labels, tf.float32), [-1])
  logits = tf.reshape(tf.cast(logits, tf.float32), [-1])
  objective = tf.constant(0.0)
  if loss != RANKNET:
    objective += tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
  if loss != LOGLOSS:
    objective += rank_weight * ranknet_loss(labels, logits, domains)
  return objective


@tf_keras.utils.register_keras_serializable(package='mdctr')
class RankingLossModel(tf_keras.Model):
  """Trains a single-task click model (`scorer`, whose output is sigmoid(logit), the sigmoid layer named
  `prediction_name`) on `click_objective`: pairs are formed within each batch among the examples of the same
  domain, the domain index as the batch's features give it. Calling it is calling `scorer`; its weights are
  `scorer`'s, so what it trains is saved and served as `scorer`. Train and test steps log the objective
  (`loss`), the log loss of the served probability (`logloss`) and its AUC (`auc`).

  Fed (features, [batch] 0/1 clicks), as the compiled click model is.

  Args:
    scorer: The click model.
    prediction_name: The name of its output sigmoid layer, whose input is the logit.
    loss: One of `LOSSES`.
    rank_weight: W, the weight of the pairwise term.
  """

  def __init__(self, scorer: tf_keras.Model, prediction_name: str, loss: str = RANKNET_LOGLOSS,
               rank_weight: float = 1.0, name: Optional[str] = None):
    super().__init__(name=name)
    check_loss(loss)
    self.scorer = scorer
    self.prediction_name, self.loss_name, self.rank_weight = prediction_name, loss, float(rank_weight)
    self.logits_and_scores = tf_keras.Model(scorer.input, [scorer.get_layer(prediction_name).input, scorer.output])
    self.trackers = {'loss': tf_keras.metrics.Mean(name='loss'), 'logloss': tf_keras.metrics.Mean(name='logloss'),
                     'auc': tf_keras.metrics.AUC(name='auc')}

  def call(self, features, training=False):
    return self.scorer(features, training=training)

  def _objective(self, features, labels, training):
    logits, scores = self.logits_and_scores(features, training=training)
    objective = click_objective(self.loss_name, self.rank_weight, labels, logits, features[DOMAIN_INDEX])
    return objective + tf.add_n([tf.constant(0.0)] + self.scorer.losses), scores  # + the embedding L2 penalty

  def _track(self, labels, scores, objective):
    labels, scores = tf.reshape(tf.cast(labels, tf.float32), [-1, 1]), tf.reshape(scores, [-1, 1])
    self.trackers['loss'].update_state(objective)
    self.trackers['logloss'].update_state(tf_keras.losses.binary_crossentropy(labels, scores))
    self.trackers['auc'].update_state(labels, scores)
    return {name: tracker.result() for name, tracker in self.trackers.items()}

  def train_step(self, data):
    features, labels = data
    with tf.GradientTape() as tape:
      objective, scores = self._objective(features, labels, training=True)
    self.optimizer.minimize(objective, self.trainable_variables, tape=tape)
    return self._track(labels, scores, objective)

  def test_step(self, data):
    features, labels = data
    objective, scores = self._objective(features, labels, training=False)
    return self._track(labels, scores, objective)

  @property
  def metrics(self):
    return list(self.trackers.values())

  def get_config(self):
    return {'scorer': tf_keras.saving.serialize_keras_object(self.scorer), 'prediction_name': self.prediction_name,
            'loss': self.loss_name, 'rank_weight': self.rank_weight, 'name': self.name}

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    scorer = tf_keras.saving.deserialize_keras_object(config.pop('scorer'), custom_objects=custom_objects)
    return cls(scorer, **config)
