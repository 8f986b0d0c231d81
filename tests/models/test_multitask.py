"""Multi-task training: masked losses, loss balancing, gradient surgery (PCGrad, GradVac)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import model as model_lib
from models import multitask
from models.heads import Target
from tests.models import zoo


@pytest.mark.parametrize('head', ['ple', 'mmoe', 'shared_bottom'])
def test_cvr_loss_ignores_samples_without_a_click(head):
  model = model_lib.build_model(zoo.MULTITASK_SPEC, zoo.VOCAB_SIZES, (8,), embedding_dim=4, head=head)
  labels = zoo.multitask_labels(seed=0)
  click, conversion = labels['click'], labels['conversion']
  predictions = model(zoo.features(), training=False)
  losses = lambda conv: model.task_losses({'click': click, 'conversion': conv}, predictions).numpy()  # noqa: E731
  flipped_unclicked = np.where(click == 1, conversion, 1 - conversion)
  np.testing.assert_array_equal(losses(flipped_unclicked), losses(conversion))
  flipped_clicked = np.where(click == 1, 1 - conversion, conversion)
  assert losses(flipped_clicked)[1] != losses(conversion)[1]  # the clicked samples do count


def test_masked_binary_crossentropy_by_hand():
  labels, probabilities, mask = [1, 0, 1, 0], [0.8, 0.4, 0.1, 0.9], [1, 1, 0, 0]
  expected = -(np.log(0.8) + np.log(0.6)) / 2
  np.testing.assert_allclose(multitask.masked_binary_crossentropy(labels, probabilities, mask), expected, rtol=1e-5)
  assert multitask.masked_binary_crossentropy(labels, probabilities, [0, 0, 0, 0]).numpy() == 0.0


def test_pcgrad_projects_two_conflicting_gradients_by_hand():
  g1, g2 = np.array([1.0, 0.0]), np.array([-1.0, 1.0])  # g1 . g2 = -1 < 0
  projected = multitask.project_conflicting(tf.constant([g1, g2]), tf.constant([0, 0])).numpy()
  # g1 - (g1.g2 / |g2|^2) g2 = [1, 0] + 0.5 [-1, 1];  g2 - (g2.g1 / |g1|^2) g1 = [-1, 1] + [1, 0]
  np.testing.assert_allclose(projected, [[0.5, 0.5], [0.0, 1.0]], atol=1e-6)
  assert abs(projected[0] @ g2) < 1e-6 and abs(projected[1] @ g1) < 1e-6  # no conflict left


def test_pcgrad_leaves_agreeing_gradients_alone_and_is_seeded():
  agreeing = tf.constant([[1.0, 2.0], [0.5, -0.1]])
  np.testing.assert_allclose(multitask.project_conflicting(agreeing, tf.constant([3, 9])), agreeing)
  three = tf.constant([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, -1.0, 1.0]])
  first = multitask.project_conflicting(three, tf.constant([5, 1])).numpy()
  np.testing.assert_array_equal(first, multitask.project_conflicting(three, tf.constant([5, 1])).numpy())


def test_pcgrad_on_shared_variables_only():
  shared, only_a, only_b = tf.Variable([0.0, 0.0]), tf.Variable(0.0), tf.Variable(0.0)
  with tf.GradientTape(persistent=True) as tape:
    term_a = tf.reduce_sum(shared * [1.0, 0.0]) + 3.0 * only_a  # grad on shared: [1, 0]
    term_b = tf.reduce_sum(shared * [-1.0, 1.0]) - 2.0 * only_b  # grad on shared: [-1, 1]
  pcgrad = lambda flat: multitask.PCGrad(['a', 'b'])(flat, tf.constant([0, 0]))  # noqa: E731
  gradients = multitask.surgery_gradients(tape, [term_a, term_b], [shared, only_a, only_b], pcgrad)
  np.testing.assert_allclose(gradients[0].numpy(), [0.5, 1.5], atol=1e-6)  # the two projections, summed
  assert float(gradients[1]) == 3.0 and float(gradients[2]) == -2.0  # the task's own plain gradient


def _cosine(a, b):
  return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


def test_gradvac_lifts_a_cosine_below_its_target_to_it_by_hand():
  g1, g2 = np.array([1.0, 0.0, 0.0]), np.array([-0.2, 1.0, 0.5])  # cos(g1, g2) = -0.178
  targets = np.array([[0.0, 0.3], [0.1, 0.0]])
  adjusted, new = (t.numpy() for t in multitask.vaccinate(
      tf.constant([g1, g2], tf.float32), tf.constant(targets, tf.float32), tf.constant([0, 0]), beta=0.25))
  np.testing.assert_allclose(_cosine(adjusted[0], g2), 0.3, atol=1e-5)  # g_1 turned to its target with g_2
  np.testing.assert_allclose(_cosine(adjusted[1], g1), 0.1, atol=1e-5)  # g_2 to its own with the original g_1
  # the closed form: g_1 + g_2 |g_1| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (|g_2| sqrt(1 - phi_hat^2))
  phi = _cosine(g1, g2)
  step = (0.3 * np.sqrt(1 - phi ** 2) - phi * np.sqrt(1 - 0.3 ** 2)) / (np.linalg.norm(g2) * np.sqrt(1 - 0.3 ** 2))
  np.testing.assert_allclose(adjusted[0], g1 + step * g2, rtol=1e-5)
  np.testing.assert_allclose(new, [[0.0, 0.75 * 0.3 + 0.25 * phi], [0.75 * 0.1 + 0.25 * phi, 0.0]], rtol=1e-5)


def test_gradvac_leaves_a_cosine_above_its_target_and_moves_the_target_toward_it():
  gradients = np.array([[1.0, 0.2], [0.8, 0.5]])  # cos = 0.94
  targets = np.array([[0.0, 0.5], [0.5, 0.0]], np.float32)
  adjusted, new = multitask.vaccinate(tf.constant(gradients, tf.float32), tf.constant(targets), tf.constant([1, 2]),
                                      beta=0.01)
  np.testing.assert_allclose(adjusted, gradients, rtol=1e-6)
  phi = _cosine(*gradients)
  np.testing.assert_allclose(new, [[0.0, 0.99 * 0.5 + 0.01 * phi], [0.99 * 0.5 + 0.01 * phi, 0.0]], rtol=1e-5)


def test_gradvac_keeps_its_targets_from_step_to_step():
  surgery = multitask.GradVac(['a', 'b'])
  gradients = tf.constant([[1.0, 0.0], [0.0, 1.0]])  # cos 0, equal to the starting target: nothing to lift
  np.testing.assert_allclose(surgery(gradients, tf.constant([0, 0])), gradients)
  surgery.targets.assign([[0.0, 0.5], [0.5, 0.0]])
  adjusted = surgery(gradients, tf.constant([0, 1])).numpy()
  np.testing.assert_allclose(_cosine(adjusted[0], gradients[1].numpy()), 0.5, atol=1e-5)
  np.testing.assert_allclose(surgery.targets.numpy(), [[0.0, 0.495], [0.495, 0.0]], rtol=1e-6)


def _two_task_model(balancing, shared_units=0, **kwargs):
  """Two logistic outputs `clean` and `noisy` on the same 4 inputs, or on a hidden layer of `shared_units`
  that both tasks' gradients reach."""
  tf_keras.utils.set_random_seed(0)
  x = tf_keras.Input((4,), name='x')
  hidden = tf_keras.layers.Dense(shared_units, activation='relu', name='shared')(x) if shared_units else x
  outputs = {t: tf_keras.layers.Dense(1, activation='sigmoid', name=t)(hidden) for t in ('clean', 'noisy')}
  targets = {'clean': Target('clean'), 'noisy': Target('noisy')}
  model = multitask.MultiTaskModel({'x': x}, outputs, targets, balancing=balancing, **kwargs)
  model.compile(tf_keras.optimizers.Adam(0.05))
  return model


