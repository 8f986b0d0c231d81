"""The real pipeline end to end: what the session's shared run (tests/runs.py) wrote, and the smallest real
runs that show what stops a push (the gate) or a run (validation). `make test-all` adds each of these
scenarios as a full pipeline run of its own (the `slow` tests)."""
import glob
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
import tensorflow_transform as tft
import tf_keras
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from components import anomalies_gate, domain_metrics
from components.promotion_gate import PromotionGate, read_evaluation
from data import revenue, synthetic
from models import trainer
from models.trainer import export_serving_model, keras_model_path
from pipeline import lineage
from pipeline.config import LOCAL_BEAM_ARGS, PipelineConfig
from pipeline.pipeline import example_gen, promotion_settings, trainer_id
import schemas
from tests import runs
import tfx_runner

pytestmark = pytest.mark.e2e


def test_shared_run_is_blessed_and_pushed(shared_run):
  report = shared_run.report
  assert report['blessed'] is True
  assert report['pushed_model'] and os.path.exists(os.path.join(report['pushed_model'], 'saved_model.pb'))
  versions = runs.pushed_versions(shared_run.output_dir)
  assert len(versions) == 1 and versions[0].isdigit()  # TF Serving layout: <base>/<model>/<version>/


def test_report_has_metrics_for_every_domain(shared_run):
  report = shared_run.report
  assert report['split'] == 'test'  # judged on rows no Trainer selected on
  assert [row['domain'] for row in report['domains']] == synthetic.FEATURE_SPEC.domains
  train, test = shared_run.frame('train'), shared_run.frame('test')
  for row in report['domains']:
    assert row['train_examples'] == (train.domain == row['domain']).sum() > 0
    assert row['test_examples'] == (test.domain == row['domain']).sum()
    for stage in ('pretrain', 'finetune'):
      low, high = row[f'auc_{stage}_ci']
      assert 0.0 <= row[f'auc_{stage}'] <= 1.0 and low < row[f'auc_{stage}'] < high
    assert row['logloss'] > 0 and row['constant_logloss'] > 0 and row['calibration'] > 0
  for key in ('auc_pretrain', 'auc_finetune', 'wauc_pretrain', 'wauc_finetune'):
    assert 0.5 < report[key] <= 1.0
  assert report['production'] is None and report['gate_rule'] == 'first_run'  # nothing to compare with yet
  assert any(reason.startswith('overall: AUC') for reason in report['gate_reasons'])
  assert os.path.getsize(os.path.join(shared_run.output_dir, 'domain_auc.png')) > 1000
  assert os.path.getsize(os.path.join(shared_run.output_dir, 'reliability.png')) > 1000
  assert all(row['reliability_finetune'] for row in report['domains'])  # the gate's bins, per domain


class _TFXIOAccessor:
  """The piece of TFX's DataAccessor that the Trainer's `input_fn` reads with."""

  @staticmethod
  def tf_dataset_factory(file_pattern, options, schema):
    return tfxio.TFExampleRecord(file_pattern, schema=schema).TensorFlowDataset(options)


def test_a_trainer_run_again_with_its_seed_exports_bit_identical_weights(shared_run, tmp_path):
  """Seeds and TensorFlow's deterministic kernels (`models/trainer.py`): the shared run's pretrain stage, run
  again on the same transformed examples with the same settings, ends with the same weights."""
  config = shared_run.config()
  [examples] = lineage.latest_artifacts(config, trainer_id('pretrain'), 'examples')
  [transform] = lineage.latest_artifacts(config, trainer_id('pretrain'), 'transform_graph')
  [model] = lineage.latest_artifacts(config, trainer_id('pretrain'), 'model', lineage.OUTPUT)
  serving_dir = str(tmp_path / 'Format-Serving')
  trainer.pretrain_run_fn(tfx.components.FnArgs(
      train_files=[os.path.join(examples.uri, 'Split-train', '*')],
      eval_files=[os.path.join(examples.uri, 'Split-eval', '*')], train_steps=config.pretrain_steps,
      eval_steps=config.eval_steps, transform_output=transform.uri, transform_graph_path=transform.uri,
      data_accessor=_TFXIOAccessor, serving_model_dir=serving_dir, model_run_dir=str(tmp_path / 'logs'),
      custom_config=config.trainer_config('pretrain')))
  original = tf_keras.models.load_model(keras_model_path(os.path.join(model.uri, 'Format-Serving')))
  again = tf_keras.models.load_model(keras_model_path(serving_dir))
  assert [w.name for w in again.weights] == [w.name for w in original.weights]
  for weight, expected in zip(again.weights, original.weights):
    np.testing.assert_array_equal(weight.numpy(), expected.numpy(), err_msg=weight.name)


