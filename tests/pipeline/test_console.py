"""A run a person can read (pipeline/console.py): a line per component on the terminal, the logs in a file."""
import json
import logging
import os
import re
import sys
import types

import pytest

from pipeline import console


@pytest.mark.parametrize('verbose', [False, True])
def test_logs_go_to_the_run_log_and_to_the_terminal_only_when_verbose(tmp_path, capsys, verbose):
  terminal = logging.StreamHandler(sys.stderr)  # what `logging.basicConfig` installs
  logging.getLogger().addHandler(terminal)
  try:
    with console.logs_to_file(str(tmp_path), verbose) as path:
      logging.getLogger('absl').info('Component Transform is running.')
  finally:
    logging.getLogger().removeHandler(terminal)
  assert path == str(tmp_path / 'logs' / 'run.log')
  with open(path) as f:
    assert 'Component Transform is running.' in f.read()
  assert ('Component Transform is running.' in capsys.readouterr().err) == verbose
  assert terminal not in logging.getLogger('absl').handlers and terminal not in logging.getLogger().handlers


@pytest.mark.e2e
def test_the_run_prints_a_line_per_component_and_logs_to_a_file(shared_run):
  """The shared run (`tfx_runner.py simulate`): a line per finished component with its wall time and what it
  found, a bar per training stage, and the TFX and Beam logs in OUTPUT_DIR/logs/run.log, not on the terminal."""
  lines = shared_run.printed.splitlines()

  def line(component):
    [found] = [l for l in lines if re.match(rf'{component} +\d+\.\d s', l)]
    return found

  assert re.search(r'rows train \d+, eval \d+, test \d+$', line('StatisticsGen'))
  assert line('ExampleValidator').endswith('no anomalies')
  assert line('AnomaliesGate').endswith('data accepted')
  assert re.search(r'ctr AUC 0\.\d{4} on test: blessed \(first_run\)$', line('PromotionGate'))
  assert line('Pusher').endswith(f'pushed version {shared_run.version}')
  assert re.search(r'validation AUC 0\.\d+ \(last epoch\)$', line('PretrainTrainer'))
  for component in ('CsvExampleGen', 'AnomaliesGate', 'Transform', 'FinetuneTrainer', 'Evaluator'):
    line(component)
  assert any(re.match(r' +PretrainTrainer +\[#+\.*\] epoch 1/\d+', l) for l in lines)  # the training bar
  log_file = os.path.join(shared_run.output_dir, console.LOG_FILE)
  assert f'logs: {log_file}' in shared_run.printed
  with open(log_file) as f:
    logs = f.read()
  assert 'Component CsvExampleGen is finished.' in logs and 'apache_beam' in logs
  for printed in (shared_run.printed, shared_run.printed_errors):
    assert ' INFO ' not in printed and 'is finished.' not in printed


def test_the_tuner_line_names_the_best_settings_and_their_validation_auc(tmp_path, monkeypatch):
  trials = [{'trial_id': '1', 'score': 0.71234, 'alpha': 16, 'learning_rate': 0.003, 'embedding_learning_rate': -1.0},
            {'trial_id': '0', 'score': 0.70001, 'alpha': 4, 'learning_rate': 0.01, 'embedding_learning_rate': 0.0}]
  (tmp_path / console.TUNER_RESULTS_FILE).write_text(json.dumps(trials))  # as the Tuner writes them, best first
  monkeypatch.setattr(console.lineage, 'latest_artifacts',
                      lambda config, node_id, key, direction: [types.SimpleNamespace(uri=str(tmp_path))])
  assert console.outcome(None, 'Tuner') == ('best of 2 trials: alpha 16, learning_rate 0.003, embedding_learning_rate '
                                            '-1.0, validation AUC 0.7123')
