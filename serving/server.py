"""A gRPC server speaking TF Serving's API over the pushed model directory, for local use and tests.

`PredictionServicer` answers tensorflow.serving.PredictionService (Predict, Classify, Regress,
GetModelMetadata; MultiInference answers UNIMPLEMENTED), `ModelStatusServicer` ModelService.GetModelStatus,
and `ModelServer` runs both on 127.0.0.1 by default. Every failure becomes the request's gRPC status, with
TF Serving's codes: the server never stops because of a request. Requests are parsed here rather than by
gRPC, so that one that is not a valid message (truncated, random bytes, a string field that is not UTF-8)
is refused with INVALID_ARGUMENT rather than gRPC's INTERNAL "Exception deserializing request!".
"""
import functools
import logging
import os
from concurrent import futures
from typing import Optional

import grpc
import tensorflow as tf
from google.protobuf import message as protobuf_message
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, inference_pb2,
                                     model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from serving import tf_serving
from serving.batching import Batcher, BatchingParameters
from serving.errors import RequestError
from serving.model import CLASSIFY, PREDICT, REGRESS, ServedModel
from serving.repository import LoadRetry, ModelRepository, VersionPolicy

_LOG = logging.getLogger(__name__)
LOCALHOST = '127.0.0.1'
METADATA_FIELD = 'signature_def'  # the one GetModelMetadata field TF Serving knows
MAX_MESSAGE_BYTES = 64 << 20
BESIDE_BASE = 'beside-base'  # ModelServer's default model_config_file: <model base>/../models.config
_INVALID = grpc.StatusCode.INVALID_ARGUMENT


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


def _model_spec(request):
  """The request's model_spec; INVALID_ARGUMENT "Missing ModelSpec" (TF Serving's answer) without one."""
  if not request.HasField('model_spec'):
    raise RequestError(_INVALID, 'Missing ModelSpec')
  return request.model_spec


def _answered_spec(model: ServedModel, signature_name: str, spec):
  """The model_spec of a response: the model and version that answered, and the signature."""
  spec.name, spec.signature_name = model.name, signature_name
  spec.version.value = model.version


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Predict, Classify, Regress and GetModelMetadata on the repository's served versions, batched by
  `batcher`."""

  def __init__(self, repository: ModelRepository, batcher: Batcher):
    self._repository, self._batcher = repository, batcher

  @_answers_with_status
  def Predict(self, request, context):  # noqa: N802 (gRPC's name)
    model = self._repository.resolve(_model_spec(request))
    signature = model.signature(request.model_spec.signature_name, PREDICT)
    unknown = sorted(set(request.output_filter) - set(signature.outputs))
    if unknown:
      raise RequestError(_INVALID, f'output_filter names {", ".join(unknown)}, not outputs of signature '
                                   f'{signature.name}')
    outputs = self._batcher.run(signature, signature.predict_inputs(request.inputs))
    response = predict_pb2.PredictResponse()
    _answered_spec(model, signature.name, response.model_spec)
    for name in request.output_filter or outputs:
      response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
    return response

  @_answers_with_status
  def Classify(self, request, context):  # noqa: N802
    model = self._repository.resolve(_model_spec(request))
    signature = model.signature(request.model_spec.signature_name, CLASSIFY)
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
  def Regress(self, request, context):  # noqa: N802
    model = self._repository.resolve(_model_spec(request))
    signature = model.signature(request.model_spec.signature_name, REGRESS)
    values = self._batcher.run(signature, signature.regress_inputs(request.input))[tf.saved_model.REGRESS_OUTPUTS]
    if values.dtype.kind != 'f' or not (values.ndim == 1 or values.ndim == 2 and values.shape[1] == 1):
      raise RequestError(_INVALID, f'Expected output Tensor of DT_FLOAT with shape [batch_size] or [batch_size, 1], '
                                   f'got {values.dtype} {list(values.shape)}')
    response = regression_pb2.RegressionResponse()
    _answered_spec(model, signature.name, response.model_spec)
    for value in values.reshape(-1):
      response.result.regressions.add(value=float(value))
    return response

  @_answers_with_status
  def GetModelMetadata(self, request, context):  # noqa: N802
    model = self._repository.resolve(_model_spec(request))
    if not request.metadata_field:
      raise RequestError(_INVALID, 'GetModelMetadataRequest must specify at least one metadata_field')
    unknown = sorted(set(request.metadata_field) - {METADATA_FIELD})
    if unknown:
      raise RequestError(_INVALID, f'Metadata field {unknown[0]} is not supported (only {METADATA_FIELD!r} is)')
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _answered_spec(model, '', response.model_spec)
    response.metadata[METADATA_FIELD].Pack(get_model_metadata_pb2.SignatureDefMap(signature_def=model.signature_defs))
    return response


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
  """GetModelStatus: the state of each version the repository has seen (HandleReloadConfigRequest answers
  UNIMPLEMENTED: this server reads the version policy from models.config at every poll instead)."""

  def __init__(self, repository: ModelRepository):
    self._repository = repository

  @_answers_with_status
  def GetModelStatus(self, request, context):  # noqa: N802
    spec = _model_spec(request)
    statuses = self._repository.statuses() if spec.name == self._repository.name else {}
    if not statuses:
      raise RequestError(grpc.StatusCode.NOT_FOUND, f'Could not find any versions of model {spec.name}')
    if spec.HasField('version'):
      if spec.version.value not in statuses:
        raise RequestError(grpc.StatusCode.NOT_FOUND, f'Could not find version {spec.version.value} of model '
                                                      f'{spec.name}')
      statuses = {spec.version.value: statuses[spec.version.value]}
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, status in sorted(statuses.items(), reverse=True):
      entry = response.model_version_status.add(
          version=version, state=get_model_status_pb2.ModelVersionStatus.State.Value(status.state))
      if status.code != grpc.StatusCode.OK:
        entry.status.error_code = status.code.value[0]
        entry.status.error_message = status.error
    return response


# {service: {method: (request type, response type)}}: what the servicers above answer.
_METHODS = {
    'tensorflow.serving.PredictionService': {
        'Classify': (classification_pb2.ClassificationRequest, classification_pb2.ClassificationResponse),
        'Regress': (regression_pb2.RegressionRequest, regression_pb2.RegressionResponse),
        'Predict': (predict_pb2.PredictRequest, predict_pb2.PredictResponse),
        'MultiInference': (inference_pb2.MultiInferenceRequest, inference_pb2.MultiInferenceResponse),
        'GetModelMetadata': (get_model_metadata_pb2.GetModelMetadataRequest,
                             get_model_metadata_pb2.GetModelMetadataResponse),
    },
    'tensorflow.serving.ModelService': {
        'GetModelStatus': (get_model_status_pb2.GetModelStatusRequest, get_model_status_pb2.GetModelStatusResponse),
        'HandleReloadConfigRequest': (model_management_pb2.ReloadConfigRequest,
                                      model_management_pb2.ReloadConfigResponse),
    },
}


def _parsing(method, request_type):
  """The RPC handler: parses the request's bytes, refusing with INVALID_ARGUMENT what does not parse."""
  def handle(data: bytes, context):
    try:
      request = request_type.FromString(data)
    except (protobuf_message.DecodeError, UnicodeDecodeError, ValueError) as error:
      context.abort(_INVALID, f'the request is not a valid {request_type.DESCRIPTOR.full_name} ({error})')
    return method(request, context)
  return handle


