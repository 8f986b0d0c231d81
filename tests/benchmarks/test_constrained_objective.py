"""The constraint benchmark's aggregation and tables (benchmarks/constrained_objective.py) on hand-made
results: whether the constraint holds, the bound's choice, the paired change per seed, the docs block. No
model is trained."""
import json

import pytest

from benchmarks import constrained_objective as co
from pipeline import bench, docs

DOMAINS = ['a', 'b']
SEEDS = (0, 1, 2)
WEIGHTED_CVR = [0.60, 0.61, 0.62]  # test CVR AUC per seed
CONSTRAINED_CVR = [0.615, 0.64, 0.66]


def _report(auc, logloss):
  return {'auc': auc, 'logloss': logloss,
          'domains': {d: {'auc': auc + 0.01 * i, 'logloss': logloss, 'count': 10} for i, d in enumerate(DOMAINS)}}


def _record(model, seed, ctr_auc, cvr_auc, trajectory=(), best_epoch=2):
  return {'model': model, 'seed': seed, 'eval_cvr_auc': cvr_auc + 0.01,
          'test': {'ctr': _report(ctr_auc, 0.4), 'cvr': _report(cvr_auc, 0.6)},
          'best_epoch': best_epoch, 'trajectory': list(trajectory), 'seconds': 1.0}


def _results(bound=0.62):
  trajectory = [{'epoch': 1, 'value': 0.58, 'multiplier': 0.4}, {'epoch': 2, 'value': 0.63, 'multiplier': 0.3}]
  records = [_record(co.BASELINE, s, 0.75, auc) for s, auc in zip(SEEDS, WEIGHTED_CVR)]
  records += [_record(co.REFERENCE, s, 0.74, 0.64) for s in SEEDS]
  records += [_record(co.CONSTRAINED, s, 0.745, auc, trajectory, best_epoch=0 if s == 2 else 2)
              for s, auc in zip(SEEDS, CONSTRAINED_CVR)]
  co.judge(records, bound)
  return {'command': 'constrained_objective.py', 'bound': bound, 'bound_reason': 'by hand', 'results': records}


def test_the_constraint_holds_from_its_bound_up():
  records = {(r['model'], r['seed']): r['constraint'] for r in _results(bound=0.62)['results']}
  assert records[co.BASELINE, 2] == {'name': 'cvr_auc>=0.62', 'value': 0.62, 'holds': True}  # on the bound
  assert not records[co.BASELINE, 1]['holds'] and records[co.REFERENCE, 0]['holds']
  assert [records[co.CONSTRAINED, s]['holds'] for s in SEEDS] == [False, True, True]


def test_the_bound_lies_midway_between_the_eval_figures():
  assert co.choose_bound({co.BASELINE: [0.60, 0.62], co.REFERENCE: [0.66, 0.66]}) == 0.635


def test_the_change_is_paired_by_seed_overall_and_per_domain():
  summary = co.summarize(_results())
  expected = bench.paired_change(dict(zip(SEEDS, CONSTRAINED_CVR)), dict(zip(SEEDS, WEIGHTED_CVR)))
  for place in ['all'] + DOMAINS:
    assert summary['changes'][f'cvr_auc/{place}'] == pytest.approx(expected)
  assert summary['changes']['cvr_auc/all']['mean'] == pytest.approx((0.015 + 0.03 + 0.04) / 3)
  assert summary['changes']['ctr_auc/b']['mean'] == pytest.approx(-0.005)
  assert summary['changes']['ctr_logloss/all']['p_value'] is None  # every difference zero
  assert summary['models'][co.BASELINE]['cvr_auc/all'] == pytest.approx(bench.mean_std([0.60, 0.61, 0.62]))
  assert [summary['models'][m]['holds'] for m in co.MODELS] == [1, 3, 2]
  assert summary['models'][co.CONSTRAINED]['seeds'] == list(SEEDS)


def test_the_markdown_shows_the_figures_the_changes_and_the_trajectory():
  text = co.format_markdown(_results())
  assert 'Constraint `cvr_auc>=0.62` (by hand)' in text
  change = bench.plus_minus(co.summarize(_results())['changes']['cvr_auc/all'], '+.4f', with_p=True)
  assert change.startswith('+0.0283 ± 0.0313 (p ')
  change_row = next(line for line in text.splitlines() if line.startswith('| change |'))
  assert change_row.startswith('| change |  | -0.0050 ± 0.0000') and f'| {change} | +0.0000 ± 0.0000 |  |' in change_row
  assert ('| `weighted` | 0.6200 ± 0.0248 | 0.7500 ± 0.0000 | 0.4000 ± 0.0000 | 0.6100 ± 0.0248 | 0.6000 ± 0.0000 '
          '| 1/3 |') in text
  assert '| b | 0.6200 ± 0.0248 | 0.6483 ± 0.0560 |' in text  # the CVR table's domain b
  assert '| 0 | 2 | 0.6300 | 0.3000 | 0.6150 | no |' in text  # the exported epoch carries the test figures
  assert '| 1 | 1 | 0.5800 | 0.4000 |  |  |' in text
  assert '| 2 | 0 |  | 0.0000 | 0.6600 | yes |' in text  # the starting weights exported


def test_the_docs_block_renders_the_results_file(tmp_path, monkeypatch):
  monkeypatch.setattr(docs, 'RESULTS', str(tmp_path))
  (tmp_path / 'constraint.json').write_text(json.dumps(_results()))
  rendered = docs.render('<!-- generated: constraint constraint -->\n<!-- end generated -->\n')
  assert co.format_markdown(_results()) in rendered
