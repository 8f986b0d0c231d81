"""The benchmark harness: aggregation, table, resuming and test-split encoding without pipelines; the command
on a cell whose pipeline run is the session's shared run (tests/runs.py), and (`make test-all`) one real
1-cell grid end to end."""
import dataclasses
import json
import os
import time

import numpy as np
import pytest
import tensorflow as tf

import tfx_runner
from pipeline import bench
from tests import runs

TRAINING = bench.Training(pretrain_steps=60, finetune_steps=30, eval_steps=5, batch_size=256, hidden_units='32-16')
MOVIELENS_GENDER = bench.Dataset('movielens', domain='gender', source='/data/ml-100k')


def _method_result(wauc, domain_aucs, adapter_parameters=0):
  """A method's entry in a record, as run_cell writes it; domain `d` has 100 * (its position + 1) examples."""
  domains = {d: {'auc': a, 'logloss': 0.5, 'calibration': 1.0, 'count': 100 * (i + 1)}
             for i, (d, a) in enumerate(domain_aucs.items())}
  return {'domains': domains, 'auc': wauc + 0.01, 'logloss': 0.5, 'calibration': 1.0, 'count': 300,
          'wauc': wauc, 'gauc': wauc - 0.05, 'examples_per_second': 1000.0, 'parameters': 5000 + 2 * adapter_parameters,
          'trainable_parameters': 5000, 'adapter_parameters_per_domain': adapter_parameters, 'best_epoch': 3}


def _record(cell, base_wauc, mlora_wauc, training=TRAINING):
  return {**bench.cell_identity(cell, training), 'wall_seconds': 100.0 + cell.seed,
          'methods': {'base': _method_result(base_wauc, {'F': base_wauc, 'M': base_wauc}),
                      'mlora': _method_result(mlora_wauc, {'F': mlora_wauc, 'M': mlora_wauc}, adapter_parameters=40)}}


BASE_WAUC = [0.70, 0.71, 0.73]
MLORA_WAUC = [0.72, 0.74, 0.75]  # differences 0.02, 0.03, 0.02: t = 7 with 2 degrees of freedom


@pytest.fixture
def records():
  cells = bench.build_grid([MOVIELENS_GENDER], ['mlp'], [0, 1, 2])
  return [_record(cell, b, m) for cell, b, m in zip(cells, BASE_WAUC, MLORA_WAUC)]


def test_mean_std_is_the_sample_std_with_the_95_percent_t_interval():
  assert bench.mean_std([1.0, 2.0, 3.0]) == pytest.approx(
      {'mean': 2.0, 'std': 1.0, 'half_width': 4.302653 / np.sqrt(3)})  # t(0.975, 2) = 4.3027
  assert bench.mean_std([0.7]) == {'mean': 0.7, 'std': None, 'half_width': None}


def test_paired_change_is_the_interval_of_the_per_seed_differences():
  change = bench.paired_change(dict(enumerate(MLORA_WAUC)), dict(enumerate(BASE_WAUC)))
  differences = np.subtract(MLORA_WAUC, BASE_WAUC)
  assert change['mean'] == pytest.approx(differences.mean())
  assert change['half_width'] == pytest.approx(4.302653 * differences.std(ddof=1) / np.sqrt(3))
  assert change['p_value'] == pytest.approx(bench.paired_p_value(dict(enumerate(MLORA_WAUC)),
                                                                 dict(enumerate(BASE_WAUC))))
  assert bench.paired_change({0: 0.7}, {1: 0.6}) is None


def test_paired_p_value_matches_the_t_distribution():
  candidate = dict(enumerate(MLORA_WAUC))
  baseline = dict(enumerate(BASE_WAUC))
  t = 7.0  # mean difference 0.0233 over its standard error 0.0033
  expected = 1 - t / np.sqrt(t ** 2 + 2)  # two-sided p of Student's t with 2 degrees of freedom
  assert bench.paired_p_value(candidate, baseline) == pytest.approx(expected, rel=1e-9)
  assert bench.paired_p_value({**candidate, 7: 0.99}, baseline) == pytest.approx(expected, rel=1e-9)  # paired
  assert bench.paired_p_value({0: 0.72}, {0: 0.70}) is None  # one pair: no test
  assert bench.paired_p_value(baseline, baseline) is None  # every difference zero


