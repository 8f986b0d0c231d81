"""Helpers the serving tests share: raw rows as examples, stubs and requests."""
import csv

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
