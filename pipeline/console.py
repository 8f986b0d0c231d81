"""A run a person can read: TFX, Beam, absl and TensorFlow's Python logs go to OUTPUT_DIR/logs/run.log, and the
terminal shows one line per finished component (its wall time and what it found) and a progress bar while a
Trainer trains. With `verbose`, the logs are printed on the terminal too.

Component progress is read from the log records LocalDagRunner writes ("Component X is running.", "... is
finished."), training progress from the Trainers' epoch records (models/trainer.py ThroughputLogger), what a
component found from its outputs in the metadata store. TensorFlow's C++ logs are set apart by
TF_CPP_MIN_LOG_LEVEL (tfx_runner.py): only errors reach the terminal.
"""
import contextlib
import json
import logging
import os
import re
import sys
from typing import Iterator, Optional

from absl import logging as absl_logging

from components.promotion_gate import CANDIDATE, read_evaluation
from pipeline import lineage
from pipeline import report_html
from pipeline.config import PipelineConfig
from pipeline.pipeline import TUNER_ID
from pipeline.report import format_number

LOG_FILE = os.path.join('logs', 'run.log')
LOG_FORMAT = '%(asctime)s %(levelname)s %(name)s: %(message)s'
TERMINAL_LOGGERS = ('', 'tensorflow', 'absl')  # the loggers that may hold a handler writing to the terminal
_COMPONENT = re.compile(r'^Component (\S+) is (running|finished)\.$')
_EPOCH = re.compile(r'^epoch (\d+)/(\d+): ')
TUNER_RESULTS_FILE = 'tuner_results.json'  # the Tuner executor's (tfx/components/tuner/executor.py)
_VALIDATION_AUC = re.compile(r'\bval_(?:ctr_)?auc=([\d.]+)')
BAR_WIDTH = 20


def _writes_to_terminal(handler: logging.Handler) -> bool:
  return isinstance(handler, logging.StreamHandler) and getattr(handler, 'stream', None) in (
      sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)


