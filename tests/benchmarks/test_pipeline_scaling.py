"""The pipeline-scaling benchmark's table (benchmarks/pipeline_scaling.py) from hand-made results: no pipeline runs
(the benchmark itself does, at the sizes it is given)."""
import pytest

from benchmarks import pipeline_scaling as scaling


def _result(rows, transform, evaluator=None):
  seconds = {'CsvExampleGen': 5.0, 'Transform': transform, scaling.TOTAL: 5.0 + transform + (evaluator or 0.0)}
  if evaluator is not None:
    seconds['Evaluator'] = evaluator
  return {'rows': rows, 'seconds': seconds}


def test_growth_per_100k_rows_is_the_least_squares_slope():
  results = [_result(100_000, 10.0), _result(300_000, 30.0), _result(1_000_000, 100.0)]
  assert scaling.per_100k(results, 'Transform') == pytest.approx(10.0)
  assert scaling.per_100k(results, 'CsvExampleGen') == pytest.approx(0.0, abs=1e-9)  # fixed cost only


def test_the_table_has_a_row_per_component_the_whole_run_last_and_a_missing_component_as_zero():
  text = scaling.table([_result(100_000, 10.0), _result(300_000, 30.0, evaluator=4.0)])
  lines = text.splitlines()
  assert lines[0] == '| component | 100,000 rows (s) | 300,000 rows (s) | s per 100k rows |'
  assert lines[2:] == ['| CsvExampleGen | 5.0 | 5.0 | 0.0 |', '| Transform | 10.0 | 30.0 | 10.0 |',
                       '| Evaluator | 0.0 | 4.0 | 2.0 |', '| whole run | 15.0 | 39.0 | 12.0 |']


def test_one_size_has_no_growth_column():
  assert scaling.table([_result(100_000, 10.0)]).splitlines()[0] == '| component | 100,000 rows (s) |'


def test_runs_of_one_size_on_two_runners_get_a_column_each_and_no_growth():
  results = [{**_result(1_000_000, 100.0), 'beam_runner': 'direct'},
             {**_result(1_000_000, 60.0), 'beam_runner': 'direct-multiprocess'}]
  lines = scaling.table(results).splitlines()
  assert lines[0] == '| component | 1,000,000 rows, direct (s) | 1,000,000 rows, direct-multiprocess (s) |'
  assert lines[3] == '| Transform | 100.0 | 60.0 |'


def test_the_scoring_components_get_their_test_rows_per_second_where_every_run_knows_them():
  results = [{**_result(100_000, 10.0, evaluator=4.0), 'test_rows': 20_000},
             {**_result(300_000, 30.0, evaluator=6.0), 'test_rows': 60_000}]
  assert scaling.table(results).splitlines()[-1] == '| Evaluator: test rows scored per s | 5,000 | 10,000 | |'
  assert 'scored' not in scaling.table([_result(100_000, 10.0, evaluator=4.0)])  # older results: no test_rows


def test_a_label_names_its_runs_in_the_header():
  results = [{**_result(1_000_000, 100.0), 'label': 'before'}, {**_result(1_000_000, 60.0), 'label': 'after'}]
  assert scaling.table(results).splitlines()[0] == '| component | 1,000,000 rows, before (s) | 1,000,000 rows, after (s) |'


def test_a_repeated_run_is_named_in_the_header_and_left_out_of_the_growth():
  results = [_result(100_000, 10.0), _result(300_000, 30.0), {**_result(300_000, 90.0), 'run': 2}]
  lines = scaling.table(results).splitlines()
  assert lines[0] == ('| component | 100,000 rows (s) | 300,000 rows (s) | 300,000 rows, run 2 (with a production '
                      'model) (s) | s per 100k rows |')
  assert lines[3] == '| Transform | 10.0 | 30.0 | 90.0 | 10.0 |'
