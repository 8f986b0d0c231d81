"""Every domain adaptation on the mlp, deepfm and star backbones, end to end and fine-tuned on a pretrained
backbone; then what each baseline promises."""
import functools

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import model as model_lib
from models.adaptation import ADAPTATIONS
from models.adaptation.adasparse import layer_sparsity
from models.features import DOMAIN_INDEX, FeatureSpec, transformed_name
from models.layers.lora import DomainLoRADense
from models.layers.pepnet import GateNU
from models.layers.separate import SeparateDense
from tests.models.test_model import _features

SPEC = FeatureSpec(domain='domain', domains=['a', 'b', 'c'], label='click', vocab=['item'], hashed={'user': 50},
                   numeric=['price'], multivalent={'tags': 3}, user='user')
VOCAB_SIZES = {'item': 20, 'user': 50, 'tags': 9}
HIDDEN = (8, 4)
BACKBONES = ('mlp', 'deepfm', 'star')
OPTIONS = {'alpha': 4, 'anneal_steps': 20}
STATE = ('moving_mean', 'moving_variance', 'step')  # non-trainable by nature, not frozen


def _labels(features):
  """Learnable, by a model without the domain too: the item decides the click."""
  return (features[transformed_name('item')].numpy() < 10).astype(np.float32)


def _build(backbone, adaptation, freeze_backbone=False):
  tf_keras.utils.set_random_seed(0)
  return model_lib.build_model(SPEC, VOCAB_SIZES, HIDDEN, embedding_dim=4, backbone=backbone, adaptation=adaptation,
                               freeze_backbone=freeze_backbone, options=OPTIONS)


def _compiled(model):
  model.compile(tf_keras.optimizers.Adam(0.05), 'binary_crossentropy', run_eagerly=True)  # no tracing: fast
  return model


def _fit(model, features, epochs=2):
  _compiled(model).fit(features, _labels(features), batch_size=64, epochs=epochs, verbose=0)
  return model


@functools.lru_cache(maxsize=None)
def _pretrained(backbone, adaptation):
  return _fit(_build(backbone, adaptation), _features(n=128, seed=1))


def _training_loss(model, features):
  """The cross-entropy in training mode (STAR's moving statistics need far more steps than a test takes),
  without the sparsity regularizer."""
  predictions = model(features, training=True)
  return float(tf.reduce_mean(tf_keras.losses.binary_crossentropy(_labels(features)[:, None], predictions)))


def _pretrain_adaptation(adaptation):
  # A no_domain model's first layer has no domain embedding among its inputs: it continues a no_domain backbone.
  return 'no_domain' if adaptation == 'no_domain' else 'none'


def _short_name(weight):
  return weight.name.split('/')[-1].split(':')[0]


def _finetune_model(backbone, adaptation):
  pretrained = _pretrained(backbone, _pretrain_adaptation(adaptation))
  model = _build(backbone, adaptation, freeze_backbone=True)
  model_lib.load_backbone_weights(model, pretrained)
  return model, pretrained


FINE_TUNED = [(a, b) for a in sorted(ADAPTATIONS) for b in BACKBONES if (a, b) != ('separate', 'star')]


@pytest.mark.parametrize('backbone', BACKBONES)
@pytest.mark.parametrize('adaptation', sorted(ADAPTATIONS))
def test_end_to_end_training_lowers_the_loss(adaptation, backbone):
  model = _build(backbone, adaptation)
  # End to end only state (and the separate models' common starting point) is not trained.
  frozen = {_short_name(w) for w in model.non_trainable_weights} - set(STATE)
  assert frozen <= ({'kernel', 'bias', 'embeddings'} if adaptation == 'separate' else set())
  features = _features(n=256, seed=2)
  before = _training_loss(model, features)
  _compiled(model).fit(features, _labels(features), batch_size=128, epochs=5, verbose=0)
  assert _training_loss(model, features) < 0.9 * before


@pytest.mark.parametrize('adaptation,backbone', FINE_TUNED)
def test_fine_tuning_starts_at_the_backbone_and_trains_only_the_method_and_embeddings(adaptation, backbone, tmp_path):
  model, pretrained = _finetune_model(backbone, adaptation)
  features = _features(n=128, seed=3)
  np.testing.assert_allclose(model(features).numpy(), pretrained(features).numpy(), rtol=1e-6, atol=1e-7)

  added = model_lib.adaptation_weights(model)
  embeddings = [w for l in model.layers if isinstance(l, tf_keras.layers.Embedding) for w in l.weights]
  assert {w.name for w in model.trainable_weights} == {w.name for w in embeddings + added}
  assert bool(added) == (adaptation not in ('none', 'no_domain'))
  dense = [l for l in model.layers if isinstance(l, (DomainLoRADense, SeparateDense))]
  assert dense and all(not l.kernel.trainable and not l.bias.trainable for l in dense)

  frozen = {w.name: w.numpy() for w in model.non_trainable_weights if _short_name(w) not in STATE}
  _fit(model, _features(n=128, seed=4))
  for weight in model.non_trainable_weights:
    if weight.name in frozen:
      np.testing.assert_array_equal(weight.numpy(), frozen[weight.name])

  path = str(tmp_path / 'model.keras')
  model.save(path)
  reloaded = tf_keras.models.load_model(path)
  np.testing.assert_allclose(reloaded(features).numpy(), model(features).numpy(), rtol=1e-6)