def test_summarize_rows_per_backbone_and_method(records):
  summary = bench.summarize(records)
  assert summary['cells'] == 3 and summary['cells_wall_seconds'] == pytest.approx(303.0)
  table = summary['datasets']['movielens:gender']
  assert table['domains'] == ['M', 'F']  # the larger domain first
  base, mlora = table['rows']
  assert (base['backbone'], base['method'], base['label'], base['seeds']) == ('mlp', 'base', 'base', [0, 1, 2])
  assert (mlora['method'], mlora['label']) == ('mlora', '+MLoRA')
  assert base['wauc']['mean'] == pytest.approx(np.mean(BASE_WAUC))
  assert base['wauc']['std'] == pytest.approx(np.std(BASE_WAUC, ddof=1))
  assert mlora['domains']['F']['auc']['mean'] == pytest.approx(np.mean(MLORA_WAUC))
  assert base['wauc_p_value'] is None
  assert mlora['wauc_p_value'] == pytest.approx(1 - 7 / np.sqrt(51))
  assert mlora['adapter_parameters_per_domain'] == 40 and mlora['parameters'] == 5080
  assert mlora['cell_wall_seconds'] == pytest.approx(101.0)


def test_markdown_table(records):
  text = bench.format_markdown(bench.summarize(records))
  lines = text.splitlines()
  header = next(line for line in lines if line.startswith('| backbone | method'))
  assert header == ('| backbone | method | seeds | WAUC | change vs base | AUC | GAUC | logloss | AUC M | AUC F | '
                    'params | adapter params / domain | examples/s | kept epoch | cell wall s | p (WAUC vs base) |')
  assert '## movielens:gender' in lines
  wide = lines.index('| backbone | base | +MLoRA |')  # the paper's layout first: a column per method
  assert lines[wide + 2] == '| mlp | 0.7133 | 0.7367 (+0.0233 ± 0.0143) |'  # the paired change, 95% interval
  assert lines[lines.index(header) + 1] == '|' + '---|' * 16
  assert ('| mlp | base | 3 | 0.7133 ± 0.0379 | - | 0.7233 | 0.6633 | 0.5000 | 0.7133 | 0.7133 | 5,000 | 0 | '
          '1,000 | 3,3,3 | 101 | - |') in lines
  assert ('| mlp | +MLoRA | 3 | 0.7367 ± 0.0379 | +0.0233 ± 0.0143 | 0.7467 | 0.6867 | 0.5000 | 0.7367 | 0.7367 | '
          '5,080 | 40 | 1,000 | 3,3,3 | 101 | 0.0198 |') in lines


def test_run_grid_resumes_after_the_cells_in_the_jsonl(tmp_path, records, capsys):
  """Cells with a record for the same training are skipped; a record of other training settings is not
  theirs; a failed cell is reported and left for the next run."""
  cells = bench.build_grid([MOVIELENS_GENDER], ['mlp', 'deepfm'], [0, 1, 2])
  other_training = bench.Training(pretrain_steps=999)
  stale = _record(cells[3], 0.5, 0.5, training=other_training)
  with open(tmp_path / bench.RESULTS_JSONL, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records + [stale])

  started = []

  def fake_run(cell, training, output_dir):
    started.append(cell)
    if cell.seed == 2:
      raise bench.CellFailed('pipeline exited with 1')
    return _record(cell, 0.70, 0.72 + 0.01 * cell.seed, training)

  summary = bench.run_grid(cells, TRAINING, str(tmp_path), run=fake_run)
  assert started == cells[3:]
  assert summary['failed'] == ['movielens:gender deepfm seed=2']
  assert len(bench.read_records(str(tmp_path / bench.RESULTS_JSONL))) == 4 + 2
  assert [row['label'] for row in summary['datasets']['movielens:gender']['rows']] == ['base', '+MLoRA'] * 2
  output = capsys.readouterr().out
  assert '[1/6] movielens:gender mlp seed=0 finished earlier, skipped' in output
  assert '[4/6] movielens:gender deepfm seed=0 done in 100 s, WAUC base 0.7000 mlora 0.7200' in output
  assert '[6/6] movielens:gender deepfm seed=2 FAILED' in output
  for name in (bench.RESULTS_MD, bench.RESULTS_JSON, 'wauc_movielens-gender.png',
               'domain_auc_movielens-gender_mlp.png', 'domain_auc_movielens-gender_deepfm.png'):
    assert os.path.getsize(tmp_path / name) > 0

  started.clear()
  bench.run_grid(cells, TRAINING, str(tmp_path), run=fake_run)
  assert started == [cells[5]]  # only the failed cell again


