"""A gRPC server speaking TF Serving's API over the pushed model directory, for local use and tests.

`PredictionServicer` answers tensorflow.serving.PredictionService (Predict, Classify, GetModelMetadata;
Regress and MultiInference answer UNIMPLEMENTED), `ModelStatusServicer` ModelService.GetModelStatus, and
`ModelServer` runs both on 127.0.0.1 by default. Every failure becomes the request's gRPC status: the
server never stops because of a request.
"""
import functools
import logging
import os
from concurrent import futures
from typing import Optional

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from serving.batching import Batcher, BatchingParameters
from serving.errors import RequestError
from serving.model import ServedModel
from serving.repository import ModelRepository

_LOG = logging.getLogger(__name__)
LOCALHOST = '127.0.0.1'
METADATA_FIELD = 'signature_def'  # the one GetModelMetadata field TF Serving knows
MAX_MESSAGE_BYTES = 64 << 20


def _answers_with_status(method):
  """Runs an RPC method; a refused request answers with its status, anything else unexpected with
  INTERNAL, and the server goes on."""
  @functools.wraps(method)
  def wrapper(self, request, context):
    try:
      return method(self, request, context)
    except RequestError as error:
      context.abort(error.code, str(error))
    except Exception as error:  # pylint: disable=broad-except
      _LOG.exception('%s failed', method.__name__)
      context.abort(grpc.StatusCode.INTERNAL, f'{type(error).__name__}: {error}')
  return wrapper


def _answered_spec(model: ServedModel, signature_name: str, spec):
  """The model_spec of a response: the model and version that answered, and the signature."""
  spec.name, spec.signature_name = model.name, signature_name
  spec.version.value = model.version


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Predict, Classify and GetModelMetadata on the repository's served version, batched by `batcher`."""

  def __init__(self, repository: ModelRepository, batcher: Batcher):
    self._repository, self._batcher = repository, batcher

  @_answers_with_status
  def Predict(self, request, context):  # noqa: N802 (gRPC's name)
    model = self._repository.resolve(request.model_spec)
    signature = model.signature(request.model_spec.signature_name)
    unknown = sorted(set(request.output_filter) - set(signature.outputs))
    if unknown:
      raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f'output_filter names {", ".join(unknown)}, not outputs '
                                                           f'of signature {signature.name}')
    outputs = self._batcher.run(signature, signature.predict_inputs(request.inputs))
    response = predict_pb2.PredictResponse()
    _answered_spec(model, signature.name, response.model_spec)
    for name in request.output_filter or outputs:
      response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
    return response

  @_answers_with_status
  def Classify(self, request, context):  # noqa: N802
    model = self._repository.resolve(request.model_spec)
    signature = model.signature(request.model_spec.signature_name)
    outputs = self._batcher.run(signature, signature.classify_inputs(request.input))
    classes, scores = outputs.get('classes'), outputs.get('scores')
    rows = classes if classes is not None else scores  # [batch, classes]
    response = classification_pb2.ClassificationResponse()
    _answered_spec(model, signature.name, response.model_spec)
    for i in range(rows.shape[0]):
      classification = response.result.classifications.add()
      for j in range(rows.shape[1]):
        entry = classification.classes.add()
        if classes is not None:
          entry.label = classes[i, j].decode()
        if scores is not None:
          entry.score = float(scores[i, j])
    return response

  @_answers_with_status
  def GetModelMetadata(self, request, context):  # noqa: N802
    model = self._repository.resolve(request.model_spec)
    unknown = sorted(set(request.metadata_field) - {METADATA_FIELD})
    if unknown or not request.metadata_field:
      raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f'metadata_field must be [{METADATA_FIELD!r}], '
                                                           f'got {list(request.metadata_field)}')
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _answered_spec(model, '', response.model_spec)
    response.metadata[METADATA_FIELD].Pack(get_model_metadata_pb2.SignatureDefMap(signature_def=model.signature_defs))
    return response


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
  """GetModelStatus: the state of each version the repository has seen (HandleReloadConfigRequest answers
  UNIMPLEMENTED: this server serves the directory it was started on)."""

  def __init__(self, repository: ModelRepository):
    self._repository = repository

  @_answers_with_status
  def GetModelStatus(self, request, context):  # noqa: N802
    spec = request.model_spec
    if spec.name != self._repository.name:
      raise RequestError(grpc.StatusCode.NOT_FOUND, f'no model {spec.name!r} here; this server serves '
                                                    f'{self._repository.name!r}')
    states = self._repository.states()
    if spec.HasField('version'):
      if spec.version.value not in states:
        raise RequestError(grpc.StatusCode.NOT_FOUND, f'model {spec.name} has no version {spec.version.value}')
      states = {spec.version.value: states[spec.version.value]}
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, (state, error) in sorted(states.items(), reverse=True):
      status = response.model_version_status.add(
          version=version, state=get_model_status_pb2.ModelVersionStatus.State.Value(state))
      if error:
        status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
        status.status.error_message = error
    return response


class ModelServer:
  """The model's base directory served over gRPC: `start()` loads the highest version and binds
  `host:port` (port 0 picks a free one, see `port`), `stop()` ends it after requests in flight."""

  def __init__(self, model_base: str, model_name: Optional[str] = None, host: str = LOCALHOST, port: int = 0,
               batching: BatchingParameters = BatchingParameters(), poll_seconds: float = 1.0,
               max_workers: int = 32):
    base = os.path.abspath(model_base)
    self.repository = ModelRepository(base, model_name or os.path.basename(base.rstrip('/')), poll_seconds)
    self._address = f'{host}:{port}'
    self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix='rpc'),
                               options=[('grpc.max_receive_message_length', MAX_MESSAGE_BYTES),
                                        ('grpc.max_send_message_length', MAX_MESSAGE_BYTES)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(self.repository, Batcher(batching)), self._server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(self.repository), self._server)
    self.port: Optional[int] = None

  def start(self) -> 'ModelServer':
    try:
      self.port = self._server.add_insecure_port(self._address)
    except RuntimeError as error:
      raise OSError(f'cannot listen on {self._address}: {error}') from error
    self.repository.start()
    self._server.start()
    return self

  def wait(self) -> None:
    """Blocks until the server stops."""
    self._server.wait_for_termination()

  def stop(self, grace_seconds: float = 5.0) -> None:
    self._server.stop(grace_seconds).wait()
    self.repository.stop()