def test_separate_cannot_continue_a_star_backbone():
  """STAR's per-domain weights have no counterpart in one separate model per domain: loading fails loudly."""
  model = _build('star', 'separate', freeze_backbone=True)
  with pytest.raises(KeyError, match='domain_kernel'):
    model_lib.load_backbone_weights(model, _pretrained('star', 'none'))


@pytest.mark.parametrize('backbone', BACKBONES)
def test_mlora_adapts_every_star_and_plain_dense_layer(backbone):
  model, _ = _finetune_model(backbone, 'mlora')
  dense = [l for l in model.layers if isinstance(l, DomainLoRADense)]
  assert dense and all(l.num_domains == SPEC.num_domains and l.adaptation_weights for l in dense)


@pytest.mark.parametrize('backbone', BACKBONES)
def test_no_domain_predictions_do_not_depend_on_the_domain(backbone):
  model = _fit(_build(backbone, 'no_domain'), _features(n=128, seed=5))
  assert 'embedding_domain_index' not in {l.name for l in model.layers}
  predictions = [model(_features(n=16, seed=6, domains=[d] * 16)).numpy() for d in (0, 1, 2, SPEC.num_domains)]
  for other in predictions[1:]:
    np.testing.assert_allclose(other, predictions[0], rtol=1e-6)


@pytest.mark.parametrize('backbone', ['mlp', 'deepfm'])
def test_separate_domains_share_no_trained_weight(backbone):
  """A step on two batches that differ only in domain 0's rows leaves domain 1's model the same."""
  batch = _features(n=64, seed=7, domains=np.repeat([0, 1], 32))
  changed = dict(batch)
  other = _features(n=64, seed=8)
  for name in (transformed_name('item'), transformed_name('price')):
    changed[name] = tf.concat([other[name][:32], batch[name][32:]], 0)
  domain_1 = _features(n=16, seed=9, domains=[1] * 16)
  predictions = []
  for features in (batch, changed):
    model = _build(backbone, 'separate')
    _fit(model, features, epochs=1)
    predictions.append(model(domain_1).numpy())
  np.testing.assert_array_equal(predictions[0], predictions[1])
  assert not np.array_equal(_build(backbone, 'separate')(domain_1).numpy(), predictions[0])


def test_separate_scores_an_unknown_domain_by_the_pretrained_backbone():
  model, pretrained = _finetune_model('mlp', 'separate')
  _fit(model, _features(n=128, seed=10))
  unknown = _features(n=8, seed=11, domains=[SPEC.num_domains] * 8)  # Transform's index of an unknown domain
  np.testing.assert_allclose(model(unknown).numpy(), pretrained(unknown).numpy(), rtol=1e-6)
  known = _features(n=8, seed=11, domains=[0] * 8)
  assert not np.allclose(model(known).numpy(), pretrained(known).numpy())


def test_adasparse_reports_each_layers_sparsity_in_the_fit_logs():
  model = _build('mlp', 'adasparse')
  model.compile(tf_keras.optimizers.Adam(0.02), 'binary_crossentropy')  # in a graph, as the Trainer runs it
  features = _features(n=256, seed=12)
  history = model.fit(features, _labels(features), batch_size=64, epochs=2, verbose=0).history
  assert {'adasparse_dense_0_sparsity', 'adasparse_dense_1_sparsity'} <= set(history)
  sparsity = layer_sparsity(model, features)
  assert set(sparsity) == {'adasparse_dense_0', 'adasparse_dense_1'}
  assert all(0.0 <= s <= 1.0 for s in sparsity.values())
  assert int(model.get_layer('adasparse_dense_0').step.numpy()) == 8


def test_pepnet_gates_stay_in_zero_two_and_read_the_persona():
  model = _fit(_build('mlp', 'pepnet'), _features(n=128, seed=13), epochs=4)
  gates = [l for l in model.layers if isinstance(l, GateNU)]
  assert {g.name for g in gates} == {'epnet_gate', 'ppnet_dense_0', 'ppnet_dense_1'}
  outputs = tf_keras.Model(model.input, [g.output for g in gates])(_features(n=128, seed=14))
  for output in outputs:
    assert np.all((output.numpy() > 0) & (output.numpy() < 2)) and not np.allclose(output.numpy(), 1.0)
  assert model.get_layer('ppnet_dense_0').input.shape[-1] == 8  # user and domain embeddings


def test_pepnet_rejects_a_persona_field_that_is_not_a_feature():
  with pytest.raises(ValueError, match='item_id'):
    ADAPTATIONS['pepnet'](SPEC, None, options={'persona_fields': ['item_id']})


@pytest.mark.parametrize('adaptation', ['star', 'adasparse', 'pepnet', 'separate'])
def test_methods_add_weights_that_differ_by_domain(adaptation):
  model = _fit(_build('mlp', adaptation), _features(n=128, seed=15), epochs=3)
  features = _features(n=8, seed=16, domains=[0] * 8)
  swapped = dict(features, **{DOMAIN_INDEX: tf.fill([8], tf.constant(2, tf.int64))})
  assert not np.allclose(model(features).numpy(), model(swapped).numpy())