def _toy_data(n=512):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 4)).astype(np.float32)
  clean = (x[:, 0] + x[:, 1] > 0).astype(np.int64)  # learnable: the loss keeps falling
  noisy = rng.integers(0, 2, n)  # coin flips: the loss stays near log 2
  return {'x': x}, {'clean': clean, 'noisy': noisy}


def test_uncertainty_weights_the_noisier_task_down():
  model = _two_task_model('uncertainty')
  history = model.fit(*_toy_data(), batch_size=64, epochs=8, verbose=0).history
  assert set(history) >= {'loss', 'clean_loss', 'noisy_loss', 'clean_weight', 'noisy_weight', 'clean_auc'}
  assert history['noisy_loss'][-1] > 3 * history['clean_loss'][-1]
  ratio = [n / c for n, c in zip(history['noisy_weight'], history['clean_weight'])]
  assert ratio[-1] < 0.5 and ratio[-1] < ratio[0]  # the weights start equal: exp(-0) = 1
  np.testing.assert_allclose(model.balancer.task_weights().numpy(), np.exp(-model.balancer.log_variances.numpy()))


def test_dwa_weights_from_loss_histories_by_hand():
  balancer = multitask.DynamicWeightAverage(['a', 'b'], dwa_period=2)
  for losses in ([1.2, 0.8], [0.8, 1.2]):  # period 1: means (1, 1)
    balancer.update(tf.constant(losses))
    np.testing.assert_array_equal(balancer.task_weights(), [1.0, 1.0])
  for losses in ([0.5, 0.9], [0.5, 0.9]):  # period 2: means (0.5, 0.9)
    np.testing.assert_array_equal(balancer.task_weights(), [1.0, 1.0])  # fewer than two periods yet
    balancer.update(tf.constant(losses))
  ratios = np.array([0.5 / 1.0, 0.9 / 1.0])
  expected = 2 * np.exp(ratios / 2) / np.exp(ratios / 2).sum()  # [0.9004, 1.0996]: b descends slower, weighs more
  np.testing.assert_allclose(balancer.task_weights(), expected, rtol=1e-6)
  np.testing.assert_allclose(balancer.objective(tf.constant([2.0, 3.0])), expected * [2, 3], rtol=1e-6)
  for _ in range(2):  # period 3: means (0.5, 0.45); ratios to period 2 are (1, 0.5)
    balancer.update(tf.constant([0.5, 0.45]))
  np.testing.assert_allclose(balancer.task_weights(), multitask.dwa_weights([0.5, 0.9], [0.5, 0.45]), rtol=1e-6)
  np.testing.assert_allclose(multitask.dwa_weights([1.0, 1.0], [1.0, 1.0]), [1.0, 1.0])