def test_a_record_from_before_a_training_field_counts_as_its_default():
  cell = bench.build_grid([MOVIELENS_GENDER], ['mlp'], [0])[0]
  older = _record(cell, 0.7, 0.72)
  del older['training']['loss'], older['training']['rank_weight']
  assert bench.is_record_of(older, cell, TRAINING)
  assert not bench.is_record_of(older, cell, dataclasses.replace(TRAINING, loss='ranknet'))
  assert dataclasses.replace(TRAINING, loss='ranknet', rank_weight=0.5).flags()[-4:] == [
      '--loss', 'ranknet', '--rank-weight', '0.5']


def test_head_and_constraints_reach_the_cells_run_one_flag_per_constraint():
  training = dataclasses.replace(TRAINING, head='shared_bottom', constraint=('cvr_auc>=0.7', 'cvr_loss<=0.3'),
                                 dual_step=5.0)
  assert training.flags()[-8:] == ['--head', 'shared_bottom', '--constraint', 'cvr_auc>=0.7',
                                   '--constraint', 'cvr_loss<=0.3', '--dual-step', '5.0']
  assert '--constraint' not in TRAINING.flags()  # () keeps the pipeline's default: none
  parsed = tfx_runner.build_parser().parse_args(['run', '--output-dir', 'out', *training.flags()])
  assert (parsed.head, parsed.constraint, parsed.dual_step) == ('shared_bottom', ['cvr_auc>=0.7', 'cvr_loss<=0.3'], 5.0)


def test_a_record_with_constraints_read_back_is_the_same_training():
  """A results file holds the constraints as a JSON list: read back, the record still answers its cell, and
  only its cell's training."""
  cell = bench.build_grid([MOVIELENS_GENDER], ['mlp'], [0])[0]
  training = dataclasses.replace(TRAINING, head='esmm', constraint=('ctcvr_auc>=0.7',))
  record = json.loads(json.dumps(_record(cell, 0.7, 0.72, training)))
  assert record['training']['constraint'] == ['ctcvr_auc>=0.7']
  assert bench.is_record_of(record, cell, training)
  assert not bench.is_record_of(record, cell, dataclasses.replace(training, constraint=('ctcvr_auc>=0.8',)))
  assert not bench.is_record_of(record, cell, TRAINING)
  older = json.loads(json.dumps(_record(cell, 0.7, 0.72)))
  for field in ('head', 'constraint', 'dual_step'):
    del older['training'][field]
  assert bench.is_record_of(older, cell, TRAINING)


def _bench_arguments(monkeypatch, *flags):
  """(cells, training) that `tfx_runner.py bench FLAGS` hands to the grid, which does not run."""
  handed = {}

  def fake_grid(cells, training, output_dir):
    handed.update(cells=cells, training=training)
    return {'datasets': {}, 'cells': 0, 'cells_wall_seconds': 0.0, 'failed': []}

  monkeypatch.setattr(bench, 'run_grid', fake_grid)
  assert tfx_runner.main(['bench', '--output-dir', 'out', '--backbones', 'mlp', '--seeds', '0', *flags]) == 0
  return handed['cells'], handed['training']


def test_bench_command_parses_the_head_constraints_and_label(monkeypatch):
  cells, training = _bench_arguments(monkeypatch, '--datasets', 'synthetic', '--rows', '500', '--head', 'mmoe',
                                     '--constraint', 'cvr_auc>=0.7', '--constraint', 'ctr_loss<=0.4',
                                     '--dual-step', '2', '--label', 'value')
  assert (training.head, training.constraint, training.dual_step) == ('mmoe', ('cvr_auc>=0.7', 'ctr_loss<=0.4'), 2.0)
  assert cells[0].dataset == bench.Dataset('synthetic', rows=500, label='value')
  _, training = _bench_arguments(monkeypatch, '--datasets', 'synthetic')
  assert (training.head, training.constraint, training.dual_step) == (None, (), None)
  with pytest.raises(SystemExit, match='set --head'):
    _bench_arguments(monkeypatch, '--datasets', 'synthetic', '--constraint', 'cvr_auc>=0.7')
  with pytest.raises(SystemExit, match='no revenue'):
    _bench_arguments(monkeypatch, '--datasets', 'movielens', '--label', 'value')


