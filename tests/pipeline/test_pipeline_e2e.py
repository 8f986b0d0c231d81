"""The real pipeline (LocalDagRunner, in-memory Beam) end to end on a few thousand rows."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tfx_runner
from data import synthetic
from models.features import FEATURE_SPEC_FILE

pytestmark = pytest.mark.e2e

ROWS = 5000
SMALL_RUN = ['--pretrain-steps', '150', '--finetune-steps', '60', '--eval-steps', '5', '--batch-size', '256',
             '--hidden-units', '32-16', '--min-domain-auc', '0.3']


def _write_split(frame: pd.DataFrame, data_dir, shuffle_train_labels=False):
  """Fixed train/eval folders: the eval rows never change, so runs are judged on the same examples."""
  cut = int(len(frame) * 0.8)
  train, evaluation = frame.iloc[:cut].copy(), frame.iloc[cut:]
  if shuffle_train_labels:
    train['click'] = np.random.default_rng(0).permutation(train['click'].to_numpy())
    train['conversion'] = train['click'] * train['conversion']
  synthetic.write_csv(train, str(data_dir / 'train'))
  synthetic.write_csv(evaluation, str(data_dir / 'eval'))


def _run(output_dir, data_dir=None, extra=()):
  args = ['run', '--output-dir', str(output_dir)] + SMALL_RUN + list(extra)
  if data_dir:
    args += ['--data-path', str(data_dir)]
  return tfx_runner.main(args)


def _pushed_versions(output_dir):
  base = os.path.join(output_dir, 'serving', 'ctr')
  return sorted(os.listdir(base)) if os.path.isdir(base) else []


@pytest.fixture(scope='module')
def clean_run(tmp_path_factory):
  root = tmp_path_factory.mktemp('pipeline')
  data_dir, output_dir = root / 'data', root / 'out'
  frame = synthetic.generate(ROWS, seed=3)
  _write_split(frame, data_dir)
  assert _run(output_dir, data_dir) == 0
  with open(output_dir / 'report.json') as f:
    return {'data_dir': data_dir, 'output_dir': output_dir, 'frame': frame, 'report': json.load(f)}


def test_clean_data_is_blessed_and_pushed(clean_run):
  report = clean_run['report']
  assert report['blessed'] is True
  assert report['pushed_model'] and os.path.exists(os.path.join(report['pushed_model'], 'saved_model.pb'))
  versions = _pushed_versions(clean_run['output_dir'])
  assert len(versions) == 1 and versions[0].isdigit()  # TF Serving layout: <base>/<model>/<version>/


def test_report_has_metrics_for_every_domain(clean_run):
  report = clean_run['report']
  assert [row['domain'] for row in report['domains']] == synthetic.FEATURE_SPEC.domains
  eval_rows = clean_run['frame'].iloc[int(ROWS * 0.8):]
  for row in report['domains']:
    assert row['train_examples'] > 0
    assert row['eval_examples'] == (eval_rows.domain == row['domain']).sum()
    assert 0.0 <= row['auc_pretrain'] <= 1.0 and 0.0 <= row['auc_finetune'] <= 1.0
  for key in ('auc_pretrain', 'auc_finetune', 'wauc_pretrain', 'wauc_finetune'):
    assert 0.5 < report[key] <= 1.0
  assert os.path.getsize(clean_run['output_dir'] / 'domain_auc.png') > 1000


def _serialized_examples(frame: pd.DataFrame, columns):
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


def test_pushed_model_answers_serialized_examples(clean_run):
  model = tf.saved_model.load(clean_run['report']['pushed_model'])
  serve = model.signatures['serving_default']
  spec = synthetic.FEATURE_SPEC
  columns = [c for c in spec.raw_columns if c not in spec.label_columns]  # a serving request has no labels
  frame = clean_run['frame'].iloc[-64:]
  scores = serve(examples=_serialized_examples(frame, columns))['ctr'].numpy()
  assert scores.shape == (64,) and np.all((scores > 0) & (scores < 1))
  assert np.std(scores) > 1e-4  # depends on the features, not a constant

  unknown = frame.assign(domain='not_a_domain')  # scored by the backbone alone, never an error
  unknown_scores = serve(examples=_serialized_examples(unknown, columns))['ctr'].numpy()
  assert np.all(np.isfinite(unknown_scores))


def test_model_worse_than_blessed_is_not_pushed(clean_run, tmp_path):
  """Trained on shuffled labels and judged on the same eval rows, the candidate loses to the blessed
  model: no blessing, no push, and the pushed version stays."""
  versions_before = _pushed_versions(clean_run['output_dir'])
  data_dir = tmp_path / 'shuffled'
  _write_split(clean_run['frame'], data_dir, shuffle_train_labels=True)
  assert _run(clean_run['output_dir'], data_dir) == 0
  with open(clean_run['output_dir'] / 'report.json') as f:
    report = json.load(f)
  assert report['auc_finetune'] < clean_run['report']['auc_finetune']
  assert report['blessed'] is False
  assert report['pushed_model'] is None
  assert _pushed_versions(clean_run['output_dir']) == versions_before


def _corrupt(frame: pd.DataFrame, case: str) -> pd.DataFrame:
  frame = frame.copy()
  if case == 'missing_column':
    return frame.drop(columns=['item_id'])
  if case == 'text_in_numeric':
    frame['price'] = frame['price'].astype(object)
    frame.loc[frame.index[::50], 'price'] = 'n/a'
    return frame
  if case == 'unknown_domain':
    frame.loc[frame.index[::40], 'domain'] = 'mystery_tab'
    return frame
  if case == 'empty':
    return frame.iloc[:0]
  raise ValueError(case)


@pytest.mark.parametrize('case,field', [('missing_column', 'item_id'), ('text_in_numeric', 'price'),
                                        ('unknown_domain', 'domain'), ('empty', 'no examples')])
def test_bad_input_stops_before_training(case, field, tmp_path, capsys):
  data_dir, output_dir = tmp_path / 'data', tmp_path / 'out'
  synthetic.write_csv(_corrupt(synthetic.generate(1500, seed=4), case), str(data_dir))
  assert _run(output_dir, data_dir) == 2
  message = capsys.readouterr().err
  assert 'Run stopped before training' in message and field in message
  assert 'schema' in message  # says how to fix it
  pipeline_root = output_dir / 'pipeline_root'
  assert not (pipeline_root / 'Transform').exists()
  assert not (pipeline_root / 'PretrainTrainer').exists()
  assert _pushed_versions(output_dir) == []
  assert not (output_dir / 'report.json').exists()
