"""CTNet: a frozen source tower beside the target tower, gated linear adapters between their hidden layers."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import ctnet
from models import model as model_lib
from models import warm_start
from models.features import DOMAIN_INDEX
from models.layers.transfer import Affine, GatedLinearAdapter, IdLookup
from tests.models import zoo

SPEC = zoo.SPEC
VOCAB_SIZES = zoo.VOCAB_SIZES
HIDDEN = (16, 8)


def _features(n=64, seed=0):
  return zoo.features(n, seed, num_domains=SPEC.num_domains + 1)  # Transform's unknown domain too


def _fit(model, steps=3, seed=5, learning_rate=0.01):
  """`steps` epochs of 2 batches, eagerly."""
  zoo.fit(model, _features(seed=seed), zoo.coin_flips(seed=seed + 1), epochs=steps, learning_rate=learning_rate)


def _source_model(seed=0):
  """A source pipeline's production model (MLoRA on a backbone), every weight random as if trained."""
  model = model_lib.build_model(SPEC, VOCAB_SIZES, (12, 6), embedding_dim=4, adaptation='mlora',
                                freeze_backbone=True, options={'alpha': 4})
  rng = np.random.default_rng(seed)
  model.set_weights([rng.normal(0.0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
  return model


@pytest.fixture(scope='module')
def source():
  return _source_model()


def _ctnet(source, **kwargs):
  return ctnet.build_ctnet_model(SPEC, VOCAB_SIZES, HIDDEN, embedding_dim=4, tower=ctnet.source_tower(source), **kwargs)


def _weights(layer):
  return [w.numpy() for w in layer.weights]


def test_adapter_is_the_gated_linear_unit():
  layer = GatedLinearAdapter(3)
  h = tf.constant(np.random.default_rng(0).normal(size=(5, 4)), tf.float32)
  np.testing.assert_array_equal(layer(h).numpy(), np.zeros((5, 3)))  # the value path starts at zero
  w1, b1, w2, b2 = (np.random.default_rng(i).normal(size=w.shape).astype(np.float32)
                    for i, w in enumerate(layer.weights))
  layer.set_weights([w1, b1, w2, b2])
  expected = (h.numpy() @ w1 + b1) / (1 + np.exp(-(h.numpy() @ w2 + b2)))
  np.testing.assert_allclose(layer(h).numpy(), expected, rtol=1e-5)


def test_layer_configs_round_trip():
  adapter = GatedLinearAdapter(7, trainable=False, name='ctnet_adapter_dense_0')
  assert GatedLinearAdapter.from_config(adapter.get_config()).get_config() == adapter.get_config()
  lookup = IdLookup(11, name='source_ids_item_xf')
  assert IdLookup.from_config(lookup.get_config()).size == 11
  affine = Affine(2.0, -0.5)
  restored = Affine.from_config(affine.get_config())
  assert (restored.scale, restored.shift, restored.trainable) == (2.0, -0.5, False)
  np.testing.assert_allclose(restored(tf.constant([1.0, 2.0])).numpy(), [1.5, 3.5])


def test_tower_gives_the_source_models_hidden_layers(source):
  tower = ctnet.source_tower(source)
  assert ctnet.hidden_layer_names(source) == ['dense_0', 'dense_1']
  features = _features(seed=3)
  outputs = tower(features)
  for name in ('dense_0', 'dense_1'):
    expected = tf_keras.Model(source.input, source.get_layer(name).output)(features)
    np.testing.assert_array_equal(outputs[name].numpy(), expected.numpy())


def test_adapter_per_matching_hidden_layer_zero_initialized(source):
  model = _ctnet(source)
  adapters = {layer.name: layer for layer in ctnet.adapter_layers(model)}
  assert sorted(adapters) == ['ctnet_adapter_dense_0', 'ctnet_adapter_dense_1']
  assert adapters['ctnet_adapter_dense_0'].value_kernel.shape == (12, 16)  # source width -> target width
  assert not np.any(adapters['ctnet_adapter_dense_1'].value_kernel.numpy())


def test_zero_adapters_give_the_target_towers_output(source):
  target = model_lib.build_model(SPEC, VOCAB_SIZES, HIDDEN, embedding_dim=4)
  rng = np.random.default_rng(1)
  target.set_weights([rng.normal(0.0, 0.3, w.shape).astype(np.float32) for w in target.get_weights()])
  model = _ctnet(source)
  model_lib.load_backbone_weights(model, ctnet.without_source_tower(target))
  features = _features(seed=4)
  np.testing.assert_array_equal(model(features).numpy(), target(features).numpy())


@dataclasses.dataclass(frozen=True)
class _Trained:
  model: tf_keras.Model
  source_before: dict  # the source model's weights by name
  adapters_before: dict  # each adapter's weights
  dense_before: list  # dense_0's weights


@pytest.fixture(scope='module')
def trained(source):
  """A CTNet model on `source` trained 5 epochs, and what it was before. Shared: never train or change it."""
  model = _ctnet(source)
  before = _Trained(model, {w.name: w.numpy() for w in source.weights},
                    {a.name: _weights(a) for a in ctnet.adapter_layers(model)}, _weights(model.get_layer('dense_0')))
  _fit(model, steps=5)
  return before


def test_training_keeps_the_source_tower_bit_identical_and_moves_the_rest(source, trained):
  model = trained.model
  tower = ctnet.find_source_tower(model)
  assert tower.trainable is False and not tower.trainable_weights
  assert not {id(w) for w in tower.weights} & {id(w) for w in model.trainable_weights}
  assert len(tower.weights) == len(source.weights) - len(source.get_layer('logit').weights)  # up to dense_1
  for weight in tower.weights:
    np.testing.assert_array_equal(weight.numpy(), trained.source_before[weight.name])
  for adapter in ctnet.adapter_layers(model):
    assert not np.array_equal(adapter.value_kernel.numpy(), trained.adapters_before[adapter.name][0])
    assert not np.array_equal(adapter.gate_kernel.numpy(), trained.adapters_before[adapter.name][2])  # once W1 moved
  assert not np.array_equal(model.get_layer('dense_0').kernel.numpy(), trained.dense_before[0])


def test_source_changes_the_prediction_once_adapters_learned():
  model = _ctnet(_source_model(seed=5))  # its own: the tower's weights are the source model's, changed below
  _fit(model, steps=5)
  features = _features(seed=6)
  before = model(features).numpy()
  tower = ctnet.find_source_tower(model)
  tower.set_weights([w * 1.5 for w in tower.get_weights()])
  assert not np.allclose(model(features).numpy(), before)


def test_keras_file_round_trip_keeps_the_tower_frozen(trained, tmp_path):
  model = trained.model
  reloaded = zoo.round_trip(model, tmp_path)
  features = _features(seed=9)
  np.testing.assert_allclose(reloaded(features).numpy(), model(features).numpy(), rtol=1e-6)
  tower = ctnet.find_source_tower(reloaded)
  assert tower is not None and not tower.trainable_weights


def test_finetune_stage_keeps_tower_and_adapters_frozen_and_starts_equal(trained):
  pretrained = trained.model
  model = ctnet.build_ctnet_model(SPEC, VOCAB_SIZES, HIDDEN, embedding_dim=4, adaptation='mlora',
                                  freeze_backbone=True, options={'alpha': 4},
                                  tower=ctnet.find_source_tower(pretrained))
  model_lib.load_backbone_weights(model, ctnet.without_source_tower(pretrained))
  features = _features(seed=7)
  np.testing.assert_array_equal(model(features).numpy(), pretrained(features).numpy())
  embeddings = {w.name for l in model.layers if isinstance(l, tf_keras.layers.Embedding) for w in l.weights}
  lora = {w.name for w in model_lib.adaptation_weights(model)}
  assert {w.name for w in model.trainable_weights} == embeddings | lora


def test_warm_start_takes_target_and_adapters_from_production_and_the_tower_from_the_newest_source(trained, tmp_path):
  production = trained.model  # trained with the previous source model
  newest = _source_model(seed=3)
  model = _ctnet(newest)
  (tmp_path / 'assets').mkdir()
  vocabularies = {'item': [f'i{k}'.encode() for k in range(19)], 'tags': [f't{k}'.encode() for k in range(7)]}
  for column, tokens in vocabularies.items():
    (tmp_path / 'assets' / column).write_bytes(b''.join(t + b'\n' for t in tokens))

  class _TransformOutput:
    @staticmethod
    def vocabulary_by_name(name):
      return vocabularies[name]

  warm_start.warm_start(ctnet.without_source_tower(model), production, SPEC, _TransformOutput(), str(tmp_path))
  for name in ('dense_0', 'ctnet_adapter_dense_0', 'ctnet_adapter_dense_1'):
    for got, expected in zip(_weights(model.get_layer(name)), _weights(production.get_layer(name))):
      np.testing.assert_array_equal(got, expected)
  newest_weights = {w.name: w.numpy() for w in newest.weights}
  for weight in ctnet.find_source_tower(model).weights:
    np.testing.assert_array_equal(weight.numpy(), newest_weights[weight.name])


def test_source_input_the_target_lacks_is_named(source):
  narrower = dataclasses.replace(SPEC, multivalent={})
  with pytest.raises(ValueError, match='tags_xf'):
    ctnet.build_ctnet_model(narrower, VOCAB_SIZES, HIDDEN, embedding_dim=4, tower=ctnet.source_tower(source))


# Feature maps: each side's Transform, faked on the same raw columns. The source pipeline saw other data: its
# vocabularies are ordered differently, it lacks domain 'd', and its price statistics differ.
RAW_SPEC = {
    'domain': tf.io.FixedLenFeature([], tf.string), 'item': tf.io.FixedLenFeature([], tf.int64),
    'user': tf.io.FixedLenFeature([], tf.int64), 'price': tf.io.FixedLenFeature([], tf.float32),
    'tags': tf.io.FixedLenFeature([], tf.string), 'click': tf.io.FixedLenFeature([], tf.int64),
}
TARGET_SPEC = dataclasses.replace(SPEC, domains=['a', 'b', 'c', 'd'])
TARGET_VOCABULARIES = {'item': [b'7', b'3', b'9', b'5'], 'tags': [b'x', b'y']}
SOURCE_VOCABULARIES = {'item': [b'3', b'5', b'7', b'8', b'1'], 'tags': [b'y', b'z', b'x']}


def _transform(spec, vocabularies, mean, std):
  """A stand-in for one pipeline's Transform (models.preprocessing) on parsed raw features."""
  def transform(raw):
    def ids(column, offset):
      vocabulary = vocabularies[column]
      return [vocabulary.index(t) + offset if t in vocabulary else len(vocabulary) + offset
              for t in (str(v.decode() if isinstance(v, bytes) else v).encode() for v in raw[column].numpy())]
    domains = [d.decode() for d in raw['domain'].numpy()]
    return {
        DOMAIN_INDEX: tf.constant([spec.domains.index(d) if d in spec.domains else spec.num_domains for d in domains],
                                  tf.int64),
        'item_xf': tf.constant(ids('item', 0), tf.int64),
        'tags_xf': tf.constant([[i, 0, 0] for i in ids('tags', 1)], tf.int64),
        'user_xf': raw['user'] % 50,
        'price_xf': (raw['price'] - mean) / std,
        'click': raw['click'],
    }
  return transform


class _TargetTransformOutput:
  def __init__(self):
    self.transform_raw_features = _transform(TARGET_SPEC, TARGET_VOCABULARIES, 20.0, 4.0)

  @staticmethod
  def raw_feature_spec():
    return RAW_SPEC

  @staticmethod
  def vocabulary_by_name(name):
    return TARGET_VOCABULARIES[name]

  @staticmethod
  def vocabulary_size_by_name(name):
    return len(TARGET_VOCABULARIES[name])


def _source_on_its_vocabularies(hashed_buckets=50):
  sizes = {'item': len(SOURCE_VOCABULARIES['item']) + 1, 'user': hashed_buckets,
           'tags': len(SOURCE_VOCABULARIES['tags']) + 2}
  tf_keras.utils.set_random_seed(0)
  spec = dataclasses.replace(SPEC, domains=['b', 'a', 'c'], hashed={'user': hashed_buckets})
  return model_lib.build_model(spec, sizes, (12, 6), embedding_dim=4), spec


def _source_transform(spec):
  transform = _transform(spec, SOURCE_VOCABULARIES, 26.0, 2.0)
  return lambda examples: transform(tf.io.parse_example(examples, RAW_SPEC))


def test_feature_maps_follow_tokens_domain_names_and_raw_values():
  source, source_spec = _source_on_its_vocabularies()
  maps = ctnet.source_feature_maps(source, _source_transform(source_spec), TARGET_SPEC, _TargetTransformOutput())
  np.testing.assert_array_equal(maps['item_xf'], [2, 0, 5, 1, 5])  # 9 and the OOV row -> the source's OOV row
  np.testing.assert_array_equal(maps['tags_xf'], [0, 3, 1, 4])  # padding, x, y, OOV
  np.testing.assert_array_equal(maps[DOMAIN_INDEX], [1, 0, 2, 3, 3])  # d and unknown -> the source's unknown
  assert 'user_xf' not in maps  # same hash buckets: the same ids
  scale, shift = maps['price_xf']  # raw = 4 z_t + 20 = 2 z_s + 26
  assert scale == pytest.approx(2.0) and shift == pytest.approx(-3.0)


def test_mapped_tower_sees_each_example_as_the_source_model_does():
  source, source_spec = _source_on_its_vocabularies()
  maps = ctnet.source_feature_maps(source, _source_transform(source_spec), TARGET_SPEC, _TargetTransformOutput())
  tower = ctnet.source_tower(source, maps)
  raw = {'domain': tf.constant([b'a', b'd', b'c', b'b']), 'item': tf.constant([7, 9, 3, 5], tf.int64),
         'user': tf.constant([1, 2, 3, 4], tf.int64), 'price': tf.constant([18.0, 30.0, 21.0, 25.0]),
         'tags': tf.constant([b'x', b'q', b'y', b'x']), 'click': tf.constant([0, 1, 0, 1], tf.int64)}
  target_features = _TargetTransformOutput().transform_raw_features(raw)
  source_features = _transform(source_spec, SOURCE_VOCABULARIES, 26.0, 2.0)(raw)
  expected = tf_keras.Model(source.input, source.get_layer('dense_1').output)(
      {k: source_features[k] for k in source.input})
  np.testing.assert_allclose(tower({k: target_features[k] for k in tower.input})['dense_1'].numpy(),
                             expected.numpy(), rtol=1e-5, atol=1e-6)


def test_different_hash_buckets_are_an_error():
  source, source_spec = _source_on_its_vocabularies(hashed_buckets=64)
  with pytest.raises(ValueError, match="hashes 'user' into 64 buckets, the target into 50"):
    ctnet.source_feature_maps(source, _source_transform(source_spec), TARGET_SPEC, _TargetTransformOutput())


def test_missing_source_model_names_the_path_and_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match='Format-Serving.*--transfer-source'):
    ctnet.load_source_tower(str(tmp_path / 'Format-Serving'), str(tmp_path / 'keras' / 'model.keras'), SPEC, None)
