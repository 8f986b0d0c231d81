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


def model_config(model_name: str, base_path: str,
                 pinned: Sequence[int] = ()) -> model_server_config_pb2.ModelServerConfig:
  """One model served from `base_path` with TF Serving's default version policy, `latest { num_versions: 1 }`
  (a new push is served as soon as it is complete, a removed one rolls back to the highest left), or pinned
  to the `pinned` versions (`specific { versions: ... }`: the rollback tool, see README.md)."""
  config = model_server_config_pb2.ModelServerConfig()
  entry = config.model_config_list.config.add(name=model_name, base_path=os.path.abspath(base_path),
                                              model_platform='tensorflow')
  if pinned:
    entry.model_version_policy.specific.versions.extend(sorted(set(pinned)))
  else:
    entry.model_version_policy.latest.num_versions = 1
  return config


def read_model_config(serving_root: str) -> model_server_config_pb2.ModelServerConfig:
  with tf.io.gfile.GFile(os.path.join(serving_root, MODEL_CONFIG_FILE)) as f:
    return text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())


def set_version_policy(serving_root: str, model_name: str, pinned: Sequence[int] = ()) -> str:
  """Rewrites the model's entry in `<serving_root>/models.config` (atomically) to pin `pinned` (versions
  present in its base path only: ValueError otherwise), or back to the latest version when empty; TF Serving
  (with --model_config_file_poll_wait_seconds) and the local server (at its next poll) follow it. Returns the
  file."""
  config = read_model_config(serving_root)
  entry = next((c for c in config.model_config_list.config if c.name == model_name), None)
  if entry is None:
    raise ValueError(f'{os.path.join(serving_root, MODEL_CONFIG_FILE)} has no model {model_name!r}')
  missing = sorted(set(pinned) - set(_versions_present(entry.base_path)))
  if missing:  # TF Serving would then serve nothing
    raise ValueError(f'cannot pin model {model_name} to version(s) {missing}: not under {entry.base_path}')
  (fresh,) = model_config(model_name, entry.base_path, pinned).model_config_list.config
  entry.model_version_policy.CopyFrom(fresh.model_version_policy)
  return write_model_config(serving_root, config)


def _versions_present(base_path: str) -> List[int]:
  names = [n.rstrip('/') for n in tf.io.gfile.listdir(base_path)] if tf.io.gfile.isdir(base_path) else []
  return [int(n) for n in names if n.isdigit() and tf.io.gfile.exists(
      os.path.join(base_path, n, tf.saved_model.SAVED_MODEL_FILENAME_PB))]


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


def main(argv=None) -> int:
  """`python -m serving.tf_serving SERVING_ROOT --pin VERSION` / `--latest`: see set_version_policy."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog='python -m serving.tf_serving',
                                   description='Pin the served version in SERVING_ROOT/models.config (a rollback '
                                               'that leaves the version directories alone), or serve the latest '
                                               'version again.')
  parser.add_argument('serving_root', help='the folder holding models.config (OUTPUT_DIR/serving)')
  parser.add_argument('--model', default='ctr', help='the model entry to change (default ctr)')
  choice = parser.add_mutually_exclusive_group(required=True)
  choice.add_argument('--pin', type=int, nargs='+', metavar='VERSION', help='serve exactly these versions')
  choice.add_argument('--latest', action='store_true', help='serve the highest version present (the default)')
  args = parser.parse_args(argv)
  try:
    path = set_version_policy(args.serving_root, args.model, () if args.latest else args.pin)
  except (ValueError, OSError) as error:
    parser.error(str(error))
  print(f'{path}: model {args.model} ' + ('serves the latest version' if args.latest else f'pinned to {args.pin}'))
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
