"""Scheduled, continual runs: the same `create_pipeline()` compiled for Kubeflow Pipelines v2, or as an
Airflow 2 DAG.

Both run on a data root that receives one span folder a day (`span-1/`, `span-2/`, ..., each with
`train/` and `eval/` CSV folders by default). Every run ingests the newest span, warm-starts the backbone
from the production model, fine-tunes the adapters, evaluates against the production model and pushes
only a model that is not worse on any domain. The feature contract (`features.json`) and the schema are
settings of the compiled pipeline: onboarding a new domain means appending it to both, then compiling
again (Kubeflow) or letting Airflow parse the DAG file again.
"""
import datetime
import os
import re
from typing import Optional, Sequence

from models.features import FeatureSpec
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline
import schemas

SCHEDULE = '@daily'
KUBEFLOW_PIPELINE_NAME = re.compile(r'[a-z0-9][a-z0-9-]{0,127}')
KUBEFLOW_FORMATS = ('.json', '.yaml', '.yml')


def scheduled_config(data_root: str, output_dir: str, feature_spec: FeatureSpec, schema_path: Optional[str] = None,
                     data_format: str = 'csv', splits: Sequence[str] = ('train', 'eval', 'test'),
                     beam_pipeline_args: Optional[Sequence[str]] = None, **training) -> PipelineConfig:
  """The settings of a scheduled run. Nothing is read from `data_root` or `output_dir` (they may be
  gs:// locations, or not exist yet): the input layout is given, and the schema defaults to
  `DATA_ROOT/schema.pbtxt`, published with the data. `training`: the Trainers' distribution settings
  (`distribution`, `trainer_replicas`, `trainer_image`, `vertex_project`, `vertex_region`); more than one
  replica trains multi_worker unless told otherwise."""
  if (training.get('trainer_replicas') or 1) > 1 and not training.get('distribution'):
    training['distribution'] = 'multi_worker'
  config = PipelineConfig(
      data_path=data_root, schema_path=schema_path or os.path.join(data_root, schemas.SCHEMA_FILE),
      output_dir=output_dir, feature_spec=feature_spec, spans=True, warm_start=True, data_format=data_format,
      data_splits=tuple(splits) or None, **{k: v for k, v in training.items() if v is not None})
  if beam_pipeline_args is not None:
    config.beam_pipeline_args = list(beam_pipeline_args)
  return config


def compile_kubeflow(config: PipelineConfig, image: str, output_file: str) -> str:
  """Writes the Kubeflow Pipelines v2 pipeline spec (KubeflowV2DagRunner: compiles, runs nothing) to
  `output_file`, JSON or YAML by its extension; every component runs in the container `image`, which
  holds this repository on its PYTHONPATH. Returns the file's path."""
  if not output_file.endswith(KUBEFLOW_FORMATS):
    raise ValueError(f'The output file must end with one of {", ".join(KUBEFLOW_FORMATS)}: {output_file}')
  if not KUBEFLOW_PIPELINE_NAME.fullmatch(config.pipeline_name):
    raise ValueError(f'Kubeflow pipeline names must match [a-z0-9][a-z0-9-]*: {config.pipeline_name!r}')
  try:
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise RuntimeError('Compiling for Kubeflow needs kfp: pip install "tfx[kfp]==1.16.0"') from error
  runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
      config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image),
      output_dir=os.path.dirname(os.path.abspath(output_file)), output_filename=os.path.basename(output_file))
  runner.run(create_pipeline(config, local_metadata=False), write_out=True)
  return output_file


def airflow_dag(config: PipelineConfig, schedule: str = SCHEDULE,
                start_date: datetime.datetime = datetime.datetime(2025, 1, 1)):
  """The pipeline as an Airflow DAG (AirflowDagRunner): one task per component, `dag_id` the pipeline
  name, run on `schedule` from `start_date` without catching up on missed days."""
  from tfx.orchestration.airflow.airflow_dag_runner import (  # pylint: disable=g-import-not-at-top
      AirflowDagRunner, AirflowPipelineConfig)
  dag_config = {'schedule': schedule, 'start_date': start_date, 'catchup': False}
  return AirflowDagRunner(AirflowPipelineConfig(dag_config)).run(create_pipeline(config))
