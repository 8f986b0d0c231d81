"""The benchmark harness behind `tfx_runner.py bench`: a grid of dataset (with its domain split) x backbone x
adaptation method x seed, run through the real pipeline and summarized as results.md, results.json and plots.

One cell is one (dataset, backbone, seed): a `tfx_runner.py run` in a subprocess (its log in the cell's
folder). Every adaptation method in METHODS is the model of one Trainer of that run: `base` and `+MLoRA`
come from the pipeline's two stages (no adaptation, then MLoRA), the other methods from challenger Trainers
beside them (`--challenger`), so every method sees the same transformed data and, fine-tuned, the same
pretrained backbone. After the run, each method's SavedModel scores the dataset's test split in-process and
models/metrics.py turns the scores into per-domain and overall metrics. Each finished cell appends one line
to results.jsonl; a rerun on the same output folder with the same settings skips the cells found there.

Layout of the output folder:
  data/<dataset>/                    prepared input, made once and reused (`data.prepare`)
  cells/<dataset>/<backbone>/seed-<seed>/run.log, run/   the cell's pipeline log and output folder
  results.jsonl                      one line per finished cell
  results.md, results.json           the summary over seeds
  domain_auc_<dataset>_<backbone>.png, wauc_<dataset>.png
"""
import dataclasses
import functools
import glob
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow as tf
from scipy import stats
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.utils import path_utils
from tfx_bsl.coders import example_coder

from components import promotion_gate
from data import revenue, synthetic
from data.loaders import MOVIELENS_DOMAINS
from data.prepare import prepare
from models import metrics
from models.backbones import BACKBONES
from models.features import FeatureSpec
from models.trainer import TRAINING_STATS_FILE, keras_model_path
from pipeline.config import PipelineConfig
from pipeline.pipeline import trainer_id
from pipeline.report import latest_run_artifacts
from schemas import SCHEMA_FILE, load_schema

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFX_RUNNER = os.path.join(REPO_ROOT, 'tfx_runner.py')
RESULTS_JSONL, RESULTS_MD, RESULTS_JSON = 'results.jsonl', 'results.md', 'results.json'


@dataclasses.dataclass(frozen=True)
class Method:
  """An adaptation method: the model of the pipeline's Trainer for `stage` with `adaptation` (`pretrain`:
  trained end to end from scratch; `finetune`: added to the pretrained, frozen backbone), compared with
  `baseline` (a METHODS key) in the paired t-test, or with nothing when it is the baseline itself. The
  pipeline's own stages give `base` and `+MLoRA`; every other method is a challenger Trainer of the same
  run (`PipelineConfig.challengers`)."""
  label: str
  stage: str
  adaptation: str
  baseline: Optional[str] = None

  @property
  def challenger(self) -> Optional[str]:
    """`stage:adaptation` for a challenger Trainer; None for one of the pipeline's own stages."""
    return None if (self.stage, self.adaptation) in MAIN_STAGES else f'{self.stage}:{self.adaptation}'

  @property
  def trainer(self) -> str:
    """The node id of the Trainer whose model this method is."""
    return trainer_id(self.stage, self.adaptation if self.challenger else None)