def test_dwa_and_fixed_weights_in_training():
  history = _two_task_model('dwa', dwa_period=8).fit(*_toy_data(), batch_size=64, epochs=3, verbose=0).history
  assert history['clean_weight'][:2] == [1.0, 1.0]  # weights during the first two periods (epochs)
  assert history['noisy_weight'][2] > 1.0 > history['clean_weight'][2]  # the noisy loss stopped descending
  fixed = _two_task_model('fixed', task_weights={'noisy': 0.25})
  history = fixed.fit(*_toy_data(), batch_size=64, epochs=1, verbose=0).history
  assert history['noisy_weight'] == [0.25] and history['clean_weight'] == [1.0]
  np.testing.assert_allclose(history['loss'][0], history['clean_loss'][0] + 0.25 * history['noisy_loss'][0],
                             rtol=1e-5)


@pytest.mark.parametrize('surgery', ['pcgrad', 'gradvac'])
def test_gradient_surgery_training_step_with_uncertainty(surgery):
  model = _two_task_model('uncertainty', shared_units=4, gradient_surgery=surgery)
  history = model.fit(*_toy_data(), batch_size=64, epochs=2, verbose=0).history
  assert history['clean_loss'][-1] < history['clean_loss'][0]
  assert model.balancer.log_variances.numpy().any()  # a task-specific variable, trained by its own gradient
  assert model.get_config()['gradient_surgery'] == surgery
  if surgery == 'gradvac':
    assert model.step_state.surgery.targets.numpy()[0, 1] != 0.0  # the target cosine followed the observed ones


def test_a_model_saved_with_the_pcgrad_flag_loads_with_pcgrad():
  config = _two_task_model('fixed', gradient_surgery='pcgrad').get_config()
  config['pcgrad'] = True
  del config['gradient_surgery']
  assert multitask.MultiTaskModel.from_config(config).get_config()['gradient_surgery'] == 'pcgrad'


def test_unknown_balancing_and_surgery_are_named():
  with pytest.raises(ValueError, match='gradnorm'):
    _two_task_model('gradnorm')
  with pytest.raises(ValueError, match="'mgda'.*gradvac"):
    _two_task_model('fixed', gradient_surgery='mgda')