def test_pushed_model_answers_serialized_examples(shared_run):
  serve = tf.saved_model.load(shared_run.report['pushed_model']).signatures['serving_default']
  columns = runs.request_columns(synthetic.FEATURE_SPEC)
  frame = shared_run.frame('test').iloc[-64:]
  scores = serve(examples=runs.serialized_examples(frame, columns))['ctr'].numpy()
  assert scores.shape == (64,) and np.all((scores > 0) & (scores < 1))
  assert np.std(scores) > 1e-4  # depends on the features, not a constant

  unknown = frame.assign(domain='not_a_domain')  # scored by the backbone alone, never an error
  unknown_scores = serve(examples=runs.serialized_examples(unknown, columns))['ctr'].numpy()
  assert np.all(np.isfinite(unknown_scores))


def test_tfma_evaluation_has_every_metric_per_domain_as_the_gate_measured_them(shared_run):
  """The Evaluator's result, as TFMA's tools load it: every DomainCTRMetrics value overall and per domain, the
  counts equal to the test rows, AUC and log loss within the histogram's resolution of the gate's exact ones."""
  [evaluation] = lineage.latest_artifacts(shared_run.config(), 'Evaluator', 'evaluation', lineage.OUTPUT)
  by_slice = {dict(key).get('domain'): {name: value['doubleValue'] for name, value in values[''][''].items()}
              for key, values in tfma.load_eval_result(evaluation.uri).slicing_metrics}
  report = shared_run.report
  assert set(by_slice) == {None, *synthetic.FEATURE_SPEC.domains}
  for row in report['domains']:
    figures = by_slice[row['domain']]
    assert set(figures) == set(domain_metrics.NAMES)
    assert figures['example_count'] == row['test_examples']
    assert figures['auc'] == pytest.approx(row['auc_finetune'], abs=2e-3)
    assert figures['binary_crossentropy'] == pytest.approx(row['logloss'], abs=1e-3)
  assert by_slice[None]['example_count'] == sum(row['test_examples'] for row in report['domains'])
  assert by_slice[None]['wauc'] == pytest.approx(report['wauc_finetune'], abs=2e-3)

# --- The gate: a worse model is not pushed -------------------------------------------------------------

def _degraded_copy(model_uri: str, transform_uri: str, spec, destination: str) -> str:
  """A Model artifact folder holding `model_uri`'s model with its output layer's kernel negated: the same
  model, ranking backwards."""
  model = tf_keras.models.load_model(keras_model_path(os.path.join(model_uri, 'Format-Serving')))
  logit = model.get_layer('logit')
  logit.kernel.assign(-logit.kernel)
  export_serving_model(model, tft.TFTransformOutput(transform_uri), spec, os.path.join(destination, 'Format-Serving'))
  return destination


