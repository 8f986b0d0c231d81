"""The files TF Serving reads beside the pushed versions, written and read here.

`<serving root>/<model>/<version>/assets.extra/tf_serving_warmup_requests` (warm-up PredictionLogs),
`<serving root>/models.config` (`--model_config_file`) and `<serving root>/batching_parameters.txt`
(`--batching_parameters_file`); see README.md for the command that uses them.
"""
import os
from typing import Iterator, List, Sequence

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import signatures
from serving.batching import BatchingParameters

WARMUP_FILE = os.path.join('assets.extra', 'tf_serving_warmup_requests')
MODEL_CONFIG_FILE = 'models.config'
BATCHING_PARAMETERS_FILE = 'batching_parameters.txt'
WARMUP_CANDIDATES = (1, 100)  # one warm-up request per size: a single ad and a ranking request's list


def _write_atomically(path: str, write) -> str:
  """Writes `path` through `write(temporary path)` and a rename, so a reader never sees half a file."""
  tf.io.gfile.makedirs(os.path.dirname(path))
  temporary = f'{path}.tmp-{os.getpid()}'
  write(temporary)
  tf.io.gfile.rename(temporary, path, overwrite=True)
  return path


def warmup_requests(model_name: str, examples: Sequence[bytes],
                    candidates: Sequence[int] = WARMUP_CANDIDATES) -> List[prediction_log_pb2.PredictionLog]:
  """Predict requests to `serving_default` on the first n serialized tf.Examples, for each n in `candidates`
  (at most as many as there are examples)."""
  logs = []
  for count in sorted({min(n, len(examples)) for n in candidates} - {0}):
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signatures.DEFAULT))
    request.inputs[signatures.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(list(examples[:count]), tf.string))
    logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
  return logs


def write_warmup_requests(version_dir: str, logs: Sequence[prediction_log_pb2.PredictionLog]) -> str:
  """Writes `logs` as the version's warm-up file (a TFRecord of PredictionLog)."""
  def write(path):
    with tf.io.TFRecordWriter(path) as writer:
      for log in logs:
        writer.write(log.SerializeToString())
  return _write_atomically(os.path.join(version_dir, WARMUP_FILE), write)


def read_warmup_requests(version_dir: str) -> Iterator[prediction_log_pb2.PredictionLog]:
  """The version's warm-up requests; none if it has no warm-up file."""
  path = os.path.join(version_dir, WARMUP_FILE)
  if tf.io.gfile.exists(path):
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      yield prediction_log_pb2.PredictionLog.FromString(record)


def model_config(model_name: str, base_path: str, version: int) -> model_server_config_pb2.ModelServerConfig:
  """One model served from `base_path`, pinned to `version`: TF Serving switches to a new version when this
  file names it (after its warm-up requests are written), not as soon as Pusher's copy appears."""
  config = model_server_config_pb2.ModelServerConfig()
  entry = config.model_config_list.config.add(name=model_name, base_path=os.path.abspath(base_path),
                                              model_platform='tensorflow')
  entry.model_version_policy.specific.versions.append(version)
  return config


def _write_text(path: str, text: str) -> str:
  def write(temporary):
    with tf.io.gfile.GFile(temporary, 'w') as f:
      f.write(text)
  return _write_atomically(path, write)


def write_model_config(serving_root: str, config: model_server_config_pb2.ModelServerConfig) -> str:
  return _write_text(os.path.join(serving_root, MODEL_CONFIG_FILE), text_format.MessageToString(config))


def write_batching_parameters(serving_root: str, parameters: BatchingParameters) -> str:
  return _write_text(os.path.join(serving_root, BATCHING_PARAMETERS_FILE), parameters.to_text())


def read_batching_parameters(path: str) -> BatchingParameters:
  with tf.io.gfile.GFile(path) as f:
    return BatchingParameters.from_text(f.read())