def test_one_pipeline_run_per_cell_with_the_other_methods_as_challengers():
  methods = ('base', 'mlora', 'star', 'star_e2e', 'separate', 'no_adapter')
  cells = bench.build_grid([MOVIELENS_GENDER], ['mlp'], [0, 1], methods)
  assert [(c.seed, c.methods) for c in cells] == [(0, methods), (1, methods)]
  assert cells[0].challengers == ['finetune:star', 'pretrain:star', 'pretrain:separate', 'finetune:none']
  assert [bench.METHODS[m].trainer for m in methods] == [
      'PretrainTrainer', 'FinetuneTrainer', 'FinetuneTrainer_star', 'PretrainTrainer_star', 'PretrainTrainer_separate',
      'FinetuneTrainer_none']
  assert cells[0].key == 'movielens:gender mlp seed=0'
  assert cells[1].folder('out') == os.path.join('out', 'cells', 'movielens-gender', 'mlp', 'seed-1')
  with pytest.raises(ValueError, match='lora'):
    bench.build_grid([MOVIELENS_GENDER], ['mlp'], [0], ['lora'])


def test_summary_compares_every_method_with_base(records):
  star_wauc = [0.71, 0.72, 0.74]
  for record, wauc in zip(records, star_wauc):
    record['methods']['star'] = _method_result(wauc, {'F': wauc, 'M': wauc}, adapter_parameters=80)
  rows = bench.summarize(records)['datasets']['movielens:gender']['rows']
  assert [row['label'] for row in rows] == ['base', '+MLoRA', '+STAR']
  assert rows[2]['wauc_p_value'] == pytest.approx(bench.paired_p_value(dict(enumerate(star_wauc)),
                                                                       dict(enumerate(BASE_WAUC))))
  assert rows[2]['adapter_parameters_per_domain'] == 80


def test_dataset_names():
  assert bench.Dataset.parse('movielens', 'ml', 100) == bench.Dataset('movielens', 'gender', os.path.abspath('ml'))
  assert bench.Dataset.parse('movielens:age', 'ml', 100).folder == 'movielens-age'
  synthetic = bench.Dataset.parse('synthetic', 'ml', 3000)
  assert (synthetic.key, synthetic.folder) == ('synthetic', 'synthetic-3000')
  ciao = bench.Dataset.parse('ciao', 'ml', 100, 'ciao-release')
  assert (ciao.key, ciao.folder, ciao.source) == ('ciao', 'ciao', os.path.abspath('ciao-release'))
  for text in ('movielens:zip', 'criteo', 'synthetic:x', 'ciao:x', 'ciao'):
    with pytest.raises(ValueError):
      bench.Dataset.parse(text, 'ml', 100)
  value = bench.Dataset.parse('synthetic', 'ml', 3000, label='value')
  assert (value.key, value.folder) == ('synthetic-value', 'synthetic-value-3000')  # apart from the click data
  for text, label in (('movielens', 'value'), ('synthetic', 'revenue')):
    with pytest.raises(ValueError):
      bench.Dataset.parse(text, 'ml', 100, label=label)
  with pytest.raises(ValueError, match='transformer'):
    bench.build_grid([synthetic], ['mlp', 'transformer'], [0])


def test_value_label_data_is_prepared_with_the_value_label(tmp_path):
  data_path = bench.prepared_data(bench.Dataset('synthetic', rows=500, label='value'), str(tmp_path))
  spec = bench.FeatureSpec.load(data_path)
  assert (spec.label, spec.extra_labels) == ('value', ['click', 'conversion'])
  assert set(np.unique(bench.load_test_split(data_path).labels)) == {0, 1}


def test_test_split_becomes_typed_serving_examples(tmp_path):
  data_path = bench.prepared_data(bench.Dataset('synthetic', rows=500), str(tmp_path))
  test = bench.load_test_split(data_path)
  assert len(test.examples) == len(test.labels) == len(test.domains) == len(test.users) > 50
  example = tf.train.Example.FromString(test.examples[0]).features.feature
  assert sorted(example) == ['category', 'context', 'domain', 'item_id', 'price', 'user_activity', 'user_id']
  assert example['domain'].bytes_list.value[0].decode() == test.domains[0]
  assert example['user_id'].int64_list.value[0] == int(test.users[0])
  assert len(example['price'].float_list.value) == 1
  assert set(np.unique(test.labels)) <= {0, 1}


SHARED_METHODS = ('base', 'mlora', 'star_e2e')  # the shared run's stages and its challenger (STAR end to end)


