"""Multi-task heads: outputs, layer names, MLoRA on every dense layer, Keras file round trip; every head with
every domain adaptation. The fast suite trains and round-trips a covering set of head x adaptation pairs (every
head, every adaptation), the other pairs are marked `slow`; every pair builds and scores in the fast suite."""
import functools

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import model as model_lib
from models.heads import HEADS, OUTPUTS, TARGETS
from models.heads.layers import MixtureOfExperts
from models.layers.lora import DomainLoRADense
from models.multitask import MultiTaskModel
from tests.models import zoo

HEAD_NAMES = tuple(sorted(HEADS))
# `none` is every head's own pretrain stage (`pretrained` below); heads build their own MLP bottom, no backbone.
ADAPTATION_NAMES = tuple(a for a in zoo.ADAPTATION_NAMES if a != 'none')
ADAPTED = [(h, a) for h in HEAD_NAMES for a in ADAPTATION_NAMES]
ADAPTED_FAST = zoo.covering_pairs(HEAD_NAMES, ADAPTATION_NAMES, anchor=('mmoe', 'mlora'))  # trained in the fast suite
ADAPTED_BUILT = [cell for cell in ADAPTED if cell not in ADAPTED_FAST]  # only built and scored there


def _build(head, **kwargs):
  return zoo.build(spec=zoo.MULTITASK_SPEC, head=head, **kwargs)


@functools.lru_cache(maxsize=None)
def _pretrained(head):
  """The head trained end to end a few steps, once per session. Shared: never train or change it."""
  return zoo.fit(_build(head), zoo.features(), zoo.multitask_labels(), loss=None)


@pytest.fixture(params=HEAD_NAMES)
def pretrained(request):
  return request.param, _pretrained(request.param)


def _round_trip_keeps_every_score(model, directory):
  reloaded = zoo.round_trip(model, directory)
  assert isinstance(reloaded, MultiTaskModel) and reloaded.targets == model.targets
  features = zoo.features(seed=7)
  for task, probability in reloaded(features).items():
    np.testing.assert_allclose(probability.numpy(), model(features)[task].numpy(), rtol=1e-6)


def _scores_every_task(model, head, n=6):
  outputs = model(zoo.features(n=n, seed=3))
  assert sorted(outputs) == sorted(OUTPUTS[head])
  assert all(p.shape == (n, 1) and np.all((p.numpy() > 0) & (p.numpy() < 1)) for p in outputs.values())


def test_every_task_is_a_probability_per_example(pretrained):
  head, model = pretrained
  assert isinstance(model, MultiTaskModel) and model.name == head
  outputs = model(zoo.features(n=10, seed=2))
  assert sorted(outputs) == sorted(OUTPUTS[head]) == sorted(model.output_names)
  assert set(TARGETS[head]) <= set(outputs)
  for task, probability in outputs.items():
    assert probability.shape == (10, 1), task
    assert np.all((probability.numpy() > 0) & (probability.numpy() < 1)), task


def test_esmm_ctcvr_is_ctr_times_cvr():
  outputs = _pretrained('esmm')(zoo.features(seed=3))
  np.testing.assert_allclose(outputs['ctcvr'].numpy(), (outputs['ctr'] * outputs['cvr']).numpy(), rtol=1e-6)
  assert 'cvr' not in TARGETS['esmm'] and TARGETS['esmm']['ctcvr'].mask is None  # entire space, no CVR loss


def test_every_dense_layer_comes_from_the_adaptation(pretrained):
  head, model = pretrained
  assert not [l.name for l in model.layers if isinstance(l, tf_keras.layers.Dense)]
  names = [l.name for l in model.layers if isinstance(l, DomainLoRADense)]
  assert len(names) == len(set(names))
  assert {f'{task}_logit' for task in ('ctr', 'cvr')} <= set(names)


def test_layer_names_are_stable():
  names = lambda model: {l.name for l in model.layers if l.weights}  # noqa: E731
  assert names(_build('mmoe')) == names(_pretrained('mmoe'))  # two builds
  assert {'expert_3_1', 'ctr_mixture_gate', 'cvr_mixture_gate', 'ctr_tower_0'} <= names(_pretrained('mmoe'))
  ple = names(_build('ple', options={'ple_levels': 3}))
  assert {'ple0_shared_gate', 'ple1_shared_gate', 'ple2_ctr_gate', 'ple2_cvr_expert_0_1'} <= ple
  assert 'ple2_shared_gate' not in ple  # the last level has no shared output
  assert {'bottom_0', 'bottom_1', 'cvr_tower_0'} <= names(_pretrained('shared_bottom'))


