"""CTNet continual transfer in the pipeline (models/ctnet.py): `SourceModelResolver` picks the source model
when the run starts and records it as a Model artifact of this run; `CTNetTrainer` is TFX's Trainer with one
more input, that model, whose Format-Serving directory reaches `run_fn` as `custom_config['source_model']`.

TFX's Trainer has no channel for a second model, and its spec class is fixed in its constructor
(https://github.com/tensorflow/tfx/issues/2185: "Custom component is the correct way if you need to add a
new channel"), hence a component on an extended TrainerSpec, run by TFX's own executor.
"""
import os
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx import v1 as tfx
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils, path_utils

from models.ctnet import SOURCE_MODEL_KEY
from models.trainer import keras_model_path

SERVING_DIR = 'Format-Serving'  # a Model artifact's SavedModel (tfx.utils.path_utils.serving_model_dir)
METADATA_DB = os.path.join('metadata', 'metadata.db')  # a pipeline output folder's store (PipelineConfig)
SOURCE_HELP = ('--transfer-source takes a Model artifact of this project (a Trainer output holding Format-Serving/ '
               'and keras/model.keras, or either of those paths), or the output folder of a source pipeline run '
               f'(holding {METADATA_DB}), whose latest blessed model is used.')


def latest_blessed_model(output_dir: str) -> Tuple[str, int]:
  """(URI, id) of the newest Model that a pipeline's Evaluator blessed, from its metadata store (opened
  read-only: the source pipeline may be running). Blessed is what Pusher pushes: its production model."""
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = os.path.join(output_dir, METADATA_DB)
  config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
  store = metadata_store.MetadataStore(config)
  blessed = [b.custom_properties['current_model_id'].int_value
             for b in store.get_artifacts_by_type(standard_artifacts.ModelBlessing.TYPE_NAME)
             if b.custom_properties['blessed'].int_value == 1]
  if not blessed:
    raise FileNotFoundError(f'The source pipeline run {output_dir} has no blessed model yet: run it until its '
                            'Evaluator blesses one, or point --transfer-source at a Model artifact.')
  model = store.get_artifacts_by_id([max(blessed)])[0]  # ids grow with time within a store
  return model.uri, model.id


def resolve_source_model(source: str) -> Tuple[str, Dict[str, Any]]:
  """The Model artifact directory that `source` names, and what lineage records about it.

  `source` is a Model artifact directory, its `Format-Serving` or `keras/model.keras` path, or the output
  folder of a pipeline run of this project, resolved to its latest blessed model now (so each run takes
  the newest one).
  """
  path = source.rstrip('/')
  facts: Dict[str, Any] = {'source': source}
  if path.endswith('.keras'):
    path = os.path.dirname(os.path.dirname(path))
  elif os.path.basename(path) == SERVING_DIR:
    path = os.path.dirname(path)
  elif tf.io.gfile.exists(os.path.join(path, METADATA_DB)):
    path, facts['source_model_id'] = latest_blessed_model(path)
    facts['source_metadata'] = os.path.join(source, METADATA_DB)
  for part in _model_files(path):
    if not tf.io.gfile.exists(part):
      raise FileNotFoundError(f'The CTNet source model {path} has no {os.path.relpath(part, path)}. {SOURCE_HELP}')
  facts['source_uri'] = path
  return path, facts


def _model_files(artifact_dir: str) -> Tuple[str, str]:
  """What CTNet reads of a Model artifact: its SavedModel (the Transform inside) and its Keras model."""
  serving_dir = os.path.join(artifact_dir, SERVING_DIR)
  return serving_dir, keras_model_path(serving_dir)


def copy_model(source_uri: str, destination: str) -> None:
  """Copies a Model artifact's SavedModel and Keras model folders (not its other files) into `destination`."""
  serving_dir, keras_path = _model_files(source_uri)
  for part in (serving_dir, os.path.dirname(keras_path)):
    for folder, _, files in tf.io.gfile.walk(part):
      target = os.path.join(destination, os.path.relpath(folder, source_uri))
      tf.io.gfile.makedirs(target)
      for name in files:
        tf.io.gfile.copy(os.path.join(folder, name), os.path.join(target, name), overwrite=True)


@tfx.dsl.components.component
def SourceModelResolver(  # pylint: disable=invalid-name
    source: tfx.dsl.components.Parameter[str],
    model: tfx.dsl.components.OutputArtifact[standard_artifacts.Model],
) -> None:
  """Resolves `source` (`resolve_source_model`) when the run starts and outputs a copy of that model, with
  custom properties `source`, `source_uri` and, when read from a pipeline's store, `source_model_id` and
  `source_metadata`. The copy keeps the run reproducible after the source pipeline moves on. With the
  pipeline's cache on, this component is keyed on `source` (as ImportSchemaGen on its path): a re-run
  reuses the model it resolved before."""
  uri, facts = resolve_source_model(source)
  copy_model(uri, model.uri)
  for key, value in facts.items():
    if isinstance(value, int):
      model.set_int_custom_property(key, value)
    else:
      model.set_string_custom_property(key, value)


SOURCE_MODEL_INPUT = 'source_model'


class CTNetTrainerSpec(standard_component_specs.TrainerSpec):
  """TFX's TrainerSpec plus the source model."""
  INPUTS = {**standard_component_specs.TrainerSpec.INPUTS,
            SOURCE_MODEL_INPUT: ChannelParameter(type=standard_artifacts.Model)}


class CTNetTrainerExecutor(trainer_executor.GenericExecutor):
  """TFX's Trainer executor, telling `run_fn` where the source model is: `custom_config['source_model']`,
  its Format-Serving directory (as `fn_args.base_model` is the base model's)."""

  def _GetFnArgs(self, input_dict, output_dict, exec_properties):
    fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
    source = path_utils.serving_model_dir(artifact_utils.get_single_uri(input_dict[SOURCE_MODEL_INPUT]))
    fn_args.custom_config = {**(fn_args.custom_config or {}), SOURCE_MODEL_KEY: source}
    return fn_args


class CTNetTrainer(base_component.BaseComponent):
  """A Trainer (same arguments and outputs as `tfx.components.Trainer`, `run_fn` form) whose `run_fn` also
  gets `source_model`, a Model channel, as `fn_args.custom_config['source_model']`."""
  SPEC_CLASS = CTNetTrainerSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(CTNetTrainerExecutor)

  def __init__(self, examples: types.BaseChannel, source_model: types.BaseChannel, run_fn: str,
               train_args: tfx.proto.TrainArgs, eval_args: tfx.proto.EvalArgs,
               transform_graph: Optional[types.BaseChannel] = None, schema: Optional[types.BaseChannel] = None,
               base_model: Optional[types.BaseChannel] = None, custom_config: Optional[Dict[str, Any]] = None):
    super().__init__(spec=CTNetTrainerSpec(
        examples=examples, transform_graph=transform_graph, schema=schema, base_model=base_model,
        source_model=source_model, run_fn=run_fn, train_args=train_args, eval_args=eval_args,
        custom_config=json_utils.dumps(custom_config), model=types.Channel(type=standard_artifacts.Model),
        model_run=types.Channel(type=standard_artifacts.ModelRun)))
