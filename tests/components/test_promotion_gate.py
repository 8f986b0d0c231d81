"""The promotion gate's rule (components/promotion_gate.py): `decide` on hand-made evaluations, one test
per branch, and `evaluate` on simulated scores."""
import dataclasses
import json
import math
import os

import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from components import promotion_gate as gate
from components.promotion_gate import Difference, Evaluation, GateRules, ModelFigures, SliceEvaluation
from models import metrics
from models import significance as sig
from models.significance import Calibration, Estimate

RULES = GateRules(auc_tolerance=0.005)  # a margin to test; logloss_tolerance 0.001, min_domain_auc 0.55
CALIBRATION = Calibration(1000, 0.1, 0.1, 1.0, 0.33, 0.33, [])
BASELINE_AUC, BASELINE_LOGLOSS = 0.7310, 0.4000


def _estimate(value, lower, upper, confidence=0.99):
  """An Estimate as `decide` reads it: the interval matters, the SE does not."""
  return Estimate(value, (upper - lower) / 5, lower, upper, confidence)


def _figures(auc, logloss, wauc=None, vs_constant=(-0.03, -0.04, -0.02)):
  return ModelFigures(_estimate(auc, auc - 0.01, auc + 0.01), _estimate(logloss, logloss - 0.01, logloss + 0.01),
                      _estimate(*vs_constant), CALIBRATION,
                      None if wauc is None else _estimate(wauc, wauc - 0.01, wauc + 0.01))


def _slice(count, positives, deciding, auc, logloss=(0.0, -0.001, 0.001), overall=False):
  """A baseline-run slice from candidate - baseline (value, lower, upper) of AUC (WAUC overall) and log loss;
  the models' own figures are the baseline's plus the difference."""
  wauc = auc if overall else None
  models = {'candidate': _figures(BASELINE_AUC + auc[0], BASELINE_LOGLOSS + logloss[0],
                                  wauc and BASELINE_AUC + auc[0]),
            'production': _figures(BASELINE_AUC, BASELINE_LOGLOSS, wauc and BASELINE_AUC)}
  difference = Difference(_estimate(*auc), _estimate(*logloss), wauc and _estimate(*wauc))
  return SliceEvaluation(count, positives, count - positives, deciding, models, difference)


def _evaluation(domains, overall_wauc=(0.002, -0.001, 0.005), overall_logloss=(0.0, -0.001, 0.001),
                baseline='production'):
  deciding = sum(s.deciding for s in domains.values())
  tests = (2 if baseline else 1) * deciding + 2
  overall = _slice(sum(s.count for s in domains.values()), sum(s.positives for s in domains.values()), True,
                   overall_wauc, overall_logloss, overall=True)
  return Evaluation('candidate', baseline, RULES, tests, 0.05 / tests, domains, overall)


def _healthy_domains():
  return {'banner': _slice(5593, 1210, True, (0.001, -0.004, 0.006)),
          'search': _slice(8000, 900, True, (0.003, -0.001, 0.007))}


def test_promotes_when_nothing_blocks_and_the_candidate_is_not_worse_overall():
  decision = gate.decide(_evaluation(_healthy_domains()), RULES)
  assert decision.blessed and decision.rule == gate.NOT_WORSE_OVERALL
  assert decision.reasons[-1] == 'overall: WAUC 0.7330 - 0.7310 = +0.0020 >= 0: not worse overall, promote'
  assert len(decision.reasons) == 2 + 1 + 3 + 1  # domain AUCs, WAUC, log losses, verdict


def test_not_promoted_when_worse_overall_but_not_significantly():
  decision = gate.decide(_evaluation(_healthy_domains(), overall_wauc=(-0.001, -0.004, 0.002)), RULES)
  assert not decision.blessed and decision.rule == gate.NOT_BETTER_OVERALL
  assert decision.reasons[-1].endswith('< 0: not better overall, not promoted')


def test_blocks_a_deciding_domain_significantly_below_the_tolerance():
  domains = _healthy_domains()
  domains['banner'] = _slice(5593, 1210, True, (-0.019, -0.030, -0.008))
  decision = gate.decide(_evaluation(domains), RULES)
  assert not decision.blessed and decision.rule == gate.DOMAIN_AUC_WORSE
  assert ('banner: AUC 0.7120 - 0.7310 = -0.0190 [-0.0300, -0.0080] (99% CI) is significantly below -0.0050 '
          '(n=5593, 1210 positives)') in decision.reasons