def _gate_and_push(shared_run, candidate_uri: str, root: str) -> dict:
  """The pipeline's PromotionGate (its settings) and Pusher, run for real on the shared run's examples with
  `candidate_uri` as the candidate and the shared run's pushed model as the production model; returns the
  gate's evaluation.json and the versions pushed."""
  config = shared_run.config()
  examples = lineage.latest_artifacts(config, 'CsvExampleGen', 'examples', lineage.OUTPUT)[0]
  schema = lineage.latest_artifacts(config, 'ImportSchemaGen', 'schema', lineage.OUTPUT)[0]
  production = lineage.latest_artifacts(config, 'Pusher', 'model')[0]

  def imported(node_id, uri, artifact_type, **properties):
    return tfx.dsl.Importer(source_uri=uri, artifact_type=artifact_type, properties=properties).with_id(node_id)

  examples_node = imported('examples', examples.uri, tfx.types.standard_artifacts.Examples,
                           split_names=examples.properties['split_names'].string_value)
  schema_node = imported('schema', schema.uri, tfx.types.standard_artifacts.Schema)
  candidate = imported('candidate', candidate_uri, tfx.types.standard_artifacts.Model)
  baseline = imported('production', production.uri, tfx.types.standard_artifacts.Model)
  gate = PromotionGate(examples=examples_node.outputs['result'], schema=schema_node.outputs['result'],
                       model=candidate.outputs['result'], baseline_model=baseline.outputs['result'],
                       settings=promotion_settings(config))
  serving = os.path.join(root, 'serving')
  pusher = tfx.components.Pusher(
      model=candidate.outputs['result'], model_blessing=gate.outputs['blessing'],
      push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
          base_directory=serving)))
  with tfx_runner.run_temp_dir():
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name='gate-check', pipeline_root=os.path.join(root, 'pipeline_root'),
        components=[examples_node, schema_node, candidate, baseline, gate, pusher],
        beam_pipeline_args=list(LOCAL_BEAM_ARGS),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, 'metadata.db'))))
  [blessing] = glob.glob(os.path.join(root, 'pipeline_root', 'PromotionGate', 'blessing', '*'))
  evaluation = read_evaluation(blessing)
  assert os.path.exists(os.path.join(blessing, 'BLESSED' if evaluation['blessed'] else 'NOT_BLESSED'))
  return {**evaluation, 'pushed_versions': os.listdir(serving) if os.path.isdir(serving) else []}


def test_a_model_worse_than_production_is_not_blessed_nor_pushed(shared_run, tmp_path):
  config = shared_run.config()
  production = lineage.latest_artifacts(config, 'Pusher', 'model')[0].uri
  transform = lineage.latest_artifacts(config, 'Transform', 'transform_graph', lineage.OUTPUT)[0].uri
  degraded = _degraded_copy(production, transform, shared_run.spec, str(tmp_path / 'degraded'))
  outcome = _gate_and_push(shared_run, degraded, str(tmp_path / 'worse'))
  assert not outcome['blessed'] and outcome['pushed_versions'] == []
  # Blocked for its ranking: the deciding domain or the overall WAUC (which one fails first depends on how far
  # the degraded copy falls within the Bonferroni-corrected interval of the one deciding domain).
  assert outcome['tasks']['ctr']['decision']['rule'] in ('domain_auc_worse', 'wauc_worse')
  # The control: the same gate passes the production model itself (no AUC drop) and the Pusher pushes it.
  outcome = _gate_and_push(shared_run, production, str(tmp_path / 'same'))
  assert outcome['blessed'] and len(outcome['pushed_versions']) == 1
  assert outcome['tasks']['ctr']['decision']['rule'] == 'not_worse_overall'


@pytest.mark.slow
def test_model_trained_on_shuffled_labels_is_not_pushed(shared_run, tmp_path):
  """A full run on the shared run's rows with shuffled training labels, on top of its production model:
  judged on the same test rows, the candidate loses to it; no blessing, no push, the pushed version stays."""
  output_dir = shared_run.copy_production(str(tmp_path / 'out'))
  versions_before = runs.pushed_versions(output_dir)
  frame = pd.concat([shared_run.frame(split) for split in ('train', 'eval', 'test')], ignore_index=True)
  runs.write_split(frame, tmp_path / 'shuffled', shuffle_train_labels=True)
  assert runs.run_cli(output_dir, tmp_path / 'shuffled') == 0
  with open(os.path.join(output_dir, 'report.json')) as f:
    report = json.load(f)
  assert report['auc_finetune'] < shared_run.report['auc_finetune']
  assert report['blessed'] is False
  assert report['pushed_model'] is None
  assert runs.pushed_versions(output_dir) == versions_before


# --- Validation: bad input stops the run before training -----------------------------------------------

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