def add_servicer(servicer, service: str, server: grpc.Server) -> None:
  """Registers `servicer`'s methods for `service` (like the generated add_*Servicer_to_server), with the
  request bytes parsed by `_parsing`."""
  handlers = {name: grpc.unary_unary_rpc_method_handler(_parsing(getattr(servicer, name), request),
                                                        response_serializer=response.SerializeToString)
              for name, (request, response) in _METHODS[service].items()}
  server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


class ModelServer:
  """The model's base directory served over gRPC: `start()` loads the versions the version policy names and
  binds `host:port` (port 0 picks a free one, see `port`), `stop()` ends it after requests in flight.

  The version policy is `version_policy` if given, else the model's entry in `model_config_file` (by default
  the models.config beside the base, as `tfx_runner.py run` writes it; None: no file), re-read at every poll,
  else TF Serving's default, the latest version. A version that fails to load is retried as `load_retry`
  says (see serving/README.md).
  """

  def __init__(self, model_base: str, model_name: Optional[str] = None, host: str = LOCALHOST, port: int = 0,
               batching: BatchingParameters = BatchingParameters(), poll_seconds: float = 1.0,
               max_workers: int = 32, version_policy: Optional[VersionPolicy] = None,
               model_config_file: Optional[str] = BESIDE_BASE, load_retry: LoadRetry = LoadRetry()):
    base = os.path.abspath(model_base)
    if model_config_file == BESIDE_BASE:
      model_config_file = os.path.join(os.path.dirname(base.rstrip('/')), tf_serving.MODEL_CONFIG_FILE)
    self.repository = ModelRepository(base, model_name or os.path.basename(base.rstrip('/')), poll_seconds,
                                      policy=version_policy, model_config_file=model_config_file, retry=load_retry)
    self._address = f'{host}:{port}'
    self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix='rpc'),
                               options=[('grpc.max_receive_message_length', MAX_MESSAGE_BYTES),
                                        ('grpc.max_send_message_length', MAX_MESSAGE_BYTES)])
    self.batcher = Batcher(batching)
    add_servicer(PredictionServicer(self.repository, self.batcher), 'tensorflow.serving.PredictionService',
                 self._server)
    add_servicer(ModelStatusServicer(self.repository), 'tensorflow.serving.ModelService', self._server)
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
