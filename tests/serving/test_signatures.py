"""The pushed model's signatures and the TF Serving files beside it, on the session's pipeline run."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import signatures, tf_serving
from serving.batching import BatchingParameters
from tests.serving.helpers import raw_column_types, read_rows, serialized

pytestmark = pytest.mark.e2e


def test_saved_model_cli_lists_the_signatures_with_their_names_and_dtypes(pushed):
  shown = subprocess.run([sys.executable, '-m', 'tensorflow.python.tools.saved_model_cli', 'show', '--dir',
                          pushed.version_dir, '--all'], capture_output=True, text=True, check=True).stdout
  blocks = {block.split("']")[0]: block for block in shown.split("signature_def['")[1:]}
  assert {signatures.DEFAULT, signatures.RAW, signatures.CLASSIFY, signatures.TRANSFORM} <= set(blocks)

  def tensors(block, kind):  # {name: (dtype, shape)} of a block's inputs or outputs
    part = block.split(f'contains the following {kind}(s):')[1].split('contains the following')[0]
    entries = part.split(f"{kind}s['")[1:]
    return {e.split("']")[0]: (e.split('dtype: ')[1].split()[0], e.split('shape: ')[1].split('\n')[0])
            for e in entries}

  assert tensors(blocks[signatures.DEFAULT], 'input') == {'examples': ('DT_STRING', '(-1)')}
  assert tensors(blocks[signatures.DEFAULT], 'output') == {'ctr': ('DT_FLOAT', '(-1)')}
  assert tensors(blocks[signatures.RAW], 'input') == {
      'domain': ('DT_STRING', '(-1)'), 'context': ('DT_STRING', '(-1)'), 'user_id': ('DT_INT64', '(-1)'),
      'item_id': ('DT_INT64', '(-1)'), 'category': ('DT_INT64', '(-1)'), 'price': ('DT_FLOAT', '(-1)'),
      'user_activity': ('DT_FLOAT', '(-1)')}
  assert tensors(blocks[signatures.RAW], 'output') == {'ctr': ('DT_FLOAT', '(-1)')}
  assert tensors(blocks[signatures.CLASSIFY], 'input') == {'inputs': ('DT_STRING', '(-1)')}
  assert tensors(blocks[signatures.CLASSIFY], 'output') == {'classes': ('DT_STRING', '(-1, 2)'),
                                                            'scores': ('DT_FLOAT', '(-1, 2)')}
  assert tensors(blocks[signatures.TRANSFORM], 'input') == {'examples': ('DT_STRING', '(-1)')}
  assert tensors(blocks[signatures.TRANSFORM], 'output')['domain_index'] == ('DT_INT64', '(-1)')


def test_raw_tensor_and_classify_signatures_agree_with_serving_default(pushed, saved_model):
  types = raw_column_types(saved_model)
  rows = read_rows(pushed.data_csv, 32)
  ctr = saved_model.signatures[signatures.DEFAULT](examples=tf.constant(serialized(rows, types)))['ctr'].numpy()
  raw = saved_model.signatures[signatures.RAW](
      **{c: tf.constant(np.array([r[c] for r in rows]).astype(t.as_numpy_dtype)) for c, t in types.items()})
  np.testing.assert_allclose(raw['ctr'].numpy(), ctr, atol=1e-6)
  classified = saved_model.signatures[signatures.CLASSIFY](inputs=tf.constant(serialized(rows, types)))
  np.testing.assert_allclose(classified['scores'].numpy(), np.stack([1 - ctr, ctr], axis=1), atol=1e-6)
  assert classified['classes'].numpy().tolist() == [[b'0', b'1']] * len(rows)


def test_an_example_missing_a_feature_is_refused_naming_it(pushed, saved_model):
  types = raw_column_types(saved_model)
  incomplete = {column: dtype for column, dtype in types.items() if column != 'item_id'}
  examples = tf.constant(serialized(read_rows(pushed.data_csv, 2), incomplete))
  with pytest.raises(tf.errors.InvalidArgumentError, match='Feature: item_id .* is required'):
    saved_model.signatures[signatures.DEFAULT](examples=examples)


def test_pushed_version_has_warmup_requests_from_eval_examples_that_replay(pushed, saved_model):
  logs = list(tf_serving.read_warmup_requests(pushed.version_dir))
  sizes = [len(tf.make_ndarray(log.predict_log.request.inputs['examples'])) for log in logs]
  assert sizes == list(tf_serving.WARMUP_CANDIDATES)
  for log in logs:
    request = log.predict_log.request
    assert request.model_spec.name == 'ctr' and request.model_spec.signature_name == signatures.DEFAULT
    examples = tf.make_ndarray(request.inputs['examples'])
    assert 'click' not in tf.train.Example.FromString(examples[0]).features.feature  # no labels in requests
    scores = saved_model.signatures[signatures.DEFAULT](examples=tf.constant(examples))['ctr'].numpy()
    assert scores.shape == (len(examples),) and np.all((scores > 0) & (scores < 1))


def test_models_config_serves_the_latest_version_and_batching_parameters_sit_beside_it(pushed):
  with open(os.path.join(pushed.serving_root, tf_serving.MODEL_CONFIG_FILE)) as f:
    config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
  (entry,) = config.model_config_list.config
  assert (entry.name, entry.base_path, entry.model_platform) == ('ctr', pushed.model_base, 'tensorflow')
  # TF Serving's latest-version policy, as the local server follows it: a new push is served, a deleted
  # one rolls back; pinning (`python -m serving.tf_serving DIR --pin N`) is the rollback tool.
  assert entry.model_version_policy.WhichOneof('policy_choice') == 'latest'
  assert entry.model_version_policy.latest.num_versions == 1
  assert tf_serving.read_batching_parameters(
      os.path.join(pushed.serving_root, tf_serving.BATCHING_PARAMETERS_FILE)) == BatchingParameters()
