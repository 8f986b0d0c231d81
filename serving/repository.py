"""The model's base directory, watched: the highest version served, a newer one swapped in when it appears."""
import logging
import os
import shutil
import threading
from typing import Dict, List, Optional, Tuple

import grpc
import tensorflow as tf
from tensorflow_serving.apis import model_pb2

from serving import tf_serving
from serving.errors import RequestError
from serving.model import ServedModel

_LOG = logging.getLogger(__name__)
# The states GetModelStatus reports (ModelVersionStatus.State): a version loading, served, or done with
# (replaced by a newer one, or failed to load, with the error).
LOADING, AVAILABLE, END = 'LOADING', 'AVAILABLE', 'END'


def ready_versions(base_path: str) -> List[int]:
  """The versions under `base_path` in TF Serving's layout (`<version>/saved_model.pb`, numeric names),
  ascending. Pusher copies saved_model.pb last, so a version with it is complete."""
  if not tf.io.gfile.isdir(base_path):
    return []
  names = [name.rstrip('/') for name in tf.io.gfile.listdir(base_path)]
  return sorted(int(name) for name in names if name.isdigit() and tf.io.gfile.exists(
      os.path.join(base_path, name, tf.saved_model.SAVED_MODEL_FILENAME_PB)))


def copy_version(source_dir: str, base_path: str, version: int) -> str:
  """Copies a version directory into `base_path` as `version` the way Pusher does, saved_model.pb last (so a
  watcher never loads half a copy), e.g. to roll a model forward; returns the new version's path."""
  target = os.path.join(base_path, str(version))
  shutil.copytree(source_dir, target, ignore=shutil.ignore_patterns(tf.saved_model.SAVED_MODEL_FILENAME_PB))
  shutil.copy(os.path.join(source_dir, tf.saved_model.SAVED_MODEL_FILENAME_PB), target)
  return target


class ModelRepository:
  """Serves one model from its base directory as TF Serving's latest-version policy does.

  `refresh()` loads the highest version if it is newer than the served one, replays its warm-up requests,
  then swaps it in: a request holds the version it started with until it ends, so none is dropped, and the
  old version is freed once the last one finishes. A version that fails to load or warm up is logged,
  reported as END with its error, and not retried; the served version stays. `start()` refreshes every
  `poll_seconds` in a background thread.
  """

  def __init__(self, base_path: str, name: str, poll_seconds: float = 1.0):
    self.base_path, self.name, self.poll_seconds = base_path, name, poll_seconds
    self._served: Optional[ServedModel] = None
    self._states: Dict[int, Tuple[str, str]] = {}  # version -> (state, error message)
    self._lock = threading.Lock()
    self._stopped = threading.Event()
    self._poller: Optional[threading.Thread] = None

  def start(self) -> 'ModelRepository':
    """Loads the highest version now, then polls for newer ones."""
    self.refresh()
    self._poller = threading.Thread(target=self._poll, name=f'poll-{self.name}', daemon=True)
    self._poller.start()
    return self

  def stop(self) -> None:
    self._stopped.set()
    if self._poller:
      self._poller.join()

  def _poll(self) -> None:
    while not self._stopped.wait(self.poll_seconds):
      try:
        self.refresh()
      except Exception:  # pylint: disable=broad-except  (a bad poll must not end polling)
        _LOG.exception('polling %s failed', self.base_path)

  def refresh(self) -> None:
    """Loads and swaps in the highest version if it is newer than the served one and has not failed."""
    served = self._served.version if self._served else -1
    candidates = [v for v in ready_versions(self.base_path) if v > served and v not in self._states]
    if not candidates:
      return
    version = candidates[-1]
    self._set_state(version, LOADING)
    try:
      model = ServedModel(self.name, version, os.path.join(self.base_path, str(version)))
      warmed = model.warm_up(tf_serving.read_warmup_requests(model.path))
    except Exception as error:  # pylint: disable=broad-except  (a bad version must not stop serving)
      _LOG.exception('model %s version %d failed to load; still serving %s', self.name, version, served)
      self._set_state(version, END, str(error))
      return
    with self._lock:
      previous, self._served = self._served, model
    if previous:
      self._set_state(previous.version, END)
    self._set_state(version, AVAILABLE)
    _LOG.info('serving model %s version %d (%d warm-up requests replayed)', self.name, version, warmed)

  def _set_state(self, version: int, state: str, error: str = '') -> None:
    with self._lock:
      self._states[version] = (state, error)

  def states(self) -> Dict[int, Tuple[str, str]]:
    """{version: (state, error message)} of every version seen, for GetModelStatus."""
    with self._lock:
      return dict(self._states)

  def resolve(self, spec: model_pb2.ModelSpec) -> ServedModel:
    """The served version a request's model_spec asks for: NOT_FOUND for another model's name or a
    version (or version label) not served, UNAVAILABLE before any version has loaded."""
    if spec.name != self.name:
      raise RequestError(grpc.StatusCode.NOT_FOUND, f'no model {spec.name!r} here; this server serves {self.name!r}')
    served = self._served
    if served is None:
      raise RequestError(grpc.StatusCode.UNAVAILABLE, f'no version of model {self.name} is loaded yet')
    if spec.HasField('version') and spec.version.value != served.version:
      raise RequestError(grpc.StatusCode.NOT_FOUND, f'model {self.name} version {spec.version.value} is not '
                                                    f'served; version {served.version} is')
    if spec.version_label:
      raise RequestError(grpc.StatusCode.NOT_FOUND, f'model {self.name} has no version label '
                                                    f'{spec.version_label!r}; ask for version {served.version}')
    return served