def _assert_scored_rows(summary):
  """base, MLoRA and STAR end to end of one cell: every metric in range, parameters as the methods add them."""
  base, mlora, star = summary['datasets']['synthetic']['rows']
  assert star['label'] == 'STAR end to end'
  for row in (base, mlora, star):
    assert 0.3 < row['wauc']['mean'] < 1 and 0.3 < row['auc']['mean'] < 1 and 0 < row['logloss']['mean'] < 1
    assert len(row['domains']) == 7 and row['examples_per_second'] > 0 and row['cell_wall_seconds'] > 0
  assert base['adapter_parameters_per_domain'] == 0 < mlora['adapter_parameters_per_domain']
  assert mlora['parameters'] == base['parameters'] + 7 * mlora['adapter_parameters_per_domain']
  assert star['parameters'] > base['parameters'] and star['wauc']['mean'] != base['wauc']['mean']


@pytest.mark.e2e
def test_bench_command_scores_and_summarizes_a_finished_cell(shared_run, tmp_path, capsys):
  """The shared run is a cell's pipeline run (base, MLoRA and a challenger, STAR end to end): `score_cell`
  scores its models on the test split as the command does after running a cell, and the command, finding
  that record, skips the cell and writes the tables and plots from it."""
  training = bench.Training(**{k: '-'.join(map(str, v)) if k == 'hidden_units' else v
                               for k, v in runs.TINY.items()})
  assert training.flags() == runs.TINY_TRAINING  # the shared run's own settings
  cell = bench.Cell(bench.Dataset('synthetic', rows=runs.SHARED_ROWS), 'mlp', runs.SHARED_SEED, SHARED_METHODS)
  prepared = tmp_path / 'prepared'  # `prepare`'s layout of the shared run's day: the contract and its test split
  prepared.mkdir()
  for name in ('features.json', 'schema.pbtxt'):
    os.symlink(os.path.join(shared_run.data_root, name), prepared / name)
  os.symlink(os.path.join(shared_run.span, 'test'), prepared / 'test')
  record = bench.score_cell(cell, training, shared_run.output_dir, str(prepared), start=time.time())
  output_dir = tmp_path / 'bench'
  output_dir.mkdir()
  bench.append_record(str(output_dir / bench.RESULTS_JSONL), record)

  argv = ['bench', '--output-dir', str(output_dir), '--datasets', 'synthetic', '--rows', str(runs.SHARED_ROWS),
          '--backbones', 'mlp', '--seeds', str(runs.SHARED_SEED), '--methods', ','.join(SHARED_METHODS),
          *training.flags()]
  assert tfx_runner.main(argv) == 0
  assert f'[1/1] synthetic mlp seed={runs.SHARED_SEED} finished earlier, skipped' in capsys.readouterr().out
  summary = json.loads((output_dir / bench.RESULTS_JSON).read_text())
  _assert_scored_rows(summary)
  assert '| mlp | +MLoRA | 1 |' in (output_dir / bench.RESULTS_MD).read_text()
  assert all(os.path.getsize(path) > 1000 for path in summary['plots'])


@pytest.mark.e2e
@pytest.mark.slow
def test_bench_command_runs_a_cell_once(tmp_path, capsys):
  """One real pipeline run trains base, MLoRA and a challenger (STAR end to end); all three are scored."""
  output_dir = tmp_path / 'bench'
  argv = ['bench', '--output-dir', str(output_dir), '--datasets', 'synthetic', '--rows', '3000',
          '--backbones', 'mlp', '--seeds', '0', '--methods', ','.join(SHARED_METHODS), *TRAINING.flags()]
  assert tfx_runner.main(argv) == 0
  assert '[1/1] synthetic mlp seed=0 done in' in capsys.readouterr().out
  summary = json.loads((output_dir / bench.RESULTS_JSON).read_text())
  _assert_scored_rows(summary)
  assert '| mlp | +MLoRA | 1 |' in (output_dir / bench.RESULTS_MD).read_text()
  assert all(os.path.getsize(path) > 1000 for path in summary['plots'])

  log = output_dir / 'cells' / 'synthetic-3000' / 'mlp' / 'seed-0' / 'run.log'
  assert '--challenger=pretrain:star' in log.read_text().splitlines()[0]
  log_written = log.stat().st_mtime_ns
  assert tfx_runner.main(argv) == 0
  assert '[1/1] synthetic mlp seed=0 finished earlier, skipped' in capsys.readouterr().out
  assert log.stat().st_mtime_ns == log_written
  assert len(bench.read_records(str(output_dir / bench.RESULTS_JSONL))) == 1
