"""CTNet through the real pipeline: a target run with `--transfer-source` on the session's shared run (the
source, tests/runs.py) trains beside the source's frozen model and pushes. The target run is a pipeline of its
own, so `make test-all` runs it; the fast suite resolves the shared run as a source here, and checks the rest in
tests/components/test_ctnet_transfer.py (the resolver, the Trainer) and tests/models/test_ctnet.py (the model)."""
import json
import os

import numpy as np
import pytest
import tf_keras

from data import synthetic
from components import ctnet_transfer
from models import ctnet
from models import model as model_lib
from models.layers.transfer import IdLookup
from models.trainer import keras_model_path
from pipeline.config import PipelineConfig
from pipeline.report import latest_run_artifacts
import schemas
from tests import runs

pytestmark = pytest.mark.e2e

ROWS = 3000
FEWEST_STEPS = ['--pretrain-steps', '20', '--finetune-steps', '10', '--eval-steps', '2']


@pytest.fixture(scope='module', params=['shared', pytest.param('own', marks=pytest.mark.slow)])
def source_run(request, tmp_path_factory) -> str:
  """The source pipeline's output folder: the shared run, or (`make test-all`) a run of its own."""
  if request.param == 'shared':
    return request.getfixturevalue('shared_run').output_dir
  root = tmp_path_factory.mktemp('ctnet-source')
  runs.write_split(synthetic.generate(ROWS, seed=3), root / 'data')
  # Trained as the shared run is: a source must be blessed, which a model of FEWEST_STEPS is not.
  assert runs.run_cli(root / 'out', root / 'data') == 0
  return str(root / 'out')


@pytest.fixture(scope='module')
def ctnet_run(source_run, tmp_path_factory):
  root = tmp_path_factory.mktemp('ctnet')
  target_frame = synthetic.generate(ROWS, seed=5)  # other logs: other vocabularies and statistics
  runs.write_split(target_frame, root / 'target-data')
  assert runs.run_cli(root / 'target', root / 'target-data',
                      FEWEST_STEPS + ['--transfer-source', source_run]) == 0
  with open(root / 'target' / 'report.json') as f:
    return {'root': root, 'source': source_run, 'report': json.load(f), 'frame': target_frame}


def _artifact(output_dir, node, type_name):
  """The artifact of `type_name` that `node` output in the latest run written to `output_dir`."""
  config = PipelineConfig(data_path=str(output_dir), schema_path=schemas.DEFAULT_SCHEMA_PATH,
                          output_dir=str(output_dir), feature_spec=synthetic.FEATURE_SPEC)
  return max(latest_run_artifacts(config)[node][type_name], key=lambda a: a.id)


def test_the_shared_runs_production_model_is_resolved_as_the_source(shared_run):
  uri, facts = ctnet_transfer.resolve_source_model(shared_run.output_dir)
  source_model = _artifact(shared_run.output_dir, 'FinetuneTrainer', 'Model')
  assert (uri, facts['source_model_id']) == (source_model.uri, source_model.id)
  with open(os.path.join(uri, 'Format-Serving', 'saved_model.pb'), 'rb') as resolved, \
      open(os.path.join(shared_run.version_dir, 'saved_model.pb'), 'rb') as pushed:
    assert resolved.read() == pushed.read()  # the model the run pushed


@pytest.mark.slow
def test_target_run_records_the_source_model_trains_and_pushes(ctnet_run):
  root = ctnet_run['root']
  assert ctnet_run['report']['blessed'] is True and ctnet_run['report']['pushed_model']
  source_model = _artifact(ctnet_run['source'], 'FinetuneTrainer', 'Model')  # the source's production model
  resolved = _artifact(root / 'target', 'SourceModelResolver', 'Model')
  assert resolved.custom_properties['source_uri'].string_value == source_model.uri
  assert resolved.custom_properties['source_model_id'].int_value == source_model.id

  source = tf_keras.models.load_model(keras_model_path(os.path.join(source_model.uri, 'Format-Serving')))
  for stage in ('PretrainTrainer', 'FinetuneTrainer'):  # CTNet, then MLoRA on top: the tower stays frozen
    uri = _artifact(root / 'target', stage, 'Model').uri
    model = tf_keras.models.load_model(keras_model_path(os.path.join(uri, 'Format-Serving')))
    tower = ctnet.find_source_tower(model)
    assert tower is not None and len(ctnet.adapter_layers(model)) == 2
    assert any(isinstance(layer, IdLookup) for layer in tower.layers)  # the target's ids to the source's
    # The source model cut after its hidden layers, inside the tower behind the feature maps: layer by layer
    # (loaded weights' names are not unique), bit-identical to the source model's.
    [source_hidden] = [layer for layer in tower.layers if isinstance(layer, tf_keras.Model)]
    compared = 0
    for layer in source_hidden.layers:
      for weight, expected in zip(layer.weights, source.get_layer(layer.name).weights, strict=True):
        np.testing.assert_array_equal(weight.numpy(), expected.numpy())
        compared += 1
    after_hidden = [source.get_layer('logit'), model_lib.calibration_layer(source)]
    assert compared == len(source.weights) - sum(len(layer.weights) for layer in after_hidden if layer)


@pytest.mark.slow
def test_pushed_ctnet_model_serves_raw_examples(ctnet_run):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  serve = tf.saved_model.load(ctnet_run['report']['pushed_model']).signatures['serving_default']
  columns = runs.request_columns(synthetic.FEATURE_SPEC)
  scores = serve(examples=runs.serialized_examples(ctnet_run['frame'].iloc[-32:], columns))['ctr'].numpy()
  assert scores.shape == (32,) and np.all((scores > 0) & (scores < 1))
