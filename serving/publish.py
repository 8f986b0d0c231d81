"""The pipeline's post-push step: what TF Serving needs beside a version Pusher has just written."""
import os
from typing import List

import tensorflow as tf

from pipeline.config import PipelineConfig
from pipeline.report import latest_run_artifacts
from serving import tf_serving
from serving.batching import BatchingParameters

WARMUP_SPLIT = 'eval'


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
  """Writes the pushed version's warm-up requests (from eval examples), then `models.config` pinned to it
  and the batching parameters, in the serving root beside `<model_name>/`; returns the files written.

  Pusher writes the version into the model's base directory; TF Serving started with these files loads it
  once models.config names it, so its warm-up requests are there when it loads."""
  serving_root = os.path.dirname(config.serving_dir)
  logs = tf_serving.warmup_requests(config.model_name, eval_examples(config, max(tf_serving.WARMUP_CANDIDATES)))
  return [
      tf_serving.write_warmup_requests(version_dir, logs),
      tf_serving.write_model_config(serving_root, tf_serving.model_config(
          config.model_name, config.serving_dir, int(os.path.basename(version_dir.rstrip('/'))))),
      tf_serving.write_batching_parameters(serving_root, BatchingParameters()),
  ]
