"""Airflow 2 DAG file: the pipeline once a day on the newest span (`pipeline.orchestrators.airflow_dag`).

Copy or link this file into Airflow's dags folder; it finds the repository from its own real path. The
feature contract is MDCTR_DATA_ROOT/features.json when there is one (else the embedded synthetic data's),
read when Airflow parses this file. Settings come from the environment of the Airflow scheduler and workers:

  MDCTR_DATA_ROOT     the data root receiving span-1/, span-2/, ... (default ~/mdctr/data)
  MDCTR_OUTPUT_DIR    pipeline root, metadata store and serving directory (default ~/mdctr/output)
  MDCTR_SCHEMA        the schema (default MDCTR_DATA_ROOT/schema.pbtxt)
  MDCTR_BEAM_RUNNER   direct, direct-multiprocess, dataflow, flink or spark (default: by the input's size, see
                      pipeline/config.py default_beam_args)
"""
import os
import sys

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')  # Keras 2, before TensorFlow is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

from data import synthetic  # noqa: E402  pylint: disable=g-import-not-at-top
from models.features import FEATURE_SPEC_FILE, FeatureSpec  # noqa: E402  pylint: disable=g-import-not-at-top
from pipeline import orchestrators  # noqa: E402  pylint: disable=g-import-not-at-top
from pipeline.config import beam_pipeline_args  # noqa: E402  pylint: disable=g-import-not-at-top


def config_from_environment(environ=os.environ):
  """The scheduled run's settings from the MDCTR_* variables above."""
  home = os.path.expanduser('~/mdctr')
  data_root = environ.get('MDCTR_DATA_ROOT', os.path.join(home, 'data'))
  has_spec = os.path.exists(os.path.join(data_root, FEATURE_SPEC_FILE))
  return orchestrators.scheduled_config(
      data_root=data_root, output_dir=environ.get('MDCTR_OUTPUT_DIR', os.path.join(home, 'output')),
      feature_spec=FeatureSpec.load(data_root) if has_spec else synthetic.FEATURE_SPEC,
      schema_path=environ.get('MDCTR_SCHEMA'),
      beam_pipeline_args=beam_pipeline_args(environ.get('MDCTR_BEAM_RUNNER')))


DAG = orchestrators.airflow_dag(config_from_environment())