# The pipeline's own stages as a bench run leaves them (no --adaptation flags): base, then MLoRA.
MAIN_STAGES = (('pretrain', PipelineConfig.pretrain_adaptation), ('finetune', PipelineConfig.adaptation))
BASELINE = 'base'
METHODS: Dict[str, Method] = {
    BASELINE: Method('base', 'pretrain', 'none'),
    'mlora': Method('+MLoRA', 'finetune', 'mlora', baseline=BASELINE),
    # The alternatives, fine-tuned on the frozen pretrained backbone as MLoRA is ...
    'star': Method('+STAR', 'finetune', 'star', baseline=BASELINE),
    'adasparse': Method('+AdaSparse', 'finetune', 'adasparse', baseline=BASELINE),
    'pepnet': Method('+PEPNet', 'finetune', 'pepnet', baseline=BASELINE),
    # ... and trained end to end.
    'star_e2e': Method('STAR end to end', 'pretrain', 'star', baseline=BASELINE),
    'adasparse_e2e': Method('AdaSparse end to end', 'pretrain', 'adasparse', baseline=BASELINE),
    'pepnet_e2e': Method('PEPNet end to end', 'pretrain', 'pepnet', baseline=BASELINE),
    # Baselines beside `base` (one shared model with the domain as a feature) ...
    'no_domain': Method('shared, no domain input', 'pretrain', 'no_domain', baseline=BASELINE),
    'separate': Method('one model per domain', 'pretrain', 'separate', baseline=BASELINE),
    # ... and the control of the fine-tuned methods: the same stage without a method (frozen backbone,
    # embeddings trained), which tells what the methods add beyond the stage's extra training.
    'no_adapter': Method('+fine-tune, no adapter', 'finetune', 'none', baseline=BASELINE),
    # ... and of their size: the base widened to the MLoRA model's parameter count (PARAMETER_MATCHED).
    'param_matched': Method('parameter-matched base', 'pretrain', 'param_matched', baseline=BASELINE),
}
DEFAULT_METHODS = (BASELINE, 'mlora', 'no_adapter', 'param_matched')  # with both controls of the fine-tune
SYNTHETIC, CIAO = 'synthetic', 'ciao'
CLICK = 'click'
LABELS = (CLICK, revenue.VALUE_LABEL)  # a dataset's training label


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A benchmark dataset: `movielens:<user field>` (one domain per value of gender, age or occupation)
  or `ciao` (one domain per product category) read from `source`, or `synthetic` (the embedded generator,
  `rows` rows), trained on `label`: the click, or (synthetic only, which has the revenue) the reconstructed
  value label of data/revenue.py."""
  name: str
  domain: Optional[str] = None
  source: Optional[str] = None
  rows: Optional[int] = None
  label: str = CLICK

  @classmethod
  def parse(cls, text: str, movielens_path: str, synthetic_rows: int, ciao_path: Optional[str] = None,
            label: str = CLICK) -> 'Dataset':
    """'movielens:age', 'movielens' (gender domains), 'ciao' or 'synthetic', with `label` (LABELS); ValueError
    for anything else."""
    if label not in LABELS:
      raise ValueError(f'Unknown label {label!r}; expected one of {list(LABELS)}.')
    name, _, domain = text.partition(':')
    if name == 'movielens':
      if label != CLICK:
        raise ValueError(f'{text!r} has no revenue to build the {label} label from: use {SYNTHETIC}, or the click '
                         'label.')
      domain = domain or 'gender'
      if domain not in MOVIELENS_DOMAINS:
        raise ValueError(f'{text!r}: MovieLens domains come from one of {list(MOVIELENS_DOMAINS)}.')
      return cls(name, domain=domain, source=os.path.abspath(movielens_path))
    if name == SYNTHETIC and not domain:
      return cls(name, rows=synthetic_rows, label=label)
    if name == CIAO and not domain and ciao_path and label == CLICK:
      return cls(name, source=os.path.abspath(ciao_path))
    raise ValueError(f'Unknown dataset {text!r}; expected one of movielens[:{"|".join(MOVIELENS_DOMAINS)}], '
                     f'{CIAO} (with its path; click label) or {SYNTHETIC}.')

  @property
  def key(self) -> str:
    """The name results are reported under (the click label's as they always were)."""
    key = f'{self.name}:{self.domain}' if self.domain else self.name
    return key if self.label == CLICK else f'{key}-{self.label}'

  @property
  def folder(self) -> str:
    """Names its prepared data; differs whenever the data would."""
    if self.domain:
      return f'{self.name}-{self.domain}'
    if not self.rows:
      return self.name
    return f'{self.name}-{self.rows}' if self.label == CLICK else f'{self.name}-{self.label}-{self.rows}'


@dataclasses.dataclass(frozen=True)
class Training:
  """The `tfx_runner.py run` options every cell shares; None (or, for a repeatable option, ()) keeps the
  pipeline's default."""
  pretrain_steps: Optional[int] = None
  finetune_steps: Optional[int] = None
  eval_steps: Optional[int] = None
  batch_size: Optional[int] = None
  hidden_units: Optional[str] = None  # like '256-128-64'
  embedding_dim: Optional[int] = None
  pretrain_learning_rate: Optional[float] = None
  finetune_learning_rate: Optional[float] = None
  loss: Optional[str] = None  # logloss, ranknet or ranknet+logloss
  rank_weight: Optional[float] = None
  head: Optional[str] = None  # a multi-task head: the constraints need one
  constraint: Tuple[str, ...] = ()  # like ('cvr_auc>=0.70',): repeatable, one --constraint each
  dual_step: Optional[float] = None

  def flags(self) -> List[str]:
    """The command-line flags of the options that are set; a repeatable option's flag once per value."""
    flags = []
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      flag = f'--{field.name.replace("_", "-")}'
      if isinstance(value, tuple):
        flags += [part for item in value for part in (flag, str(item))]
      elif value is not None:
        flags += [flag, str(value)]
    return flags

  def record(self) -> dict:
    """The settings as a results file holds them (JSON: a tuple is a list), so a record read back compares
    equal to the settings that trained it."""
    return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclasses.dataclass(frozen=True)
class Cell:
  """One pipeline run of the grid and the `methods` scored from it."""
  dataset: Dataset
  backbone: str
  seed: int
  methods: Tuple[str, ...] = DEFAULT_METHODS

  @property
  def key(self) -> str:
    """Names the cell in progress lines and records."""
    return f'{self.dataset.key} {self.backbone} seed={self.seed}'

  @property
  def challengers(self) -> List[str]:
    """The `--challenger` values that train the methods other than the pipeline's own stages."""
    return [METHODS[name].challenger for name in self.methods if METHODS[name].challenger]

  def folder(self, output_dir: str) -> str:
    """Holds the cell's pipeline log and output folder."""
    return os.path.join(output_dir, 'cells', self.dataset.folder, self.backbone, f'seed-{self.seed}')


def build_grid(datasets: Sequence[Dataset], backbones: Sequence[str], seeds: Sequence[int],
               methods: Sequence[str] = DEFAULT_METHODS) -> List[Cell]:
  """Every (dataset, backbone, seed) in that nesting order, each one pipeline run training every method;
  ValueError for an unknown backbone or method."""
  unknown = [b for b in backbones if b not in BACKBONES]
  if unknown:
    raise ValueError(f'Unknown backbones {unknown}; expected some of {sorted(BACKBONES)}.')
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f'Unknown methods {unknown}; expected some of {list(METHODS)}.')
  return [Cell(dataset, backbone, seed, tuple(methods))
          for dataset, backbone, seed in itertools.product(datasets, backbones, seeds)]