def test_a_domain_significantly_worse_but_within_the_tolerance_does_not_block():
  domains = _healthy_domains()
  domains['banner'] = _slice(5593, 1210, True, (-0.003, -0.004, -0.002))  # below 0, not below -0.005
  decision = gate.decide(_evaluation(domains), RULES)
  assert decision.blessed
  assert any(r.startswith('banner: AUC') and 'not significantly below -0.0050' in r for r in decision.reasons)


def test_blocks_when_the_overall_wauc_is_significantly_worse():
  decision = gate.decide(_evaluation(_healthy_domains(), overall_wauc=(-0.004, -0.007, -0.001)), RULES)
  assert not decision.blessed and decision.rule == gate.WAUC_WORSE
  assert 'overall: WAUC 0.7270 - 0.7310 = -0.0040 [-0.0070, -0.0010] (99% CI) is significantly below 0.0000' \
      in decision.reasons[2]


@pytest.mark.parametrize('where', ['overall', 'search'])
def test_blocks_when_the_log_loss_is_significantly_worse(where):
  worse = (0.004, 0.002, 0.006)  # lower bound above the 0.001 tolerance
  domains = _healthy_domains()
  if where == 'search':
    domains['search'] = _slice(8000, 900, True, (0.003, -0.001, 0.007), worse)
  evaluation = _evaluation(domains, overall_logloss=worse if where == 'overall' else (0.0, -0.001, 0.001))
  decision = gate.decide(evaluation, RULES)
  assert not decision.blessed and decision.rule == gate.LOGLOSS_WORSE
  assert (f'{where}: log loss 0.4040 - 0.4000 = +0.0040 [0.0020, 0.0060] (99% CI) is significantly above '
          '0.0010') in '\n'.join(decision.reasons)


def test_scores_that_are_not_probabilities_of_the_label_are_judged_by_auc_alone():
  """A multi-task CVR scored over every exposure predicts P(conversion | click): its log loss says nothing."""
  uncalibrated = dataclasses.replace(RULES, calibrated=False)
  worse = (0.004, 0.002, 0.006)
  decision = gate.decide(_evaluation(_healthy_domains(), overall_logloss=worse), uncalibrated)
  assert decision.blessed and not any('log loss' in reason for reason in decision.reasons)
  decision = gate.decide(_first_run(FIRST_RUN_DOMAINS, vs_constant=(0.02, 0.01, 0.03)), uncalibrated)
  assert decision.blessed and decision.rule == gate.FIRST_RUN


def test_a_log_loss_increase_within_the_tolerance_does_not_block():
  evaluation = _evaluation(_healthy_domains(), overall_logloss=(0.0008, 0.0005, 0.0011))
  assert gate.decide(evaluation, RULES).blessed


def test_a_small_domain_much_worse_does_not_decide():
  domains = _healthy_domains()
  domains['new_user'] = _slice(150, 9, False, (-0.20, -0.35, -0.05), (0.05, 0.02, 0.08))
  decision = gate.decide(_evaluation(domains), RULES)
  assert decision.blessed and decision.rule == gate.NOT_WORSE_OVERALL
  assert ('new_user: AUC 0.5310 - 0.7310 = -0.2000 [-0.3500, -0.0500] (99% CI) (n=150, 9 positives); too small '
          'to decide alone (needs 200 examples, 20 positives and as many negatives)') in decision.reasons


def test_an_overall_figure_that_cannot_be_computed_does_not_promote():
  evaluation = _evaluation(_healthy_domains(), overall_wauc=(math.nan, math.nan, math.nan))
  decision = gate.decide(evaluation, RULES)
  assert not decision.blessed and decision.rule == gate.NOT_COMPUTABLE
  assert 'overall: WAUC interval cannot be computed (n=13593, 2110 positives)' in decision.reasons


def _first_run(domain_aucs, overall_auc=(0.70, 0.69, 0.71), vs_constant=(-0.03, -0.04, -0.02)):
  """A first-run evaluation from each domain's (count, positives, deciding, (auc, lower, upper))."""
  def one(count, positives, deciding, auc, vs=(-0.03, -0.04, -0.02)):
    figures = ModelFigures(_estimate(*auc), _estimate(0.30, 0.29, 0.31), _estimate(*vs), CALIBRATION)
    return SliceEvaluation(count, positives, count - positives, deciding, {'candidate': figures})
  domains = {d: one(*args) for d, args in domain_aucs.items()}
  overall = one(sum(s.count for s in domains.values()), sum(s.positives for s in domains.values()), True,
                overall_auc, vs_constant)
  deciding = sum(s.deciding for s in domains.values())
  return Evaluation('candidate', None, RULES, deciding + 2, 0.05 / (deciding + 2), domains, overall)


