"""The pipeline's post-push step: what TF Serving needs beside a version Pusher has just written."""
import logging
import os
from typing import List

import tensorflow as tf

from pipeline.config import PipelineConfig
from pipeline.report import latest_run_artifacts
from serving import tf_serving
from serving.batching import BatchingParameters

WARMUP_SPLIT = 'eval'
_LOG = logging.getLogger(__name__)


def eval_examples(config: PipelineConfig, count: int) -> List[bytes]:
  """The first `count` examples of the latest run's eval split (ExampleGen's output), serialized, labels
  removed: what a serving request carries."""
  by_node = latest_run_artifacts(config)
  examples = next(a for node, types in by_node.items() if node.endswith('ExampleGen') for a in types['Examples'])
  files = sorted(tf.io.gfile.glob(os.path.join(examples.uri, f'Split-{WARMUP_SPLIT}', '*')))
  serialized = []
  for record in tf.data.TFRecordDataset(files, compression_type='GZIP').take(count).as_numpy_iterator():
    example = tf.train.Example.FromString(record)
    for label in config.feature_spec.label_columns:
      example.features.feature.pop(label, None)
    serialized.append(example.SerializeToString())
  return serialized


def publish(config: PipelineConfig, version_dir: str) -> List[str]:
  """Writes the pushed version's warm-up requests (from eval examples) unless it has some already, then
  `models.config` (the latest-version policy, TF Serving's default; an existing pin is kept) and the batching
  parameters, in the serving root beside `<model_name>/`; returns the files written.

  Pusher has already copied the version into the model's base directory, file by file with saved_model.pb
  last: a server following the latest version may load it before this step adds its warm-up file (it is
  then served, only without warm-up), and may try a half-written saved_model.pb (it retries the load). A
  version published with `serving.repository.copy_version` appears whole, warm-up included, by a rename."""
  serving_root = os.path.dirname(config.serving_dir)
  written = []
  if not tf.io.gfile.exists(os.path.join(version_dir, tf_serving.WARMUP_FILE)):
    logs = tf_serving.warmup_requests(config.model_name, eval_examples(config, max(tf_serving.WARMUP_CANDIDATES)))
    written.append(tf_serving.write_warmup_requests(version_dir, logs))
  pinned = _pinned_versions(serving_root, config.model_name)
  if pinned:  # an operator's rollback: a new push must not undo it
    _LOG.warning('%s pins model %s to version(s) %s: the version just pushed, %s, is not served until the pin is '
                 'lifted (python -m serving.tf_serving %s --latest)', tf_serving.MODEL_CONFIG_FILE,
                 config.model_name, pinned, os.path.basename(version_dir.rstrip('/')), serving_root)
  else:
    written.append(tf_serving.write_model_config(serving_root, tf_serving.model_config(config.model_name,
                                                                                       config.serving_dir)))
  return written + [tf_serving.write_batching_parameters(serving_root, BatchingParameters())]


def _pinned_versions(serving_root: str, model_name: str) -> List[int]:
  """The versions an existing models.config pins the model to; none if it has no such file or entry."""
  if not tf.io.gfile.exists(os.path.join(serving_root, tf_serving.MODEL_CONFIG_FILE)):
    return []
  entries = tf_serving.read_model_config(serving_root).model_config_list.config
  entry = next((c for c in entries if c.name == model_name), None)
  return list(entry.model_version_policy.specific.versions) if entry else []