# --- Data ----------------------------------------------------------------------------------------------

def prepared_data(dataset: Dataset, output_dir: str) -> str:
  """The dataset's prepared folder under `output_dir/data`, written by `data.prepare` the first time."""
  path = os.path.join(output_dir, 'data', dataset.folder)
  if os.path.exists(path):  # prepare() renames a complete folder into place, so this one is complete
    return path
  if dataset.name == SYNTHETIC:
    value = dataset.label == revenue.VALUE_LABEL
    spec = revenue.VALUE_SPEC if value else synthetic.FEATURE_SPEC
    with tempfile.TemporaryDirectory() as raw_dir:
      frame = synthetic.generate(dataset.rows, seed=0, revenue=value)
      source = synthetic.write_csv(revenue.value_frame(frame)[spec.raw_columns] if value else frame, raw_dir)
      prepare('csv', source, path, domain_column=spec.domain, label_columns=spec.label_columns,
              categorical=spec.categorical, numeric=spec.numeric, user_column=spec.user)
  else:
    prepare(dataset.name, dataset.source, path, **({'domain': dataset.domain} if dataset.domain else {}))
  return path


@dataclasses.dataclass
class TestSplit:
  """A prepared dataset's test split: serialized tf.Examples of the raw features (labels left out, as in a
  serving request) and, row for row, the click labels, domains and users (None without a user column)."""
  examples: List[bytes]
  labels: np.ndarray
  domains: np.ndarray
  users: Optional[np.ndarray]


