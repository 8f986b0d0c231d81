import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models.layers.adasparse import FORMS, DomainPruner

NUM_DOMAINS, UNITS = 3, 8


def _batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return (tf.constant(np.abs(rng.normal(size=(n, UNITS))), tf.float32),
          tf.constant(rng.integers(0, NUM_DOMAINS + 1, size=n), tf.int64))  # unknown domains too


def _pruner(form='fusion', **kwargs):
  layer = DomainPruner(NUM_DOMAINS, form=form, **kwargs)
  layer.build([(None, UNITS), (None,)])
  return layer


def _randomize(layer, seed=1):
  rng = np.random.default_rng(seed)
  for weight in (layer.kernel, layer.bias):
    weight.assign(rng.normal(size=weight.shape))


@pytest.mark.parametrize('form', FORMS)
def test_fresh_pruner_passes_the_layer_unchanged(form):
  layer = _pruner(form)
  h, domains = _batch()
  output = layer([h, domains])
  assert output.shape == (32, UNITS)
  np.testing.assert_array_equal(output.numpy(), h.numpy())
  assert float(layer.sparsity([h, domains])) == 0.0


@pytest.mark.parametrize('form', FORMS)
def test_weighting_factors_of_each_form(form):
  layer = _pruner(form, anneal_steps=10)
  _randomize(layer)
  layer.step.assign(10)  # alpha = 5
  factors, _ = layer.weighting_factors(_batch())
  factors = factors.numpy()
  if form == 'binarization':
    assert set(np.unique(factors)) == {0.0, 1.0}
  elif form == 'scaling':
    assert np.all((factors > 0) & (factors < 2)) and float(layer.sparsity(_batch())) == 0.0
  else:
    kept = factors[factors > 0]
    assert np.any(factors == 0) and np.all(kept < 2) and len(np.unique(kept)) > 2


def test_binarization_threshold_follows_the_annealed_alpha():
  layer = _pruner('binarization', epsilon=0.25, alpha_range=(0.1, 5.0), anneal_steps=10)
  layer.bias.assign(np.full(UNITS, -2.0))  # v = -2: sigmoid(0.1 v) = 0.45 kept, sigmoid(5 v) = 0.00005 pruned
  batch = _batch()
  assert float(layer.sparsity(batch)) == 0.0
  layer.step.assign(10)
  assert float(layer.sparsity(batch)) == 1.0


def test_binarization_is_differentiated_straight_through():
  layer = _pruner('binarization')
  h, domains = _batch()
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer([h, domains]))
  gradients = tape.gradient(loss, [layer.kernel, layer.bias])
  assert all(np.abs(g.numpy()).sum() > 0 for g in gradients)


@pytest.mark.parametrize('form,has_loss', [('binarization', True), ('fusion', True), ('scaling', False)])
def test_regularizer_and_step_only_in_training(form, has_loss):
  layer = _pruner(form, sparsity_range=(0.15, 0.25), sparsity_weight=(0.01, 1.0), anneal_steps=100)
  batch = _batch()
  layer(batch, training=False)
  assert layer.losses == [] and int(layer.step.numpy()) == 0
  layer(batch, training=True)
  assert int(layer.step.numpy()) == 1
  if has_loss:  # nothing pruned yet: 0.01 * (0.15 - 0)
    np.testing.assert_allclose(float(layer.losses[0]), 0.01 * 0.15, rtol=1e-5)
  else:
    assert layer.losses == []


def test_regularizer_weight_rises_over_the_annealing_steps():
  layer = _pruner('binarization', sparsity_range=(0.15, 0.25), sparsity_weight=(0.01, 1.0), anneal_steps=10)
  layer.step.assign(5)
  layer(_batch(), training=True)
  np.testing.assert_allclose(float(layer.losses[0]), (0.01 + 0.99 * 0.5) * 0.15, rtol=1e-5)


def test_each_domain_has_its_own_embedding_row_and_unknown_domains_share_one():
  layer = _pruner('scaling')
  _randomize(layer)
  h = tf.ones([NUM_DOMAINS + 2, UNITS])
  factors, _ = layer.weighting_factors([h, tf.constant([0, 1, 2, NUM_DOMAINS, -1], tf.int64)])
  factors = factors.numpy()
  assert len({tuple(row) for row in factors[:4]}) == 4
  np.testing.assert_array_equal(factors[3], factors[4])


@pytest.mark.parametrize('form', ['binarization', 'fusion'])
def test_sparsity_ends_inside_the_target_range(form):
  """A toy problem, 48 steps: the regularizer drives each layer's sparsity into [r_min, r_max]."""
  tf_keras.utils.set_random_seed(0)
  rng = np.random.default_rng(0)
  x, domains = rng.normal(size=(256, 8)).astype('float32'), rng.integers(0, NUM_DOMAINS, 256)
  labels = ((x[:, 0] + x[:, 1] * (domains - 1)) > 0).astype('float32')
  x_in, domain_in = tf_keras.Input((8,)), tf_keras.Input((), dtype=tf.int64)
  pruner = DomainPruner(NUM_DOMAINS, form=form, anneal_steps=20, name='pruner')
  hidden = pruner([tf_keras.layers.Dense(16, 'relu')(x_in), domain_in])
  model = tf_keras.Model([x_in, domain_in], tf_keras.layers.Dense(1, 'sigmoid')(hidden))
  model.compile(tf_keras.optimizers.Adam(0.05), 'binary_crossentropy', run_eagerly=True)
  history = model.fit([x, domains], labels, batch_size=64, epochs=12, verbose=0)
  assert history.history['pruner_sparsity'][0] < 0.15  # it started dense
  sparsity = float(pruner.sparsity(tf_keras.Model(model.inputs, pruner.input)([x, domains])))
  assert 0.15 <= sparsity <= 0.25


def test_adaptation_weights_are_the_pruner_weights():
  layer = _pruner()
  assert layer.adaptation_weights == [layer.domain_embedding, layer.kernel, layer.bias]
  assert [w.name for w in layer.non_trainable_weights] == [layer.step.name]


def test_unknown_form_is_named_in_the_error():
  with pytest.raises(ValueError, match='dropout'):
    DomainPruner(NUM_DOMAINS, form='dropout')


def test_config_round_trip():
  layer = DomainPruner(NUM_DOMAINS, form='binarization', domain_dim=4, epsilon=0.3, beta=1.5,
                       alpha_range=(0.2, 4), sparsity_range=(0.1, 0.3), sparsity_weight=(0.02, 0.5),
                       anneal_steps=77, name='adasparse_dense_0')
  clone = DomainPruner.from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  assert (clone.form, clone.alpha_range, clone.anneal_steps) == ('binarization', (0.2, 4), 77)
