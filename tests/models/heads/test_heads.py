"""Multi-task heads: outputs, layer names, MLoRA on every dense layer, Keras file round trip."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import model as model_lib
from models.adaptation import ADAPTATIONS
from models.heads import HEADS, OUTPUTS, TARGETS
from models.heads.layers import MixtureOfExperts
from models.layers.lora import DomainLoRADense
from models.multitask import MultiTaskModel
from tests.models.test_model import SPEC, VOCAB_SIZES, _features

MT_SPEC = dataclasses.replace(SPEC, extra_labels=['conversion'])
HIDDEN = (16, 8)


def _labels(n=64, seed=1):
  rng = np.random.default_rng(seed)
  click = rng.integers(0, 2, n)
  return {'click': click, 'conversion': click * rng.integers(0, 2, n)}


def _build(head, **kwargs):
  tf_keras.utils.set_random_seed(0)
  return model_lib.build_model(MT_SPEC, VOCAB_SIZES, HIDDEN, embedding_dim=4, head=head, **kwargs)


@pytest.fixture(scope='module', params=sorted(HEADS))
def pretrained(request):
  model = _build(request.param)
  model.compile(tf_keras.optimizers.Adam(0.01))
  model.fit(_features(), _labels(), batch_size=32, epochs=1, verbose=0)
  return request.param, model


def test_every_task_is_a_probability_per_example(pretrained):
  head, model = pretrained
  assert isinstance(model, MultiTaskModel) and model.name == head
  outputs = model(_features(n=10, seed=2))
  assert sorted(outputs) == sorted(OUTPUTS[head]) == sorted(model.output_names)
  assert set(TARGETS[head]) <= set(outputs)
  for task, probability in outputs.items():
    assert probability.shape == (10, 1), task
    assert np.all((probability.numpy() > 0) & (probability.numpy() < 1)), task


def test_esmm_ctcvr_is_ctr_times_cvr():
  outputs = _build('esmm')(_features(seed=3))
  np.testing.assert_allclose(outputs['ctcvr'].numpy(), (outputs['ctr'] * outputs['cvr']).numpy(), rtol=1e-6)
  assert 'cvr' not in TARGETS['esmm'] and TARGETS['esmm']['ctcvr'].mask is None  # entire space, no CVR loss


def test_every_dense_layer_comes_from_the_adaptation(pretrained):
  head, model = pretrained
  assert not [l.name for l in model.layers if isinstance(l, tf_keras.layers.Dense)]
  names = [l.name for l in model.layers if isinstance(l, DomainLoRADense)]
  assert len(names) == len(set(names))
  assert {f'{task}_logit' for task in ('ctr', 'cvr')} <= set(names)


def test_layer_names_are_stable():
  names = lambda head, **kw: {l.name for l in _build(head, **kw).layers if l.weights}  # noqa: E731
  assert names('mmoe') == names('mmoe')
  assert {'expert_3_1', 'ctr_mixture_gate', 'cvr_mixture_gate', 'ctr_tower_0'} <= names('mmoe')
  ple = names('ple', options={'ple_levels': 3})
  assert {'ple0_shared_gate', 'ple1_shared_gate', 'ple2_ctr_gate', 'ple2_cvr_expert_0_1'} <= ple
  assert 'ple2_shared_gate' not in ple  # the last level has no shared output
  assert {'bottom_0', 'bottom_1', 'cvr_tower_0'} <= names('shared_bottom')


def test_mixture_of_experts_gate_dropout_only_in_training():
  layer = MixtureOfExperts(gate_dropout=0.5)
  gate_logits = tf.constant([[0.0, np.log(3.0)]])
  experts = [tf.constant([[1.0, 0.0]]), tf.constant([[0.0, 1.0]])]
  np.testing.assert_allclose(layer([gate_logits] + experts, training=False).numpy(), [[0.25, 0.75]], rtol=1e-6)
  tf.random.set_seed(0)
  dropped = [layer([gate_logits] + experts, training=True).numpy() for _ in range(20)]
  assert any(not np.allclose(d, [[0.25, 0.75]]) for d in dropped)
  assert MixtureOfExperts.from_config(layer.get_config()).gate_dropout == 0.5


def _finetune(head, pretrained):
  model = _build(head, adaptation='mlora', freeze_backbone=True, options={'alpha': 4})
  model_lib.load_backbone_weights(model, pretrained)
  return model


def test_mlora_finetune_freezes_every_bottom_and_tower_dense_weight(pretrained):
  head, base = pretrained
  model = _finetune(head, base)
  features = _features(seed=4)
  for task, probability in model(features).items():  # B = 0: starts as the pretrained model
    np.testing.assert_allclose(probability.numpy(), base(features)[task].numpy(), rtol=1e-6)
  dense = [l for l in model.layers if isinstance(l, DomainLoRADense)]
  assert all(l.num_domains == MT_SPEC.num_domains for l in dense)
  frozen = {w.name for l in dense for w in (l.kernel, l.bias)}
  assert frozen == {w.name for w in model.non_trainable_weights}
  embeddings = {w.name for l in model.layers if isinstance(l, tf_keras.layers.Embedding) for w in l.weights}
  assert {w.name for w in model.trainable_weights} == embeddings | {w.name for w in model_lib.adaptation_weights(model)}

  before = {w.name: w.numpy() for w in model.non_trainable_weights}
  adapters = {w.name: w.numpy() for w in model_lib.adaptation_weights(model)}
  model.compile(tf_keras.optimizers.Adam(0.01))
  model.fit(_features(seed=5), _labels(seed=6), batch_size=32, epochs=1, verbose=0)
  for weight in model.non_trainable_weights:
    np.testing.assert_array_equal(weight.numpy(), before[weight.name])
  assert any(not np.array_equal(w.numpy(), adapters[w.name]) for w in model_lib.adaptation_weights(model))


def test_keras_file_round_trip(pretrained, tmp_path):
  head, model = pretrained
  path = str(tmp_path / 'model.keras')
  model.save(path)
  reloaded = tf_keras.models.load_model(path)
  assert isinstance(reloaded, MultiTaskModel) and reloaded.targets == model.targets
  features = _features(seed=7)
  for task, probability in reloaded(features).items():
    np.testing.assert_allclose(probability.numpy(), model(features)[task].numpy(), rtol=1e-6)


def test_head_errors_name_the_choice():
  with pytest.raises(ValueError, match='mmmoe'):
    _build('mmmoe')
  with pytest.raises(ValueError, match='deepfm'):
    _build('esmm', backbone='deepfm')
  with pytest.raises(ValueError, match='conversion'):
    from models.heads import label_columns  # pylint: disable=g-import-not-at-top
    label_columns(SPEC)


@pytest.mark.parametrize('adaptation', sorted(set(ADAPTATIONS) - {'none'}))
@pytest.mark.parametrize('head', sorted(HEADS))
def test_every_head_combines_with_every_domain_adaptation(head, adaptation):
  """Domain adaptation on the shared parts, task heads on top: every pair builds and scores every task."""
  model = _build(head, adaptation=adaptation)
  outputs = model(_features(n=6, seed=3))
  assert sorted(outputs) == sorted(OUTPUTS[head])
  assert all(np.all((p.numpy() > 0) & (p.numpy() < 1)) for p in outputs.values())
