"""The fine-tune contract on every backbone: MLoRA on the pretrained backbone starts where it is, trains only
its adapters and the embeddings, and scores an unknown domain by the backbone alone. The pretrained backbones
and fine-tune runs are the session's (`tests/models/zoo.py`); the `.keras` round trip of every fine-tuned
model is `tests/models/adaptation/test_adaptations.py::test_keras_file_round_trip_keeps_the_scores`."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import model as model_lib
from models.features import DOMAIN_INDEX
from models.layers.lora import DomainLoRADense, lora_rank
from tests.models import zoo


@pytest.fixture(params=zoo.BACKBONE_NAMES)
def backbone(request):
  return request.param


def test_backbone_has_no_adapters(backbone):
  assert model_lib.adaptation_weights(zoo.pretrained(backbone)) == []


def test_every_dense_layer_gets_an_adapter_with_its_rank(backbone):
  layers = [l for l in zoo.fine_tuned(backbone).model.layers if isinstance(l, DomainLoRADense)]
  # The DNN's layers, then any interaction maps (cross, attention, CIN, ...), by the same rule.
  assert {'dense_0': 4, 'dense_1': 2, 'logit': 1}.items() <= {l.name: l.rank for l in layers}.items()
  assert all(l.rank == lora_rank(l.units, zoo.ALPHA) and l.num_domains == 3 for l in layers)


def test_finetune_model_starts_equal_to_pretrained(backbone):
  run = zoo.fine_tuned(backbone)
  np.testing.assert_array_equal(run.start_scores, run.pretrained(zoo.PROBE).numpy())


def test_only_adapters_and_embeddings_train(backbone):
  model = zoo.fine_tuned(backbone).model
  embeddings = {w.name for w in zoo.embedding_weights(model)}
  adapters = {w.name for w in model_lib.adaptation_weights(model)}
  assert {w.name for w in model.trainable_weights} == embeddings | adapters
  frozen = {w.name for w in model.non_trainable_weights}
  assert {'dense_0/kernel:0', 'dense_0/bias:0', 'logit/kernel:0'} <= frozen


def test_finetune_step_keeps_dense_weights_bit_identical(backbone):
  run = zoo.fine_tuned(backbone)
  for weight in run.model.non_trainable_weights:
    np.testing.assert_array_equal(weight.numpy(), run.start_weights[weight.name])
  changed = [w.name for w in model_lib.adaptation_weights(run.model)
             if not np.array_equal(w.numpy(), run.start_weights[w.name])]
  assert any('lora_b' in name for name in changed)


def test_unknown_domain_is_scored_by_the_backbone_alone(backbone):
  pretrained = zoo.pretrained(backbone)
  model = zoo.fine_tune_model(backbone)
  for weight in model_lib.adaptation_weights(model):
    weight.assign(tf.random.normal(weight.shape, seed=2))
  unknown = zoo.features(n=8, seed=4, domains=[zoo.SPEC.num_domains] * 8)
  np.testing.assert_allclose(model(unknown).numpy(), pretrained(unknown).numpy(), rtol=1e-6)
  known = zoo.features(n=8, seed=4, domains=[0] * 8)
  assert not np.allclose(model(known).numpy(), pretrained(known).numpy())


def test_unknown_backbone_is_named_in_the_error():
  with pytest.raises(ValueError, match='transformer'):
    zoo.build('transformer')


def _calibrated(adaptation='none'):
  return zoo.build(adaptation=adaptation, freeze_backbone=adaptation != 'none',
                   options={**zoo.OPTIONS, 'calibrate': True})


def test_calibration_is_the_identity_until_fitted_and_the_finetune_model_inherits_it():
  pretrained = _calibrated()
  layer = model_lib.calibration_layer(pretrained)
  logit = tf_keras.Model(pretrained.input, layer.input[0])
  features = zoo.features(seed=3)
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
  plain = zoo.build(options={})
  regularized = zoo.build(options={'embedding_l2': 1e-2, 'domain_dropout': 0.5, 'seed': 0})
  regularized.set_weights(plain.get_weights())
  assert not plain.losses and regularized.losses  # one L2 term per embedding table
  features = zoo.features(seed=4)
  np.testing.assert_array_equal(regularized(features, training=False).numpy(), plain(features).numpy())
  assert not np.allclose(regularized(features, training=True).numpy(), plain(features, training=True).numpy())


def test_autograph_leaves_tf_keras_code_alone_and_converts_the_models_own_layers():
  from tensorflow.python.autograph.impl import conversion  # pylint: disable=g-import-not-at-top
  assert conversion.is_allowlisted(tf_keras.Model.test_step)
  assert conversion.is_allowlisted(tf_keras.metrics.AUC.update_state)
  assert not conversion.is_allowlisted(DomainLoRADense.call)
  model_lib.skip_autograph_for_tf_keras()  # twice: one rule
  from tensorflow.python.autograph.core import config  # pylint: disable=g-import-not-at-top
  assert sum(str(r) == 'DoNotConvert rule for tf_keras' for r in config.CONVERSION_RULES) == 1
