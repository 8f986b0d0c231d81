"""The revenue benchmark's tables (benchmarks/reconstructed_objective.py format_markdown) on hand-made
results: means over seeds and the value model's change against the click model, paired by seed, overall and
per domain; the docs block. No model is trained."""
import json

from benchmarks import reconstructed_objective as ro
from pipeline import bench, docs

SEEDS = (0, 1, 2)
GAIN = [0.1, 0.2, 0.3]  # value - click revenue@10 over the domains, per seed


def _record(model, seed, revenue):
  return {'model': model, 'seed': seed, 'base_revenue': 0.3,
          'scores': {'auc_click': 0.7, 'auc_value': 0.6 if model == 'click' else 0.75,
                     'revenue@10': {'a': revenue + 0.5, 'b': revenue, 'all': revenue},
                     'revenue@2': {'a': 1.0, 'b': 1.0, 'all': 1.0}}}


def _results():
  return {'command': 'reconstructed_objective.py',
          'results': [_record('click', s, 0.5 + 0.01 * s) for s in SEEDS]
          + [_record('value', s, 0.5 + 0.01 * s + g) for s, g in zip(SEEDS, GAIN)]}


def test_the_value_models_change_is_paired_by_seed():
  text = ro.format_markdown(_results())
  change = bench.plus_minus(bench.paired_change({s: 0.5 + 0.01 * s + g for s, g in zip(SEEDS, GAIN)},
                                                {s: 0.5 + 0.01 * s for s in SEEDS}), '+.4f', with_p=True)
  assert change.startswith('+0.2000 ± 0.2484 (p 0.074)')  # differences 0.1, 0.2, 0.3: t = 3.46, 2 df
  assert '| model | AUC click | AUC value | revenue@2 | revenue@10 |' in text  # k in order
  change_row = next(line for line in text.splitlines() if line.startswith('| change |'))
  assert change_row.startswith('| change | +0.0000 ± 0.0000 | +0.1500 ± 0.0000') and change_row.endswith(f'| {change} |')
  assert '| `value` | 0.7000 ± 0.0000 | 0.7500 ± 0.0000 | 1.0000 ± 0.0000 | 0.7100 ± 0.2733 |' in text


def test_the_domain_table_holds_every_domain_and_the_total():
  lines = ro.format_markdown(_results()).splitlines()
  assert lines[-3].startswith('| a | 1.0000 ± 0.0000 | 1.0000 ± 0.0000 | +0.0000 ± 0.0000 | 1.0100 ± 0.0248 | '
                              '1.2100 ± 0.2733 | +0.2000 ± 0.2484 (p 0.074) |')
  assert [line.split(' | ')[0] for line in lines[-3:]] == ['| a', '| b', '| all']


def test_the_docs_block_renders_the_results_file(tmp_path, monkeypatch):
  monkeypatch.setattr(docs, 'RESULTS', str(tmp_path))
  (tmp_path / 'revenue.json').write_text(json.dumps(_results()))
  rendered = docs.render('<!-- generated: revenue revenue -->\n<!-- end generated -->\n')
  assert ro.format_markdown(_results()) in rendered
