"""Every registered backbone (and FiBiNET's field-all variant): one logit per example, learns a toy problem,
and every dense map is a `DomainLoRADense` that MLoRA gives an adapter. `tests/models/test_model.py` runs
the fine-tune contract (frozen split, unknown domain) over the same registry. The trained backbones and
fine-tune runs are the session's (`tests/models/zoo.py`)."""
import functools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from models.adaptation.base import DomainAdaptation
from models.backbones import BACKBONES
from models.backbones.dcn import cross_network
from models.backbones.fibinet import fibinet_logit
from models.layers.lora import DomainLoRADense
from tests.models import zoo

VARIANTS = {'fibinet_field_all': functools.partial(fibinet_logit, bilinear_type='field_all')}


@pytest.fixture(scope='module', autouse=True)
def variants_registered():
  """The variants are backbones like the registered ones while this module runs."""
  with pytest.MonkeyPatch.context() as patch:
    for name, logit in VARIANTS.items():
      patch.setitem(BACKBONES, name, logit)
    yield


@pytest.fixture(params=zoo.BACKBONE_NAMES + tuple(sorted(VARIANTS)))
def backbone(request):
  return request.param


def test_one_logit_per_example(backbone):
  output = zoo.trained(backbone).model(zoo.features(n=8)).numpy()
  assert output.shape == (8, 1)
  assert np.all((output > 0) & (output < 1))


def test_a_few_steps_lower_the_loss(backbone):
  run = zoo.trained(backbone)  # 12 steps on zoo.clicks, where the item decides the click
  assert run.loss_after < 0.8 * run.loss_before


def test_every_dense_map_carries_an_adapter(backbone):
  pretrained = zoo.pretrained(backbone)
  run = zoo.fine_tuned(backbone, 'mlora')
  # Every layer holding a kernel is an adaptable dense map: none escapes adapt.dense.
  with_kernel = [l for l in run.model.layers if any(w.name.split(':')[0].endswith('kernel') for w in l.weights)]
  assert all(isinstance(l, DomainLoRADense) for l in with_kernel)
  dense = [l for l in run.model.layers if isinstance(l, DomainLoRADense)]
  assert all(l.adaptation_weights for l in dense)
  assert {l.name for l in dense} == {l.name for l in pretrained.layers if isinstance(l, DomainLoRADense)}
  np.testing.assert_array_equal(run.start_scores, pretrained(zoo.PROBE).numpy())  # after load_backbone_weights


def test_cross_network_equals_tfrs_cross():
  x_in = tf_keras.Input((6,))
  domain_in = tf_keras.Input((), dtype=tf.int64)
  adapt = DomainAdaptation(zoo.SPEC, domain_in)
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
    zoo.build('fibinet_pairs')