_ARROW_TYPES = {schema_pb2.INT: pa.int64(), schema_pb2.FLOAT: pa.float32(), schema_pb2.BYTES: pa.binary()}


@functools.lru_cache(maxsize=None)
def load_test_split(data_path: str) -> TestSplit:
  """Reads `data_path/test/*.csv`, typing each column as schema.pbtxt says (read once per dataset)."""
  spec = FeatureSpec.load(data_path)
  types = {f.name: _ARROW_TYPES[f.type] for f in load_schema(os.path.join(data_path, SCHEMA_FILE)).feature}
  frame = pd.concat([pd.read_csv(path, dtype=str, keep_default_na=False)
                     for path in sorted(glob.glob(os.path.join(data_path, 'test', '*.csv')))], ignore_index=True)
  columns = [c for c in spec.raw_columns if c not in spec.label_columns]
  one_value_each = pa.array(np.arange(len(frame) + 1, dtype=np.int32))
  batch = pa.RecordBatch.from_arrays(
      [pa.ListArray.from_arrays(one_value_each, pa.array(frame[c].to_numpy(), pa.string()).cast(types[c]))
       for c in columns], columns)
  return TestSplit(examples=example_coder.RecordBatchToExamples(batch),
                   labels=frame[spec.label].astype(np.int64).to_numpy(),
                   domains=frame[spec.domain].to_numpy(),
                   users=frame[spec.user].to_numpy() if spec.user else None)


# --- One cell ------------------------------------------------------------------------------------------

class CellFailed(RuntimeError):
  """The cell's pipeline run did not finish; the message points to its log."""


def trained_models(run_dir: str, data_path: str, methods: Sequence[str]) -> Dict[str, str]:
  """{method: Model artifact URI} of the latest pipeline run in `run_dir`, read from its metadata store."""
  config = PipelineConfig(data_path=data_path, schema_path=os.path.join(data_path, SCHEMA_FILE),
                          output_dir=run_dir, feature_spec=FeatureSpec.load(data_path))
  by_node = latest_run_artifacts(config)
  return {name: max(by_node[METHODS[name].trainer]['Model'], key=lambda a: a.id).uri for name in methods}


def score_model(model_uri: str, test: TestSplit) -> dict:
  """The model's `domain_report` on the test split, plus its training_stats.json (throughput, parameters)."""
  serving_path = path_utils.serving_model_path(model_uri)
  batches = [tf.constant(test.examples[start:start + promotion_gate.SCORING_BATCH])
             for start in range(0, len(test.examples), promotion_gate.SCORING_BATCH)]
  predictions = promotion_gate.score(serving_path, batches)['ctr']
  with open(os.path.join(os.path.dirname(keras_model_path(serving_path)), TRAINING_STATS_FILE)) as f:
    training_stats = json.load(f)
  return {**metrics.domain_report(test.labels, predictions, test.domains, test.users), **training_stats}


def run_cell(cell: Cell, training: Training, output_dir: str) -> dict:
  """Runs the cell's pipeline in a subprocess, scores every method's model and returns the cell's record;
  its wall time counts the run and the scoring, not the dataset's one-off preparation."""
  data_path = prepared_data(cell.dataset, output_dir)
  start = time.time()
  folder = cell.folder(output_dir)
  run_dir, log_path = os.path.join(folder, 'run'), os.path.join(folder, 'run.log')
  shutil.rmtree(run_dir, ignore_errors=True)  # left by an interrupted attempt: start from an empty store
  os.makedirs(folder, exist_ok=True)
  command = [sys.executable, TFX_RUNNER, 'run', '--data-path', data_path, '--output-dir', run_dir,
             '--verbose',  # the cell's log keeps the pipeline's logs
             '--backbone', cell.backbone, '--seed', str(cell.seed), *training.flags(),
             *[f'--challenger={challenger}' for challenger in cell.challengers]]
  with open(log_path, 'w') as log:
    log.write(' '.join(command) + '\n')
    log.flush()
    status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, check=False)
  if status.returncode:
    raise CellFailed(f'pipeline exited with {status.returncode}, see {log_path}')
  return score_cell(cell, training, run_dir, data_path, start)


