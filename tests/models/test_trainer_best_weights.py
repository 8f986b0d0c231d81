"""BestValidationWeights: a stage exports its best weights on validation, the starting ones included, and
with constraints, the best of those that meet them."""
import numpy as np
import tensorflow as tf
import tf_keras

from models.constraints import parse_constraint
from models.trainer import BestValidationWeights
from tests.models import zoo

ROWS = 2048


def _data(seed: int, shuffle_labels: bool = False, repeat: bool = True):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(ROWS, 8)).astype(np.float32)
  y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)
  if shuffle_labels:
    y = rng.permutation(y)
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(256)
  return dataset.repeat() if repeat else dataset


def _fit(model, train, validation, learning_rate: float, patience=None):
  model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate), loss='binary_crossentropy',
                metrics=[tf_keras.metrics.AUC(name='auc')])
  best = BestValidationWeights(validation, patience=patience)
  history = model.fit(train, epochs=4, steps_per_epoch=8, validation_data=validation, callbacks=[best], verbose=0)
  return best, history.history['val_auc']


def _model():
  return tf_keras.Sequential([tf_keras.layers.Dense(16, activation='relu'), tf_keras.layers.Dense(1, 'sigmoid')])


def test_keeps_the_starting_weights_when_training_only_hurts_validation():
  tf_keras.utils.set_random_seed(0)
  model = _model()
  validation = _data(1, repeat=False)
  # A model that already separates validation, then trained on labels unrelated to the features.
  _fit(model, _data(0), validation, learning_rate=1e-2)
  start = [w.copy() for w in model.get_weights()]
  start_auc = model.evaluate(validation, return_dict=True, verbose=0)['auc']
  best, val_aucs = _fit(model, _data(2, shuffle_labels=True), validation, learning_rate=3e-2)

  assert max(val_aucs) < start_auc  # every epoch did worse than the start ...
  assert best.best_epoch == 0  # ... so the start is what the model keeps
  for kept, original in zip(model.get_weights(), start):
    np.testing.assert_array_equal(kept, original)


def test_patience_stops_after_that_many_epochs_without_a_better_one():
  tf_keras.utils.set_random_seed(0)
  model = _model()
  validation = _data(1, repeat=False)
  _fit(model, _data(0), validation, learning_rate=1e-2)
  # Every epoch on unrelated labels does worse than the start: with patience 2, the third never runs.
  best, val_aucs = _fit(model, _data(2, shuffle_labels=True), validation, learning_rate=3e-2, patience=2)
  assert best.best_epoch == 0 and len(val_aucs) == 2


def test_restores_the_best_epoch_not_the_last():
  tf_keras.utils.set_random_seed(0)
  model = _model()
  best, val_aucs = _fit(model, _data(0), _data(1, repeat=False), learning_rate=1e-2)

  assert best.best_epoch == int(np.argmax(val_aucs)) + 1 and best.best == max(val_aucs)
  restored = model.evaluate(_data(1, repeat=False), return_dict=True, verbose=0)['auc']
  np.testing.assert_allclose(restored, best.best, atol=1e-6)


def test_with_constraints_an_epoch_that_meets_them_beats_a_better_one_that_does_not():
  model = zoo.build(spec=zoo.MULTITASK_SPEC, head='shared_bottom')
  model.compile(tf_keras.optimizers.Adam(0.01), run_eagerly=True)
  validation = tf.data.Dataset.from_tensors((zoo.features(), zoo.multitask_labels()))
  best = BestValidationWeights(validation, monitor='val_ctr_auc', constraints=[parse_constraint('cvr_auc>=0.99')])
  best.set_model(model)
  best.on_train_begin()  # coin-flip conversions: the starting weights break the bound
  for epoch, (ctr, cvr) in enumerate([(0.9, 0.5), (0.7, 0.995), (0.8, 0.999), (0.95, 0.9)]):
    best.on_epoch_end(epoch, {'val_ctr_auc': ctr, 'val_cvr_auc': cvr})
  assert (best.best_epoch, best.best) == (3, 0.8)  # the best AUC among the epochs that keep cvr_auc >= 0.99
