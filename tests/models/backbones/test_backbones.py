"""Every registered backbone (and FiBiNET's field-all variant): one logit per example, learns a toy problem,
and every dense map is a `DomainLoRADense` that MLoRA gives an adapter. `tests/models/test_model.py` runs
the fine-tune contract (frozen split, unknown domain, `.keras` round trip) over the same registry."""
import functools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from models import model as model_lib
from models.adaptation.base import DomainAdaptation
from models.backbones import BACKBONES
from models.backbones.dcn import cross_network
from models.backbones.fibinet import fibinet_logit
from models.features import transformed_name
from models.layers.lora import DomainLoRADense
from tests.models.test_model import HIDDEN, SPEC, VOCAB_SIZES, _features

VARIANTS = {'fibinet_field_all': functools.partial(fibinet_logit, bilinear_type='field_all')}


@pytest.fixture(params=sorted(BACKBONES) + sorted(VARIANTS))
def backbone(request, monkeypatch):
  if request.param in VARIANTS:
    monkeypatch.setitem(BACKBONES, request.param, VARIANTS[request.param])
  return request.param


def _build(backbone, **kwargs):
  tf_keras.utils.set_random_seed(0)
  return model_lib.build_model(SPEC, VOCAB_SIZES, HIDDEN, embedding_dim=4, backbone=backbone, **kwargs)


def test_one_logit_per_example(backbone):
  output = _build(backbone)(_features(n=8)).numpy()
  assert output.shape == (8, 1)
  assert np.all((output > 0) & (output < 1))


def test_a_few_steps_lower_the_loss(backbone):
  features = _features(n=256, seed=1)
  labels = (features[transformed_name('item')].numpy() < 10).astype(np.float32)  # item decides the click
  model = _build(backbone)
  model.compile(tf_keras.optimizers.Adam(0.01), 'binary_crossentropy')
  before = model.evaluate(features, labels, verbose=0)
  model.fit(features, labels, batch_size=64, epochs=5, verbose=0)
  assert model.evaluate(features, labels, verbose=0) < 0.8 * before


def test_every_dense_map_carries_an_adapter(backbone):
  pretrained = _build(backbone)
  model = _build(backbone, adaptation='mlora', freeze_backbone=True)
  # Every layer holding a kernel is an adaptable dense map: none escapes adapt.dense.
  with_kernel = [l for l in model.layers if any(w.name.split(':')[0].endswith('kernel') for w in l.weights)]
  assert all(isinstance(l, DomainLoRADense) for l in with_kernel)
  dense = [l for l in model.layers if isinstance(l, DomainLoRADense)]
  assert all(l.adaptation_weights for l in dense)
  assert {l.name for l in dense} == {l.name for l in pretrained.layers if isinstance(l, DomainLoRADense)}
  model_lib.load_backbone_weights(model, pretrained)
  features = _features(seed=3)
  np.testing.assert_array_equal(model(features).numpy(), pretrained(features).numpy())


def test_cross_network_equals_tfrs_cross():
  x_in = tf_keras.Input((6,))
  domain_in = tf_keras.Input((), dtype=tf.int64)
  adapt = DomainAdaptation(SPEC, domain_in)
  ours = tf_keras.Model([x_in, domain_in], cross_network(x_in, 2, adapt))
  x = tf.constant(np.random.default_rng(0).normal(size=(5, 6)), tf.float32)
  crosses = [tfrs.layers.dcn.Cross() for _ in range(2)]
  expected = crosses[1](x, crosses[0](x, x))
  for i, cross in enumerate(crosses):
    ours.get_layer(f'cross_{i}').set_weights(cross.get_weights())
  np.testing.assert_allclose(ours([x, tf.zeros([5], tf.int64)]).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_fibinet_rejects_an_unknown_bilinear_type(monkeypatch):
  monkeypatch.setitem(BACKBONES, 'fibinet_pairs', functools.partial(fibinet_logit, bilinear_type='field_pairs'))
  with pytest.raises(ValueError, match='field_pairs'):
    _build('fibinet_pairs')
