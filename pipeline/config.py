"""Every setting of a pipeline run, in one place. Runners build a `PipelineConfig`; nothing else reads flags."""
import dataclasses
import os
from typing import List, Optional, Tuple

from models.features import FeatureSpec

DEFAULT_PIPELINE_NAME = 'mdctr'
LOCAL_BEAM_ARGS = ('--direct_running_mode=in_memory', '--direct_num_workers=1')


@dataclasses.dataclass
class PipelineConfig:
  """A pipeline run's settings.

  Paths: `data_path` holds the raw input (CSV with a header or TFRecord of tf.Example, directly or in
  `train/`, `eval/` and `test/` subdirectories for a fixed split); `schema_path` is the curated schema;
  `output_dir` receives the pipeline root, the metadata store, the serving directory and the report.
  """
  data_path: str
  schema_path: str
  output_dir: str
  feature_spec: FeatureSpec
  pipeline_name: str = DEFAULT_PIPELINE_NAME
  model_name: str = 'ctr'
  # Model and training.
  backbone: str = 'mlp'
  hidden_units: Tuple[int, ...] = (256, 128, 64)
  embedding_dim: int = 16
  alpha: int = 8
  batch_size: int = 1024
  pretrain_steps: int = 1600
  finetune_steps: int = 300
  eval_steps: int = 50
  pretrain_learning_rate: float = 1e-3
  finetune_learning_rate: float = 3e-3  # adapters start at B = 0 and have few weights: a larger step
  seed: int = 0
  # Promotion gate: every domain's AUC must reach `min_domain_auc`, and no domain's AUC, nor the overall
  # AUC or WAUC, may fall more than `max_auc_drop` below the latest blessed model's.
  min_domain_auc: float = 0.55
  max_auc_drop: float = 0.01
  beam_pipeline_args: List[str] = dataclasses.field(default_factory=lambda: list(LOCAL_BEAM_ARGS))

  @property
  def pipeline_root(self) -> str:
    return os.path.join(self.output_dir, 'pipeline_root')

  @property
  def metadata_path(self) -> str:
    return os.path.join(self.output_dir, 'metadata', 'metadata.db')

  @property
  def serving_dir(self) -> str:
    """TF Serving's model base path: versions land in `<serving_dir>/<version>/`."""
    return os.path.join(self.output_dir, 'serving', self.model_name)

  def trainer_config(self, stage: str) -> dict:
    """The `custom_config` a Trainer stage reads."""
    return {
        'feature_spec': self.feature_spec.to_dict(),
        'backbone': self.backbone,
        'hidden_units': list(self.hidden_units),
        'embedding_dim': self.embedding_dim,
        'alpha': self.alpha,
        'batch_size': self.batch_size,
        'learning_rate': self.pretrain_learning_rate if stage == 'pretrain' else self.finetune_learning_rate,
        'seed': self.seed,
    }


def input_splits(data_path: str) -> Optional[List[str]]:
  """The fixed splits found under `data_path` (`train`, `eval` and optionally `test` subdirectories),
  or None when the input is one pool that ExampleGen splits by hash."""
  present = [s for s in ('train', 'eval', 'test') if os.path.isdir(os.path.join(data_path, s))]
  if not present:
    return None
  if 'train' not in present or 'eval' not in present:
    raise ValueError(f'{data_path} has split folders {present}; a fixed split needs both train/ and eval/.')
  return present


def input_format(data_path: str) -> str:
  """'csv' or 'tfrecord', from the files under `data_path`."""
  names = [n for _, _, files in os.walk(data_path) for n in files if not n.startswith('.')]
  if any(n.endswith('.csv') for n in names):
    return 'csv'
  if any('.tfrecord' in n or n.endswith('.gz') for n in names):
    return 'tfrecord'
  raise ValueError(f'No input found in {data_path}: expected CSV files with a header (*.csv) or TFRecord files '
                   'of tf.Example (*.tfrecord, *.tfrecord.gz).')
