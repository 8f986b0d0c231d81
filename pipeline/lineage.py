"""What the pipeline's latest executions read and wrote, and how they ended, from its metadata store."""
from typing import Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from pipeline.config import PipelineConfig

INPUT, OUTPUT = metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.OUTPUT


def _store(config: PipelineConfig) -> metadata_store.MetadataStore:
  return metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(config.metadata_path))


def latest_artifacts(config: PipelineConfig, node_id: str, key: str, event_type: int = INPUT) -> List:
  """The artifacts the latest execution of `node_id` read (`INPUT`) or wrote (`OUTPUT`) as `key`."""
  store = _store(config)
  node = store.get_context_by_type_and_name('node', f'{config.pipeline_name}.{node_id}')
  executions = store.get_executions_by_context(node.id) if node else []
  if not executions:
    return []
  latest = max(executions, key=lambda e: e.id)
  ids = [e.artifact_id for e in store.get_events_by_execution_ids([latest.id])
         if e.type == event_type and e.path.steps and e.path.steps[0].key == key]
  return store.get_artifacts_by_id(ids)


def warm_start_source(config: PipelineConfig) -> Optional[str]:
  """The URI of the model the latest pretrain stage started from, or None (it started from scratch)."""
  base = latest_artifacts(config, 'PretrainTrainer', 'base_model')
  return base[0].uri if base else None


def latest_run_states(config: PipelineConfig) -> Dict[str, int]:
  """{node id: execution state (metadata_store_pb2.Execution.State)} of the latest run's executions:
  COMPLETE, CACHED (outputs reused from an earlier run), FAILED, ..."""
  store = _store(config)
  run = max(store.get_contexts_by_type('pipeline_run'), key=lambda c: c.id)
  prefix = f'{config.pipeline_name}.'
  states = {}
  for execution in store.get_executions_by_context(run.id):
    for context in store.get_contexts_by_execution(execution.id):
      if context.name.startswith(prefix):
        states[context.name[len(prefix):]] = execution.last_known_state
  return states
