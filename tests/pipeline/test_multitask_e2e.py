"""The real pipeline with a multi-task head (ESMM) end to end on a few thousand rows: trained on click and
conversion with GradVac and a CTCVR AUC floor it cannot reach, gated per task, pushed, served with every task's
probability. The run is a pipeline of its own, so
`make test-all` runs it; the fast suite checks its parts: the evaluation and gate settings here, the per-task gate
on a served two-task model (tests/components/test_promotion_gate.py), the heads trained, exported and served
(tests/models/heads)."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from data import synthetic
from models.trainer import TRAINING_STATS_FILE
from pipeline.config import PipelineConfig
from pipeline.pipeline import eval_config, promotion_settings
from tests import runs

ROWS = 3000
UNREACHABLE = 'ctcvr_auc>=0.99'  # broken every epoch: its multiplier must rise
ESMM_RUN = ['--head', 'esmm', '--balancing', 'uncertainty', '--gradient-surgery', 'gradvac', '--constraint',
            UNREACHABLE, '--pretrain-steps', '100', '--finetune-steps', '20', '--eval-steps', '2']


def test_every_task_is_evaluated_and_gated_with_its_floor():
  config = PipelineConfig('data', 'schema.pbtxt', 'out', synthetic.FEATURE_SPEC, head='esmm', min_domain_auc=0.6,
                          task_min_auc={'cvr': 0.52})
  specs = eval_config(config)
  assert dict(specs.model_specs[0].label_keys) == {'ctr': 'click', 'cvr': 'conversion', 'ctcvr': 'conversion'}
  assert dict(specs.model_specs[0].prediction_keys) == {'ctr': 'ctr', 'cvr': 'cvr', 'ctcvr': 'ctcvr'}
  assert [list(s.output_names) for s in specs.metrics_specs] == [['ctr'], ['cvr'], ['ctcvr']]
  settings = json.loads(promotion_settings(config))
  assert settings['task_labels'] == {'ctr': 'click', 'cvr': 'conversion', 'ctcvr': 'conversion'}
  assert settings['task_floors'] == {'ctr': 0.6, 'cvr': 0.52, 'ctcvr': 0.6}
  assert settings['uncalibrated'] == ['cvr']  # P(conversion | click), scored over every exposure: AUC only
  with pytest.raises(ValueError, match='head'):
    PipelineConfig('data', 'schema.pbtxt', 'out', synthetic.FEATURE_SPEC, gradient_surgery='pcgrad')


@pytest.fixture(scope='module')
def esmm_run(tmp_path_factory):
  root = tmp_path_factory.mktemp('multitask')
  data_dir, output_dir = root / 'data', root / 'out'
  frame = synthetic.generate(ROWS, seed=5)
  runs.write_split(frame, data_dir)
  assert runs.run_cli(output_dir, data_dir, ESMM_RUN) == 0
  with open(output_dir / 'report.json') as f:
    return {'output_dir': output_dir, 'frame': frame, 'report': json.load(f)}


@pytest.mark.e2e
@pytest.mark.slow
def test_esmm_model_is_blessed_and_pushed(esmm_run):
  report = esmm_run['report']
  assert report['blessed'] is True
  assert report['pushed_model'] and os.path.exists(os.path.join(report['pushed_model'], 'saved_model.pb'))
  assert len(runs.pushed_versions(esmm_run['output_dir'])) == 1
  assert set(report['tasks']) == {'ctr', 'cvr', 'ctcvr'}  # each task scored (and gated) per domain
  for task, values in report['tasks'].items():
    assert 0.0 <= values['overall']['finetune']['auc'] <= 1.0, task
    assert set(values['domains']) == set(synthetic.FEATURE_SPEC.domains)
    assert values['blessed'] and values['rule'] == 'first_run'
  assert report['auc_finetune'] == report['tasks']['ctr']['overall']['finetune']['auc']


@pytest.mark.e2e
@pytest.mark.slow
def test_serving_default_returns_every_task(esmm_run):
  serve = tf.saved_model.load(esmm_run['report']['pushed_model']).signatures['serving_default']
  columns = runs.request_columns(synthetic.FEATURE_SPEC)
  outputs = serve(examples=runs.serialized_examples(esmm_run['frame'].iloc[-32:], columns))
  assert set(outputs) == {'ctr', 'cvr', 'ctcvr'}
  ctr, cvr, ctcvr = (outputs[t].numpy() for t in ('ctr', 'cvr', 'ctcvr'))
  assert ctr.shape == cvr.shape == ctcvr.shape == (32,)
  assert np.all((ctr > 0) & (ctr < 1)) and np.all((cvr > 0) & (cvr < 1))
  np.testing.assert_allclose(ctcvr, ctr * cvr, rtol=1e-5)


@pytest.mark.e2e
@pytest.mark.slow
def test_each_trainer_records_the_multiplier_rising_while_the_floor_is_broken(esmm_run):
  stats_files = sorted(glob.glob(str(esmm_run['output_dir'] / 'pipeline_root' / '*Trainer' / 'model' / '*' / '**' /
                                     TRAINING_STATS_FILE), recursive=True))
  assert len(stats_files) == 2  # pretrain and fine-tune
  for path in stats_files:
    with open(path) as f:
      trajectory = json.load(f)['constraints'][UNREACHABLE]
    assert [step['epoch'] for step in trajectory] == list(range(1, len(trajectory) + 1)), path
    assert all(step['value'] < 0.99 for step in trajectory), path
    multipliers = [step['multiplier'] for step in trajectory]
    assert multipliers[0] > 0 and multipliers == sorted(multipliers), path
