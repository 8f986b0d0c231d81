import numpy as np
import tensorflow as tf
import tf_keras

from models.optimizers import LayerRateAdam


def _model():
  tf_keras.utils.set_random_seed(0)
  ids = tf_keras.Input(shape=(), dtype=tf.int64)
  embedded = tf_keras.layers.Embedding(10, 4, name='embedding_item')(ids)
  return tf_keras.Model(ids, tf_keras.layers.Dense(1, name='logit')(embedded))


def _step(optimizer):
  """Each weight's change after one step of `optimizer` on the same batch."""
  model = _model()
  before = [w.numpy() for w in model.weights]
  model.compile(optimizer, 'mse', run_eagerly=True)  # one step: tracing would cost more
  model.fit(np.arange(8), np.ones(8), batch_size=8, verbose=0)
  return {w.name: w.numpy() - b for w, b in zip(model.weights, before)}


def test_the_named_layers_take_their_own_rate_and_the_others_adams():
  adam = _step(tf_keras.optimizers.Adam(1e-2))
  split = _step(LayerRateAdam(1e-2, 1e-3, ['embedding_item']))
  np.testing.assert_allclose(split['embedding_item/embeddings:0'], adam['embedding_item/embeddings:0'] / 10,
                             rtol=1e-4, atol=1e-9)
  for name in ('logit/kernel:0', 'logit/bias:0'):
    np.testing.assert_allclose(split[name], adam[name], rtol=1e-6)


def test_config_round_trip():
  optimizer = LayerRateAdam.from_config(LayerRateAdam(1e-2, 1e-3, ['embedding_item']).get_config())
  assert (optimizer.layer_rate, optimizer.layer_names) == (1e-3, ['embedding_item'])