@contextlib.contextmanager
def logs_to_file(output_dir: str, verbose: bool = False) -> Iterator[str]:
  """Sends every log record (INFO and up, Python warnings too) to OUTPUT_DIR/logs/run.log while the block runs,
  and, unless `verbose`, none to the terminal; everything is as it was afterwards. Yields the log file's path."""
  path = os.path.join(output_dir, LOG_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  root = logging.getLogger()
  file_handler = logging.FileHandler(path)
  file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
  removed = [] if verbose else [(logging.getLogger(name), h) for name in TERMINAL_LOGGERS
                                for h in logging.getLogger(name).handlers if _writes_to_terminal(h)]
  if verbose and not any(_writes_to_terminal(h) for h in root.handlers):
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(terminal)
    added = [file_handler, terminal]
  else:
    added = [file_handler]
  level, absl_verbosity = root.level, absl_logging.get_verbosity()
  # TFX logs through absl, whose level falls to WARNING once some library parses the absl flags.
  absl_logging.set_verbosity(absl_logging.INFO)
  for logger, handler in removed:
    logger.removeHandler(handler)
  for handler in added:
    root.addHandler(handler)
  root.setLevel(logging.INFO)
  logging.captureWarnings(True)
  try:
    yield path
  finally:
    logging.captureWarnings(False)
    root.setLevel(level)
    absl_logging.set_verbosity(absl_verbosity)
    for handler in added:
      root.removeHandler(handler)
    file_handler.close()
    for logger, handler in removed:
      logger.addHandler(handler)


def outcome(config: PipelineConfig, node_id: str) -> str:
  """What a finished component found, read from its outputs: the rows per split, the anomalies, the data accepted,
  the Tuner's best hyperparameters, the candidate's AUC and the gate's decision, the pushed version; '' for the
  others."""
  def output(key):
    artifacts = lineage.latest_artifacts(config, node_id, key, lineage.OUTPUT)
    return artifacts[0] if artifacts else None

  if node_id == 'StatisticsGen':
    statistics = report_html.statistics_by_split(output('statistics'))
    return 'rows ' + ', '.join(f'{split} {s.datasets[0].num_examples if s.datasets else 0}'
                               for split, s in statistics.items())
  if node_id == 'ExampleValidator':
    counts = {split: len(a.anomaly_info) + a.HasField('dataset_anomaly_info')
              for split, a in report_html.anomalies_by_split(output('anomalies')).items()}
    found = ', '.join(f'{split} {count}' for split, count in counts.items() if count)
    return f'anomalies: {found}' if found else 'no anomalies'
  if node_id == 'AnomaliesGate':  # it fails the run otherwise
    return 'data accepted'
  if node_id == TUNER_ID:
    with open(os.path.join(output('tuner_results').uri, TUNER_RESULTS_FILE)) as f:
      trials = json.load(f)  # the completed trials, best first
    best = ', '.join(f'{k} {v}' for k, v in trials[0].items() if k not in ('trial_id', 'score'))
    return f'best of {len(trials)} trials: {best}, validation AUC {format_number(trials[0]["score"])}'
  if node_id == 'PromotionGate':
    evaluation = read_evaluation(output('blessing').uri)
    aucs = ', '.join(f'{task} AUC {format_number(t["evaluation"]["overall"]["models"][CANDIDATE]["auc"]["value"])}'
                     for task, t in evaluation['tasks'].items())
    rules = ','.join(t['decision']['rule'] for t in evaluation['tasks'].values())
    return f'{aucs} on {evaluation["split"]}: {"blessed" if evaluation["blessed"] else "not blessed"} ({rules})'
  if node_id == 'Pusher':
    pushed = output('pushed_model')
    if pushed and pushed.custom_properties['pushed'].int_value:
      return f'pushed version {os.path.basename(pushed.custom_properties["pushed_destination"].string_value)}'
    return 'not pushed'
  return ''


class ComponentLines(logging.Handler):
  """Prints a line per finished component of `config`'s pipeline and a bar per training stage on stdout (on a
  terminal the bar is redrawn in place, else a line per epoch)."""

  def __init__(self, config: PipelineConfig):
    super().__init__(logging.INFO)
    self.config = config
    self.started = {}
    self.validation_auc: Optional[str] = None
    self.bar_open = False

  def emit(self, record: logging.LogRecord) -> None:
    message = record.getMessage()
    component, epoch = _COMPONENT.match(message), _EPOCH.match(message)
    if component and component.group(2) == 'running':
      self.started[component.group(1)] = record.created
      self.validation_auc = None
    elif component:
      self._finished(component.group(1), record.created - self.started.get(component.group(1), record.created))
    elif epoch and self.started:
      self._progress(int(epoch.group(1)), int(epoch.group(2)), _VALIDATION_AUC.search(message))

  def _progress(self, epoch: int, epochs: int, validation_auc) -> None:
    self.validation_auc = validation_auc.group(1) if validation_auc else None
    stage = max(self.started, key=self.started.get)  # the component that started last is training
    done = BAR_WIDTH * epoch // epochs
    text = (f'  {stage:<26} [{"#" * done}{"." * (BAR_WIDTH - done)}] epoch {epoch}/{epochs}'
            + (f'  validation AUC {self.validation_auc}' if self.validation_auc else ''))
    if sys.stdout.isatty():
      sys.stdout.write('\r' + text)
      self.bar_open = epoch < epochs
      if not self.bar_open:
        sys.stdout.write('\n')
    else:
      sys.stdout.write(text + '\n')
    sys.stdout.flush()

  def _finished(self, node_id: str, seconds: float) -> None:
    try:
      found = outcome(self.config, node_id)
    except Exception as error:  # pylint: disable=broad-except  # a line to print must never fail the run
      found = f'(outcome unreadable: {error})'
    if not found and self.validation_auc:
      found = f'validation AUC {self.validation_auc} (last epoch)'
    if self.bar_open:
      sys.stdout.write('\n')
      self.bar_open = False
    sys.stdout.write(f'{node_id:<28} {seconds:>7.1f} s  {found}'.rstrip() + '\n')
    sys.stdout.flush()


@contextlib.contextmanager
def component_lines(config: PipelineConfig) -> Iterator[None]:
  """ComponentLines on the log records of the block (the pipeline run)."""
  handler = ComponentLines(config)
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    yield
  finally:
    root.removeHandler(handler)