def score_cell(cell: Cell, training: Training, run_dir: str, data_path: str, start: float) -> dict:
  """The cell's record from its finished pipeline run in `run_dir`: every method's model scored on the test
  split of `data_path`; `start` is when the cell began (its wall time runs until the scoring ends)."""
  test = load_test_split(data_path)
  results = {name: score_model(uri, test) for name, uri in trained_models(run_dir, data_path, cell.methods).items()}
  return {**cell_identity(cell, training), 'wall_seconds': time.time() - start, 'methods': results}


# --- Results file and resuming -------------------------------------------------------------------------

def cell_identity(cell: Cell, training: Training) -> dict:
  """The fields that tell whether a record answers this cell: same cell, same data, same training."""
  return {'cell': cell.key, 'dataset': cell.dataset.key, 'data': cell.dataset.folder, 'backbone': cell.backbone,
          'seed': cell.seed, 'methods_run': list(cell.methods),
          'training': training.record()}


def is_record_of(record: dict, cell: Cell, training: Training) -> bool:
  """Whether `record` holds the results of `cell` trained with `training`."""
  identity = cell_identity(cell, training)
  # A record written before a Training field existed was trained with that field's default (None).
  record = {**record, 'training': {**Training().record(), **record.get('training', {})}}
  return all(record.get(field) == value for field, value in identity.items())


def read_records(path: str) -> List[dict]:
  """The records of results.jsonl, [] when it does not exist yet."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def append_record(path: str, record: dict) -> None:
  """Adds one line to results.jsonl by replacing the file, so the line is either complete or absent."""
  lines = [json.dumps(r) + '\n' for r in read_records(path) + [record]]
  with open(path + '.tmp', 'w') as f:
    f.writelines(lines)
  os.replace(path + '.tmp', path)


def grid_records(cells: Sequence[Cell], training: Training, records: Sequence[dict]) -> Dict[Cell, dict]:
  """{cell: its latest record} for the cells of the grid that are finished."""
  return {cell: record for cell in cells for record in records if is_record_of(record, cell, training)}


# --- Summary over seeds --------------------------------------------------------------------------------

CONFIDENCE = 0.95


def mean_std(values: Sequence[float]) -> dict:
  """{'mean', 'std', 'half_width'} over seeds: the sample standard deviation (ddof 1) and the half-width of
  the 95% t-interval of the mean, std * t(0.975, n - 1) / sqrt(n); both None for a single value."""
  values = np.asarray(values, dtype=np.float64)
  if len(values) < 2:
    return {'mean': float(values.mean()), 'std': None, 'half_width': None}
  std = float(values.std(ddof=1))
  half_width = std * float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1)) / math.sqrt(len(values))
  return {'mean': float(values.mean()), 'std': std, 'half_width': half_width}


def paired_p_value(candidate: Dict[int, float], baseline: Dict[int, float]) -> Optional[float]:
  """Two-sided paired t-test (scipy.stats.ttest_rel) over the seeds both have; None with fewer than two
  pairs or when every difference is zero."""
  seeds = sorted(set(candidate) & set(baseline))
  if len(seeds) < 2:
    return None
  p_value = float(stats.ttest_rel([candidate[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
  return None if math.isnan(p_value) else p_value


def paired_change(candidate: Dict[int, float], baseline: Dict[int, float]) -> Optional[dict]:
  """The change candidate - baseline over the seeds both have: `mean_std` of the per-seed differences (its
  `half_width`, the paired 95% interval) and the paired t-test's `p_value`; None without a common seed."""
  seeds = sorted(set(candidate) & set(baseline))
  if not seeds:
    return None
  return {**mean_std([candidate[s] - baseline[s] for s in seeds]), 'p_value': paired_p_value(candidate, baseline)}


