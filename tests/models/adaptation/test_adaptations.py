"""Every domain adaptation trained end to end (mlp, deepfm and star backbones) and fine-tuned on every pretrained
backbone, then saved and reloaded as the Trainer hands models between stages; then what each method and
baseline promises. The fast suite fine-tunes every adaptation on mlp, deepfm and star and MLoRA on every
backbone; the rest of the backbone x adaptation matrix is marked `slow`."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import model as model_lib
from models.adaptation import ADAPTATIONS
from models.adaptation.adasparse import layer_sparsity
from models.features import DOMAIN_INDEX, transformed_name
from models.layers.lora import DomainLoRADense
from models.layers.pepnet import GateNU
from models.layers.separate import SeparateDense
from tests.models import zoo

BACKBONES = ('mlp', 'deepfm', 'star')  # trained end to end with every method; every method fine-tunes them fast

# STAR's per-domain weights have no counterpart in one separate model per domain: separate never continues star.
FINE_TUNED = [(a, b) for a in zoo.ADAPTATION_NAMES for b in zoo.BACKBONE_NAMES if (a, b) != ('separate', 'star')]
FINE_TUNED_FAST = [(a, b) for a, b in FINE_TUNED if b in BACKBONES or a == 'mlora']


@pytest.mark.parametrize('backbone', BACKBONES)
@pytest.mark.parametrize('adaptation', zoo.ADAPTATION_NAMES)
def test_end_to_end_training_lowers_the_loss(adaptation, backbone):
  run = zoo.trained(backbone, adaptation)
  # End to end only state (and the separate models' common starting point) is not trained.
  frozen = {zoo.short_name(w) for w in run.model.non_trainable_weights} - set(zoo.STATE)
  assert frozen <= ({'kernel', 'bias', 'embeddings'} if adaptation == 'separate' else set())
  assert run.training_loss_after < 0.9 * run.training_loss_before


def test_separate_on_a_star_backbone_round_trips_end_to_end(tmp_path):
  """The one pair that is never fine-tuned (see below) keeps its end to end scores through the `.keras` file."""
  model = zoo.trained('star', 'separate').model
  reloaded = zoo.round_trip(model, tmp_path)
  np.testing.assert_allclose(reloaded(zoo.PROBE).numpy(), model(zoo.PROBE).numpy(), rtol=1e-6)


@pytest.mark.parametrize('adaptation,backbone', zoo.matrix(FINE_TUNED, FINE_TUNED_FAST))
def test_fine_tuning_starts_at_the_pretrained_backbone(adaptation, backbone):
  run = zoo.fine_tuned(backbone, adaptation)
  np.testing.assert_allclose(run.start_scores, run.pretrained(zoo.PROBE).numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('adaptation,backbone', zoo.matrix(FINE_TUNED, FINE_TUNED_FAST))
def test_fine_tuning_trains_only_the_method_and_the_embeddings(adaptation, backbone):
  model = zoo.fine_tuned(backbone, adaptation).model
  added = model_lib.adaptation_weights(model)
  assert {w.name for w in model.trainable_weights} == {w.name for w in zoo.embedding_weights(model) + added}
  assert bool(added) == (adaptation not in ('none', 'no_domain'))
  dense = [l for l in model.layers if isinstance(l, (DomainLoRADense, SeparateDense))]
  assert dense and all(not l.kernel.trainable and not l.bias.trainable for l in dense)


@pytest.mark.parametrize('adaptation,backbone', zoo.matrix(FINE_TUNED, FINE_TUNED_FAST))
def test_fine_tuning_keeps_every_frozen_weight_bit_identical(adaptation, backbone):
  run = zoo.fine_tuned(backbone, adaptation)
  frozen = [w for w in run.model.non_trainable_weights if zoo.short_name(w) not in zoo.STATE]
  assert frozen
  for weight in frozen:
    np.testing.assert_array_equal(weight.numpy(), run.start_weights[weight.name])


@pytest.mark.parametrize('adaptation,backbone', zoo.matrix(FINE_TUNED, FINE_TUNED_FAST))
def test_keras_file_round_trip_keeps_the_scores(adaptation, backbone, tmp_path):
  model = zoo.fine_tuned(backbone, adaptation).model
  reloaded = zoo.round_trip(model, tmp_path)
  np.testing.assert_allclose(reloaded(zoo.PROBE).numpy(), model(zoo.PROBE).numpy(), rtol=1e-6)


def test_separate_cannot_continue_a_star_backbone():
  """STAR's per-domain weights have no counterpart in one separate model per domain: loading fails loudly."""
  model = zoo.build('star', 'separate', freeze_backbone=True)
  with pytest.raises(KeyError, match='domain_kernel'):
    model_lib.load_backbone_weights(model, zoo.pretrained('star'))


@pytest.mark.parametrize('backbone', BACKBONES)
def test_mlora_adapts_every_star_and_plain_dense_layer(backbone):
  model = zoo.fine_tuned(backbone, 'mlora').model
  dense = [l for l in model.layers if isinstance(l, DomainLoRADense)]
  assert dense and all(l.num_domains == zoo.SPEC.num_domains and l.adaptation_weights for l in dense)