def test_mixture_of_experts_gate_dropout_only_in_training():
  layer = MixtureOfExperts(gate_dropout=0.5)
  gate_logits = tf.constant([[0.0, np.log(3.0)]])
  experts = [tf.constant([[1.0, 0.0]]), tf.constant([[0.0, 1.0]])]
  np.testing.assert_allclose(layer([gate_logits] + experts, training=False).numpy(), [[0.25, 0.75]], rtol=1e-6)
  tf.random.set_seed(0)
  dropped = [layer([gate_logits] + experts, training=True).numpy() for _ in range(20)]
  assert any(not np.allclose(d, [[0.25, 0.75]]) for d in dropped)
  assert MixtureOfExperts.from_config(layer.get_config()).gate_dropout == 0.5


def test_mlora_finetune_freezes_every_bottom_and_tower_dense_weight(pretrained):
  head, base = pretrained
  model = _build(head, adaptation='mlora', freeze_backbone=True)
  model_lib.load_backbone_weights(model, base)
  features = zoo.features(seed=4)
  for task, probability in model(features).items():  # B = 0: starts as the pretrained model
    np.testing.assert_allclose(probability.numpy(), base(features)[task].numpy(), rtol=1e-6)
  dense = [l for l in model.layers if isinstance(l, DomainLoRADense)]
  assert all(l.num_domains == zoo.MULTITASK_SPEC.num_domains for l in dense)
  frozen = {w.name for l in dense for w in (l.kernel, l.bias)}
  assert frozen == {w.name for w in model.non_trainable_weights}
  embeddings = {w.name for w in zoo.embedding_weights(model)}
  assert {w.name for w in model.trainable_weights} == embeddings | {w.name for w in model_lib.adaptation_weights(model)}

  before = {w.name: w.numpy() for w in model.non_trainable_weights}
  adapters = {w.name: w.numpy() for w in model_lib.adaptation_weights(model)}
  zoo.fit(model, zoo.features(seed=5), zoo.multitask_labels(seed=6), learning_rate=0.01, loss=None)
  for weight in model.non_trainable_weights:
    np.testing.assert_array_equal(weight.numpy(), before[weight.name])
  assert any(not np.array_equal(w.numpy(), adapters[w.name]) for w in model_lib.adaptation_weights(model))


def test_keras_file_round_trip(pretrained, tmp_path):
  _, model = pretrained
  _round_trip_keeps_every_score(model, tmp_path)


def test_head_errors_name_the_choice():
  with pytest.raises(ValueError, match='mmmoe'):
    _build('mmmoe')
  with pytest.raises(ValueError, match='deepfm'):
    _build('esmm', backbone='deepfm')
  with pytest.raises(ValueError, match='conversion'):
    from models.heads import label_columns  # pylint: disable=g-import-not-at-top
    label_columns(zoo.SPEC)


@pytest.mark.parametrize('head,adaptation', ADAPTED_BUILT)
def test_every_head_combines_with_every_domain_adaptation(head, adaptation):
  """Domain adaptation on the shared parts, task heads on top: every pair builds and scores every task (the
  pairs the fast suite trains, below, do so there)."""
  _scores_every_task(_build(head, adaptation=adaptation), head)


@pytest.mark.parametrize('head,adaptation', zoo.matrix(ADAPTED, ADAPTED_FAST))
def test_head_with_domain_adaptation_trains_and_round_trips(head, adaptation, tmp_path):
  model = _build(head, adaptation=adaptation)
  _scores_every_task(model, head)
  start = [w.numpy() for w in model.trainable_weights]
  zoo.fit(model, zoo.features(), zoo.multitask_labels(), loss=None)
  assert any(not np.array_equal(w.numpy(), s) for w, s in zip(model.trainable_weights, start))
  _round_trip_keeps_every_score(model, tmp_path)
