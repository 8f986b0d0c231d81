"""The simulated days: one world, a falling click rate, a new domain with its contract update, the tables,
and the `simulate` command (the session's shared run is its first day, tests/runs.py)."""
import json
import os

import pandas as pd
import pytest

from data import synthetic
from models.features import FeatureSpec
from pipeline import simulate
from pipeline.config import span_numbers
import schemas
from tests import runs

DRIFT = simulate.Drift(drift_domain='banner', click_drop=0.3, new_domain_day=3, new_domain_share=0.1)
ROWS = 4000


def _days():
  world = synthetic.generate(ROWS * 4, seed=1)
  return world, [simulate.day_frame(world, day, ROWS, DRIFT, seed=1) for day in range(1, 5)]


def test_days_are_slices_of_one_world():
  world, days = _days()
  pd.testing.assert_frame_equal(days[0].drop(columns=['click', 'conversion']),
                                world.iloc[:ROWS].drop(columns=['click', 'conversion']).reset_index(drop=True))
  assert days[0].user_id.isin(days[1].user_id).mean() > 0.9  # the same users come back


def test_drift_domain_loses_clicks_day_after_day():
  world, days = _days()
  rates = [day[day.domain == 'banner'].click.mean() for day in days]
  assert rates[0] == world.iloc[:ROWS][world.iloc[:ROWS].domain == 'banner'].click.mean()  # day 1 as generated
  assert rates[0] > rates[1] > rates[2]
  for day in days:
    assert not ((day.conversion == 1) & (day.click == 0)).any()  # a conversion only follows a click


def test_new_domain_appears_on_its_day_with_its_own_behaviour():
  _, days = _days()
  assert [int((day.domain == DRIFT.new_domain).sum() > 0) for day in days] == [0, 0, 1, 1]
  new = days[2][days[2].domain == DRIFT.new_domain]
  assert 0.07 < len(new) / ROWS < 0.13
  in_app = new.context.str.startswith('app_')
  assert new[in_app].click.mean() > 1.5 * new[~in_app].click.mean()


def test_contract_gains_the_new_domain_on_its_day(tmp_path):
  assert simulate.day_spec(2, DRIFT).domains == synthetic.FEATURE_SPEC.domains
  spec = simulate.day_spec(3, DRIFT)
  assert spec.domains == synthetic.FEATURE_SPEC.domains + [DRIFT.new_domain]  # appended: adapters keep their index
  simulate.write_contract(str(tmp_path), spec)
  assert FeatureSpec.load(str(tmp_path)) == spec
  schema = schemas.load_schema(str(tmp_path / schemas.SCHEMA_FILE))
  assert list(schema.string_domain[0].value) == spec.domains
  curated = schemas.load_schema(schemas.DEFAULT_SCHEMA_PATH)
  assert [f.name for f in schema.feature] == [f.name for f in curated.feature]


def test_spans_are_written_with_train_eval_and_test(tmp_path):
  _, days = _days()
  folder = simulate.write_span(days[0], str(tmp_path), 7)
  assert span_numbers(str(tmp_path)) == [7]
  splits = [pd.read_csv(f'{folder}/{s}/data.csv') for s in ('train', 'eval', 'test')]
  assert [len(s) for s in splits] == [round(ROWS * share) for share in simulate.SPLIT_SHARES]
  pd.testing.assert_frame_equal(pd.concat(splits, ignore_index=True), days[0].reset_index(drop=True),
                                check_dtype=False)  # consecutive slices of the day, in order


def test_tables_show_candidate_and_production():
  summary = {'span': 2, 'rows': 100, 'domains': ['a', 'b'], 'warm_start': '/m/9', 'wall_s': 61.0, 'stopped': None,
             'blessed': True, 'rule': 'not_worse_overall', 'pushed': '/serving/ctr/2',
             'auc': {'a': {'candidate': 0.7, 'production': 0.65, 'change_ci': [0.01, 0.09]},
                     'b': {'candidate': 0.6, 'production': None, 'change_ci': None},
                     'overall': {'candidate': 0.66, 'production': 0.64, 'change_ci': [-0.01, 0.05]}}}
  table = simulate.format_run(summary)
  assert 'warm start: /m/9' in table and 'blessed: True (not_worse_overall)  pushed: /serving/ctr/2' in table
  row_a = next(line for line in table.splitlines() if line.startswith('a '))
  assert row_a.split()[1:] == ['0.7000', '0.6500', '+0.0500', '[+0.0100,', '+0.0900]']
  assert next(line for line in table.splitlines() if line.startswith('b ')).split()[1:] == ['0.6000', '-', '-', '-']
  stopped = dict(summary, stopped='field price missing', auc={}, warm_start=None, blessed=False, rule=None,
                 pushed=None)
  assert 'stopped by validation' in simulate.format_run(stopped)
  lines = simulate.format_summary([summary, stopped]).splitlines()
  assert lines[2].split() == ['2', '100', '61', 'yes', '0.6600', '0.6400', '[-0.0100,', '+0.0500]', 'True', 'yes',
                              'not_worse_overall']
  assert lines[3].split()[-3:] == ['stopped', 'no', '-']
  assert lines[4].startswith('promoted on 0 of 1 days after the first')


@pytest.mark.e2e
def test_simulate_command_runs_each_day_and_prints_its_table(shared_run):
  printed = shared_run.printed
  assert f'span 1: {runs.SHARED_ROWS} rows, 7 domains, warm start: none (from scratch)' in printed
  rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.split()}
  for domain in synthetic.FEATURE_SPEC.domains:  # the candidate's AUC; no production model on day 1
    assert float(rows[domain][0]) == pytest.approx(shared_run.report['domains'][
        synthetic.FEATURE_SPEC.domains.index(domain)]['auc_finetune'], abs=5e-5) and rows[domain][1:] == ['-'] * 3
  assert f'blessed: True (first_run)  pushed: {shared_run.report["pushed_model"]}' in printed
  summary = next(line for line in printed.splitlines() if line.split()[:2] == ['1', str(runs.SHARED_ROWS)])
  assert summary.split()[3:] == ['no', f'{shared_run.report["auc_finetune"]:.4f}', '-', '-', 'True', 'yes',
                                 'first_run']
  assert 'total wall time' in printed
  with open(os.path.join(shared_run.output_dir, simulate.RESULTS_FILE)) as f:
    results = json.load(f)
  assert results['command'].startswith('python tfx_runner.py simulate --spans 1')
  assert [s['span'] for s in results['summaries']] == [1] and results['summaries'][0]['blessed']
  assert span_numbers(shared_run.data_root) == [1]


def test_days_train_as_many_passes_as_the_default_data_unless_told():
  assert simulate.training_steps(20000, None, None) == {'pretrain_steps': 160, 'finetune_steps': 30}
  assert simulate.training_steps(20000, 7, None) == {'pretrain_steps': 7, 'finetune_steps': 30}
  assert simulate.training_steps(10, None, None) == {'pretrain_steps': 1, 'finetune_steps': 1}
