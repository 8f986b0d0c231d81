"""Server-side batching: concurrent requests to the same signature merged into one model call.

The parameters are TF Serving's (its `--batching_parameters_file`, text format), so the local server and
TF Serving batch alike and `tf_serving` writes them for production.
"""
import dataclasses
import re
import threading
from typing import Dict, List, Union

import numpy as np

from serving.errors import RequestError
from serving.model import Signature

Arrays = Dict[str, np.ndarray]


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

  def run(self, signature: Signature) -> None:
    """Runs the merged call and splits its outputs by request. A request the model refuses fails the
    merged call, so then each request runs alone and only the bad one gets the error."""
    try:
      if len(self.requests) == 1:
        self.results = [signature(self.requests[0])]
      else:
        merged = signature({name: np.concatenate([r[name] for r in self.requests]) for name in signature.inputs})
        cuts = np.cumsum([Signature.rows(r) for r in self.requests])[:-1]
        parts = {name: np.split(value, cuts) for name, value in merged.items()}
        self.results = [{name: parts[name][i] for name in parts} for i in range(len(self.requests))]
    except RequestError:
      self.results = [_outcome(signature, r) for r in self.requests]
    except Exception as error:  # pylint: disable=broad-except
      self.results = [error] * len(self.requests)
    finally:
      self.done.set()


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
  the call and hands every request its rows of the outputs.
  """

  def __init__(self, parameters: BatchingParameters = BatchingParameters()):
    self.parameters = parameters
    self._lock = threading.Lock()
    self._open: Dict[Signature, _Batch] = {}
    self._slots = threading.BoundedSemaphore(parameters.num_batch_threads)

  def run(self, signature: Signature, inputs: Arrays) -> Arrays:
    """The signature's outputs for `inputs`, computed in a batch with concurrent requests when it can be."""
    if not signature.batchable:
      with self._slots:
        return signature(inputs)
    rows = Signature.rows(inputs)
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
        batch.run(signature)
    else:
      batch.done.wait()
    result = batch.results[index]
    if isinstance(result, Exception):
      raise result
    return result
