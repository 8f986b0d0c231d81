"""Every backbone x domain adaptation exports as the Trainer exports it (`export_serving_model`: tf.Example in,
the session run's Transform graph inside), reloads as a SavedModel and serves what the Keras model computes.
The fast suite exports a covering set (every backbone once, every adaptation at least once, mlp + mlora among
them); the other pairs are marked `slow`."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from data import synthetic
from models import model as model_lib
from models.preprocessing import vocabulary_sizes
from models.trainer import export_serving_model
from serving import signatures
from tests.models import zoo
from tests.serving.helpers import raw_column_types, read_rows, serialized

pytestmark = pytest.mark.e2e
SPEC = synthetic.FEATURE_SPEC  # the session run's default data
ALL_PAIRS = [(b, a) for b in zoo.BACKBONE_NAMES for a in zoo.ADAPTATION_NAMES]
FAST_PAIRS = zoo.covering_pairs(zoo.BACKBONE_NAMES, zoo.ADAPTATION_NAMES, anchor=('mlp', 'mlora'))


@pytest.fixture(scope='module')
def transform_output(pushed):
  return tft.TFTransformOutput(glob.glob(os.path.join(pushed.output_dir, 'pipeline_root', 'Transform',
                                                      'transform_graph', '*'))[0])


@pytest.fixture(scope='module')
def examples(pushed, saved_model):
  return tf.constant(serialized(read_rows(pushed.data_csv, 64), raw_column_types(saved_model)))


@pytest.mark.parametrize('backbone,adaptation', zoo.matrix(ALL_PAIRS, FAST_PAIRS))
def test_saved_model_serves_the_keras_models_scores(backbone, adaptation, transform_output, examples, tmp_path):
  model = zoo.build(backbone, adaptation, spec=SPEC, vocab_sizes=vocabulary_sizes(SPEC, transform_output),
                    options={'alpha': 4})
  for weight in model.trainable_weights:  # adapters and gates away from their identity start: they must count
    weight.assign_add(tf.random.normal(weight.shape, stddev=0.1, seed=1))
  path = str(tmp_path / 'model')
  export_serving_model(model, transform_output, SPEC, path)

  loaded = tf.saved_model.load(path)
  served = loaded.signatures[signatures.DEFAULT](examples=examples)[model_lib.PREDICTION].numpy()
  transformed = loaded.signatures[signatures.TRANSFORM](examples=examples)
  expected = model({name: transformed[name] for name in model.input}).numpy().reshape(-1)
  assert served.shape == (len(examples),) and np.all(np.isfinite(served))
  np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
  assert np.std(served) > 1e-4