FIRST_RUN_DOMAINS = {'banner': (5593, 1210, True, (0.70, 0.68, 0.72)), 'new_user': (150, 9, False, (0.40, 0.2, 0.6))}


def test_first_run_promotes_above_the_floors():
  decision = gate.decide(_first_run(FIRST_RUN_DOMAINS), RULES)
  assert decision.blessed and decision.rule == gate.FIRST_RUN
  assert 'banner: AUC 0.7000 [0.6800, 0.7200] (99% CI) is not significantly below 0.5500 (n=5593, 1210 positives)' \
      in decision.reasons
  assert any(r.startswith('new_user: AUC 0.4000 [0.2000, 0.6000]') and 'too small' in r for r in decision.reasons)


def test_first_run_floor_is_on_the_interval_not_the_point_estimate():
  below_point = dict(FIRST_RUN_DOMAINS, banner=(5593, 1210, True, (0.54, 0.52, 0.56)))
  assert gate.decide(_first_run(below_point), RULES).blessed
  below_interval = dict(FIRST_RUN_DOMAINS, banner=(5593, 1210, True, (0.53, 0.52, 0.545)))
  decision = gate.decide(_first_run(below_interval), RULES)
  assert not decision.blessed and decision.rule == gate.AUC_BELOW_FLOOR


def test_first_run_blocks_an_overall_auc_below_the_floor():
  decision = gate.decide(_first_run(FIRST_RUN_DOMAINS, overall_auc=(0.52, 0.51, 0.53)), RULES)
  assert not decision.blessed and decision.rule == gate.AUC_BELOW_FLOOR
  assert any(r.startswith('overall: AUC 0.5200') and 'is significantly below 0.5500' in r for r in decision.reasons)


def test_first_run_blocks_a_model_worse_than_the_constant_click_rate():
  decision = gate.decide(_first_run(FIRST_RUN_DOMAINS, vs_constant=(0.02, 0.01, 0.03)), RULES)
  assert not decision.blessed and decision.rule == gate.WORSE_THAN_CONSTANT
  assert 'overall: log loss vs the constant click rate 0.3000 - 0.3300 = +0.0200 [0.0100, 0.0300] (99% CI) ' \
      'is significantly above 0.0000' in '\n'.join(decision.reasons)


def test_decide_takes_other_thresholds_but_not_other_interval_settings():
  domains = _healthy_domains()
  domains['banner'] = _slice(5593, 1210, True, (-0.003, -0.004, -0.002))
  evaluation = _evaluation(domains)
  assert gate.decide(evaluation).blessed  # the evaluation's own rules
  strict = gate.decide(evaluation, GateRules(auc_tolerance=0.001))
  assert not strict.blessed and strict.rule == gate.DOMAIN_AUC_WORSE
  with pytest.raises(ValueError, match='min_examples'):
    gate.decide(evaluation, GateRules(min_examples=100))


def _simulated(sizes, worse=(), seed=0):
  """Labels, domains and two models' scores: production and a candidate that is the same model with
  other noise, except in the `worse` domains, where it ranks poorly."""
  rng = np.random.default_rng(seed)
  domains = np.concatenate([[d] * n for d, n in sizes.items()])
  z = rng.normal(size=domains.size)
  labels = (rng.random(domains.size) < 1 / (1 + np.exp(-(z - 1.5)))).astype(int)
  production = 1 / (1 + np.exp(-(z - 1.5 + rng.normal(0, 0.7, z.size))))
  candidate = 1 / (1 + np.exp(-(z - 1.5 + rng.normal(0, 0.7, z.size))))
  for d in worse:
    candidate[domains == d] = rng.random((domains == d).sum()) * 0.4
  return labels, domains, {'candidate': candidate, 'production': production}


