"""Continual runs on daily span folders: the newest span is ingested, the backbone warm-starts from the
production model, a corrupted span is stopped by validation, and a failed run's re-run reuses the cached
components. The e2e tests continue the session's shared run (span 1, tests/runs.py) in one output folder
holding a copy of its production model, and run in file order, as the days do."""
import dataclasses
import json
import os

import numpy as np
import pytest
import tf_keras
from ml_metadata.proto import metadata_store_pb2

from models import model as model_lib
import models.trainer
import tfx_runner
from components.anomalies_gate import DataValidationError
from data import synthetic
from pipeline import lineage
from pipeline import simulate
from pipeline.config import PipelineConfig, latest_span_path, span_numbers
from pipeline.pipeline import create_pipeline
import schemas
from tests import runs

ROWS = runs.SHARED_ROWS  # per span
SMALL = runs.TINY  # the shared run's settings: its model is the production model
UNTIL_PRETRAIN = ('CsvExampleGen', 'StatisticsGen', 'ImportSchemaGen', 'ExampleValidator', 'AnomaliesGate',
                  'Transform', 'PretrainTrainer')
USER_EMBEDDING = 'embedding_user_id_xf'


def _write_span(data_root, day, frame):
  simulate.write_span(frame, str(data_root), day)


def _config(root, **overrides) -> PipelineConfig:
  data = root / 'data'
  settings = {'schema_path': str(data / schemas.SCHEMA_FILE), **SMALL, **overrides}
  return PipelineConfig(data_path=str(data), output_dir=str(root / 'out'), feature_spec=synthetic.FEATURE_SPEC,
                        **settings)


def test_span_folders_are_found_and_the_newest_is_read(tmp_path):
  frame = synthetic.generate(100)
  for day in (1, 2, 10):
    _write_span(tmp_path / 'data', day, frame)
  (tmp_path / 'data' / 'span-x').mkdir()
  assert span_numbers(str(tmp_path / 'data')) == [1, 2, 10]
  assert latest_span_path(str(tmp_path / 'data')).endswith('span-10')
  config = _config(tmp_path)
  assert config.spans and config.warm_start  # both follow the span folders
  assert config.input_layout() == ('csv', ['train', 'eval', 'test'])
  components = {c.id: c for c in create_pipeline(config).components}
  input_config = json.loads(components['CsvExampleGen'].exec_properties['input_config'])
  assert [s['pattern'] for s in input_config['splits']] == ['span-{SPAN}/train/*', 'span-{SPAN}/eval/*',
                                                            'span-{SPAN}/test/*']
  assert components['PretrainTrainer'].inputs['base_model'].producer_component_id == 'LatestBlessedModelResolver'


def test_training_spans_learn_from_a_rolling_window_and_the_newest_span_is_judged(tmp_path):
  for day in (1, 2):
    _write_span(tmp_path / 'data', day, synthetic.generate(100))
  components = {c.id: c for c in create_pipeline(_config(tmp_path, training_spans=3)).components}
  window = components['TrainingSpansResolver']
  assert window.exec_properties['source_uri']['range_config'].rolling_range.num_spans == 3
  assert components['Transform'].inputs['examples'].producer_component_id == 'TrainingSpansResolver'
  for node in ('Evaluator', 'PromotionGate'):
    assert components[node].inputs['examples'].producer_component_id == 'CsvExampleGen'
  assert 'TrainingSpansResolver' not in {c.id for c in create_pipeline(_config(tmp_path)).components}


def test_simulate_learns_from_three_days_and_run_from_one_unless_told(tmp_path):
  parser = tfx_runner.build_parser()
  assert parser.parse_args(['simulate', '--output-dir', str(tmp_path)]).training_spans == 3
  assert parser.parse_args(['run', '--output-dir', str(tmp_path)]).training_spans is None
  _write_span(tmp_path / 'data', 1, synthetic.generate(100))
  args = parser.parse_args(['run', '--output-dir', str(tmp_path / 'out'), '--data-path', str(tmp_path / 'data'),
                            '--training-spans', '4'])
  assert tfx_runner.config_from_args(args).training_spans == 4


def test_a_window_of_spans_needs_span_folders(tmp_path):
  synthetic.write_csv(synthetic.generate(100), str(tmp_path / 'data'))
  with pytest.raises(ValueError, match='training_spans 2: needs 1, or more with span folders'):
    _config(tmp_path, training_spans=2)


def test_without_spans_nothing_changes(tmp_path):
  synthetic.write_csv(synthetic.generate(100), str(tmp_path / 'data'))
  config = _config(tmp_path)
  assert not config.spans and not config.warm_start
  components = {c.id: c for c in create_pipeline(config).components}
  assert 'base_model' not in components['PretrainTrainer'].inputs  # trained from scratch, as before
  assert not create_pipeline(config).enable_cache