SUMMARY_METRICS = ('wauc', 'auc', 'gauc', 'logloss', 'calibration')
DOMAIN_METRICS = ('auc', 'logloss', 'calibration')


def _method_row(backbone: str, name: str, records: Sequence[dict]) -> dict:
  """One backbone x method over the seeds of `records` (all of one dataset and backbone) that have it."""
  records = [r for r in records if name in r['methods']]
  results = [r['methods'][name] for r in records]
  domains = sorted(results[0]['domains'], key=lambda d: (-results[0]['domains'][d]['count'], d))
  return {
      'backbone': backbone, 'method': name, 'label': METHODS[name].label,
      'seeds': [r['seed'] for r in records],
      **{m: mean_std([x[m] for x in results]) for m in SUMMARY_METRICS if m in results[0]},
      'domains': {d: {'count': results[0]['domains'][d]['count'],
                      **{m: mean_std([x['domains'][d][m] for x in results]) for m in DOMAIN_METRICS}}
                  for d in domains},
      'parameters': results[0]['parameters'],  # the same for every seed
      'trainable_parameters': results[0]['trainable_parameters'],
      'adapter_parameters_per_domain': results[0]['adapter_parameters_per_domain'],
      'examples_per_second': float(np.mean([x['examples_per_second'] for x in results])),
      'kept_epochs': [x.get('best_epoch') for x in results],  # the Trainer's best validation epoch, 0: its start
      'cell_wall_seconds': float(np.mean([r['wall_seconds'] for r in records])),
      'baseline': METHODS[name].baseline,
      'wauc_change': None,
      'wauc_p_value': None,
  }


def summarize(records: Sequence[dict]) -> dict:
  """{'datasets': {dataset: {'domains', 'rows'}}, 'cells', 'cells_wall_seconds'} over the records of one
  grid: a row per backbone x method (in METHODS order) with mean, std and 95% interval over seeds, and each
  method's WAUC change against its baseline's, paired by seed, with its interval and t-test p-value."""
  by_dataset: Dict[str, Dict[str, List[dict]]] = {}
  for record in records:
    by_dataset.setdefault(record['dataset'], {}).setdefault(record['backbone'], []).append(record)
  datasets = {}
  for dataset, by_backbone in by_dataset.items():
    rows = []
    for backbone, group in by_backbone.items():
      group = sorted(group, key=lambda r: r['seed'])
      wauc_by_seed = {name: {r['seed']: r['methods'][name]['wauc'] for r in group if name in r['methods']}
                      for name in METHODS if any(name in r['methods'] for r in group)}
      for name, method in METHODS.items():
        if name not in wauc_by_seed:
          continue
        row = _method_row(backbone, name, group)
        if method.baseline in wauc_by_seed:
          row['wauc_change'] = paired_change(wauc_by_seed[name], wauc_by_seed[method.baseline])
          row['wauc_p_value'] = row['wauc_change']['p_value']
        rows.append(row)
    datasets[dataset] = {'domains': list(rows[0]['domains']), 'rows': rows}
  return {'datasets': datasets, 'cells': len(records),
          'cells_wall_seconds': float(sum(r['wall_seconds'] for r in records))}


def number(value: Optional[float], spec: str = '.4f') -> str:
  """The value formatted by `spec`; '-' when it is missing or nan."""
  return '-' if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def plus_minus(figure: Optional[dict], spec: str = '.4f', with_p: bool = False) -> str:
  """'mean ± 95% half-width' of a `mean_std` figure; the mean alone for one seed. `with_p`: a `paired_change`'s
  t-test p-value after it, when it has one."""
  if not figure:
    return '-'
  half_width, p_value = figure.get('half_width'), figure.get('p_value') if with_p else None
  return (number(figure['mean'], spec) + ('' if half_width is None else f' ± {half_width:.4f}')
          + ('' if p_value is None else f' (p {p_value:.2g})'))


