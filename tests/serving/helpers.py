"""Helpers the serving tests share: raw rows as examples, stubs and requests."""
import csv
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from serving import signatures
from serving.examples import row_example


def raw_column_types(loaded) -> dict:
  """{column: dtype} from an in-process SavedModel's raw-tensor signature."""
  return {name: spec.dtype for name, spec in loaded.signatures[signatures.RAW].structured_input_signature[1].items()}


def read_rows(path, count):
  with open(path, newline='') as f:
    return [row for row, _ in zip(csv.DictReader(f), range(count))]


def serialized(rows, column_types):
  return [row_example(row, column_types).SerializeToString() for row in rows]


def predict_request(examples, name='ctr', signature='', version=None):
  request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name, signature_name=signature))
  if version is not None:
    request.model_spec.version.value = version
  request.inputs[signatures.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(list(examples), tf.string))
  return request


def ctr(response) -> np.ndarray:
  return tf.make_ndarray(response.outputs['ctr'])


class Stubs:
  """PredictionService and ModelService stubs on one channel to 127.0.0.1:port."""

  def __init__(self, port):
    self.channel = grpc.insecure_channel(f'127.0.0.1:{port}')
    self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
    self.model = model_service_pb2_grpc.ModelServiceStub(self.channel)


def wait_for(condition, timeout=120.0, what='the condition', interval=0.05):
  """Polls `condition()` until it is true (returning its value) or `timeout` seconds pass (failing the test
  naming `what`): deadlines are generous, for a loaded machine; correctness never rests on a sleep."""
  deadline = time.monotonic() + timeout
  while True:
    value = condition()
    if value:
      return value
    if time.monotonic() > deadline:
      raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
    time.sleep(interval)


class Load:
  """`clients` threads sending Predict requests of `examples` to 127.0.0.1:port, each on its own channel,
  until `stop()`: `answers[i]` is client i's [(version, scores)] in order, `errors` every RpcError."""

  def __init__(self, port, examples, clients):
    self.answers = [[] for _ in range(clients)]
    self.errors = []
    self._stop = threading.Event()
    self._threads = [threading.Thread(target=self._client, args=(port, examples, i), daemon=True)
                     for i in range(clients)]

  def _client(self, port, examples, index):
    stubs = Stubs(port)
    try:
      while not self._stop.is_set():
        try:
          response = stubs.prediction.Predict(predict_request(examples), timeout=60)
          self.answers[index].append((response.model_spec.version.value, ctr(response)))
        except grpc.RpcError as error:
          self.errors.append(error)
    finally:
      stubs.channel.close()

  def __enter__(self) -> 'Load':
    for thread in self._threads:
      thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    for thread in self._threads:
      thread.join(120)

  def versions(self, index):
    return [version for version, _ in self.answers[index]]

  def every_client_answered_by(self, version) -> bool:
    """Whether every client's latest answer came from `version`."""
    return all(answers and answers[-1][0] == version for answers in self.answers)
