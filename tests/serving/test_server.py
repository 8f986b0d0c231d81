"""The gRPC server on the session's pushed model: TF Serving's API, its errors, batching and version switches."""
import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     predict_pb2, regression_pb2)

from serving import signatures, tf_serving
from serving.batching import BatchingParameters
from serving.repository import AVAILABLE, END, LoadRetry, VersionPolicy, copy_version
from serving.server import METADATA_FIELD, ModelServer
from tests.serving.helpers import (Load, Stubs, ctr, predict_request, raw_column_types, read_rows, serialized,
                                   wait_for)

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


def _retyped_example(model, feature='price'):
  """The first example with a float feature sent as int64 (a type the model does not parse)."""
  example = tf.train.Example.FromString(model['examples'][0])
  example.features.feature[feature].ClearField('float_list')
  example.features.feature[feature].int64_list.value.append(3)
  return example.SerializeToString()


def _classify_request(examples, signature=signatures.CLASSIFY):
  request = classification_pb2.ClassificationRequest(model_spec=model_pb2.ModelSpec(name='ctr',
                                                                                    signature_name=signature))
  request.input.example_list.examples.extend(tf.train.Example.FromString(e) for e in examples)
  return request


def _regress_request(examples, signature):
  request = regression_pb2.RegressionRequest(model_spec=model_pb2.ModelSpec(name='ctr', signature_name=signature))
  request.input.example_list.examples.extend(tf.train.Example.FromString(e) for e in examples)
  return request


# (RPC, request) -> the status TF Serving answers with and a part of its message (tensorflow_serving's
# predict_util.cc, classifier.cc, regressor.cc, get_model_status_impl.cc, server_core.cc).
@pytest.mark.parametrize('case,code,message', [
    ('wrong model', grpc.StatusCode.NOT_FOUND, 'Servable not found for request: Latest(other)'),
    ('wrong version', grpc.StatusCode.NOT_FOUND, 'Servable not found for request: Specific(ctr, 7)'),
    ('version label', grpc.StatusCode.INVALID_ARGUMENT, 'Unrecognized servable version label: stable'),
    ('no model spec', grpc.StatusCode.INVALID_ARGUMENT, 'Missing ModelSpec'),
    ('unknown signature', grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found'),
    ('missing feature', grpc.StatusCode.INVALID_ARGUMENT, 'Feature: item_id (data type: int64) is required'),
    ('malformed example', grpc.StatusCode.INVALID_ARGUMENT, 'Could not parse example input'),
    ('invalid UTF-8 example', grpc.StatusCode.INVALID_ARGUMENT, "Could not parse example input, value: '\\xff'"),
    ('wrong dtype', grpc.StatusCode.INVALID_ARGUMENT, 'input examples of signature serving_default must be string'),
    ('classify: unknown signature', grpc.StatusCode.INVALID_ARGUMENT, 'No signature was found with the name: nope'),
    ('classify: not a classifier', grpc.StatusCode.FAILED_PRECONDITION, 'No classification inputs found'),
    ('classify: no examples', grpc.StatusCode.INVALID_ARGUMENT, 'Input is empty'),
    ('regress: a classifier', grpc.StatusCode.INVALID_ARGUMENT, 'Expected one output Tensor'),
    ('regress: not a regressor', grpc.StatusCode.FAILED_PRECONDITION, 'No regression inputs found'),
    ('regress: unknown signature', grpc.StatusCode.INVALID_ARGUMENT, 'No signature was found with the name: nope'),
    ('metadata: no field', grpc.StatusCode.INVALID_ARGUMENT, 'must specify at least one metadata_field'),
    ('status: no model spec', grpc.StatusCode.INVALID_ARGUMENT, 'Missing ModelSpec'),
    ('status: wrong model', grpc.StatusCode.NOT_FOUND, 'Could not find any versions of model other'),
    ('status: wrong version', grpc.StatusCode.NOT_FOUND, 'Could not find version 7 of model ctr'),
])
def test_bad_requests_get_tf_servings_status_and_the_server_goes_on(stubs, model, case, code, message):
  predict, classify, regress = stubs.prediction.Predict, stubs.prediction.Classify, stubs.prediction.Regress
  metadata, status = stubs.prediction.GetModelMetadata, stubs.model.GetModelStatus
  labelled = predict_request(model['examples'][:1])
  labelled.model_spec.version_label = 'stable'
  call, request = {
      'wrong model': (predict, predict_request(model['examples'][:1], name='other')),
      'wrong version': (predict, predict_request(model['examples'][:1], version=7)),
      'version label': (predict, labelled),
      'no model spec': (predict, predict_pb2.PredictRequest(inputs={'examples': tf.make_tensor_proto([b'x'])})),
      'unknown signature': (predict, predict_request(model['examples'][:1], signature='nope')),
      'missing feature': (predict, predict_request([model['examples'][1], _incomplete_example(model, 'item_id')])),
      'malformed example': (predict, predict_request([b'not a tf.Example'])),
      'invalid UTF-8 example': (predict, predict_request([model['examples'][0], b'\xff'])),
      'wrong dtype': (predict, predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name='ctr'), inputs={
          'examples': tf.make_tensor_proto([1.0, 2.0])})),
      'classify: unknown signature': (classify, _classify_request(model['examples'][:1], 'nope')),
      'classify: not a classifier': (classify, _classify_request(model['examples'][:1], '')),
      'classify: no examples': (classify, _classify_request([])),
      'regress: a classifier': (regress, _regress_request(model['examples'][:1], signatures.CLASSIFY)),
      'regress: not a regressor': (regress, _regress_request(model['examples'][:1], '')),
      'regress: unknown signature': (regress, _regress_request(model['examples'][:1], 'nope')),
      'metadata: no field': (metadata, get_model_metadata_pb2.GetModelMetadataRequest(
          model_spec=model_pb2.ModelSpec(name='ctr'))),
      'status: no model spec': (status, get_model_status_pb2.GetModelStatusRequest()),
      'status: wrong model': (status, get_model_status_pb2.GetModelStatusRequest(
          model_spec=model_pb2.ModelSpec(name='other'))),
      'status: wrong version': (status, get_model_status_pb2.GetModelStatusRequest(
          model_spec=model_pb2.ModelSpec(name='ctr', version=wrappers_pb2.Int64Value(value=7)))),
  }[case]
  got_code, details = _code(call, request)
  assert (got_code, message in details) == (code, True), details
  assert ctr(predict(predict_request(model['examples'][:2]))).shape == (2,)  # still serving


