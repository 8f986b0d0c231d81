"""The model's base directory, watched as TF Serving watches it: the versions its version policy names are
loaded (a failed load retried with back-off), served, and unloaded once the policy no longer names them."""
import dataclasses
import logging
import os
import shutil
import threading
import time
import uuid
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import grpc
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import model_pb2, prediction_log_pb2
from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

from serving import tf_serving
from serving.errors import RequestError
from serving.model import ServedModel

_LOG = logging.getLogger(__name__)
# The states GetModelStatus reports (ModelVersionStatus.State): a version loading (or waiting to retry its
# load), served, or done with (unloaded, or given up on after its last load retry, with the error).
LOADING, AVAILABLE, END = 'LOADING', 'AVAILABLE', 'END'
_SAVED_MODEL_PB = tf.saved_model.SAVED_MODEL_FILENAME_PB
_ServableVersionPolicy = file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy


def ready_versions(base_path: str) -> List[int]:
  """The versions under `base_path` in TF Serving's layout (`<version>/saved_model.pb`, numeric names),
  ascending. Hidden temporary directories (`.<version>.tmp-*`, see `copy_version`) are not versions."""
  if not tf.io.gfile.isdir(base_path):
    return []
  names = [name.rstrip('/') for name in tf.io.gfile.listdir(base_path)]
  return sorted(int(name) for name in names if name.isdigit() and tf.io.gfile.exists(
      os.path.join(base_path, name, _SAVED_MODEL_PB)))


def _fingerprint(version_dir: str) -> Optional[tuple]:
  """What tells one copy of a version directory from another: the directory's inode (a directory published
  by rename is a new one) and saved_model.pb's size and modification time (a file still being written
  changes them); None once saved_model.pb is gone."""
  try:
    pb = tf.io.gfile.stat(os.path.join(version_dir, _SAVED_MODEL_PB))
  except tf.errors.NotFoundError:
    return None
  try:
    stat = os.stat(version_dir)
    inode = (stat.st_dev, stat.st_ino)
  except OSError:  # not a local file system
    inode = None
  return inode, pb.length, pb.mtime_nsec


def copy_version(source_dir: str, base_path: str, version: int,
                 warmup: Optional[Sequence[prediction_log_pb2.PredictionLog]] = None) -> str:
  """Publishes a copy of a version directory into `base_path` as `version`, atomically: the copy (and its
  warm-up requests, if given) is written into a hidden temporary directory beside it, then renamed, so a
  server polling the base never sees half a version. Returns the version's path; FileExistsError if the
  version is there already (as Pusher refuses to overwrite one). Local file systems only."""
  target = os.path.join(base_path, str(version))
  if os.path.exists(target):
    raise FileExistsError(f'version {version} already exists in {base_path}')
  os.makedirs(base_path, exist_ok=True)
  temporary = os.path.join(base_path, f'.{version}.tmp-{uuid.uuid4().hex[:8]}')
  try:
    shutil.copytree(source_dir, temporary)
    if warmup is not None:
      tf_serving.write_warmup_requests(temporary, warmup)
    os.rename(temporary, target)  # atomic; fails if another copy took the name meanwhile
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    raise
  return target


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
  """TF Serving's model_version_policy: which of the versions present are served.

  `latest` (the default, as in TF Serving): the `num_versions` highest; a removed version is replaced by
  the highest one left (rollback by deleting a bad push). `specific`: exactly `versions`, those of them
  present (pinning: the rollback tool that leaves the directories alone). `all`: every version.
  """
  kind: str = 'latest'
  num_versions: int = 1
  versions: Tuple[int, ...] = ()

  @classmethod
  def latest(cls, num_versions: int = 1) -> 'VersionPolicy':
    return cls('latest', num_versions=max(1, num_versions))

  @classmethod
  def specific(cls, *versions: int) -> 'VersionPolicy':
    return cls('specific', versions=tuple(sorted(set(versions))))

  @classmethod
  def all(cls) -> 'VersionPolicy':
    return cls('all')

  def aspired(self, present: Iterable[int]) -> Set[int]:
    """The versions to serve among those present."""
    present = sorted(present)
    if self.kind == 'specific':
      return set(present) & set(self.versions)
    if self.kind == 'all':
      return set(present)
    return set(present[-self.num_versions:])

  @classmethod
  def from_proto(cls, policy: _ServableVersionPolicy) -> 'VersionPolicy':
    """From models.config's `model_version_policy` (unset: TF Serving's default, latest 1)."""
    kind = policy.WhichOneof('policy_choice')
    if kind == 'specific':
      return cls.specific(*policy.specific.versions)
    if kind == 'all':
      return cls.all()
    return cls.latest(policy.latest.num_versions if kind == 'latest' else 1)

  def to_proto(self) -> _ServableVersionPolicy:
    policy = _ServableVersionPolicy()
    if self.kind == 'specific':
      policy.specific.versions.extend(self.versions)
    elif self.kind == 'all':
      policy.all.SetInParent()
    else:
      policy.latest.num_versions = self.num_versions
    return policy

  def __str__(self) -> str:
    return {'latest': f'latest {self.num_versions}', 'all': 'all'}.get(self.kind, f'specific {list(self.versions)}')