def test_a_span_pool_is_split_by_hash(tmp_path):
  synthetic.write_csv(synthetic.generate(100), str(tmp_path / 'data' / 'span-1'))
  config = _config(tmp_path)
  assert config.input_layout() == ('csv', None)
  example_gen = next(c for c in create_pipeline(config).components if c.id == 'CsvExampleGen')
  assert json.loads(example_gen.exec_properties['input_config'])['splits'][0]['pattern'] == 'span-{SPAN}/*.csv'
  assert 'hash_buckets' in example_gen.exec_properties['output_config']


def _pushed_versions(config):
  return sorted(os.listdir(config.serving_dir)) if os.path.isdir(config.serving_dir) else []


def _keras(model_uri):
  return tf_keras.models.load_model(models.trainer.keras_model_path(os.path.join(model_uri, 'Format-Serving')))


@pytest.fixture(scope='module', params=['shared', pytest.param('own', marks=pytest.mark.slow)])
def first_span(request, tmp_path_factory):
  """(root, span 1's schema file, span 1's blessed model URI): span 1 is the shared run, whose production
  model is copied into root/out (its cache was on), or (`make test-all`) a run of its own there."""
  root = tmp_path_factory.mktemp('spans')
  simulate.write_contract(str(root / 'data'), synthetic.FEATURE_SPEC)
  if request.param == 'shared':
    shared = request.getfixturevalue('shared_run')
    shared.copy_production(str(root / 'out'))
    schema_path, first = shared.schema_path, shared.config()
  else:
    _write_span(root / 'data', 1, synthetic.generate(ROWS, seed=runs.SHARED_SEED))
    schema_path, first = str(root / 'data' / schemas.SCHEMA_FILE), _config(root, enable_cache=True)
    report = tfx_runner.run_pipeline(first)
    assert report['blessed'] and report['pushed_model'] and len(_pushed_versions(first)) == 1
  return root, schema_path, lineage.latest_artifacts(first, 'FinetuneTrainer', 'model', lineage.OUTPUT)[0].uri


@pytest.fixture(scope='module')
def days(first_span):
  """Span 1 is blessed, its cache on; span 2's first run, which learns from both spans, fails in the fine-tune
  stage (a killed run) and its re-run finishes. The cache is on, and span 2 is validated against span 1's schema
  file, so its schema import is span 1's, cached."""
  root, schema_path, first_model = first_span
  _write_span(root / 'data', 2, synthetic.generate(ROWS, seed=5))  # other logs of other users and items
  # Without the embedding L2 penalty, whose gradient reaches every row of a table: rows of users the span
  # does not hold then keep exactly what the warm start copied into them.
  config = _config(root, enable_cache=True, schema_path=schema_path, embedding_l2=0.0, training_spans=2)
  with pytest.MonkeyPatch.context() as patch:
    def killed(*args):
      raise RuntimeError('fine-tune killed')
    # Only the fine-tune stage calls it. (Trainer reloads models.trainer, so run_fn itself cannot be patched.)
    patch.setattr(model_lib, 'load_backbone_weights', killed)
    with pytest.raises(RuntimeError, match='fine-tune killed'):
      tfx_runner.run_pipeline(config)
  failed = lineage.latest_run_states(config)
  second = tfx_runner.run_pipeline(config)
  return {'root': root, 'config': config, 'first_model': first_model, 'failed': failed, 'second': second,
          'rerun': lineage.latest_run_states(config)}


@pytest.mark.e2e
def test_second_span_warm_starts_from_the_first_blessed_model(days):
  config = days['config']
  assert lineage.warm_start_source(config) == days['first_model']  # PretrainTrainer's base_model
  warm = _keras(lineage.latest_artifacts(config, 'PretrainTrainer', 'model', lineage.OUTPUT)[0].uri)
  blessed = _keras(days['first_model'])
  # Users on neither day's training rows keep the blessed model's embedding rows bit for bit; a backbone
  # trained from scratch would have fresh random rows there.
  rows = warm.get_layer(USER_EMBEDDING).get_weights()[0], blessed.get_layer(USER_EMBEDDING).get_weights()[0]
  assert np.all(rows[0] == rows[1], axis=1).mean() > 0.9
  kernels = warm.get_layer('dense_0').kernel.numpy(), blessed.get_layer('dense_0').kernel.numpy()
  assert np.corrcoef(kernels[0].ravel(), kernels[1].ravel())[0, 1] > 0.5  # continued, not restarted


