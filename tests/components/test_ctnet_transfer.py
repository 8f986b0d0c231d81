"""CTNet's pipeline pieces: the source model resolver and the Trainer with a source model input."""
import json
import os
import pathlib

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata
from tfx.types import standard_artifacts

from components import ctnet_transfer
from data import synthetic
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline
import schemas


def _model_dir(root, name):
  """A Model artifact's files as the Trainer writes them (contents do not matter here)."""
  folder = root / name
  (folder / 'Format-Serving' / 'variables').mkdir(parents=True)
  (folder / 'Format-Serving' / 'saved_model.pb').write_bytes(name.encode())
  (folder / 'Format-Serving' / 'variables' / 'variables.index').write_bytes(b'index')
  (folder / 'keras').mkdir()
  (folder / 'keras' / 'model.keras').write_bytes(name.encode())
  (folder / 'keras' / 'training_stats.json').write_text('{}')
  return folder


class _SourcePipeline:
  """A source pipeline's output folder: its metadata store, models and blessings."""

  def __init__(self, root):
    self.root = root
    (root / 'metadata').mkdir(parents=True)
    self.store = metadata_store.MetadataStore(
        metadata.sqlite_metadata_connection_config(str(root / 'metadata' / 'metadata.db')))
    self.types = {name: self.store.put_artifact_type(metadata_store_pb2.ArtifactType(name=name))
                  for name in ('Model', 'ModelBlessing')}

  def train(self, name, blessed):
    folder = _model_dir(self.root / 'pipeline_root', name)
    model = metadata_store_pb2.Artifact(type_id=self.types['Model'], uri=str(folder))
    [model_id] = self.store.put_artifacts([model])
    blessing = metadata_store_pb2.Artifact(type_id=self.types['ModelBlessing'], uri=str(self.root / f'{name}-b'))
    blessing.custom_properties['blessed'].int_value = int(blessed)
    blessing.custom_properties['current_model_id'].int_value = model_id
    self.store.put_artifacts([blessing])
    return str(folder), model_id


def test_pipeline_folder_resolves_to_its_newest_blessed_model(tmp_path):
  source = _SourcePipeline(tmp_path / 'source')
  first, first_id = source.train('model-1', blessed=True)
  uri, facts = ctnet_transfer.resolve_source_model(str(tmp_path / 'source'))
  assert (uri, facts['source_model_id']) == (first, first_id)
  source.train('model-2', blessed=False)  # a candidate the gate rejected is not the production model
  assert ctnet_transfer.resolve_source_model(str(tmp_path / 'source'))[0] == first
  second, second_id = source.train('model-3', blessed=True)
  uri, facts = ctnet_transfer.resolve_source_model(str(tmp_path / 'source'))
  assert (uri, facts['source_model_id']) == (second, second_id)
  assert facts['source_metadata'] == str(tmp_path / 'source' / 'metadata' / 'metadata.db')


@pytest.mark.parametrize('path', ['', 'Format-Serving', 'keras/model.keras'])
def test_a_model_artifact_is_taken_by_any_of_its_paths(tmp_path, path):
  folder = _model_dir(tmp_path, 'model')
  uri, facts = ctnet_transfer.resolve_source_model(os.path.join(str(folder), path))
  assert uri == str(folder) and facts['source_uri'] == str(folder)


def test_missing_or_unblessed_sources_say_what_to_pass(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'no Format-Serving.*--transfer-source takes'):
    ctnet_transfer.resolve_source_model(str(tmp_path / 'nowhere'))
  (tmp_path / 'bare' / 'Format-Serving').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r'no keras/model.keras'):
    ctnet_transfer.resolve_source_model(str(tmp_path / 'bare'))
  source = _SourcePipeline(tmp_path / 'source')
  source.train('model-1', blessed=False)
  with pytest.raises(FileNotFoundError, match='no blessed model yet'):
    ctnet_transfer.resolve_source_model(str(tmp_path / 'source'))


def test_resolver_outputs_a_copy_with_its_origin(tmp_path):
  source = _SourcePipeline(tmp_path / 'source')
  uri, model_id = source.train('model-1', blessed=True)
  output = standard_artifacts.Model()
  output.uri = str(tmp_path / 'out')
  executor = ctnet_transfer.SourceModelResolver.EXECUTOR_SPEC.executor_class()
  executor.Do({}, {'model': [output]}, {'source': str(tmp_path / 'source')})
  for part in ('Format-Serving/saved_model.pb', 'Format-Serving/variables/variables.index', 'keras/model.keras'):
    assert (tmp_path / 'out' / part).read_bytes() == (pathlib.Path(uri) / part).read_bytes()
  assert output.get_string_custom_property('source_uri') == uri
  assert output.get_int_custom_property('source_model_id') == model_id


def test_trainer_executor_hands_the_source_model_to_run_fn(tmp_path):
  def artifact(cls, name):
    value = cls()
    value.uri = str(tmp_path / name)
    return value

  examples = artifact(standard_artifacts.Examples, 'examples')
  examples.split_names = json.dumps(['train', 'eval'])
  source = artifact(standard_artifacts.Model, 'source')
  fn_args = ctnet_transfer.CTNetTrainerExecutor()._GetFnArgs(
      {'examples': [examples], 'source_model': [source]},
      {'model': [artifact(standard_artifacts.Model, 'model')],
       'model_run': [artifact(standard_artifacts.ModelRun, 'run')]},
      {'train_args': '{"num_steps": 3}', 'eval_args': '{"num_steps": 1}', 'custom_config': '{"seed": 7}'})
  assert fn_args.custom_config == {'seed': 7, 'source_model': str(tmp_path / 'source' / 'Format-Serving')}


def test_transfer_source_makes_the_pretrain_stage_a_ctnet_trainer(tmp_path):
  data = tmp_path / 'data'
  synthetic.write_csv(synthetic.generate(50), str(data))
  config = PipelineConfig(data_path=str(data), schema_path=schemas.DEFAULT_SCHEMA_PATH,
                          output_dir=str(tmp_path / 'out'), feature_spec=synthetic.FEATURE_SPEC,
                          transfer_source=str(tmp_path / 'source'))
  assert config.warm_start  # CTNet's target tower starts where production is
  components = {c.id: c for c in create_pipeline(config).components}
  pretrain = components['PretrainTrainer']
  assert isinstance(pretrain, ctnet_transfer.CTNetTrainer)
  assert pretrain.inputs['source_model'].producer_component_id == 'SourceModelResolver'
  assert pretrain.inputs['base_model'].producer_component_id == 'LatestBlessedModelResolver'
  assert components['SourceModelResolver'].exec_properties['source'] == str(tmp_path / 'source')
  assert components['FinetuneTrainer'].inputs['base_model'].producer_component_id == 'PretrainTrainer'
  plain = {c.id: c for c in create_pipeline(PipelineConfig(
      data_path=str(data), schema_path=schemas.DEFAULT_SCHEMA_PATH, output_dir=str(tmp_path / 'out'),
      feature_spec=synthetic.FEATURE_SPEC)).components}
  assert 'SourceModelResolver' not in plain and 'source_model' not in plain['PretrainTrainer'].inputs