def test_evaluate_figures_and_json():
  labels, domains, scores = _simulated({'a': 3000, 'b': 2000, 'small': 150})
  domains[-3:] = 'empty'  # a single-class domain: nothing to compute, reported as None
  labels[-3:] = 0
  evaluation = gate.evaluate(labels, domains, scores, baseline='production')
  assert evaluation.candidate == 'candidate' and evaluation.tests == 2 * 2 + 2
  assert evaluation.per_test_alpha == pytest.approx(0.05 / 6)
  assert [d for d, s in evaluation.domains.items() if s.deciding] == ['a', 'b']
  confidence = 1 - 0.05 / 6
  a = evaluation.domains['a']
  assert a.models['candidate'].auc.value == pytest.approx(metrics.auc(labels[domains == 'a'],
                                                                      scores['candidate'][domains == 'a']))
  assert a.difference.auc.confidence == pytest.approx(confidence)
  assert evaluation.domains['small'].difference.auc.confidence == 0.95
  expected = sig.wauc_difference(labels, domains, scores['candidate'], scores['production'], confidence)
  assert evaluation.overall.difference.wauc == expected
  assert evaluation.overall.models['production'].wauc.value == pytest.approx(
      metrics.wauc(labels, scores['production'], domains))
  assert evaluation.overall.difference.logloss == sig.logloss_difference(
      labels, scores['candidate'], scores['production'], confidence)
  as_json = json.loads(json.dumps(evaluation.to_dict(), allow_nan=False))
  assert as_json['domains']['empty']['difference']['auc']['value'] is None
  assert as_json['per_test_alpha'] == pytest.approx(0.05 / 6)
  json.dumps(gate.decide(evaluation).to_dict(), allow_nan=False)


def test_bonferroni_width_grows_with_the_number_of_deciding_domains():
  labels, domains, scores = _simulated({'a': 2000, 'b': 2000, 'c': 2000, 'd': 150})

  def width(names):
    keep = np.isin(domains, names)
    evaluation = gate.evaluate(labels[keep], domains[keep], {k: v[keep] for k, v in scores.items()},
                               baseline='production')
    estimate = evaluation.domains['a'].difference.auc
    return estimate.upper - estimate.lower, evaluation.tests

  (one, tests_one), (three, tests_three) = width(['a']), width(['a', 'b', 'c'])
  assert (tests_one, tests_three) == (4, 8)
  assert width(['a', 'd'])[1] == 4  # a small domain is no test
  z = [stats.norm.ppf(1 - 0.05 / tests / 2) for tests in (tests_one, tests_three)]
  assert three / one == pytest.approx(z[1] / z[0], rel=1e-9) and three > one


def test_a_much_worse_small_domain_below_min_examples_does_not_block():
  labels, domains, scores = _simulated({'a': 3000, 'b': 3000, 'small': 150}, worse=['small'])
  evaluation = gate.evaluate(labels, domains, scores, baseline='production')
  small = evaluation.domains['small']
  assert not small.deciding and small.difference.auc.upper < -RULES.auc_tolerance
  decision = gate.decide(evaluation)
  assert decision.rule not in (gate.DOMAIN_AUC_WORSE, gate.LOGLOSS_WORSE)
  assert any(r.startswith('small:') and 'too small to decide alone' in r for r in decision.reasons)


def test_a_much_worse_deciding_domain_blocks():
  labels, domains, scores = _simulated({'a': 3000, 'b': 3000}, worse=['b'])
  decision = gate.decide(gate.evaluate(labels, domains, scores, baseline='production'))
  assert not decision.blessed and decision.rule == gate.DOMAIN_AUC_WORSE
  assert decision.reasons[1].startswith('b: AUC') and 'is significantly below 0.0000' in decision.reasons[1]


def test_identical_models_are_not_worse_overall():
  labels, domains, scores = _simulated({'a': 1000, 'b': 1000})
  scores['candidate'] = scores['production'].copy()
  decision = gate.decide(gate.evaluate(labels, domains, scores, baseline='production'))
  assert decision.blessed and decision.rule == gate.NOT_WORSE_OVERALL


def test_first_run_evaluation():
  labels, domains, scores = _simulated({'a': 2000, 'b': 1000})
  domains = domains.astype('S')  # as tf.Example strings: bytes, reported as str
  evaluation = gate.evaluate(labels, domains, {'candidate': scores['candidate']})
  assert list(evaluation.domains) == ['a', 'b'] and evaluation.tests == 2 + 2
  assert evaluation.overall.difference is None
  assert gate.decide(evaluation).rule == gate.FIRST_RUN
  noise = np.random.default_rng(3).random(labels.size)  # AUC ~0.5: below the 0.55 floor
  decision = gate.decide(gate.evaluate(labels, domains, {'candidate': noise}))
  assert not decision.blessed and decision.rule == gate.AUC_BELOW_FLOOR