BAD_INPUTS = [('missing_column', 'item_id'), ('text_in_numeric', 'price'), ('unknown_domain', 'domain'),
              ('empty', 'no examples')]


@pytest.mark.parametrize('case,field', BAD_INPUTS)
def test_bad_input_is_refused_naming_the_field(case, field, tmp_path):
  """TFDV's statistics and validation of the bad file against the schema, as StatisticsGen and
  ExampleValidator compute them, through the AnomaliesGate's own check and message."""
  data_dir = str(tmp_path / 'data')
  path = synthetic.write_csv(_corrupt(synthetic.generate(1500, seed=4), case), data_dir)
  statistics = tfdv.generate_statistics_from_csv(path)
  anomalies = tfdv.validate_statistics(statistics, schemas.load_schema(schemas.DEFAULT_SCHEMA_PATH))
  problems = anomalies_gate.find_problems('train', statistics, anomalies)
  message = str(anomalies_gate.validation_error(problems, schemas.DEFAULT_SCHEMA_PATH))
  assert problems and field in message
  assert 'schema' in message  # says how to fix it


def _label_problems(frame: pd.DataFrame, data_dir) -> list:
  """StatisticsGen's statistics (TFDV's) of `frame` as the train split: its schema problems must be none (0 is
  a valid click), and the AnomaliesGate's label check's lines are returned."""
  statistics = tfdv.generate_statistics_from_csv(synthetic.write_csv(frame, str(data_dir)))
  anomalies = tfdv.validate_statistics(statistics, schemas.load_schema(schemas.DEFAULT_SCHEMA_PATH))
  assert anomalies_gate.find_problems('train', statistics, anomalies) == []
  return anomalies_gate.single_class_labels('train', statistics, ['click'])


def test_a_single_class_label_is_refused_naming_the_field_and_the_split(tmp_path):
  frame = synthetic.generate(1500, seed=4)
  assert _label_problems(frame, tmp_path / 'clicks') == []
  problems = _label_problems(frame.assign(click=0, conversion=0), tmp_path / 'no_clicks')
  message = str(anomalies_gate.validation_error([], schemas.DEFAULT_SCHEMA_PATH, problems))
  assert "[train] label 'click' has one class only (every value is 0)" in message
  assert 'both classes' in message and 'export of the train data' in message  # says how to fix it


def test_a_byte_order_mark_is_named_with_its_fix(tmp_path):
  """A CSV file saved with a UTF-8 byte-order mark, through TFDV's statistics and validation and the gate."""
  path = synthetic.write_csv(synthetic.generate(300, seed=4), str(tmp_path / 'data'))
  with open(path, 'rb') as f:
    content = f.read()
  with open(path, 'wb') as f:
    f.write(b'\xef\xbb\xbf' + content)
  statistics = tfdv.generate_statistics_from_csv(path)
  anomalies = tfdv.validate_statistics(statistics, schemas.load_schema(schemas.DEFAULT_SCHEMA_PATH))
  message = str(anomalies_gate.validation_error(anomalies_gate.find_problems('train', statistics, anomalies),
                                                schemas.DEFAULT_SCHEMA_PATH))
  assert 'byte-order mark' in message and "first column name 'domain'" in message
  assert 'UTF-8 without a BOM' in message  # the fix


def _write_flat_layout(data_dir) -> None:
  """The README's flat layout: the CSV file directly in the data folder, beside the files describing it."""
  synthetic.write_csv(synthetic.generate(1500, seed=4), str(data_dir))
  synthetic.FEATURE_SPEC.save(str(data_dir))
  shutil.copy(schemas.DEFAULT_SCHEMA_PATH, os.path.join(data_dir, schemas.SCHEMA_FILE))


