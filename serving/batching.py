"""Server-side batching: concurrent requests to the same signature merged into one model call.

The parameters are TF Serving's (its `--batching_parameters_file`, text format), so the local server and
TF Serving batch alike and `tf_serving` writes them for production.
"""
import dataclasses
import logging
import re
import threading
from typing import Dict, List, Union

import grpc
import numpy as np

from serving.errors import RequestError
from serving.model import Signature

Arrays = Dict[str, np.ndarray]
_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
  """TF Serving's BatchingParameters.

  A batch holds at most `max_batch_size` rows (candidates, not requests) and waits at most
  `batch_timeout_micros` for more requests once opened; requests also gather while all `num_batch_threads`
  are busy, so batches grow with the load even with no timeout. `max_enqueued_batches` bounds TF Serving's
  queue (the local server's is bounded by its gRPC worker threads).
  """
  max_batch_size: int = 1024
  batch_timeout_micros: int = 0
  max_enqueued_batches: int = 100
  num_batch_threads: int = 4

  def to_text(self) -> str:
    return ''.join(f'{field.name} {{ value: {getattr(self, field.name)} }}\n'
                   for field in dataclasses.fields(self))

  @classmethod
  def from_text(cls, text: str) -> 'BatchingParameters':
    """Reads the fields above from a parameters file; others (TF Serving's padding options) are ignored."""
    values = dict(re.findall(r'(\w+)\s*\{\s*value:\s*(\d+)\s*\}', text))
    if re.search(r'enable_large_batch_splitting\s*\{\s*value:\s*true', text):
      _LOG.warning('enable_large_batch_splitting is not supported here: a request of more than max_batch_size '
                   'rows is refused, not split')
    return cls(**{f.name: int(values[f.name]) for f in dataclasses.fields(cls) if f.name in values})


class _Batch:
  """Requests to one signature merged into one call, run by the request that opened it (the leader)."""

  def __init__(self):
    self.requests: List[Arrays] = []
    self.rows = 0
    self.full = threading.Event()
    self.done = threading.Event()
    self.results: List[Union[Arrays, Exception]] = []

  def add(self, inputs: Arrays, rows: int) -> int:
    self.requests.append(inputs)
    self.rows += rows
    return len(self.requests) - 1

  def run(self, signature: Signature) -> int:
    """Runs the merged call and splits its outputs by request. If the merged call fails for any reason (a
    request the model refuses, one whose error TensorFlow cannot even report, an unexpected error), each
    request runs alone, so only a bad one gets an error and the good ones batched with it their outputs;
    returns how many requests ran alone that way (0 when the merged call succeeded)."""
    rerun = 0
    try:
      if len(self.requests) == 1:
        self.results = [_outcome(signature, self.requests[0])]
      else:
        try:
          self.results = self._merged(signature)
        except Exception:  # pylint: disable=broad-except  (each request then gets its own outcome)
          self.results = [_outcome(signature, r) for r in self.requests]
          rerun = len(self.requests)
    finally:
      self.done.set()
    return rerun

  def _merged(self, signature: Signature) -> List[Arrays]:
    merged = signature({name: np.concatenate([r[name] for r in self.requests]) for name in signature.inputs})
    sizes = [Signature.rows(r) for r in self.requests]
    if any(len(value) != sum(sizes) for value in merged.values()):
      raise ValueError(f'signature {signature.name} returned outputs of another batch size than its inputs')
    cuts = np.cumsum(sizes)[:-1]
    parts = {name: np.split(value, cuts) for name, value in merged.items()}
    return [{name: parts[name][i] for name in parts} for i in range(len(self.requests))]


def _outcome(signature: Signature, inputs: Arrays) -> Union[Arrays, Exception]:
  try:
    return signature(inputs)
  except Exception as error:  # pylint: disable=broad-except
    return error


class Batcher:
  """Merges concurrent calls to the same signature (of the same model version) into batches.

  No thread of its own: the first request to a signature opens a batch and leads it; requests arriving
  before the leader starts the call join it, up to `max_batch_size` rows. The leader waits up to
  `batch_timeout_micros` for the batch to fill, then for one of `num_batch_threads` execution slots, runs
  the call and hands every request its rows of the outputs (or its own error: see `_Batch.run`).

  A request of more than `max_batch_size` rows is refused with INVALID_ARGUMENT, as TF Serving refuses it
  with its default `enable_large_batch_splitting: false` ("Task size N is larger than maximum input batch
  size M"); it is not split. `stats` counts batches run and requests rerun alone after a merged call failed.
  """

  def __init__(self, parameters: BatchingParameters = BatchingParameters()):
    self.parameters = parameters
    self._lock = threading.Lock()
    self._open: Dict[Signature, _Batch] = {}
    self._slots = threading.BoundedSemaphore(parameters.num_batch_threads)
    self.stats = {'batches': 0, 'merged_requests': 0, 'rerun_alone': 0}

  def run(self, signature: Signature, inputs: Arrays) -> Arrays:
    """The signature's outputs for `inputs`, computed in a batch with concurrent requests when it can be."""
    if not signature.batchable:
      with self._slots:
        return signature(inputs)
    rows = Signature.rows(inputs)
    if rows > self.parameters.max_batch_size:
      raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f'Task size {rows} is larger than maximum input batch '
                                                           f'size {self.parameters.max_batch_size}')
    with self._lock:
      batch = self._open.get(signature)
      leader = batch is None or batch.rows + rows > self.parameters.max_batch_size
      if leader:
        if batch is not None:
          batch.full.set()
        batch = self._open[signature] = _Batch()
      index = batch.add(inputs, rows)
      if batch.rows >= self.parameters.max_batch_size:
        batch.full.set()
    if leader:
      batch.full.wait(self.parameters.batch_timeout_micros / 1e6)
      with self._slots:
        with self._lock:  # closed: later requests open the next batch
          if self._open.get(signature) is batch:
            del self._open[signature]
        rerun = batch.run(signature)
      with self._lock:
        self.stats['batches'] += 1
        self.stats['merged_requests'] += len(batch.requests) if len(batch.requests) > 1 else 0
        self.stats['rerun_alone'] += rerun
    else:
      batch.done.wait()
    result = batch.results[index]
    if isinstance(result, Exception):
      raise result
    return result
