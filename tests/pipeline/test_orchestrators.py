"""Scheduled runs: the Kubeflow Pipelines v2 spec against a golden file, the Airflow DAG through Airflow's
own DagBag, and the Beam runners' argument sets. Tests of an orchestrator whose extra is not installed
skip, saying which."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

import tfx_runner
from data import synthetic
from pipeline.config import (BEAM_REQUIRED_ARGS, BEAM_RUNNER_ARGS, EVALUATOR_MULTIPROCESS_MIN_INPUT_BYTES,
                             LOCAL_BEAM_ARGS, MULTIPROCESS_MIN_INPUT_BYTES, PipelineConfig, beam_pipeline_args)
from pipeline.orchestrators import compile_kubeflow, scheduled_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'testdata', 'kubeflow_pipeline.json')
REPLICAS_GOLDEN = os.path.join(os.path.dirname(GOLDEN), 'kubeflow_pipeline_replicas.json')
REPLICAS = ['--trainer-replicas', '4', '--vertex-project', 'example', '--vertex-region', 'europe-west4']
UPDATE_GOLDEN = 'MDCTR_UPDATE_GOLDEN'  # set to 1 to rewrite the golden file from the compiled spec
MASKED = '<masked>'
VOLATILE = (('labels',), ('pipelineSpec', 'sdkVersion'))  # TFX and Python versions
COMPILE = ['compile', '--target', 'kubeflow', '--image', 'gcr.io/example/mdctr:1', '--pipeline-root',
           'gs://example-bucket/mdctr', '--data-root', 'gs://example-bucket/mdctr-data']
DATAFLOW_SETTINGS = ['--project=example', '--region=europe-west1', '--temp_location=gs://example-bucket/tmp',
                     '--sdk_container_image=gcr.io/example/mdctr:1']

requires_kfp = pytest.mark.skipif(importlib.util.find_spec('kfp') is None,
                                  reason='kfp is not installed: pip install "tfx[kfp]==1.16.0"')
requires_airflow = pytest.mark.skipif(importlib.util.find_spec('airflow') is None,
                                      reason='Airflow is not installed: pip install apache-airflow==2.10.3')


def _compile(path, *extra):
  assert tfx_runner.main(COMPILE + ['--output', str(path)] + list(extra)) == 0
  with open(path) as f:
    return json.load(f) if str(path).endswith('.json') else list(yaml.safe_load_all(f))


def _masked(spec: dict) -> dict:
  for *parents, key in VOLATILE:
    node = spec
    for parent in parents:
      node = node[parent]
    node[key] = MASKED
  return spec


def _beam_args(spec: dict, executor: str):
  args = spec['pipelineSpec']['deploymentSpec']['executors'][executor]['container']['args']
  return args[args.index('{{$}}') + 1:]  # after the executor's own arguments


@requires_kfp
@pytest.mark.parametrize('golden,extra', [(GOLDEN, []), (REPLICAS_GOLDEN, REPLICAS)], ids=['default', 'replicas'])
def test_kubeflow_spec_matches_golden_file(golden, extra, tmp_path):
  spec = _masked(_compile(tmp_path / 'pipeline.json', *extra))
  if os.environ.get(UPDATE_GOLDEN):
    with open(golden, 'w') as f:
      json.dump(spec, f, indent=1, sort_keys=True)
      f.write('\n')
  with open(golden) as f:
    assert spec == json.load(f), f'compiled spec differs from {golden}; if intended, rerun with {UPDATE_GOLDEN}=1'


@requires_kfp
def test_kubeflow_spec_runs_the_trainers_as_multi_worker_vertex_jobs(tmp_path):
  spec = _compile(tmp_path / 'pipeline.json', *REPLICAS)
  executors = spec['pipelineSpec']['deploymentSpec']['executors']
  tasks = spec['pipelineSpec']['root']['dag']['tasks']
  for trainer in ('PretrainTrainer', 'FinetuneTrainer'):
    assert 'google_cloud_ai_platform' in json.dumps(executors[f'{trainer}_executor'])  # the Vertex executor
    config = json.loads(tasks[trainer]['inputs']['parameters']['custom_config']['runtimeValue']['constantValue']
                        ['stringValue'])
    assert config['distribution'] == 'multi_worker'
    pools = config['ai_platform_training_args']['job_spec']['worker_pool_specs']
    assert [p['replica_count'] for p in pools] == [1, 3]  # the chief, then the other workers
    assert {p['container_spec']['image_uri'] for p in pools} == {'gcr.io/example/mdctr:1'}
    assert config['ai_platform_training_args']['project'] == 'example'
    assert config['ai_platform_vertex_region'] == 'europe-west4'


@requires_kfp
def test_kubeflow_trainer_replicas_name_what_they_need(tmp_path):
  with pytest.raises(SystemExit, match='--vertex-project, --vertex-region'):
    tfx_runner.main(COMPILE + ['--output', str(tmp_path / 'p.json'), '--trainer-replicas', '2'])
  with pytest.raises(SystemExit, match="needs distribution multi_worker \\(got 'parameter_server'\\)"):
    tfx_runner.main(COMPILE + ['--output', str(tmp_path / 'p.json'), '--distribution', 'parameter_server', *REPLICAS])


@requires_kfp
def test_kubeflow_spec_reads_the_newest_span_and_warm_starts(tmp_path):
  spec = _compile(tmp_path / 'pipeline.json')
  assert spec['runtimeConfig']['gcsOutputDirectory'] == 'gs://example-bucket/mdctr/pipeline_root'
  tasks = spec['pipelineSpec']['root']['dag']['tasks']
  input_config = json.loads(tasks['CsvExampleGen']['inputs']['parameters']['input_config']['runtimeValue']
                            ['constantValue']['stringValue'])
  assert [s['pattern'] for s in input_config['splits']] == ['span-{SPAN}/train/*', 'span-{SPAN}/eval/*',
                                                            'span-{SPAN}/test/*']
  base_model = tasks['PretrainTrainer']['inputs']['artifacts']['base_model']['taskOutputArtifact']
  assert base_model['producerTask'].startswith('LatestBlessedModelResolver')
  assert tasks['FinetuneTrainer']['inputs']['artifacts']['base_model']['taskOutputArtifact']['producerTask'] == \
      'PretrainTrainer'
  images = {e['container']['image'] for e in spec['pipelineSpec']['deploymentSpec']['executors'].values()
            if 'container' in e}
  assert images == {'gcr.io/example/mdctr:1'}


@requires_kfp
def test_kubeflow_yaml_holds_the_same_pipeline_spec(tmp_path):
  documents = _compile(tmp_path / 'pipeline.yaml')
  assert documents[0] == _compile(tmp_path / 'pipeline.json')['pipelineSpec']


@requires_kfp
@pytest.mark.parametrize('runner,extra', [('direct-multiprocess', []), ('flink', []), ('spark', []),
                                          ('dataflow', DATAFLOW_SETTINGS)])
def test_kubeflow_spec_carries_each_runners_beam_args(runner, extra, tmp_path):
  spec = _compile(tmp_path / 'pipeline.json', '--beam-runner', runner, *[f'--beam-arg={a}' for a in extra])
  for executor in ('CsvExampleGen_executor', 'Transform_executor', 'Evaluator_executor'):
    assert _beam_args(spec, executor) == list(BEAM_RUNNER_ARGS[runner]) + extra


@requires_kfp
def test_kubeflow_rejects_an_unknown_file_format(tmp_path):
  with pytest.raises(SystemExit, match='.json, .yaml, .yml'):
    tfx_runner.main(COMPILE + ['--output', str(tmp_path / 'pipeline.txt')])


def test_kubeflow_rejects_a_pipeline_name_it_cannot_take(tmp_path):
  config = scheduled_config('gs://b/data', 'gs://b/out', synthetic.FEATURE_SPEC)
  config.pipeline_name = 'md_ctr'  # LocalDagRunner takes underscores, Kubeflow does not
  with pytest.raises(ValueError, match=r'\[a-z0-9\]\[a-z0-9-\]\*'):
    compile_kubeflow(config, 'img', str(tmp_path / 'pipeline.json'))


@pytest.mark.parametrize('runner', sorted(BEAM_RUNNER_ARGS))
def test_every_beam_argument_is_known_to_beam(runner):
  args = beam_pipeline_args(runner, DATAFLOW_SETTINGS if runner == 'dataflow' else ())
  options = PipelineOptions(args)
  known = options.get_all_options()
  assert {a.split('=', 1)[0].lstrip('-') for a in args} <= set(known)
  expected_runner = {'dataflow': 'DataflowRunner', 'flink': 'FlinkRunner', 'spark': 'SparkRunner'}.get(runner)
  assert options.view_as(StandardOptions).runner == expected_runner  # None: the DirectRunner


def test_beam_args_compose_and_name_what_is_missing():
  assert beam_pipeline_args(None) is None  # the config's default (in-memory DirectRunner)
  assert beam_pipeline_args(None, ['--direct_num_workers=2']) == ['--direct_num_workers=2']  # as before
  assert beam_pipeline_args('flink', ['--parallelism=4'])[-1] == '--parallelism=4'
  with pytest.raises(ValueError, match=', '.join(BEAM_REQUIRED_ARGS['dataflow'])):
    beam_pipeline_args('dataflow')
  with pytest.raises(ValueError, match='Unknown Beam runner'):
    beam_pipeline_args('samza')


def test_without_a_runner_the_input_size_picks_in_memory_or_a_worker_per_cpu(tmp_path):
  def config(data):
    return PipelineConfig(data_path=str(data), schema_path='', output_dir=str(tmp_path / 'out'),
                          feature_spec=synthetic.FEATURE_SPEC)
  synthetic.write_csv(synthetic.generate(100), str(tmp_path / 'small'))
  assert config(tmp_path / 'small').beam_pipeline_args == list(BEAM_RUNNER_ARGS['direct'])
  (tmp_path / 'large' / 'train').mkdir(parents=True)
  with open(tmp_path / 'large' / 'train' / 'data.csv', 'wb') as f:
    f.truncate(MULTIPROCESS_MIN_INPUT_BYTES)  # sparse: the size without the disk
  assert config(tmp_path / 'large').beam_pipeline_args == list(BEAM_RUNNER_ARGS['direct-multiprocess'])
  assert config(tmp_path / 'absent').beam_pipeline_args == list(BEAM_RUNNER_ARGS['direct'])  # e.g. a gs:// root
  given = PipelineConfig(data_path=str(tmp_path / 'large'), schema_path='', output_dir='', beam_pipeline_args=['--x'],
                         feature_spec=synthetic.FEATURE_SPEC)
  assert given.beam_pipeline_args == ['--x']


def test_the_evaluator_stays_in_memory_on_a_small_input_when_the_run_has_worker_processes(tmp_path):
  def evaluator_args(data, runner):
    return PipelineConfig(data_path=str(data), schema_path='', output_dir=str(tmp_path / 'out'),
                          feature_spec=synthetic.FEATURE_SPEC,
                          beam_pipeline_args=beam_pipeline_args(runner)).evaluator_beam_args()
  synthetic.write_csv(synthetic.generate(100), str(tmp_path / 'small'))
  assert evaluator_args(tmp_path / 'small', 'direct-multiprocess') == list(LOCAL_BEAM_ARGS)
  assert evaluator_args(tmp_path / 'small', 'direct') == []  # in memory already
  assert evaluator_args('gs://bucket/data', 'direct-multiprocess') == []  # a size it cannot know
  (tmp_path / 'large').mkdir()
  with open(tmp_path / 'large' / 'data.csv', 'wb') as f:
    f.truncate(EVALUATOR_MULTIPROCESS_MIN_INPUT_BYTES)
  assert evaluator_args(tmp_path / 'large', 'direct-multiprocess') == []


_DAGBAG_SCRIPT = '''
import json, sys
from airflow.models import DagBag
bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
dag = bag.dags.get(sys.argv[2])
print(json.dumps({
    'import_errors': {path: str(error) for path, error in bag.import_errors.items()},
    'schedule': dag and str(dag.schedule_interval),
    'catchup': dag and dag.catchup,
    'tasks': {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} if dag else {},
}))
'''


@requires_airflow
def test_airflow_dag_loads_through_dagbag(tmp_path):
  """Airflow parses the DAG file in its own process, as its scheduler would, with its home and database in
  a temporary folder."""
  env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / 'airflow'),
             AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f'sqlite:///{tmp_path / "airflow" / "airflow.db"}',
             AIRFLOW__CORE__LOAD_EXAMPLES='False',
             AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT='600',  # TensorFlow and TFX take longer than 30 s on a busy CI
             MDCTR_DATA_ROOT=str(tmp_path / 'data'), MDCTR_OUTPUT_DIR=str(tmp_path / 'out'))
  result = subprocess.run([sys.executable, '-c', _DAGBAG_SCRIPT, os.path.join(REPO_ROOT, 'pipeline', 'airflow_dag.py'),
                           'mdctr'], env=env, capture_output=True, text=True, timeout=600, check=True)
  loaded = json.loads(result.stdout.strip().splitlines()[-1])
  assert loaded['import_errors'] == {}
  assert loaded['schedule'] == '@daily' and loaded['catchup'] is False
  upstream = loaded['tasks']
  assert set(upstream) == {'CsvExampleGen', 'StatisticsGen', 'ImportSchemaGen', 'ExampleValidator', 'AnomaliesGate',
                           'Transform', 'LatestBlessedModelResolver', 'PretrainTrainer', 'FinetuneTrainer',
                           'Evaluator', 'PromotionGate', 'Pusher'}
  assert upstream['CsvExampleGen'] == [] and upstream['LatestBlessedModelResolver'] == []
  assert 'AnomaliesGate' in upstream['Transform']  # nothing trains on data that failed validation
  assert set(upstream['PretrainTrainer']) >= {'Transform', 'LatestBlessedModelResolver'}  # the warm start
  assert 'PretrainTrainer' in upstream['FinetuneTrainer']
  assert set(upstream['Evaluator']) >= {'FinetuneTrainer', 'LatestBlessedModelResolver'}
  assert set(upstream['PromotionGate']) >= {'FinetuneTrainer', 'LatestBlessedModelResolver', 'PretrainTrainer'}
  assert 'PromotionGate' in upstream['Pusher']