@dataclasses.dataclass(frozen=True)
class LoadRetry:
  """How a version that fails to load (a half-written or corrupt directory, a failing warm-up) is retried,
  like TF Serving's --max_num_load_retries (default 5) and --load_retry_interval_micros: up to
  `max_num_load_retries` more attempts, the first `interval_seconds` after the failure and each next wait
  `backoff` times longer (at most `max_interval_seconds`); after the last one the version is END with the
  error. With the defaults a version is given up on about 31 s after its first failure."""
  max_num_load_retries: int = 5
  interval_seconds: float = 1.0
  backoff: float = 2.0
  max_interval_seconds: float = 60.0

  def wait(self, failures: int) -> float:
    """Seconds before the next attempt after `failures` failed ones."""
    return min(self.interval_seconds * self.backoff ** (failures - 1), self.max_interval_seconds)


@dataclasses.dataclass(frozen=True)
class VersionStatus:
  """One version's state for GetModelStatus: `error` and `code` say why a version that never loaded is
  END; `attempts` counts the load attempts on its current directory."""
  state: str
  error: str = ''
  code: grpc.StatusCode = grpc.StatusCode.OK
  attempts: int = 0


@dataclasses.dataclass
class _Version:
  state: str = LOADING
  error: str = ''
  code: grpc.StatusCode = grpc.StatusCode.OK
  failures: int = 0  # failed load attempts of the directory with `fingerprint`
  next_attempt: float = 0.0  # time.monotonic() of the next retry
  gave_up: bool = False  # retries exhausted: no attempt until the directory changes or comes back
  fingerprint: Optional[tuple] = None


def _error_code(error: Exception) -> grpc.StatusCode:
  if isinstance(error, RequestError):
    return error.code
  if isinstance(error, tf.errors.OpError):
    return next((c for c in grpc.StatusCode if c.value[0] == error.error_code), grpc.StatusCode.UNKNOWN)
  return grpc.StatusCode.UNKNOWN


