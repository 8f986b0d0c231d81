"""The gRPC server on the session's pushed model: TF Serving's API, its errors, batching and version switches."""
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     predict_pb2)

from serving import signatures
from serving.repository import AVAILABLE, copy_version
from serving.server import METADATA_FIELD, ModelServer
from tests.serving.helpers import Stubs, ctr, predict_request, raw_column_types, read_rows, serialized

pytestmark = pytest.mark.e2e


@pytest.fixture(scope='module')
def model(pushed, saved_model):
  """The raw column types, 100 rows of raw data as serialized examples and their in-process scores."""
  types = raw_column_types(saved_model)
  examples = serialized(read_rows(pushed.data_csv, 100), types)
  scores = saved_model.signatures[signatures.DEFAULT](examples=tf.constant(examples))['ctr'].numpy()
  return {'types': types, 'examples': examples, 'scores': scores}


@pytest.fixture(scope='module')
def stubs(server):
  return Stubs(server.port)


def _code(call, request):
  with pytest.raises(grpc.RpcError) as raised:
    call(request)
  return raised.value.code(), raised.value.details()


def test_predict_answers_like_the_saved_model_and_says_which_version(stubs, model, pushed):
  response = stubs.prediction.Predict(predict_request(model['examples']))
  np.testing.assert_allclose(ctr(response), model['scores'], atol=1e-6)
  assert (response.model_spec.name, response.model_spec.version.value, response.model_spec.signature_name) == (
      'ctr', pushed.version, signatures.DEFAULT)
  pinned = stubs.prediction.Predict(predict_request(model['examples'][:3], version=pushed.version,
                                                    signature=signatures.DEFAULT))
  np.testing.assert_allclose(ctr(pinned), model['scores'][:3], atol=1e-6)


def test_raw_tensor_signature_over_grpc(stubs, model, pushed):
  rows = read_rows(pushed.data_csv, 5)
  request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name='ctr', signature_name=signatures.RAW))
  for column, dtype in model['types'].items():
    request.inputs[column].CopyFrom(tf.make_tensor_proto(np.array([r[column] for r in rows]).astype(
        dtype.as_numpy_dtype), dtype))
  np.testing.assert_allclose(ctr(stubs.prediction.Predict(request)), model['scores'][:5], atol=1e-6)
  del request.inputs['price']
  code, details = _code(stubs.prediction.Predict, request)
  assert code == grpc.StatusCode.INVALID_ARGUMENT and 'missing input price' in details


def test_output_filter(stubs, model):
  request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name='ctr', signature_name=signatures.CLASSIFY),
                                       output_filter=['scores'])
  request.inputs['inputs'].CopyFrom(tf.make_tensor_proto(model['examples'][:4], tf.string))
  assert list(stubs.prediction.Predict(request).outputs) == ['scores']
  request.output_filter.append('nope')
  assert _code(stubs.prediction.Predict, request)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_classify(stubs, model):
  request = classification_pb2.ClassificationRequest(
      model_spec=model_pb2.ModelSpec(name='ctr', signature_name=signatures.CLASSIFY))
  request.input.example_list.examples.extend(tf.train.Example.FromString(e) for e in model['examples'][:4])
  result = stubs.prediction.Classify(request).result
  for classification, score in zip(result.classifications, model['scores'][:4]):
    assert [c.label for c in classification.classes] == signatures.CLASSES
    np.testing.assert_allclose([c.score for c in classification.classes], [1 - score, score], atol=1e-6)
  request.model_spec.signature_name = ''  # serving_default returns ctr, not classes/scores
  code, details = _code(stubs.prediction.Classify, request)
  assert code == grpc.StatusCode.INVALID_ARGUMENT and 'not a classification signature' in details