def test_the_flat_layout_reads_only_the_data_file(tmp_path):
  """The pipeline's CsvExampleGen, run for real on the flat layout: every CSV row, and nothing else, lands in
  its train, eval and test splits."""
  data_dir = tmp_path / 'data'
  _write_flat_layout(data_dir)
  config = PipelineConfig(data_path=str(data_dir), schema_path=schemas.DEFAULT_SCHEMA_PATH,
                          output_dir=str(tmp_path / 'out'), feature_spec=synthetic.FEATURE_SPEC)
  with tfx_runner.run_temp_dir():
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name='flat-layout', pipeline_root=config.pipeline_root, components=[example_gen(config)],
        beam_pipeline_args=list(LOCAL_BEAM_ARGS),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            config.metadata_path)))
  examples = glob.glob(os.path.join(config.pipeline_root, 'CsvExampleGen', 'examples', '*', 'Split-*', '*'))
  rows = sum(1 for _ in tf.data.TFRecordDataset(examples, compression_type='GZIP'))
  assert {os.path.basename(os.path.dirname(path)) for path in examples} == {'Split-train', 'Split-eval', 'Split-test'}
  assert rows == 1500


@pytest.mark.slow
def test_the_flat_layout_runs_end_to_end(tmp_path):
  data_dir, output_dir = tmp_path / 'data', tmp_path / 'out'
  _write_flat_layout(data_dir)
  assert runs.run_cli(output_dir, data_dir) == 0
  assert (output_dir / 'report.json').exists()


@pytest.mark.slow
def test_the_value_label_trains_with_the_pairwise_loss_and_serves_probabilities(tmp_path):
  output_dir = tmp_path / 'out'
  assert runs.run_cli(output_dir, extra=['--rows', '3000', '--label', 'value', '--loss', 'ranknet+logloss']) == 0
  with open(output_dir / 'report.json') as f:
    report = json.load(f)
  assert 0.5 < report['auc_pretrain'] <= 1.0  # ranks the value label better than chance
  candidate = glob.glob(str(output_dir / 'pipeline_root' / 'FinetuneTrainer' / 'model' / '*' / 'Format-Serving'))
  serve = tf.saved_model.load(candidate[0]).signatures['serving_default']
  rows = pd.read_csv(glob.glob(str(output_dir / 'data' / '*.csv'))[0]).iloc[:64]
  scores = serve(examples=runs.serialized_examples(rows, runs.request_columns(revenue.VALUE_SPEC)))['ctr'].numpy()
  assert np.all((scores > 0) & (scores < 1))  # calibrated probabilities, though the pairwise loss sets no level


def _assert_stopped_before_training(status, output_dir, message, field, fix='schema'):
  assert status == 2
  assert 'Run stopped before training' in message and field in message
  assert fix in message  # says how to fix it
  pipeline_root = output_dir / 'pipeline_root'
  assert not (pipeline_root / 'Transform').exists()
  assert not (pipeline_root / 'PretrainTrainer').exists()
  assert runs.pushed_versions(output_dir) == []
  assert not (output_dir / 'report.json').exists()


def test_bad_input_stops_the_run_before_training(tmp_path, capsys):
  data_dir, output_dir = tmp_path / 'data', tmp_path / 'out'
  synthetic.write_csv(_corrupt(synthetic.generate(1500, seed=4), 'missing_column'), str(data_dir))
  status = runs.run_cli(output_dir, data_dir)
  _assert_stopped_before_training(status, output_dir, capsys.readouterr().err, 'item_id')


@pytest.mark.slow
@pytest.mark.parametrize('case,field', BAD_INPUTS)
def test_each_bad_input_stops_its_run_before_training(case, field, tmp_path, capsys):
  data_dir, output_dir = tmp_path / 'data', tmp_path / 'out'
  synthetic.write_csv(_corrupt(synthetic.generate(1500, seed=4), case), str(data_dir))
  status = runs.run_cli(output_dir, data_dir)
  _assert_stopped_before_training(status, output_dir, capsys.readouterr().err, field)


@pytest.mark.slow
def test_a_single_class_train_label_stops_its_run_before_training(tmp_path, capsys):
  data_dir, output_dir = tmp_path / 'data', tmp_path / 'out'
  runs.write_split(synthetic.generate(1500, seed=4), data_dir, no_train_clicks=True)
  status = runs.run_cli(output_dir, data_dir)
  message = capsys.readouterr().err
  _assert_stopped_before_training(status, output_dir, message, "[train] label 'click'", fix='both classes')
  assert '[eval]' not in message and '[test]' not in message
