"""The gradient-surgery benchmark's aggregation over seeds and its published tables (benchmarks/multitask.py's
summarize and format_markdown) on hand-made records. No model is trained."""
import math

import pytest

from benchmarks import multitask
from pipeline import bench

DOMAINS = multitask.SPEC.domains


def _record(surgery, seed, auc, head='esmm', logloss=0.4, cosines=None, mlora=False):
  """A `run_cell` record whose every task and domain has `auc` and `logloss`, but for the last domain, whose
  AUC could not be computed (no positives)."""
  columns = ['ctr', 'cvr', 'cvr_clicked'] + (['ctcvr'] if head == 'esmm' else [])
  scores = {c: {part: {'auc': auc, 'logloss': logloss} for part in ['all'] + DOMAINS} for c in columns}
  for column in columns:
    scores[column][DOMAINS[-1]]['auc'] = math.nan
  stages = {'pretrained': scores, **({'mlora': scores} if mlora else {})}
  return {'head': head, 'balancing': 'fixed', 'surgery': surgery, 'seed': seed, **stages, 'cosines': cosines,
          'seconds': 1.0}


def _row(rows, surgery, stage='pretrained', head='esmm'):
  return next(r for r in rows if (r['surgery'], r['stage'], r['head']) == (surgery, stage, head))


def test_the_change_against_none_is_paired_by_seed():
  baseline, changes = [0.70, 0.75, 0.80], [0.020, 0.021, 0.022]
  records = ([_record('none', s, a) for s, a in enumerate(baseline)] +
             [_record('pcgrad', s, a + d) for s, (a, d) in enumerate(zip(baseline, changes))])
  rows = multitask.summarize(records)
  auc = _row(rows, 'pcgrad')['scores']['ctr']['all']['auc']
  assert auc["mean"] == pytest.approx(0.771)
  paired = bench.mean_std(changes)
  assert auc["change"]["mean"] == pytest.approx(0.021)
  # the interval of the per-seed differences, far narrower than the spread of the seeds themselves
  assert auc['change']['half_width'] == pytest.approx(paired['half_width'])
  assert auc['change']['half_width'] < auc['half_width'] / 5
  assert 0 < auc['change']['p_value'] < 0.05
  assert _row(rows, 'none')['scores']['ctr']['all']['auc']['change'] is None
  assert _row(rows, 'pcgrad')['seeds'] == [0, 1, 2]


def test_one_seed_gives_the_change_without_an_interval_or_p_and_only_common_seeds_pair():
  rows = multitask.summarize([_record('none', 0, 0.70), _record('gradvac', 0, 0.72)])
  change = _row(rows, 'gradvac')['scores']['cvr']['all']['auc']['change']
  assert change['mean'] == pytest.approx(0.02)
  assert change['half_width'] is None and change['p_value'] is None
  rows = multitask.summarize([_record('none', 0, 0.70), _record('gradvac', 0, 0.72), _record('gradvac', 1, 0.90)])
  assert _row(rows, 'gradvac')['scores']['cvr']['all']['auc']['change']['mean'] == pytest.approx(0.02)


def test_each_head_and_model_pairs_with_its_own_baseline():
  records = [_record('none', 0, 0.70, mlora=True), _record('pcgrad', 0, 0.71, mlora=True),
             _record('none', 0, 0.60, head='mmoe'), _record('pcgrad', 0, 0.65, head='mmoe')]
  rows = multitask.summarize(records)
  assert _row(rows, 'pcgrad')['scores']['ctr']['all']['auc']['change']['mean'] == pytest.approx(0.01)
  assert _row(rows, 'pcgrad', stage='mlora')['scores']['ctr']['all']['auc']['change']['mean'] == pytest.approx(0.01)
  assert _row(rows, 'pcgrad', head='mmoe')['scores']['ctr']['all']['auc']['change']['mean'] == pytest.approx(0.05)
  assert not any(r['head'] == 'mmoe' and r['stage'] == 'mlora' for r in rows)


def test_the_markdown_has_a_table_per_head_with_changes_p_log_loss_cosines_and_domains():
  cosines = [{'ctr/ctcvr': 0.2}, {'ctr/ctcvr': 0.3}]
  records = ([_record('none', s, 0.70 + s / 10, logloss=0.5) for s in (0, 1)] +
             [_record('gradvac', s, 0.71 + s / 10 + s / 100, logloss=0.45 - s / 100, cosines=cosines[s])
              for s in (0, 1)] +
             [_record('none', 0, 0.60, head='mmoe')])
  text = multitask.format_markdown({'setup': '100 test examples', 'records': records})
  assert '### esmm, fixed balancing, pretrained: test split, seeds 0,1' in text
  assert '### mmoe, fixed balancing, pretrained: test split, seeds 0' in text
  assert '| task | surgery | AUC | AUC change | p | log loss | log loss change | p |' in text
  assert '| ctr | none | 0.7500 ± 0.6353 | - |  | 0.5000 ± 0.0000 | - |  |' in text
  # AUC changes 0.01, 0.02: mean 0.015, half-width 0.0071 * t(0.975, 1) / sqrt(2) = 0.0635, p 0.205; log loss
  # changes -0.05, -0.06: p 0.058
  assert ('| ctcvr | gradvac | 0.7650 ± 0.6988 | +0.0150 ± 0.0635 | 0.205 | 0.4450 ± 0.0635 | -0.0550 ± 0.0635 | '
          '0.058 |') in text
  assert 'GradVac target cosine ctr/ctcvr: 0.250 ± 0.6353' in text
  assert '| task | surgery | ' + ' | '.join(DOMAINS) + ' |' in text
  assert '| cvr | gradvac | 0.7650 (+0.0150 ± 0.0635) | ' in text
  assert '| 0.7650 (+0.0150 ± 0.0635) | - |' in text  # no AUC in the last domain, and so no change
