"""Batcher: concurrent requests merged into one call and split back, a bad request failing alone."""
import threading
import time

import grpc
import numpy as np
import pytest

from serving.batching import Batcher, BatchingParameters
from serving.errors import RequestError


class DoublingSignature:
  """Stands in for serving.model.Signature: `y = 2 x` per row, refusing negative rows, counting calls; a row
  of 777 raises UnicodeDecodeError, as TensorFlow's binding does for an error quoting bytes that are not UTF-8."""
  inputs = {'x': None}
  batchable = True

  def __init__(self, delay: threading.Event = None):
    self.calls = []
    self._delay = delay

  def __call__(self, inputs):
    if self._delay:
      self._delay.wait(5)
    self.calls.append(len(inputs['x']))
    if (inputs['x'] < 0).any():
      raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, 'negative row')
    if (inputs['x'] == 777).any():
      raise UnicodeDecodeError('utf-8', b"Could not parse example input, value: '\xff'", 38, 39, 'invalid start byte')
    return {'y': inputs['x'] * 2}


def _concurrently(batcher, signature, requests):
  """Runs every request in its own thread; returns each one's outputs or error, in order."""
  results = [None] * len(requests)

  def call(i):
    try:
      results[i] = batcher.run(signature, {'x': requests[i]})
    except Exception as error:  # pylint: disable=broad-except
      results[i] = error
  threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(10)
  return results


def test_parameters_round_trip_through_tf_servings_text_format():
  parameters = BatchingParameters(max_batch_size=64, batch_timeout_micros=500, max_enqueued_batches=7,
                                  num_batch_threads=3)
  text = parameters.to_text()
  assert 'max_batch_size { value: 64 }' in text and 'batch_timeout_micros { value: 500 }' in text
  assert BatchingParameters.from_text(text + 'pad_variable_length_inputs: true\n') == parameters


def test_concurrent_requests_share_calls_and_get_their_own_rows():
  signature = DoublingSignature()
  batcher = Batcher(BatchingParameters(max_batch_size=1000, batch_timeout_micros=200_000))
  requests = [np.arange(i, i + 3) for i in range(0, 30, 3)]
  results = _concurrently(batcher, signature, requests)
  for request, result in zip(requests, results):
    np.testing.assert_array_equal(result['y'], request * 2)
  assert sum(signature.calls) == 30 and len(signature.calls) < len(requests)


def test_a_batch_never_exceeds_max_batch_size():
  signature = DoublingSignature()
  batcher = Batcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000))
  results = _concurrently(batcher, signature, [np.full(3, i) for i in range(12)])
  assert all(isinstance(r, dict) for r in results)
  assert max(signature.calls) <= 8 and sum(signature.calls) == 36


def test_requests_gather_while_every_batch_thread_is_busy():
  release = threading.Event()
  signature = DoublingSignature(delay=release)
  batcher = Batcher(BatchingParameters(max_batch_size=1000, batch_timeout_micros=0, num_batch_threads=1))
  first = threading.Thread(target=batcher.run, args=(signature, {'x': np.ones(1)}))
  first.start()
  waiting = threading.Thread(target=lambda: _concurrently(batcher, signature, [np.ones(1)] * 6))
  waiting.start()
  threading.Timer(0.5, release.set).start()
  first.join(10)
  waiting.join(10)
  assert signature.calls[0] == 1 and sum(signature.calls) == 7 and len(signature.calls) < 7


def test_a_bad_request_fails_alone():
  signature = DoublingSignature()
  batcher = Batcher(BatchingParameters(max_batch_size=1000, batch_timeout_micros=200_000))
  requests = [np.ones(2), -np.ones(2), np.full(2, 3.0)]
  results = _concurrently(batcher, signature, requests)
  assert isinstance(results[1], RequestError) and results[1].code == grpc.StatusCode.INVALID_ARGUMENT
  np.testing.assert_array_equal(results[0]['y'], [2, 2])
  np.testing.assert_array_equal(results[2]['y'], [6, 6])


def test_a_request_failing_with_any_error_fails_alone_and_the_others_keep_their_rows():
  release = threading.Event()
  signature = DoublingSignature(delay=release)
  batcher = Batcher(BatchingParameters(max_batch_size=1000, batch_timeout_micros=0, num_batch_threads=1))
  first = threading.Thread(target=batcher.run, args=(signature, {'x': np.ones(1)}))
  first.start()  # holds the only batch thread until released, so the next requests gather into one batch
  requests = [np.ones(2), np.full(3, 777.0), np.full(2, 3.0), -np.ones(1)]
  results = []
  gathered = threading.Thread(target=lambda: results.extend(_concurrently(batcher, signature, requests)))
  gathered.start()
  deadline = time.monotonic() + 60
  while sum(len(b.requests) for b in list(batcher._open.values())) < len(requests) and time.monotonic() < deadline:
    time.sleep(0.01)
  release.set()
  first.join(60)
  gathered.join(60)
  assert isinstance(results[1], UnicodeDecodeError) and isinstance(results[3], RequestError)
  np.testing.assert_array_equal(results[0]['y'], [2, 2])
  np.testing.assert_array_equal(results[2]['y'], [6, 6])
  assert signature.calls[1] == 8 and batcher.stats['rerun_alone'] == len(requests)  # merged, failed, rerun


def test_a_request_above_max_batch_size_is_refused_as_tf_serving_refuses_it():
  signature = DoublingSignature()
  batcher = Batcher(BatchingParameters(max_batch_size=8))
  with pytest.raises(RequestError, match='Task size 9 is larger than maximum input batch size 8') as raised:
    batcher.run(signature, {'x': np.ones(9)})
  assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and signature.calls == []
  np.testing.assert_array_equal(batcher.run(signature, {'x': np.ones(8)})['y'], np.full(8, 2.0))


@pytest.mark.parametrize('rows', [1, 5])
def test_a_lone_request_runs_as_is(rows):
  signature = DoublingSignature()
  outputs = Batcher(BatchingParameters(batch_timeout_micros=0)).run(signature, {'x': np.arange(rows)})
  np.testing.assert_array_equal(outputs['y'], np.arange(rows) * 2)
  assert signature.calls == [rows]
