"""Constraints: the spec parser, dual ascent by hand, the Lagrangian's terms and multipliers in training."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import constraints
from models.constraints import Constraint, parse_constraint
from tests.models import zoo


@pytest.mark.parametrize('text, expected', [
    ('cvr_auc>=0.70', Constraint('cvr', 'auc', 0.70)),
    (' cvr_loss <= 0.3 ', Constraint('cvr', 'loss', 0.3)),
    ('ctcvr_auc>=6e-1', Constraint('ctcvr', 'auc', 0.6)),
])
def test_parses_good_specs(text, expected):
  parsed = parse_constraint(text, ['ctr', 'cvr', 'ctcvr'])
  assert parsed == expected
  assert parse_constraint(str(parsed)) == parsed  # its written form parses back


@pytest.mark.parametrize('text, message', [
    ('cvr_auc>0.7', 'expected TASK_auc>=BOUND.*like cvr_auc>=0.70'),
    ('cvr_gmv>=3', 'expected TASK_auc>=BOUND'),
    ('cvr_auc>=high', 'expected TASK_auc>=BOUND'),
    ('cvr_auc<=0.7', 'an AUC constraint is a floor; write cvr_auc>=0.7'),
    ('cvr_loss>=0.3', 'a loss constraint is a ceiling; write cvr_loss<=0.3'),
    ('cvr_auc>=1.5', 'strictly between 0 and 1'),
    ('cvr_loss<=0', 'a loss bound is positive'),
    ('gmv_auc>=0.7', "task 'gmv' is not trained by this head; choose one of \\['ctr', 'cvr'\\]"),
])
def test_bad_specs_name_the_spec_and_the_fix(text, message):
  with pytest.raises(ValueError, match=message) as error:
    parse_constraint(text, ['ctr', 'cvr'])
  assert repr(text) in str(error.value)


def test_violation_is_positive_when_broken():
  floor, ceiling = Constraint('cvr', 'auc', 0.7), Constraint('cvr', 'loss', 0.3)
  assert floor.violation(0.6) == pytest.approx(0.1) and floor.violation(0.8) == pytest.approx(-0.1)
  assert ceiling.violation(0.5) == pytest.approx(0.2) and ceiling.violation(0.1) == pytest.approx(-0.2)


def test_dual_ascent_grows_while_violated_and_decays_to_zero_once_satisfied():
  floor = Constraint('cvr', 'auc', 0.7)
  values = [0.60, 0.62, 0.66, 0.72, 0.95, 0.80, 0.71]  # broken three times, then met
  multiplier, trajectory = np.zeros(1), []
  for value in values:
    multiplier = constraints.dual_ascent(multiplier, [floor.violation(value)], step=2.0)
    trajectory.append(float(multiplier[0]))
  np.testing.assert_allclose(trajectory[:3], [0.2, 0.36, 0.44], rtol=1e-5)  # + 2 (0.7 - value) each
  assert trajectory[3] == pytest.approx(0.40)  # met: 0.44 - 2 * 0.02
  assert trajectory[4:] == [0.0, 0.0, 0.0]  # 0.40 - 2 * 0.25 < 0: clipped at 0, and it stays there while met
  with pytest.raises(ValueError, match='dual_step must be positive'):
    constraints.Lagrangian([floor], ['ctr', 'cvr'], step=0.0)


def test_lagrangian_terms_weigh_the_constrained_tasks_losses():
  lagrangian = constraints.Lagrangian([Constraint('cvr', 'auc', 0.7), Constraint('cvr', 'loss', 0.3)],
                                      ['ctr', 'cvr'])
  losses = tf.constant([0.5, 0.4])
  np.testing.assert_array_equal(lagrangian.terms(losses), [0.0, 0.0])  # lambda starts at 0: unconstrained
  assert lagrangian.update({'cvr_auc': 0.6, 'cvr_loss': 0.2}) == pytest.approx([1.0, 0.0])  # step 10
  np.testing.assert_allclose(lagrangian.terms(losses), [0.0, 0.4], rtol=1e-6)
  np.testing.assert_array_equal(constraints.Lagrangian([], ['ctr']).terms(tf.constant([0.5])), [0.0])


def _multitask_model(constraint_specs, dual_step=5.0):
  model = zoo.build(spec=zoo.MULTITASK_SPEC, head='shared_bottom',
                    options={**zoo.OPTIONS, 'constraints': constraint_specs, 'dual_step': dual_step})
  model.compile(tf_keras.optimizers.Adam(0.01), run_eagerly=True)  # the zoo's 0.05 diverges on these labels
  return model


def _multitask_data(n, seed):
  examples = zoo.features(n=n, seed=seed)
  click = zoo.clicks(examples)  # learnable
  conversion = click * zoo.coin_flips(n, seed=seed + 1)  # coin flips after a click: no AUC far above 0.5
  return examples, {'click': click, 'conversion': conversion}


@pytest.mark.slow
def test_an_unreachable_bound_raises_its_multiplier_and_a_met_one_leaves_it_at_zero():
  model = _multitask_model(['cvr_auc>=0.95', 'cvr_loss<=5'])
  dual = constraints.DualAscent(model.lagrangian)
  model.fit(*_multitask_data(128, seed=1), batch_size=zoo.BATCH_SIZE, epochs=3, verbose=0,
            validation_data=_multitask_data(64, seed=5), callbacks=[dual])

  unreachable = dual.trajectory['cvr_auc>=0.95']
  assert [e['epoch'] for e in unreachable] == [1, 2, 3]
  assert all(e['value'] < 0.95 for e in unreachable)  # the unconstrained-from-start model never reaches it ...
  multipliers = [e['multiplier'] for e in unreachable]
  assert 0 < multipliers[0] < multipliers[1] < multipliers[2]  # ... so its multiplier keeps rising
  np.testing.assert_allclose(multipliers[0], 5.0 * (0.95 - unreachable[0]['value']), rtol=1e-5)
  met = dual.trajectory['cvr_loss<=5']
  assert all(0 < e['value'] <= 5 for e in met)  # finite, and below its ceiling ...
  assert [e['multiplier'] for e in met] == [0.0, 0.0, 0.0]  # ... so it never binds
  np.testing.assert_allclose(model.lagrangian.multipliers.numpy(), [multipliers[-1], 0.0], rtol=1e-6)

  # The multiplier enters the objective: fixed weights 1, so loss = ctr_loss + (1 + lambda) cvr_loss.
  logs = model.evaluate(*_multitask_data(64, seed=5), batch_size=64, return_dict=True, verbose=0)
  np.testing.assert_allclose(logs['loss'], logs['ctr_loss'] + (1 + multipliers[-1]) * logs['cvr_loss'], rtol=1e-5)


def test_constraints_round_trip_with_the_model_but_multipliers_start_at_zero():
  model = _multitask_model(['cvr_auc>=0.7'], dual_step=3.0)
  model.lagrangian.multipliers.assign([2.0])
  config = model.get_config()
  assert (config['constraints'], config['dual_step']) == (['cvr_auc>=0.7'], 3.0)
  restored = type(model).from_config(config)
  assert restored.lagrangian.constraints == [Constraint('cvr', 'auc', 0.7)]
  assert restored.lagrangian.multipliers.numpy().tolist() == [0.0]  # training state, not a weight
  with pytest.raises(ValueError, match="task 'ctcvr' is not trained by this head"):
    _multitask_model(['ctcvr_auc>=0.7'])


def test_dual_ascent_needs_finite_validation_logs():
  lagrangian = constraints.Lagrangian([Constraint('cvr', 'auc', 0.7)], ['ctr', 'cvr'])
  dual = constraints.DualAscent(lagrangian)
  with pytest.raises(ValueError, match=r"\['val_cvr_auc'\].*pass validation_data to fit"):
    dual.on_epoch_end(0, {'cvr_auc': 0.6})
  with pytest.raises(ValueError, match=r"\['cvr_auc'\] not finite at epoch 2: the model diverged"):
    dual.on_epoch_end(1, {'val_cvr_auc': float('nan')})
  assert lagrangian.multipliers.numpy().tolist() == [0.0]  # left as it was