@pytest.mark.e2e
def test_the_second_span_learns_from_both_spans_and_is_judged_on_its_own(days):
  def spans(node):
    return sorted(a.custom_properties['span'].int_value  # TFX keeps the span as a custom property
                  for a in lineage.latest_artifacts(days['config'], node, 'examples'))
  assert spans('Transform') == [1, 2]
  assert len(lineage.latest_artifacts(days['config'], 'PretrainTrainer', 'examples')) == 2  # both transformed
  assert spans('PromotionGate') == spans('Evaluator') == [2]


@pytest.mark.e2e
def test_rerun_after_a_killed_run_reuses_cached_components(days):
  complete, cached = metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED
  # The failed run computed everything up to the fine-tune stage for span 2; only the schema import, which
  # has no inputs and an unchanged schema file, came from span 1's run (the shared run).
  expected = {**dict.fromkeys(UNTIL_PRETRAIN, complete), 'ImportSchemaGen': cached}
  assert {node: days['failed'][node] for node in UNTIL_PRETRAIN} == expected
  assert days['failed']['FinetuneTrainer'] == metadata_store_pb2.Execution.FAILED
  assert {node: days['rerun'][node] for node in UNTIL_PRETRAIN} == dict.fromkeys(UNTIL_PRETRAIN, cached)
  assert days['rerun']['FinetuneTrainer'] == complete and days['rerun']['Evaluator'] == complete


@pytest.mark.e2e
def test_corrupted_span_is_stopped_and_production_stays(days):
  config = days['config']
  versions = _pushed_versions(config)
  production = lineage.latest_artifacts(config, 'Evaluator', 'baseline_model')
  _write_span(days['root'] / 'data', 3, synthetic.generate(ROWS, seed=6).drop(columns=['price']))
  with pytest.raises(DataValidationError, match='price'):
    tfx_runner.run_pipeline(config)
  ran = lineage.latest_run_states(config)
  assert 'AnomaliesGate' in ran and not {'Transform', 'PretrainTrainer', 'Pusher'} & set(ran)
  assert _pushed_versions(config) == versions
  assert lineage.latest_artifacts(config, 'Evaluator', 'baseline_model') == production


@pytest.mark.e2e
@pytest.mark.slow  # a third run on the shared run; the fast suite checks onboarding in tests/models/test_onboarding.py
def test_onboarding_a_new_domain_trains_its_adapter_alone(days):
  """A later span brings the new domain: the run trains its adapter on the production model and nothing else."""
  config = days['config']
  drift = simulate.Drift(new_domain_day=4)
  spec = simulate.day_spec(4, drift)
  simulate.write_contract(str(days['root'] / 'data'), spec)
  _write_span(days['root'] / 'data', 4, simulate.day_frame(synthetic.generate(4 * ROWS, seed=7), 4, ROWS, drift, 0))
  onboarding = dataclasses.replace(config, feature_spec=spec, onboard_domains=(drift.new_domain,), enable_cache=False,
                                   schema_path=str(days['root'] / 'data' / schemas.SCHEMA_FILE))  # with the domain
  report = tfx_runner.run_pipeline(onboarding)

  ran = lineage.latest_run_states(onboarding)
  assert 'PretrainTrainer' not in ran and ran['FinetuneTrainer'] == metadata_store_pb2.Execution.COMPLETE
  production = _keras(lineage.latest_artifacts(onboarding, 'FinetuneTrainer', 'base_model')[0].uri)
  onboarded = _keras(lineage.latest_artifacts(onboarding, 'FinetuneTrainer', 'model', lineage.OUTPUT)[0].uri)
  new = spec.domains.index(drift.new_domain)
  for name in ('dense_0', 'dense_1', 'logit'):
    before, after = production.get_layer(name), onboarded.get_layer(name)
    np.testing.assert_array_equal(after.kernel.numpy(), before.kernel.numpy())
    np.testing.assert_array_equal(after.lora_b.numpy()[:new * after.rank], before.lora_b.numpy())
    assert np.abs(after.lora_b.numpy()[new * after.rank:]).sum() > 0  # the new domain's adapter trained
  np.testing.assert_array_equal(onboarded.get_layer(USER_EMBEDDING).get_weights()[0],
                                production.get_layer(USER_EMBEDDING).get_weights()[0])
  assert drift.new_domain in {d['domain'] for d in report['domains']}
  # The old domains score as production does (up to the span's Transform statistics), so the candidate is no
  # worse anywhere: the gate promotes it or, on a point estimate below production's, keeps production; and
  # pushes exactly what it blesses.
  assert report['gate_rule'] in ('not_worse_overall', 'not_better_overall'), report['gate_reasons']
  assert bool(report['pushed_model']) == report['blessed']