class ModelRepository:
  """Serves one model from its base directory as TF Serving does with a version policy.

  `refresh()` scans the base: every version the policy names (`aspired`) that is not loaded is loaded,
  highest first, and its warm-up requests replayed before it is served; a failed load is retried as
  `retry` says, then the version is END with the error. A version directory that changes (re-published by
  rename, or completed in place after Pusher's half-written copy failed to load) gets fresh attempts; a
  version given up on is also tried afresh once it leaves the policy and comes back (as TF Serving forgets a
  version that is no longer aspired). Versions the policy no longer names are unloaded once an aspired one is
  served (TF Serving's availability-preserving policy: a removed newest version keeps answering until the
  version rolled back to has loaded), or at once if the policy names none present. A request holds the
  version it started with until it ends, so none is dropped. `start()` refreshes every `poll_seconds`.

  The policy is `policy` if given, else the model's entry in `model_config_file` (TF Serving's models.config,
  read again at every poll, so that pinning a version there rolls back), else latest 1.
  """

  def __init__(self, base_path: str, name: str, poll_seconds: float = 1.0, policy: Optional[VersionPolicy] = None,
               model_config_file: Optional[str] = None, retry: LoadRetry = LoadRetry()):
    self.base_path, self.name, self.poll_seconds, self.retry = base_path, name, poll_seconds, retry
    self.model_config_file = model_config_file
    self._fixed_policy = policy
    self.policy = policy or VersionPolicy()
    self._versions: Dict[int, _Version] = {}
    self._served: Dict[int, ServedModel] = {}  # replaced on every change, never changed in place
    self._lock = threading.Lock()
    self._refreshing = threading.Lock()
    self._stopped = threading.Event()
    self._poller: Optional[threading.Thread] = None
    self._warned = ''
    self.polls = 0  # refreshes done, failed ones included

  def start(self) -> 'ModelRepository':
    """Loads the versions the policy names now, then polls."""
    self._refresh_logged()
    self._poller = threading.Thread(target=self._poll, name=f'poll-{self.name}', daemon=True)
    self._poller.start()
    return self

  def stop(self) -> None:
    self._stopped.set()
    if self._poller:
      self._poller.join()

  def _poll(self) -> None:
    while not self._stopped.wait(self._next_wait()):
      self._refresh_logged()

  def _refresh_logged(self) -> None:
    try:
      self.refresh()
    except Exception:  # pylint: disable=broad-except  (a bad poll must not end polling)
      _LOG.exception('polling %s failed; serving what was loaded', self.base_path)
    finally:
      self.polls += 1

  def _next_wait(self) -> float:
    """The poll interval, or less when a load retry is due sooner."""
    with self._lock:
      due = [v.next_attempt for v in self._versions.values() if v.state == LOADING and v.failures and not v.gave_up]
    return max(0.01, min([self.poll_seconds] + [t - time.monotonic() for t in due]))

  def _present(self) -> Dict[int, Optional[tuple]]:
    """{version: fingerprint} of the complete versions in the base; raises if the base cannot be read (the
    served versions then stay)."""
    if not tf.io.gfile.isdir(self.base_path):
      raise FileNotFoundError(f'model base {self.base_path} is not a directory')
    present = {}
    for version in ready_versions(self.base_path):
      fingerprint = _fingerprint(os.path.join(self.base_path, str(version)))
      if fingerprint is not None:
        present[version] = fingerprint
    return present

  def _current_policy(self) -> VersionPolicy:
    if self._fixed_policy is not None:
      return self._fixed_policy
    if not self.model_config_file:
      return VersionPolicy()
    try:
      if not tf.io.gfile.exists(self.model_config_file):
        return VersionPolicy()
      with tf.io.gfile.GFile(self.model_config_file) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    except Exception as error:  # pylint: disable=broad-except  (a bad edit must not stop serving)
      self._warn_once(f'cannot read {self.model_config_file} ({error}); keeping version policy {self.policy}')
      return self.policy
    entry = next((c for c in config.model_config_list.config if c.name == self.name), None)
    if entry is None:
      self._warn_once(f'{self.model_config_file} has no model {self.name!r}; serving the latest version')
      return VersionPolicy()
    return VersionPolicy.from_proto(entry.model_version_policy)

  def _warn_once(self, message: str) -> None:
    if message != self._warned:
      _LOG.warning('%s', message)
      self._warned = message

  def refresh(self) -> None:
    """One poll: reads the policy and the base, loads what the policy names and is not loaded (or retries
    it when due), unloads what it no longer names."""
    with self._refreshing:
      policy = self._current_policy()
      if policy != self.policy:
        _LOG.info('model %s: version policy %s (was %s)', self.name, policy, self.policy)
        self.policy = policy
      present = self._present()
      aspired = policy.aspired(present)
      with self._lock:
        for version, record in self._versions.items():
          if version not in aspired:
            if record.state == LOADING:  # retries cancelled, as TF Serving cancels them for an unaspired version
              record.state = END
              record.error = record.error or 'no longer named by the version policy or present before it loaded'
            record.gave_up, record.failures = False, 0
          elif record.state != AVAILABLE and record.fingerprint != present[version]:
            record.gave_up, record.failures, record.next_attempt = False, 0, 0.0  # a new directory
      for version in sorted(aspired, reverse=True):
        record = self._versions.get(version)
        if record and (record.state == AVAILABLE or record.gave_up or time.monotonic() < record.next_attempt):
          continue
        self._load(version, present[version])
      self._unload(aspired)

  def _load(self, version: int, fingerprint: tuple) -> None:
    with self._lock:
      record = self._versions.setdefault(version, _Version())
      record.state, record.fingerprint = LOADING, fingerprint
    path = os.path.join(self.base_path, str(version))
    try:
      model = ServedModel(self.name, version, path)
      warmed = model.warm_up(tf_serving.read_warmup_requests(model.path))
    except Exception as error:  # pylint: disable=broad-except  (a bad version must not stop serving)
      with self._lock:
        record.failures += 1
        record.error, record.code = f'{type(error).__name__}: {error}', _error_code(error)
        if record.failures > self.retry.max_num_load_retries:
          record.state, record.gave_up = END, True
        else:
          record.next_attempt = time.monotonic() + self.retry.wait(record.failures)
        failures = record.failures
      served = sorted(self._served)
      if failures > self.retry.max_num_load_retries:
        _LOG.error('model %s version %d failed to load %d times, giving up (serving %s): %s', self.name, version,
                   failures, served or 'nothing', record.error)
      else:
        _LOG.warning('model %s version %d failed to load (attempt %d of %d, next in %.1f s; serving %s): %s',
                     self.name, version, failures, self.retry.max_num_load_retries + 1,
                     self.retry.wait(failures), served or 'nothing', record.error)
      return
    with self._lock:
      self._served = {**self._served, version: model}
      record.state, record.error, record.code, record.failures = AVAILABLE, '', grpc.StatusCode.OK, 0
    _LOG.info('serving model %s version %d (%d warm-up requests replayed)', self.name, version, warmed)

  def _unload(self, aspired: Set[int]) -> None:
    """Unloads the served versions not aspired: all of them once an aspired one is served or none is
    aspired, else all but the highest (which answers until an aspired version has loaded)."""
    with self._lock:
      unaspired = sorted(v for v in self._served if v not in aspired)
      if aspired and not aspired & set(self._served):
        unaspired = unaspired[:-1]
      if not unaspired:
        return
      self._served = {v: m for v, m in self._served.items() if v not in unaspired}
      for version in unaspired:
        self._versions[version].state = END
    _LOG.info('model %s: unloaded version(s) %s; serving %s', self.name, unaspired, sorted(self._served) or 'none')

  def statuses(self) -> Dict[int, VersionStatus]:
    """{version: status} of every version seen, for GetModelStatus."""
    with self._lock:
      return {v: VersionStatus(r.state, r.error, r.code, r.failures + (r.state == AVAILABLE))
              for v, r in self._versions.items()}

  def states(self) -> Dict[int, Tuple[str, str]]:
    """{version: (state, error message)} of every version seen."""
    return {v: (s.state, s.error) for v, s in self.statuses().items()}

  def served_versions(self) -> List[int]:
    return sorted(self._served)

  def resolve(self, spec: model_pb2.ModelSpec) -> ServedModel:
    """The served version a request's model_spec asks for (the highest served one when it names none):
    NOT_FOUND for another model's name or a version not served, INVALID_ARGUMENT for a version label
    (this server has none), UNAVAILABLE before any version has loaded."""
    if spec.name != self.name:
      request = f'Specific({spec.name}, {spec.version.value})' if spec.HasField('version') else f'Latest({spec.name})'
      raise RequestError(grpc.StatusCode.NOT_FOUND, f'Servable not found for request: {request} (this server '
                                                    f'serves model {self.name!r})')
    served = self._served
    if spec.HasField('version'):
      if spec.version.value not in served:
        raise RequestError(grpc.StatusCode.NOT_FOUND, f'Servable not found for request: Specific({self.name}, '
                                                      f'{spec.version.value}) (serving {sorted(served) or "none"})')
      return served[spec.version.value]
    if spec.version_label:
      raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f'Unrecognized servable version label: '
                                                           f'{spec.version_label}')
    if not served:
      raise RequestError(grpc.StatusCode.UNAVAILABLE, f'no version of model {self.name} is loaded yet')
    return served[max(served)]
