"""The real pipeline runs the tests share, and helpers to read them.

`make test` runs the real pipeline (LocalDagRunner, in-memory Beam) a few times only. The run every e2e test
reads is the session's shared run (`SharedRun`): one simulated day through `tfx_runner.py simulate`, the
command a user runs, on a few thousand rows, with a challenger Trainer and the cache on. Its output folder
is never written to after it finishes: a test that runs the pipeline again on top of it (a warm-started
span, onboarding) copies what it needs first. Under pytest-xdist the workers build it once between them.
"""
import contextlib
import fcntl
import io
import json
import os
import shutil
import traceback
from typing import Callable, List

import numpy as np
import pandas as pd
import tensorflow as tf

import tfx_runner
from data import synthetic
from models.features import FeatureSpec
from pipeline.config import PipelineConfig
from serving.repository import ready_versions
import schemas

# Tiny shapes and few steps: the runs prove the wiring and what the models can learn in seconds. As
# PipelineConfig fields (TINY) and as the command-line flags that set them (TINY_TRAINING).
TINY = dict(pretrain_steps=150, finetune_steps=60, eval_steps=3, batch_size=256, hidden_units=(32, 16),
            embedding_dim=8)
TINY_TRAINING = [arg for name, value in TINY.items() for arg in (
    '--' + name.replace('_', '-'), '-'.join(map(str, value)) if isinstance(value, tuple) else str(value))]
SHARED_ROWS = 4000  # one day: 2400 train, 800 eval, 800 test rows
SHARED_SEED = 3
SHARED_CHALLENGER = 'pretrain:star'  # STAR end to end, scored by the bench tests
SHARED_RUN = ['simulate', '--spans', '1', '--rows-per-span', str(SHARED_ROWS), '--seed', str(SHARED_SEED),
              *TINY_TRAINING, '--challenger', SHARED_CHALLENGER, '--enable-cache']
SHARED_SETTINGS = dict(TINY, seed=SHARED_SEED, challengers=(SHARED_CHALLENGER,), enable_cache=True)


class SharedRun:
  """The shared run's paths and what it wrote: the output folder (`output_dir`), the data root with its
  contract and `span-1/` (`data_root`, `span`), the report, the pushed version and what simulate printed on
  stdout (`printed`) and stderr (`printed_errors`)."""

  def __init__(self, folder: str):
    self.folder = folder
    self.output_dir = os.path.join(folder, 'out')
    self.data_root = os.path.join(self.output_dir, 'data')
    self.span = os.path.join(self.data_root, 'span-1')
    self.schema_path = os.path.join(self.data_root, schemas.SCHEMA_FILE)
    self.spec = FeatureSpec.load(self.data_root)
    with open(os.path.join(self.output_dir, 'report.json')) as f:
      self.report = json.load(f)
    with open(os.path.join(folder, 'simulate.out')) as f:
      self.printed = f.read()
    with open(os.path.join(folder, 'simulate.err')) as f:
      self.printed_errors = f.read()
    self.model_base = os.path.join(self.output_dir, 'serving', 'ctr')
    self.serving_root = os.path.dirname(self.model_base)
    self.version = ready_versions(self.model_base)[-1]
    self.version_dir = os.path.join(self.model_base, str(self.version))
    self.data_csv = self.split_csv('test')  # raw rows the models never trained on, labels included

  def split_csv(self, split: str) -> str:
    return os.path.join(self.span, split, 'data.csv')

  def frame(self, split: str) -> pd.DataFrame:
    return pd.read_csv(self.split_csv(split))

  def config(self, **overrides) -> PipelineConfig:
    """The run's PipelineConfig, the settings SHARED_RUN gave it, with `overrides`."""
    return PipelineConfig(data_path=self.data_root, schema_path=self.schema_path, output_dir=self.output_dir,
                          feature_spec=self.spec, **{**SHARED_SETTINGS, **overrides})

  def copy_base(self, destination) -> str:
    """A writable copy of the model base with the pushed version (to add versions to), in TF Serving's
    layout; returns the new base path."""
    base = os.path.join(str(destination), 'ctr')
    shutil.copytree(self.version_dir, os.path.join(base, str(self.version)))
    return base

  def copy_production(self, destination: str) -> str:
    """A new output folder whose production model is this run's: its metadata store and serving folder
    copied (artifacts stay where they are, read only); returns the folder."""
    for part in ('metadata', 'serving'):
      shutil.copytree(os.path.join(self.output_dir, part), os.path.join(destination, part))
    return destination