@pytest.mark.parametrize('backbone', ['mlp', 'dcn'])
def test_mlora_hidden_placement_adapts_the_dnn_hidden_layers_alone(backbone):
  """The authors' recipe: adapters on the DNN hidden layers and a per-domain logit bias; DCN's cross layers and
  the logit stay the backbone's. The model still starts as its pretrained backbone, and the fine-tune trains
  the adapters and the bias."""
  options = {**zoo.OPTIONS, 'placement': 'hidden', 'domain_bias': True}
  model = zoo.build(backbone, 'mlora', freeze_backbone=True, options=options)
  pretrained = zoo.pretrained(backbone)
  model_lib.load_backbone_weights(model, pretrained)
  np.testing.assert_allclose(model(zoo.PROBE).numpy(), pretrained(zoo.PROBE).numpy(), rtol=1e-6, atol=1e-7)
  adapted = {l.name for l in model.layers if isinstance(l, DomainLoRADense) and l.num_domains}
  assert adapted == {f'dense_{i}' for i in range(len(zoo.HIDDEN))}
  assert {l.name for l in model.layers if isinstance(l, DomainLoRADense)} > adapted  # the logit, cross layers
  added = {w.name for w in model_lib.adaptation_weights(model)}
  assert 'mlora_domain_bias/bias:0' in added
  assert added <= {w.name for w in model.trainable_weights}


def test_mlora_rejects_an_unknown_placement():
  with pytest.raises(ValueError, match="placement 'logit'"):
    zoo.build('mlp', 'mlora', options={'placement': 'logit'})


@pytest.mark.parametrize('backbone', BACKBONES)
def test_no_domain_predictions_do_not_depend_on_the_domain(backbone):
  model = zoo.trained(backbone, 'no_domain').model
  assert 'embedding_domain_index' not in {l.name for l in model.layers}
  predictions = [model(zoo.features(n=16, seed=6, domains=[d] * 16)).numpy() for d in (0, 1, 2, zoo.SPEC.num_domains)]
  for other in predictions[1:]:
    np.testing.assert_allclose(other, predictions[0], rtol=1e-6)


@pytest.mark.parametrize('backbone', ['mlp', 'deepfm'])
def test_separate_domains_share_no_trained_weight(backbone):
  """A step on two batches that differ only in domain 0's rows leaves domain 1's model the same."""
  batch = zoo.features(n=64, seed=7, domains=np.repeat([0, 1], 32))
  changed = dict(batch)
  other = zoo.features(n=64, seed=8)
  for name in (transformed_name('item'), transformed_name('price')):
    changed[name] = tf.concat([other[name][:32], batch[name][32:]], 0)
  domain_1 = zoo.features(n=16, seed=9, domains=[1] * 16)
  untrained, predictions = None, []
  for features in (batch, changed):
    model = zoo.build(backbone, 'separate')
    untrained = model(domain_1).numpy()
    zoo.fit(model, features, zoo.clicks(features), batch_size=64)  # one step on both domains
    predictions.append(model(domain_1).numpy())
  np.testing.assert_array_equal(predictions[0], predictions[1])
  assert not np.array_equal(untrained, predictions[0])


def test_separate_scores_an_unknown_domain_by_the_pretrained_backbone():
  run = zoo.fine_tuned('mlp', 'separate')
  unknown = zoo.features(n=8, seed=11, domains=[zoo.SPEC.num_domains] * 8)  # Transform's index of an unknown domain
  np.testing.assert_allclose(run.model(unknown).numpy(), run.pretrained(unknown).numpy(), rtol=1e-6)
  known = zoo.features(n=8, seed=11, domains=[0] * 8)
  assert not np.allclose(run.model(known).numpy(), run.pretrained(known).numpy())


def test_adasparse_reports_each_layers_sparsity_in_the_fit_logs():
  model = zoo.build('mlp', 'adasparse')
  model.compile(tf_keras.optimizers.Adam(0.02), 'binary_crossentropy')  # in a graph, as the Trainer runs it
  features = zoo.features(n=256, seed=12)
  history = model.fit(features, zoo.clicks(features), batch_size=64, epochs=2, verbose=0).history
  assert {'adasparse_dense_0_sparsity', 'adasparse_dense_1_sparsity'} <= set(history)
  sparsity = layer_sparsity(model, features)
  assert set(sparsity) == {'adasparse_dense_0', 'adasparse_dense_1'}
  assert all(0.0 <= s <= 1.0 for s in sparsity.values())
  assert int(model.get_layer('adasparse_dense_0').step.numpy()) == 8


def test_pepnet_gates_stay_in_zero_two_and_read_the_persona():
  # Its own model: zoo.trained's drives the EPNet gate to within 1e-6 of 2, which float32 may round to 2.0.
  features = zoo.features(n=128, seed=13)
  model = zoo.fit(zoo.build('mlp', 'pepnet'), features, zoo.clicks(features), epochs=4, batch_size=64)
  gates = [l for l in model.layers if isinstance(l, GateNU)]
  assert {g.name for g in gates} == {'epnet_gate', 'ppnet_dense_0', 'ppnet_dense_1'}
  outputs = tf_keras.Model(model.input, [g.output for g in gates])(zoo.features(n=128, seed=14))
  for output in outputs:
    assert np.all((output.numpy() > 0) & (output.numpy() < 2)) and not np.allclose(output.numpy(), 1.0)
  assert model.get_layer('ppnet_dense_0').input.shape[-1] == 8  # user and domain embeddings


def test_pepnet_rejects_a_persona_field_that_is_not_a_feature():
  with pytest.raises(ValueError, match='item_id'):
    ADAPTATIONS['pepnet'](zoo.SPEC, None, options={'persona_fields': ['item_id']})


@pytest.mark.parametrize('adaptation', ['star', 'adasparse', 'pepnet', 'separate'])
def test_methods_add_weights_that_differ_by_domain(adaptation):
  model = zoo.trained('mlp', adaptation).model
  features = zoo.features(n=8, seed=16, domains=[0] * 8)
  swapped = dict(features, **{DOMAIN_INDEX: tf.fill([8], tf.constant(2, tf.int64))})
  assert not np.allclose(model(features).numpy(), model(swapped).numpy())