def test_metadata_and_status(stubs, pushed):
  request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=model_pb2.ModelSpec(name='ctr'),
                                                           metadata_field=[METADATA_FIELD])
  response = stubs.prediction.GetModelMetadata(request)
  signature_map = get_model_metadata_pb2.SignatureDefMap()
  response.metadata[METADATA_FIELD].Unpack(signature_map)
  assert {signatures.DEFAULT, signatures.RAW, signatures.CLASSIFY, signatures.TRANSFORM} <= set(
      signature_map.signature_def)
  assert response.model_spec.version.value == pushed.version
  status = stubs.model.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
      model_spec=model_pb2.ModelSpec(name='ctr')))
  assert [(s.version, s.state) for s in status.model_version_status] == [
      (pushed.version, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def _incomplete_example(model, feature):
  example = tf.train.Example.FromString(model['examples'][0])
  del example.features.feature[feature]
  return example.SerializeToString()


@pytest.mark.parametrize('case,code,message', [
    ('wrong model', grpc.StatusCode.NOT_FOUND, "no model 'other'"),
    ('wrong version', grpc.StatusCode.NOT_FOUND, 'version 7 is not served'),
    ('unknown signature', grpc.StatusCode.INVALID_ARGUMENT, "no signature 'nope'"),
    ('missing feature', grpc.StatusCode.INVALID_ARGUMENT, 'Feature: item_id (data type: int64) is required'),
    ('malformed example', grpc.StatusCode.INVALID_ARGUMENT, 'Could not parse example input'),
    ('wrong dtype', grpc.StatusCode.INVALID_ARGUMENT, 'input examples of signature serving_default must be string'),
])
def test_bad_requests_get_their_status_and_the_server_goes_on(stubs, model, case, code, message):
  request = {
      'wrong model': lambda: predict_request(model['examples'][:1], name='other'),
      'wrong version': lambda: predict_request(model['examples'][:1], version=7),
      'unknown signature': lambda: predict_request(model['examples'][:1], signature='nope'),
      'missing feature': lambda: predict_request([model['examples'][1], _incomplete_example(model, 'item_id')]),
      'malformed example': lambda: predict_request([b'not a tf.Example']),
      'wrong dtype': lambda: predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name='ctr'), inputs={
          'examples': tf.make_tensor_proto([1.0, 2.0])}),
  }[case]()
  got_code, details = _code(stubs.prediction.Predict, request)
  assert got_code == code and message in details
  assert ctr(stubs.prediction.Predict(predict_request(model['examples'][:2]))).shape == (2,)  # still serving


def test_an_unknown_domain_is_scored_by_the_backbone(stubs, model):
  example = tf.train.Example.FromString(model['examples'][0])
  example.features.feature['domain'].bytes_list.value[:] = [b'a_new_tab']
  scores = ctr(stubs.prediction.Predict(predict_request([example.SerializeToString()])))
  assert scores.shape == (1,) and 0 < scores[0] < 1


def _load(port, examples, clients, requests_each, until=None):
  """`clients` threads each sending up to `requests_each` Predict requests (stopping early once `until` is
  set); returns [(version, scores)] of every answer and the errors."""
  stubs = Stubs(port)
  answers, errors = [], []

  def client():
    for _ in range(requests_each):
      try:
        response = stubs.prediction.Predict(predict_request(examples), timeout=30)
        answers.append((response.model_spec.version.value, ctr(response)))
      except grpc.RpcError as error:
        errors.append(error)
      if until is not None and until.is_set():
        return
  threads = [threading.Thread(target=client) for _ in range(clients)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(60)
  return answers, errors


def test_concurrent_requests_are_answered_right(server, model):
  answers, errors = _load(server.port, model['examples'][:10], clients=8, requests_each=5)
  assert not errors and len(answers) == 40
  for _, scores in answers:
    np.testing.assert_allclose(scores, model['scores'][:10], atol=1e-6)


def test_a_new_version_is_switched_to_under_load_without_dropping_requests(pushed, model, tmp_path):
  base = pushed.copy_base(tmp_path)
  model_server = ModelServer(base, poll_seconds=0.2).start()
  try:
    switched = threading.Event()

    def push_new_version():
      time.sleep(0.5)  # some requests on the first version
      copy_version(pushed.version_dir, base, pushed.version + 1)
      deadline = time.time() + 60
      while model_server.repository.states().get(pushed.version + 1, ('',))[0] != AVAILABLE and \
          time.time() < deadline:
        time.sleep(0.1)
      time.sleep(0.3)  # and some on the new one
      switched.set()

    pusher = threading.Thread(target=push_new_version)
    pusher.start()
    answers, errors = _load(model_server.port, model['examples'][:20], clients=4, requests_each=2000,
                            until=switched)
    pusher.join()
    assert not errors
    versions = [version for version, _ in answers]
    assert versions[0] == pushed.version and versions[-1] == pushed.version + 1
    for _, scores in answers:
      np.testing.assert_allclose(scores, model['scores'][:20], atol=1e-6)
    stubs = Stubs(model_server.port)
    code, _ = _code(stubs.prediction.Predict, predict_request(model['examples'][:1], version=pushed.version))
    assert code == grpc.StatusCode.NOT_FOUND  # the old version is unloaded
  finally:
    model_server.stop()
