"""The Trainer's calibration step: the per-domain Platt scaling fitted on the validation batches, nothing else
moved."""
import numpy as np
import tensorflow as tf
import tf_keras

from models import model as model_lib
from models.features import transformed_name
from models.trainer import fit_calibration
from tests.models import zoo

SPEC = zoo.SPEC

ROWS = 4096


def _validation(model, scale):
  """Batches whose labels follow sigmoid(scale * the model's logit): an over-confident model for scale < 1."""
  features = zoo.features(n=ROWS, seed=1)
  tags = transformed_name('tags')  # at least one tag a row: an all-padding row pools to NaN
  features[tags] = tf.maximum(features[tags], 1)
  logit = tf_keras.Model(model.input, model_lib.calibration_layer(model).input[0])(features).numpy().ravel()
  labels = np.random.default_rng(2).uniform(size=ROWS) < 1 / (1 + np.exp(-scale * logit))
  return tf.data.Dataset.from_tensor_slices((features, labels.astype(np.int64))).batch(512)


def test_fits_every_domain_and_the_unknown_slot_and_leaves_the_rest():
  model = zoo.build(options={'calibrate': True})
  logit_layer = model.get_layer('logit')
  logit_layer.set_weights([w * 50 for w in logit_layer.get_weights()])  # logits spread over a few units
  validation = _validation(model, scale=0.3)
  others = [w.numpy() for w in model.weights if 'calibration' not in w.name]
  layer = model_lib.calibration_layer(model)
  fit_calibration(model, layer, validation, SPEC)
  value = layer.calibration.numpy()
  assert np.all(value[:, 0] < 0.6) and np.all(value[:, 0] > 0.1), value  # each domain's scale shrunk toward 0.3
  for before, after in zip(others, [w.numpy() for w in model.weights if 'calibration' not in w.name]):
    np.testing.assert_array_equal(before, after)

  identity = np.tile([[1.0, 0.0]], [SPEC.num_domains + 1, 1])
  layer.calibration.assign(identity)
  fit_calibration(model, layer, validation, SPEC, domains=[1])  # onboarding: the new domain's row alone
  refit = layer.calibration.numpy()
  np.testing.assert_array_equal(np.delete(refit, 1, axis=0), np.delete(identity, 1, axis=0))
  assert refit[1, 0] < 0.6