def test_evaluate_names_the_models():
  labels, domains, scores = _simulated({'a': 300})
  with pytest.raises(ValueError, match='baseline'):
    gate.evaluate(labels, domains, scores, baseline='missing')
  with pytest.raises(ValueError, match='name the candidate'):
    gate.evaluate(labels, domains, dict(scores, challenger=scores['candidate']), baseline='production')
  evaluation = gate.evaluate(labels, domains, dict(scores, challenger=scores['candidate']), baseline='production',
                             candidate='challenger')
  assert evaluation.candidate == 'challenger' and set(evaluation.overall.models) == {
      'candidate', 'production', 'challenger'}


class _TwoTaskModel(tf.Module):
  """A served two-task model on serialized tf.Examples: `ctr` follows the example's click, `cvr` follows its
  conversion when `cvr_informed`, else noise (AUC ~0.5)."""

  def __init__(self, cvr_informed: bool):
    super().__init__()
    self.cvr_informed = cvr_informed

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def serve(self, examples):
    parsed = tf.io.parse_example(examples, {'click': tf.io.FixedLenFeature([], tf.int64),
                                            'conversion': tf.io.FixedLenFeature([], tf.int64),
                                            'noise': tf.io.FixedLenFeature([], tf.float32)})
    noise = parsed['noise']
    ctr = tf.sigmoid(2.0 * tf.cast(parsed['click'], tf.float32) - 1.0 + noise)
    cvr = tf.sigmoid(2.0 * tf.cast(parsed['conversion'], tf.float32) - 1.0 + noise) if self.cvr_informed else (
        tf.sigmoid(noise))
    return {'ctr': ctr, 'cvr': cvr}


def _two_task_examples(uri, split, rows=2000):
  """ExampleGen's layout: `uri/Split-split/` gzipped tf.Examples with a domain, click, conversion and noise."""
  rng = np.random.default_rng(0)
  click = rng.random(rows) < 0.3
  conversion = click & (rng.random(rows) < 0.4)
  os.makedirs(os.path.join(uri, f'Split-{split}'))
  with tf.io.TFRecordWriter(os.path.join(uri, f'Split-{split}', 'data.gz'), options='GZIP') as writer:
    for k in range(rows):
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          'domain': tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'ab'[k % 2:k % 2 + 1]])),
          'click': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(click[k])])),
          'conversion': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(conversion[k])])),
          'noise': tf.train.Feature(float_list=tf.train.FloatList(value=[rng.normal()])),
      })).SerializeToString())


def test_judge_scores_every_task_against_its_own_label_and_floor_and_blesses_only_when_all_pass(tmp_path):
  """The gate's real path on a served two-task SavedModel: each task's output against its label, with its floor."""
  _two_task_examples(str(tmp_path / 'examples'), 'test')
  settings = json.loads(gate.gate_settings('test', 'domain', {'ctr': 'click', 'cvr': 'conversion'}, GateRules(),
                                           task_floors={'ctr': 0.6, 'cvr': 0.55}, uncalibrated=['cvr']))
  columns = {'domain': tf.string, 'click': tf.int64, 'conversion': tf.int64}
  results = {}
  for informed in (True, False):
    path = str(tmp_path / f'model-{informed}')
    model = _TwoTaskModel(informed)
    tf.saved_model.save(model, path, signatures={'serving_default': model.serve})
    results[informed] = gate.judge(str(tmp_path / 'examples'), columns, {gate.CANDIDATE: path}, settings)

  assert results[True]['blessed'] and results[True]['examples'] == 2000 and results[True]['split'] == 'test'
  for result in results.values():
    assert set(result['tasks']) == {'ctr', 'cvr'}
    ctr = result['tasks']['ctr']
    assert ctr['decision']['blessed'] and ctr['decision']['rule'] == gate.FIRST_RUN
    assert set(ctr['evaluation']['domains']) == {'a', 'b'}
  assert results[True]['tasks']['cvr']['decision']['blessed']
  # A CVR output that ignores the conversion is below its floor: that task, hence the model, is not blessed.
  assert not results[False]['blessed']
  assert results[False]['tasks']['cvr']['decision']['rule'] == gate.AUC_BELOW_FLOOR