def wauc_table(table: dict) -> List[str]:
  """The MLoRA paper's layout: a row per backbone, a column per method, cells WAUC (mean over seeds), with
  each method's paired change against its baseline in parentheses (± its 95% interval's half-width)."""
  methods = [name for name in METHODS if any(row['method'] == name for row in table['rows'])]
  by_cell = {(row['backbone'], row['method']): row for row in table['rows']}
  lines = ['| backbone | ' + ' | '.join(METHODS[m].label for m in methods) + ' |', '|' + '---|' * (len(methods) + 1)]
  for backbone in dict.fromkeys(row['backbone'] for row in table['rows']):
    cells = []
    for name in methods:
      row, base = by_cell.get((backbone, name)), by_cell.get((backbone, METHODS[name].baseline))
      if row is None:
        cells.append('-')
        continue
      change = f' ({plus_minus(row["wauc_change"], "+.4f")})' if base and row['wauc_change'] else ''
      cells.append(number(row['wauc']['mean']) + change)
    lines.append(f'| {backbone} | ' + ' | '.join(cells) + ' |')
  return lines


def format_markdown(summary: dict) -> str:
  """results.md: per dataset, the WAUC table (`wauc_table`), then a table with a row per backbone x method."""
  sections = ['# Benchmark results',
              f'{summary["cells"]} cells, {summary["cells_wall_seconds"]:.0f} s of cell wall time. '
              'Test split; mean over seeds, ± the half-width of the 95% t-interval over seeds. The change '
              'against the baseline is paired by seed (its interval from the per-seed differences); p: '
              'two-sided paired t-test over seeds (scipy.stats.ttest_rel) of the method\'s WAUC against its '
              'baseline\'s. Kept epoch: per seed, the epoch whose weights the Trainer exported (best validation '
              'AUC; 0: the weights it started from).']
  for dataset, table in summary['datasets'].items():
    domains = table['domains']
    header = (['backbone', 'method', 'seeds', 'WAUC', 'change vs base', 'AUC', 'GAUC', 'logloss']
              + [f'AUC {d}' for d in domains]
              + ['params', 'adapter params / domain', 'examples/s', 'kept epoch', 'cell wall s', 'p (WAUC vs base)'])
    lines = [f'## {dataset}', '', 'WAUC (change against base):', '', *wauc_table(table), '',
             '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in table['rows']:
      cells = [row['backbone'], row['label'], str(len(row['seeds'])), plus_minus(row['wauc']),
               plus_minus(row['wauc_change'], '+.4f'), number(row['auc']['mean']),
               number(row.get('gauc', {}).get('mean')), number(row['logloss']['mean'])]
      cells += [number(row['domains'][d]['auc']['mean']) if d in row['domains'] else '-' for d in domains]
      cells += [f'{row["parameters"]:,}', f'{row["adapter_parameters_per_domain"]:,}',
                f'{row["examples_per_second"]:,.0f}',
                ','.join('-' if epoch is None else str(epoch) for epoch in row['kept_epochs']),
                f'{row["cell_wall_seconds"]:.0f}',
                number(row['wauc_p_value'], '.3g')]
      lines.append('| ' + ' | '.join(cells) + ' |')
    sections.append('\n'.join(lines))
  return '\n\n'.join(sections) + '\n'


# --- Plots ---------------------------------------------------------------------------------------------

def _grouped_bars(path: str, groups: Sequence[str], series: Dict[str, tuple], ylabel: str, title: str) -> str:
  """Bars of `series` {label: (means, error half-widths)} side by side in each of `groups`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  positions = np.arange(len(groups))
  width = 0.8 / len(series)
  fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(groups) * len(series)), 4))
  colors = plt.get_cmap('tab10' if len(series) <= 10 else 'tab20')  # a distinct color per series
  ends = []  # bar tops and error bar ends, to zoom the y axis onto the differences
  for index, (label, (means, stds)) in enumerate(series.items()):
    errors = [0.0 if s is None else s for s in stds]
    ends += [m + sign * e for m, e in zip(means, errors) for sign in (-1, 1) if not math.isnan(m)]
    ax.bar(positions + (index - (len(series) - 1) / 2) * width, means, width, color=colors(index),
           yerr=None if all(s is None for s in stds) else errors, capsize=3, label=label)
  margin = max(0.01, 0.5 * (max(ends) - min(ends)))
  ax.set_ylim(max(0.0, min(ends) - margin), min(1.0, max(ends) + margin))
  ax.set_xticks(positions, groups, fontsize=8)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.legend(loc='upper left', bbox_to_anchor=(1.0, 1.0), fontsize=8)  # beside the bars, never over them
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot_summary(summary: dict, output_dir: str) -> List[str]:
  """Per dataset and backbone, per-domain AUC of each method; per dataset, WAUC per backbone and method."""
  paths = []
  for dataset, table in summary['datasets'].items():
    name = dataset.replace(':', '-')
    backbones = list(dict.fromkeys(row['backbone'] for row in table['rows']))
    for backbone in backbones:
      rows = [row for row in table['rows'] if row['backbone'] == backbone]
      series = {row['label']: ([row['domains'][d]['auc']['mean'] for d in table['domains']],
                               [row['domains'][d]['auc']['half_width'] for d in table['domains']]) for row in rows}
      title = f'{dataset} {backbone}: per-domain AUC, mean ± 95% interval over seeds'
      paths.append(_grouped_bars(os.path.join(output_dir, f'domain_auc_{name}_{backbone}.png'), table['domains'],
                                 series, 'AUC (test split)', title))
    series = {}
    for method in METHODS.values():
      rows = {row['backbone']: row['wauc'] for row in table['rows'] if row['label'] == method.label}
      if rows:
        series[method.label] = ([rows[b]['mean'] if b in rows else math.nan for b in backbones],
                                [rows[b]['half_width'] if b in rows else None for b in backbones])
    paths.append(_grouped_bars(os.path.join(output_dir, f'wauc_{name}.png'), backbones, series,
                               'WAUC (test split)', f'{dataset}: WAUC, mean ± 95% interval over seeds'))
  return paths


# --- The grid ------------------------------------------------------------------------------------------

def run_grid(cells: Sequence[Cell], training: Training, output_dir: str,
             run: Callable[[Cell, Training, str], dict] = run_cell) -> dict:
  """Runs the cells not finished yet (one progress line each), then writes results.md, results.json and
  the plots over every finished cell of the grid and returns the summary, with `failed`: the cells whose
  run failed this time (rerun the command to retry them)."""
  os.makedirs(output_dir, exist_ok=True)
  jsonl_path = os.path.join(output_dir, RESULTS_JSONL)
  finished = grid_records(cells, training, read_records(jsonl_path))
  failed = []
  for index, cell in enumerate(cells, 1):
    progress = f'[{index}/{len(cells)}] {cell.key}'
    if cell in finished:
      print(f'{progress} finished earlier, skipped', flush=True)
      continue
    print(f'{progress} ...', flush=True)
    start = time.time()
    try:
      record = run(cell, training, output_dir)
    except CellFailed as error:
      print(f'{progress} FAILED after {time.time() - start:.0f} s: {error}', flush=True)
      failed.append(cell.key)
      continue
    append_record(jsonl_path, record)
    finished[cell] = record
    waucs = ' '.join(f'{name} {result["wauc"]:.4f}' for name, result in record['methods'].items())
    print(f'{progress} done in {record["wall_seconds"]:.0f} s, WAUC {waucs}', flush=True)

  summary = summarize([finished[cell] for cell in cells if cell in finished])
  summary['training'] = training.record()
  summary['failed'] = failed
  write_summary(summary, output_dir)
  return summary


def write_summary(summary: dict, output_dir: str) -> List[str]:
  """Writes results.md, the plots and results.json (the summary, with `plots`) to `output_dir`; returns
  the files written."""
  with open(os.path.join(output_dir, RESULTS_MD), 'w') as f:
    f.write(format_markdown(summary))
  summary['plots'] = plot_summary(summary, output_dir)
  with open(os.path.join(output_dir, RESULTS_JSON), 'w') as f:
    json.dump(summary, f, indent=2)
  return [os.path.join(output_dir, name) for name in (RESULTS_MD, RESULTS_JSON)] + summary['plots']
