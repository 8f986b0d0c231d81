import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import model as model_lib
from models.backbones import BACKBONES
from models.features import DOMAIN_INDEX, FeatureSpec, transformed_name
from models.layers.lora import DomainLoRADense, lora_rank

SPEC = FeatureSpec(domain='domain', domains=['a', 'b', 'c'], label='click', vocab=['item'], hashed={'user': 50},
                   numeric=['price'], multivalent={'tags': 3})
VOCAB_SIZES = {'item': 20, 'user': 50, 'tags': 9}
HIDDEN = (16, 8)


def _features(n=64, seed=0, domains=None, num_domains=SPEC.num_domains):
  rng = np.random.default_rng(seed)
  return {
      DOMAIN_INDEX: tf.constant(rng.integers(0, num_domains, n) if domains is None else domains, tf.int64),
      transformed_name('item'): tf.constant(rng.integers(0, 20, n), tf.int64),
      transformed_name('user'): tf.constant(rng.integers(0, 50, n), tf.int64),
      transformed_name('tags'): tf.constant(rng.integers(0, 9, (n, 3)), tf.int64),
      transformed_name('price'): tf.constant(rng.normal(size=n), tf.float32),
  }


@pytest.fixture(params=sorted(BACKBONES))
def backbone(request):
  return request.param


def _pretrained(backbone):
  tf_keras.utils.set_random_seed(0)
  model = model_lib.build_model(SPEC, VOCAB_SIZES, HIDDEN, embedding_dim=4, backbone=backbone)
  model.compile('adam', 'binary_crossentropy')
  model.fit(_features(), np.random.default_rng(1).integers(0, 2, 64), epochs=2, verbose=0)
  return model


def _finetune_model(pretrained, alpha=4):
  model = model_lib.build_model(SPEC, VOCAB_SIZES, HIDDEN, embedding_dim=4, adaptation='mlora', freeze_backbone=True,
                                options={'alpha': alpha},
                                backbone=pretrained.name)
  model_lib.load_backbone_weights(model, pretrained)
  return model


def test_backbone_has_no_adapters(backbone):
  assert model_lib.adaptation_weights(_pretrained(backbone)) == []


def test_every_dense_layer_gets_an_adapter_with_its_rank(backbone):
  model = _finetune_model(_pretrained(backbone), alpha=4)
  layers = [l for l in model.layers if isinstance(l, DomainLoRADense)]
  # The DNN's layers, then any interaction maps (cross, attention, CIN, ...), by the same rule.
  assert {'dense_0': 4, 'dense_1': 2, 'logit': 1}.items() <= {l.name: l.rank for l in layers}.items()
  assert all(l.rank == lora_rank(l.units, 4) and l.num_domains == 3 for l in layers)


def test_finetune_model_starts_equal_to_pretrained(backbone):
  pretrained = _pretrained(backbone)
  model = _finetune_model(pretrained)
  features = _features(seed=3)
  np.testing.assert_array_equal(model(features).numpy(), pretrained(features).numpy())


def test_only_adapters_and_embeddings_train(backbone):
  model = _finetune_model(_pretrained(backbone))
  embeddings = {w.name for l in model.layers if isinstance(l, tf_keras.layers.Embedding) for w in l.weights}
  adapters = {w.name for w in model_lib.adaptation_weights(model)}
  assert {w.name for w in model.trainable_weights} == embeddings | adapters
  frozen = {w.name for w in model.non_trainable_weights}
  assert {'dense_0/kernel:0', 'dense_0/bias:0', 'logit/kernel:0'} <= frozen