def build_shared_run(folder: str) -> None:
  """Runs `tfx_runner.py simulate` for the shared run into `folder/out`, what it printed on stdout and stderr
  kept beside."""
  printed, printed_errors = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed_errors):
    status = tfx_runner.main(SHARED_RUN + ['--output-dir', os.path.join(folder, 'out')])
  for name, text in (('simulate.out', printed), ('simulate.err', printed_errors)):
    with open(os.path.join(folder, name), 'w') as f:
      f.write(text.getvalue())
  assert status == 0, printed.getvalue() + printed_errors.getvalue()


def built_once(folder: str, build: Callable[[str], None]) -> str:
  """`folder`, built by `build(folder)` unless it is already (by another pytest-xdist worker: they take a
  lock beside it, so one builds while the others wait). A failed build is recorded, and every worker then
  fails with its traceback instead of building again."""
  done, failed = os.path.join(folder, '.built'), os.path.join(folder, '.failed')
  with open(f'{folder}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(done) and not os.path.exists(failed):
      os.makedirs(folder, exist_ok=True)
      try:
        build(folder)
        open(done, 'w').close()
      except BaseException:
        with open(failed, 'w') as f:
          f.write(traceback.format_exc())
        raise
  if os.path.exists(failed):
    with open(failed) as f:
      raise RuntimeError(f'building {folder} failed:\n{f.read()}')
  return folder


def run_cli(output_dir, data_dir=None, extra=()) -> int:
  """`tfx_runner.py run` into `output_dir` with the tiny training settings, on `data_dir` if given."""
  args = ['run', '--output-dir', str(output_dir)] + TINY_TRAINING + list(extra)
  if data_dir:
    args += ['--data-path', str(data_dir)]
  return tfx_runner.main(args)


def write_split(frame: pd.DataFrame, data_dir, shuffle_train_labels=False, no_train_clicks=False) -> None:
  """Fixed train/eval/test folders (60/20/20, in row order), the curated schema's data; the train split's labels
  shuffled, or every one 0 (`no_train_clicks`), on request."""
  cuts = [int(len(frame) * 0.6), int(len(frame) * 0.8)]
  train, evaluation, test = frame.iloc[:cuts[0]].copy(), frame.iloc[cuts[0]:cuts[1]], frame.iloc[cuts[1]:]
  if shuffle_train_labels:
    train['click'] = np.random.default_rng(0).permutation(train['click'].to_numpy())
  if no_train_clicks:
    train['click'] = 0
  train['conversion'] = train['click'] * train['conversion']
  for split, part in (('train', train), ('eval', evaluation), ('test', test)):
    synthetic.write_csv(part, str(data_dir / split))


def pushed_versions(output_dir) -> List[str]:
  base = os.path.join(output_dir, 'serving', 'ctr')
  return sorted(os.listdir(base)) if os.path.isdir(base) else []


def serialized_examples(frame: pd.DataFrame, columns) -> tf.Tensor:
  """The rows' `columns` as serialized tf.Examples, typed as the CSV reader would type them."""
  serialized = []
  for row in frame[columns].itertuples(index=False):
    feature = {}
    for column, value in zip(columns, row):
      if isinstance(value, str):
        feature[column] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
      elif isinstance(value, (float, np.floating)):
        feature[column] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
      else:
        feature[column] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
    serialized.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
  return tf.constant(serialized)


def request_columns(spec: FeatureSpec) -> List[str]:
  """The raw columns a serving request carries: all but the labels."""
  return [c for c in spec.raw_columns if c not in spec.label_columns]
