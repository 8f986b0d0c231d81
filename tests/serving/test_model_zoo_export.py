"""Every backbone x domain adaptation exports as the Trainer exports it (`serving_signatures`: tf.Example in,
the session run's Transform graph inside), reloads as a SavedModel and serves what the Keras model computes."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from data import synthetic
from models import model as model_lib
from models.adaptation import ADAPTATIONS
from models.backbones import BACKBONES
from models.preprocessing import vocabulary_sizes
from models.trainer import export_serving_model
from serving import signatures
from tests.serving.helpers import raw_column_types, read_rows, serialized

pytestmark = pytest.mark.e2e
SPEC = synthetic.FEATURE_SPEC  # the session run's default data


@pytest.fixture(scope='module')
def transform_output(pushed):
  return tft.TFTransformOutput(glob.glob(os.path.join(pushed.output_dir, 'pipeline_root', 'Transform',
                                                      'transform_graph', '*'))[0])


@pytest.fixture(scope='module')
def examples(pushed, saved_model):
  return tf.constant(serialized(read_rows(pushed.data_csv, 64), raw_column_types(saved_model)))


@pytest.mark.parametrize('adaptation', sorted(ADAPTATIONS))
@pytest.mark.parametrize('backbone', sorted(BACKBONES))
def test_saved_model_serves_the_keras_models_scores(backbone, adaptation, transform_output, examples, tmp_path):
  tf_keras.utils.set_random_seed(0)
  model = model_lib.build_model(SPEC, vocabulary_sizes(SPEC, transform_output), (16, 8), embedding_dim=4,
                                backbone=backbone, adaptation=adaptation, options={'alpha': 4})
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