def test_finetune_step_keeps_dense_weights_bit_identical(backbone):
  model = _finetune_model(_pretrained(backbone))
  dense_before = {w.name: w.numpy() for w in model.non_trainable_weights}
  adapters_before = {w.name: w.numpy() for w in model_lib.adaptation_weights(model)}
  model.compile(tf_keras.optimizers.Adam(0.01), 'binary_crossentropy')
  model.fit(_features(seed=5), np.random.default_rng(6).integers(0, 2, 64), epochs=3, verbose=0)
  for weight in model.non_trainable_weights:
    np.testing.assert_array_equal(weight.numpy(), dense_before[weight.name])
  changed = [w.name for w in model_lib.adaptation_weights(model) if not np.array_equal(w.numpy(), adapters_before[w.name])]
  assert any('lora_b' in name for name in changed)


def test_unknown_domain_is_scored_by_the_backbone_alone(backbone):
  pretrained = _pretrained(backbone)
  model = _finetune_model(pretrained)
  for weight in model_lib.adaptation_weights(model):
    weight.assign(tf.random.normal(weight.shape, seed=2))
  unknown = _features(n=8, seed=4, domains=[SPEC.num_domains] * 8)
  np.testing.assert_allclose(model(unknown).numpy(), pretrained(unknown).numpy(), rtol=1e-6)
  known = _features(n=8, seed=4, domains=[0] * 8)
  assert not np.allclose(model(known).numpy(), pretrained(known).numpy())


def test_keras_file_round_trip(backbone, tmp_path):
  model = _finetune_model(_pretrained(backbone))
  path = str(tmp_path / 'model.keras')
  model.save(path)
  reloaded = tf_keras.models.load_model(path)
  features = _features(seed=9)
  np.testing.assert_allclose(reloaded(features).numpy(), model(features).numpy(), rtol=1e-6)


def test_unknown_backbone_is_named_in_the_error():
  with pytest.raises(ValueError, match='transformer'):
    model_lib.build_model(SPEC, VOCAB_SIZES, HIDDEN, backbone='transformer')


def _calibrated(adaptation='none', **options):
  return model_lib.build_model(SPEC, VOCAB_SIZES, HIDDEN, embedding_dim=4, adaptation=adaptation,
                               freeze_backbone=adaptation != 'none', options={'alpha': 4, 'calibrate': True, **options})


def test_calibration_is_the_identity_until_fitted_and_the_finetune_model_inherits_it():
  tf_keras.utils.set_random_seed(0)
  pretrained = _calibrated()
  layer = model_lib.calibration_layer(pretrained)
  logit = tf_keras.Model(pretrained.input, layer.input[0])
  features = _features(seed=3)
  np.testing.assert_allclose(pretrained(features).numpy(), tf.sigmoid(logit(features)).numpy(), rtol=1e-6)
  layer.calibration.assign(np.random.default_rng(1).normal(size=layer.calibration.shape))
  scale_shift = layer.calibration.numpy()[features[DOMAIN_INDEX].numpy()]
  expected = tf.sigmoid(logit(features).numpy() * scale_shift[:, :1] + scale_shift[:, 1:])
  np.testing.assert_allclose(pretrained(features).numpy(), expected.numpy(), rtol=1e-5)
  finetune = _calibrated('mlora')
  model_lib.load_backbone_weights(finetune, pretrained)
  np.testing.assert_array_equal(finetune(features).numpy(), pretrained(features).numpy())
  assert not any('calibration' in w.name for w in finetune.trainable_weights)


def test_embedding_l2_and_domain_dropout_act_in_training_only():
  tf_keras.utils.set_random_seed(0)
  plain = model_lib.build_model(SPEC, VOCAB_SIZES, HIDDEN, embedding_dim=4)
  regularized = model_lib.build_model(SPEC, VOCAB_SIZES, HIDDEN, embedding_dim=4,
                                      options={'embedding_l2': 1e-2, 'domain_dropout': 0.5, 'seed': 0})
  regularized.set_weights(plain.get_weights())
  assert not plain.losses and regularized.losses  # one L2 term per embedding table
  features = _features(seed=4)
  np.testing.assert_array_equal(regularized(features, training=False).numpy(), plain(features).numpy())
  assert not np.allclose(regularized(features, training=True).numpy(), plain(features, training=True).numpy())
