"""The pairwise ranking loss (RankNet within each domain) and the click model trained on it."""
import numpy as np
import pytest
import tensorflow as tf

from models import model as model_lib
from models import ranking
from models import trainer
from models.features import transformed_name
from tests.models import zoo


def _numpy_ranknet(labels, logits, domains):
  losses = [np.log1p(np.exp(-(logits[i] - logits[j])))
            for i in range(len(labels)) for j in range(len(labels))
            if labels[i] == 1 and labels[j] == 0 and domains[i] == domains[j]]
  return np.mean(losses) if losses else 0.0


def test_ranknet_by_hand_pairs_within_a_domain_only():
  labels = np.array([1, 0, 0, 1, 0, 1])
  logits = np.array([2.0, -1.0, 0.5, -0.3, 3.0, 1.0], np.float32)
  domains = np.array([0, 0, 0, 1, 1, 2])  # domain 2's positive has no negative beside it
  value = ranking.ranknet_loss(labels, logits, domains).numpy()
  np.testing.assert_allclose(value, _numpy_ranknet(labels, logits, domains), rtol=1e-6)
  pairs = [(0, 1), (0, 2), (3, 4)]  # the positive of domain 1 is never paired with domain 0's negatives
  np.testing.assert_allclose(value, np.mean([np.log1p(np.exp(logits[j] - logits[i])) for i, j in pairs]), rtol=1e-6)
  mixed = ranking.click_objective('ranknet+logloss', 0.5, labels, logits, domains).numpy()
  logloss = np.mean(np.log1p(np.exp(-logits)) + (1 - labels) * logits)
  np.testing.assert_allclose(mixed, logloss + 0.5 * value, rtol=1e-6)
  np.testing.assert_allclose(ranking.click_objective('ranknet', 2.0, labels, logits, domains), 2 * value, rtol=1e-6)
  np.testing.assert_allclose(ranking.click_objective('logloss', 2.0, labels, logits, domains), logloss, rtol=1e-6)


def test_a_batch_without_a_pair_gives_zero_and_a_finite_gradient():
  logits = tf.Variable([50.0, -80.0, 3.0])
  for labels, domains in (([1, 1, 1], [0, 0, 0]), ([0, 0, 0], [0, 1, 2]), ([1, 0, 0], [0, 1, 1])):
    with tf.GradientTape() as tape:
      value = ranking.ranknet_loss(labels, logits, domains)
    assert value.numpy() == 0.0
    np.testing.assert_array_equal(tape.gradient(value, logits).numpy(), [0.0, 0.0, 0.0])


def test_gradient_on_a_negative_grows_with_its_score_gap():
  gradients = []
  for negative in (-4.0, -1.0, 0.0, 2.0, 6.0):  # the positive scores 0
    logits = tf.Variable([0.0, negative])
    with tf.GradientTape() as tape:
      value = ranking.ranknet_loss([1, 0], logits, [3, 3])
    gradients.append(tape.gradient(value, logits).numpy()[1])
  np.testing.assert_allclose(gradients, 1 / (1 + np.exp(-np.array([-4.0, -1.0, 0.0, 2.0, 6.0]))), rtol=1e-6)
  assert np.all(np.diff(gradients) > 0)


def test_unknown_loss_names_the_choices():
  with pytest.raises(ValueError, match='ranknet\\+logloss'):
    ranking.click_objective('hinge', 1.0, [1], [0.0], [0])


def _examples(n, seed):
  features = zoo.features(n=n, seed=seed)
  tags = transformed_name('tags')  # at least one tag a row: an all-padding row pools to NaN
  features[tags] = tf.maximum(features[tags], 1)
  return features, zoo.clicks(features)


def test_the_trainer_trains_a_click_model_on_a_ranking_loss_through_its_wrapper():
  model = zoo.build()
  trained = trainer.training_model(model, {'learning_rate': 0.01, 'loss': 'ranknet+logloss', 'rank_weight': 0.5})
  assert isinstance(trained, ranking.RankingLossModel) and trained.scorer is model
  config = trained.get_config()
  assert (config['loss'], config['rank_weight']) == ('ranknet+logloss', 0.5)
  assert {id(w) for w in trained.trainable_weights} == {id(w) for w in model.trainable_weights}
  examples = zoo.features(n=8)
  np.testing.assert_array_equal(trained(examples).numpy(), model(examples).numpy())
  rebuilt = ranking.RankingLossModel.from_config(config)
  assert rebuilt.get_config()['loss'] == 'ranknet+logloss' and rebuilt.scorer.count_params() == model.count_params()


@pytest.mark.slow  # about 10 s: a first fit
def test_a_tiny_click_model_trains_on_ranknet_and_serves_calibrated_probabilities():
  model = zoo.build(options={**zoo.OPTIONS, 'calibrate': True})
  trained = trainer.training_model(model, {'learning_rate': zoo.LEARNING_RATE, 'loss': 'ranknet', 'rank_weight': 1.0})
  trained.run_eagerly = True  # a few steps on tiny data cost far less than tracing them into a graph
  features, labels = _examples(128, seed=1)
  data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(zoo.BATCH_SIZE)
  history = trained.fit(data, epochs=3, verbose=0).history
  assert set(history) == {'loss', 'logloss', 'auc'}
  assert history['loss'][-1] < history['loss'][0] and history['auc'][-1] > max(history['auc'][0], 0.8)

  trainer.fit_calibration(model, model_lib.calibration_layer(model), data, zoo.SPEC)
  served = model(features).numpy().ravel()  # the scorer itself, as exported: a probability
  assert np.all((served > 0) & (served < 1))
  logloss = -np.mean(labels * np.log(served) + (1 - labels) * np.log(1 - served))
  rate = labels.mean()
  assert logloss < -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))  # better than the constant click rate


def test_log_loss_trains_the_click_model_itself():
  model = zoo.build()
  assert trainer.training_model(model, {'learning_rate': 0.01}) is model
  assert model.loss is not None