def test_an_unknown_domain_is_scored_by_the_backbone(stubs, model, saved_model):
  example = tf.train.Example.FromString(model['examples'][0])
  for domain in (b'a_new_tab', b'\xff\xfe not UTF-8'):  # a valid tf.Example: its bytes need not be UTF-8
    example.features.feature['domain'].bytes_list.value[:] = [domain]
    serialized_example = example.SerializeToString()
    scores = ctr(stubs.prediction.Predict(predict_request([serialized_example])))
    in_process = saved_model.signatures[signatures.DEFAULT](examples=tf.constant([serialized_example]))['ctr']
    assert scores.shape == (1,) and 0 < scores[0] < 1
    np.testing.assert_allclose(scores, in_process.numpy(), atol=1e-6)


def _raw_predict(channel, data: bytes):
  """Predict with `data` as the request's bytes, whatever they are."""
  return channel.unary_unary('/tensorflow.serving.PredictionService/Predict',
                             response_deserializer=predict_pb2.PredictResponse.FromString)(data, timeout=60)


def _garbage(model, max_batch_size):
  """{kind: call(stubs)} of malformed requests, each of which must be refused with INVALID_ARGUMENT."""
  good = model['examples'][0]
  random_bytes = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()
  request_bytes = predict_request(model['examples'][:3]).SerializeToString()
  huge = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name='ctr'))
  huge.inputs['examples'].CopyFrom(tf.make_tensor_proto([good], tf.string))
  huge.inputs['examples'].tensor_shape.dim[0].size = 10 ** 12  # one value declared to fill 10^12 rows
  rank2 = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name='ctr'))
  rank2.inputs['examples'].CopyFrom(tf.make_tensor_proto([[good], [good]], tf.string))
  too_many = (model['examples'] * (max_batch_size // len(model['examples']) + 1))[:max_batch_size + 1]
  return {
      'random bytes as an example': lambda s: s.prediction.Predict(predict_request([good, random_bytes])),
      'truncated example': lambda s: s.prediction.Predict(predict_request([good[:len(good) // 2]])),
      'invalid UTF-8 (0xff) as an example': lambda s: s.prediction.Predict(predict_request([b'\xff', good])),
      'feature of the wrong type': lambda s: s.prediction.Predict(predict_request([good, _retyped_example(model)])),
      'feature missing': lambda s: s.prediction.Predict(predict_request([_incomplete_example(model, 'price')])),
      'classify: feature of the wrong type': lambda s: s.prediction.Classify(
          _classify_request([good, _retyped_example(model)])),
      'input of the wrong dtype': lambda s: s.prediction.Predict(predict_pb2.PredictRequest(
          model_spec=model_pb2.ModelSpec(name='ctr'), inputs={'examples': tf.make_tensor_proto([1, 2])})),
      'input of rank 2': lambda s: s.prediction.Predict(rank2),
      'shape of 10^12 rows': lambda s: s.prediction.Predict(huge),
      f'{max_batch_size + 1} rows (max_batch_size {max_batch_size})': lambda s: s.prediction.Predict(
          predict_request(too_many)),
      'truncated request': lambda s: _raw_predict(s.channel, request_bytes[:len(request_bytes) // 2]),
      'random bytes as the request': lambda s: _raw_predict(s.channel, random_bytes),
      'request with invalid UTF-8 in a string field': lambda s: _raw_predict(
          s.channel, request_bytes.replace(b'ctr', b'c\xffr')),
  }


def test_malformed_requests_fail_alone_beside_concurrent_good_ones(pushed, model):
  """Garbage of every kind, sent concurrently with good requests to a server that batches them together:
  each bad request gets INVALID_ARGUMENT, every good one its right scores."""
  parameters = BatchingParameters(max_batch_size=64, batch_timeout_micros=50_000, num_batch_threads=2)
  model_server = ModelServer(pushed.model_base, batching=parameters, model_config_file=None).start()
  garbage = _garbage(model, parameters.max_batch_size)
  refused = {kind: [] for kind in garbage}
  good_requests, good_clients, bad_clients, rounds = 12, 4, 2, 2
  try:
    wait_for(lambda: model_server.repository.served_versions(), 120, 'the model to load')

    def bad_client(order):
      stubs = Stubs(model_server.port)
      for _ in range(rounds):
        for kind in order:
          try:
            garbage[kind](stubs)
            refused[kind].append('answered')
          except grpc.RpcError as error:
            refused[kind].append((error.code(), error.details()))

    with Load(model_server.port, model['examples'][:10], clients=good_clients) as load:
      kinds = list(garbage)  # each bad client sends every kind, in its own order
      bad = [threading.Thread(target=bad_client, args=(kinds[i * 5:] + kinds[:i * 5],)) for i in range(bad_clients)]
      for thread in bad:
        thread.start()
      for thread in bad:
        thread.join(300)
      wait_for(lambda: all(len(a) >= good_requests for a in load.answers), 300, 'the good requests')
    assert not load.errors, [(e.code(), e.details()) for e in load.errors[:3]]
    for answers in load.answers:
      for _, scores in answers:
        np.testing.assert_allclose(scores, model['scores'][:10], atol=1e-6)
    for kind, outcomes in refused.items():
      codes = [outcome if outcome == 'answered' else outcome[0] for outcome in outcomes]
      assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * rounds * bad_clients, (kind, outcomes[0])
    assert 'Task size 65 is larger than maximum input batch size 64' in refused['65 rows (max_batch_size 64)'][0][1]
    assert model_server.batcher.stats['rerun_alone'] > 0  # bad requests were batched with good ones
    full = ctr(Stubs(model_server.port).prediction.Predict(predict_request(model['examples'][:64])))
    np.testing.assert_allclose(full, model['scores'][:64], atol=1e-6)  # max_batch_size rows pass
  finally:
    model_server.stop()


def test_concurrent_requests_are_answered_right(server, model):
  with Load(server.port, model['examples'][:10], clients=8) as load:
    wait_for(lambda: all(len(a) >= 5 for a in load.answers), 120, '5 answers per client')
  assert not load.errors
  for answers in load.answers:
    for _, scores in answers:
      np.testing.assert_allclose(scores, model['scores'][:10], atol=1e-6)


def _status(model_server, version):
  return model_server.repository.statuses().get(version)


def _served_by(load, version, timeout=120.0, what=''):
  """Waits until every client of `load` is answered by `version`; returns the seconds it took."""
  began = time.monotonic()
  wait_for(lambda: load.every_client_answered_by(version), timeout, what or f'answers from version {version}')
  return time.monotonic() - began


def test_a_new_version_is_switched_to_under_load_without_dropping_requests(pushed, model, tmp_path):
  base = pushed.copy_base(tmp_path)
  old, new = pushed.version, pushed.version + 1
  model_server = ModelServer(base, poll_seconds=0.2).start()
  try:
    with Load(model_server.port, model['examples'][:20], clients=4) as load:
      wait_for(lambda: all(load.answers), 120, 'answers from the first version')
      copy_version(pushed.version_dir, base, new)  # published by rename, as Pusher's copy should be
      seconds = _served_by(load, new)
    print(f'\nTIMING switch to a new version under load: {seconds:.2f} s')
    assert not load.errors
    for index, answers in enumerate(load.answers):
      versions = load.versions(index)
      assert versions[0] == old and versions[-1] == new and versions == sorted(versions)
      for _, scores in answers:
        np.testing.assert_allclose(scores, model['scores'][:20], atol=1e-6)
    code, _ = _code(Stubs(model_server.port).prediction.Predict, predict_request(model['examples'][:1], version=old))
    assert code == grpc.StatusCode.NOT_FOUND  # the old version is unloaded
    assert (_status(model_server, old).state, _status(model_server, new).state) == (END, AVAILABLE)
  finally:
    model_server.stop()


def test_rollback_by_pinning_in_models_config_or_removing_the_newest_version(pushed, model, tmp_path):
  """Both rollbacks TF Serving knows, under load, with no request dropped: pin the previous version in
  models.config (and unpin), then delete the newest version's directory."""
  base = pushed.copy_base(tmp_path)
  old, new = pushed.version, pushed.version + 1
  copy_version(pushed.version_dir, base, new)
  serving_root = str(tmp_path)
  model_server = ModelServer(base, poll_seconds=0.2).start()  # follows the models.config beside the base
  try:
    assert model_server.repository.served_versions() == [new]  # latest: the older version is not loaded
    with Load(model_server.port, model['examples'][:20], clients=1) as load:
      wait_for(lambda: all(load.answers), 120, 'answers')
      tf_serving.write_model_config(serving_root, tf_serving.model_config('ctr', base, pinned=[old]))
      pinned = _served_by(load, old, what='the pinned version')
      assert model_server.repository.policy == VersionPolicy.specific(old)
      tf_serving.set_version_policy(serving_root, 'ctr')  # back to the latest version
      unpinned = _served_by(load, new, what='the latest version again')
      shutil.rmtree(os.path.join(base, str(new)))  # a bad push, deleted
      removed = _served_by(load, old, what='the version left after the newest was removed')
      wait_for(lambda: model_server.repository.served_versions() == [old], 60, 'the removed version unloaded')
    print(f'\nTIMING rollback by pin: {pinned:.2f} s, unpin: {unpinned:.2f} s, by removing the newest: {removed:.2f} s')
    assert not load.errors
    assert (_status(model_server, old).state, _status(model_server, new).state) == (AVAILABLE, END)
    for answers in load.answers:
      for _, scores in answers:
        np.testing.assert_allclose(scores, model['scores'][:20], atol=1e-6)
  finally:
    model_server.stop()


def _publish_corrupt(source_dir, base, version, saved_model_pb: bytes):
  """A version directory whose saved_model.pb is `saved_model_pb`, published by rename (complete, but bad)."""
  temporary = os.path.join(base, f'.{version}.tmp-test')
  shutil.copytree(source_dir, temporary)
  with open(os.path.join(temporary, 'saved_model.pb'), 'wb') as f:
    f.write(saved_model_pb)
  os.rename(temporary, os.path.join(base, str(version)))


def test_a_failed_load_is_retried_then_ended_and_a_republished_or_completed_version_loads(pushed, model, tmp_path):
  base = pushed.copy_base(tmp_path)
  old, corrupt, half_written = pushed.version, pushed.version + 1, pushed.version + 2
  retry = LoadRetry(max_num_load_retries=2, interval_seconds=0.2, backoff=2.0)
  model_server = ModelServer(base, poll_seconds=0.1, load_retry=retry).start()
  stubs = Stubs(model_server.port)
  repository = model_server.repository
  pb_path = os.path.join(pushed.version_dir, 'saved_model.pb')
  with open(pb_path, 'rb') as f:
    pb = f.read()
  try:
    began = time.monotonic()
    _publish_corrupt(pushed.version_dir, base, corrupt, b'\xff not a SavedModel ' * 100)
    status = wait_for(lambda: _status(model_server, corrupt) and _status(model_server, corrupt).state == END and
                      _status(model_server, corrupt), 120, 'the corrupt version to be given up on')
    gave_up = time.monotonic() - began
    assert status.attempts == 1 + retry.max_num_load_retries and status.error and \
        status.code != grpc.StatusCode.OK
    answer = stubs.prediction.Predict(predict_request(model['examples'][:3]))  # still serving the old version
    assert answer.model_spec.version.value == old
    reported = stubs.model.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name='ctr'))).model_version_status
    ended = {s.version: s for s in reported}[corrupt]
    assert ended.state == get_model_status_pb2.ModelVersionStatus.END and ended.status.error_message
    polls = repository.polls
    wait_for(lambda: repository.polls >= polls + 5, 60, 'five more polls')
    assert _status(model_server, corrupt).attempts == status.attempts  # not tried again: the directory is unchanged

    began = time.monotonic()
    os.rename(os.path.join(base, str(corrupt)), os.path.join(base, '.corrupt'))  # re-published by rename
    copy_version(pushed.version_dir, base, corrupt)
    wait_for(lambda: _status(model_server, corrupt).state == AVAILABLE, 120, 'the re-published version')
    republished = time.monotonic() - began
    assert stubs.prediction.Predict(predict_request(model['examples'][:3])).model_spec.version.value == corrupt

    # Pusher's copy: the files in place, saved_model.pb last and seen half-written: the load fails, is
    # retried, and succeeds once the file is whole.
    target = os.path.join(base, str(half_written))
    shutil.copytree(pushed.version_dir, target, ignore=shutil.ignore_patterns('saved_model.pb'))
    with open(os.path.join(target, 'saved_model.pb'), 'wb') as f:
      f.write(pb[:len(pb) // 2])
    began = time.monotonic()
    wait_for(lambda: _status(model_server, half_written) and _status(model_server, half_written).error, 120,
             'a failed load of the half-written version')
    with open(os.path.join(target, 'saved_model.pb'), 'ab') as f:
      f.write(pb[len(pb) // 2:])
    wait_for(lambda: _status(model_server, half_written).state == AVAILABLE, 120, 'the completed version')
    completed = time.monotonic() - began
    answer = stubs.prediction.Predict(predict_request(model['examples'][:3]))
    assert answer.model_spec.version.value == half_written
    np.testing.assert_allclose(ctr(answer), model['scores'][:3], atol=1e-6)
    print(f'\nTIMING corrupt version given up after {gave_up:.2f} s ({status.attempts} attempts); re-published one '
          f'served after {republished:.2f} s; half-written one served {completed:.2f} s after its first failed load')
  finally:
    model_server.stop()
