"""A PredictionService client (tensorflow-serving-api over gRPC), the same against this project's server and
TF Serving: raw CSV rows in, the model's scores out."""
from typing import Dict, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2, predict_pb2, prediction_service_pb2_grpc

from serving import examples as examples_lib
from serving import signatures
from serving.server import METADATA_FIELD


class PredictionClient:
  """Calls one model on a server at `target` (HOST:PORT); a context manager that closes the channel."""

  def __init__(self, target: str, model_name: str, timeout_seconds: float = 30.0):
    self.model_name, self.timeout_seconds = model_name, timeout_seconds
    self._channel = grpc.insecure_channel(target)
    self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

  def __enter__(self) -> 'PredictionClient':
    return self

  def __exit__(self, *exc) -> None:
    self._channel.close()

  def column_types(self) -> Dict[str, tf.DType]:
    """{raw column: dtype}, read from the model's raw-tensor signature (GetModelMetadata)."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name=self.model_name), metadata_field=[METADATA_FIELD])
    response = self._stub.GetModelMetadata(request, timeout=self.timeout_seconds)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[METADATA_FIELD].Unpack(signature_map)
    if signatures.RAW not in signature_map.signature_def:
      raise ValueError(f'model {self.model_name} has no {signatures.RAW} signature to type the CSV columns by')
    return examples_lib.signature_column_types(signature_map.signature_def[signatures.RAW])

  def predict(self, serialized: Sequence[bytes]) -> Tuple[Dict[str, np.ndarray], int]:
    """serving_default's outputs for serialized tf.Examples, and the version that answered."""
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=self.model_name, signature_name=signatures.DEFAULT))
    tensor = request.inputs[signatures.EXAMPLES_INPUT]  # built directly: tf.make_tensor_proto costs ~10x more
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add(size=len(serialized))
    tensor.string_val.extend(serialized)
    response = self._stub.Predict(request, timeout=self.timeout_seconds)
    return {name: tf.make_ndarray(t) for name, t in response.outputs.items()}, response.model_spec.version.value

  def predict_csv(self, path: str, batch_size: int = 100) -> Tuple[Dict[str, np.ndarray], int]:
    """The outputs for every row of a CSV in the pipeline's raw format, sent `batch_size` rows a request,
    and the (last) version that answered."""
    serialized = examples_lib.read_csv_examples(path, self.column_types())
    parts, version = [], 0
    for start in range(0, len(serialized), batch_size):
      outputs, version = self.predict(serialized[start:start + batch_size])
      parts.append(outputs)
    return {name: np.concatenate([p[name] for p in parts]) for name in (parts[0] if parts else {})}, version


def format_scores(outputs: Dict[str, np.ndarray]) -> str:
  """CSV: a header of output names, then one row per example, each score with float32's 9 significant
  digits (so it reads back exactly)."""
  names = sorted(outputs)
  rows = zip(*(outputs[name] for name in names))
  return '\n'.join([','.join(names)] + [','.join(format(float(v), '.9g') for v in row) for row in rows]) + '\n'
