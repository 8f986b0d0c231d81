"""CTNet continual transfer (Liu et al., Taobao, arXiv 2208.05728): a source model trained elsewhere as a
frozen tower beside the target model, with a gated adapter from each of its hidden layers into the
target's matching one.

    h_t^l  <-  h_t^l + a_l(h_s^l),     a_l(h) = (W1 h + b1) * sigmoid(W2 h + b2)   (GatedLinearAdapter)

`h_s^l` is the source model's hidden layer `dense_l` on the same example, `h_t^l` the target tower's. The
target tower is this project's backbone (`models.model.build_model`, any adaptation); the source tower is
the source Keras model itself (a Model artifact of another run of this project: its `keras/model.keras`),
cut after its hidden layers, with every weight frozen. W1 = 0 at init, so the model starts as its target
tower: warm-started from the production model, training starts where production is.

Feature ids. Source and target share the feature contract (both are this project's models) but not their
Transform: each run learns its own vocabularies (ordered by frequency), its own z-score statistics and
maybe its own domain list. The source tower therefore starts with fixed maps from the target's
transformed features to the source's (`IdLookup`, `Affine`), computed once when the tower is built by
running the source model's own Transform (its SavedModel's `transform_features` signature) on the target's
vocabulary tokens, domain names and two numeric values: a token the source never saw gets the source's
OOV id, a domain it did not know its unknown-domain index. Hashed ids need the same bucket count on both
sides. The maps are part of the saved model, so serving gives the source tower what training gave it.
"""
import os
import re
import types
from typing import Callable, Dict, List, Optional, Union

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models import model as model_lib  # noqa: E402
from models.features import DOMAIN_INDEX, FeatureSpec, transformed_name  # noqa: E402
from models.layers.transfer import Affine, GatedLinearAdapter, IdLookup  # noqa: E402
from models.preprocessing import vocabulary_sizes  # noqa: E402

SOURCE_MODEL_KEY = 'source_model'  # custom_config key: the source Model artifact's Format-Serving directory
SOURCE_TOWER = 'source_tower'
ADAPTER_PREFIX = 'ctnet_adapter'
UNKNOWN_DOMAIN_PROBE = '<a domain no model knows>'
_HIDDEN_LAYER = re.compile(r'^dense_(\d+)$')  # models.backbones.mlp.dnn_hidden's layer names

# A map of one feature: an id table (target id -> source id), or (scale, shift) for a numeric z-score.
FeatureMap = Union[np.ndarray, tuple]


def hidden_layer_names(model: tf_keras.Model) -> List[str]:
  """The model's DNN hidden layers, `dense_0`, `dense_1`, ..., in order."""
  indexed = []
  for layer in model.layers:
    match = _HIDDEN_LAYER.match(layer.name)
    if match:
      indexed.append((int(match.group(1)), layer.name))
  return [name for _, name in sorted(indexed)]


def source_tower(source: tf_keras.Model, feature_maps: Optional[Dict[str, FeatureMap]] = None) -> tf_keras.Model:
  """The frozen source tower: `source` from its inputs to its hidden layers' outputs, {`dense_l`: [batch, d_l]},
  behind `feature_maps` (target feature -> source feature; none: the target's features as they are)."""
  names = hidden_layer_names(source)
  if not names:
    raise ValueError(f'The source model {source.name!r} has no hidden layers named dense_0, dense_1, ...: CTNet '
                     'needs a model of this project (an MLP-based backbone) as its source.')
  hidden = tf_keras.Model(source.input, {name: source.get_layer(name).output for name in names},
                          name='source_hidden')
  inputs = {name: tf_keras.Input(shape=x.shape[1:], dtype=x.dtype, name=name) for name, x in source.input.items()}
  mapped = {name: _mapped(x, name, (feature_maps or {}).get(name)) for name, x in inputs.items()}
  tower = tf_keras.Model(inputs, hidden(mapped), name=SOURCE_TOWER)
  tower.trainable = False
  return tower


def _mapped(x, name: str, feature_map: Optional[FeatureMap]):
  if feature_map is None:
    return x
  if isinstance(feature_map, np.ndarray):
    lookup = IdLookup(len(feature_map), name=f'source_ids_{name}')
    output = lookup(x)
    lookup.set_table(feature_map)
    return output
  scale, shift = feature_map
  return Affine(scale, shift, name=f'source_scale_{name}')(x)


class _SourceTransfer:
  """The target tower's own domain adaptation with one change: each hidden layer that has a source
  counterpart gets its gated adapter's output added (then the adaptation's own `hidden` hook). Every other
  hook is the wrapped adaptation's."""

  def __init__(self, adaptation, source_hidden: Dict[str, tf.Tensor], trainable: bool):
    self._adaptation = adaptation
    self._source_hidden = source_hidden
    self._trainable = trainable

  def __getattr__(self, name):
    if name.startswith('_'):  # not set yet (e.g. while copying): no delegation, no recursion
      raise AttributeError(name)
    return getattr(self._adaptation, name)

  def hidden(self, x, name: str):
    if name in self._source_hidden:
      adapter = GatedLinearAdapter(int(x.shape[-1]), trainable=self._trainable, name=f'{ADAPTER_PREFIX}_{name}')
      x = tf_keras.layers.Add(name=f'ctnet_sum_{name}')([x, adapter(self._source_hidden[name])])
    return self._adaptation.hidden(x, name)


def transfer_from(tower: tf_keras.Model, trainable: bool = True) -> Callable:
  """`build_model`'s `wrap_adaptation` that runs `tower` on the model's inputs and adds its adapters."""
  def wrap(inputs, adaptation):
    for name, x in tower.input.items():
      target = inputs.get(name)
      if target is None or target.dtype != x.dtype or target.shape[1:] != x.shape[1:]:
        found = 'no such input' if target is None else f'{target.dtype.name} {target.shape[1:]}'
        raise ValueError(f'The CTNet source model reads feature {name!r} as {x.dtype.name} {x.shape[1:]}, the '
                         f'target model has {found}: source and target must share the feature contract '
                         '(features.json), e.g. the same max values of a multivalent column.')
    return _SourceTransfer(adaptation, tower({name: inputs[name] for name in tower.input}), trainable)
  return wrap


def build_ctnet_model(spec: FeatureSpec, vocab_sizes: Dict[str, int], hidden_units=(256, 128, 64),
                      embedding_dim: int = 16, backbone: str = 'mlp', adaptation: str = 'none',
                      freeze_backbone: bool = False, options: Optional[dict] = None, *,
                      tower: tf_keras.Model) -> tf_keras.Model:
  """`models.model.build_model`'s model (the target tower) with the frozen source `tower` and a gated adapter
  per matching hidden layer. With `freeze_backbone` (the MLoRA stage) the adapters are frozen too."""
  model = model_lib.build_model(spec, vocab_sizes, hidden_units, embedding_dim, backbone=backbone,
                                adaptation=adaptation, freeze_backbone=freeze_backbone, options=options,
                                wrap_adaptation=transfer_from(tower, trainable=not freeze_backbone))
  if not adapter_layers(model):
    raise ValueError(f'No hidden layer of the target model matches the source model\'s ({", ".join(tower.output)}): '
                     f'the {backbone!r} backbone with hidden units {list(hidden_units)} builds none of them.')
  return model


def adapter_layers(model: tf_keras.Model) -> List[GatedLinearAdapter]:
  return [layer for layer in model.layers if isinstance(layer, GatedLinearAdapter)]


def find_source_tower(model: tf_keras.Model) -> Optional[tf_keras.Model]:
  """A CTNet model's source tower; None for a model without one."""
  return next((layer for layer in model.layers if layer.name == SOURCE_TOWER), None)


def without_source_tower(model: tf_keras.Model):
  """`model` as the by-name weight copies (`models.warm_start`, `load_backbone_weights`) see it: its layers
  but the source tower, which only ever comes from the source model (its weights carry no unique names)."""
  return types.SimpleNamespace(layers=[layer for layer in model.layers if layer.name != SOURCE_TOWER])


def load_source_tower(serving_dir: str, keras_path: str, spec: FeatureSpec, tf_transform_output) -> tf_keras.Model:
  """The source tower of a source Model artifact (`serving_dir`: its Format-Serving SavedModel, whose
  Transform maps the features; `keras_path`: its Keras model), for a target with `spec` and
  `tf_transform_output`."""
  for path in (serving_dir, keras_path):
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(
          f'The CTNet source model has no {path}. The source must be a Model artifact of this project (a Trainer '
          'output holding Format-Serving/ and keras/model.keras); point --transfer-source at one, or at the output '
          'folder of a source pipeline run, whose latest blessed model is used.')
  source = tf_keras.models.load_model(keras_path)
  signatures = tf.saved_model.load(serving_dir).signatures
  if 'transform_features' not in signatures:
    raise ValueError(f'The CTNet source model {serving_dir} has no transform_features signature: export it with '
                     'this project\'s Trainer, which puts the Transform graph into the SavedModel.')
  transform = signatures['transform_features']
  maps = source_feature_maps(source, lambda examples: transform(examples=examples), spec, tf_transform_output,
                             serving_dir)
  return source_tower(source, maps)


def _feature(value, dtype) -> tf.train.Feature:
  if dtype == tf.string:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value if isinstance(value, bytes) else
                                                                 str(value).encode()]))
  if dtype.is_integer:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
  return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))


def _probe_examples(spec: FeatureSpec, raw_spec: dict, vocabularies: Dict[str, List[bytes]]) -> tf.Tensor:
  """Raw tf.Examples whose row k holds domain k (past the last: an unknown domain), the k-th vocabulary token
  of every vocabulary column and the value k of every numeric column; other columns 0 or ''."""
  rows = max([spec.num_domains + 1, 2] + [len(v) for v in vocabularies.values()])
  serialized = []
  for k in range(rows):
    values = {spec.domain: spec.domains[k] if k < spec.num_domains else UNKNOWN_DOMAIN_PROBE}
    values.update({c: tokens[k] for c, tokens in vocabularies.items() if k < len(tokens)})
    values.update({c: k for c in spec.numeric})
    feature = {c: _feature(values.get(c, b'' if f.dtype == tf.string else 0), f.dtype) for c, f in raw_spec.items()}
    serialized.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
  return tf.constant(serialized)


def source_feature_maps(source: tf_keras.Model, source_transform: Callable[[tf.Tensor], dict], spec: FeatureSpec,
                        tf_transform_output, source_path: str = 'the source model') -> Dict[str, FeatureMap]:
  """The map of every feature `source` reads from the target's encoding to the source's (see the module
  docstring); `source_transform` is the source's Transform on serialized raw tf.Examples."""
  raw_spec = tf_transform_output.raw_feature_spec()
  columns = list(spec.vocab) + list(spec.multivalent)
  vocabularies = {c: tf_transform_output.vocabulary_by_name(c) for c in columns}
  examples = _probe_examples(spec, raw_spec, vocabularies)
  try:
    source_values = {k: v.numpy() for k, v in source_transform(examples).items()}
  except (tf.errors.InvalidArgumentError, ValueError) as error:
    raise ValueError(f'The Transform of the CTNet source model {source_path} cannot read the target\'s raw features '
                     f'({error.__class__.__name__}: {str(error).splitlines()[0]}): source and target pipelines must '
                     'share the feature contract (features.json and the schema\'s columns).') from error
  target_values = {k: v.numpy() for k, v in tf_transform_output.transform_raw_features(
      tf.io.parse_example(examples, raw_spec)).items()}
  sizes = vocabulary_sizes(spec, tf_transform_output)
  by_input = {DOMAIN_INDEX: ('domain', None)}  # model input -> (how it is encoded, raw column)
  for kind, names in (('vocab', spec.vocab), ('multivalent', spec.multivalent), ('hashed', spec.hashed),
                      ('numeric', spec.numeric)):
    by_input.update({transformed_name(c): (kind, c) for c in names})

  maps = {}
  for name in source.input:
    kind, column = by_input.get(name, (None, None))
    if kind is None:
      raise ValueError(f'The CTNet source model {source_path} reads feature {name!r}, which the target\'s feature '
                       'contract does not produce: source and target must share features.json.')
    if kind == 'domain':
      maps[name] = source_values[name][:spec.num_domains + 1].astype(np.int64)
    elif kind in ('vocab', 'multivalent'):
      padding = [0] if kind == 'multivalent' else []  # id 0 pads a multivalent row on both sides
      tokens = source_values[name][:len(vocabularies[column])]
      tokens = tokens[:, 0] if tokens.ndim == 2 else tokens  # a multivalent probe's one value comes first
      oov = _table_rows(source, name, source_path) - 1  # the (only, OOV_BUCKETS = 1) OOV bucket comes last
      table = np.concatenate([padding, tokens, [oov] * (sizes[column] - len(padding) - len(tokens))])
      maps[name] = table.astype(np.int64)
    elif kind == 'hashed':
      rows = _table_rows(source, name, source_path)
      if rows != spec.hashed[column]:
        raise ValueError(f'The CTNet source model {source_path} hashes {column!r} into {rows} buckets, the target '
                         f'into {spec.hashed[column]}: give both the same bucket count (features.json "hashed").')
    else:  # both are z-scores of the same raw value: z_s = scale * z_t + shift, from the values at 0 and 1
      z_source, z_target = source_values[name][:2].astype(np.float64), target_values[name][:2].astype(np.float64)
      scale = (z_source[1] - z_source[0]) / (z_target[1] - z_target[0])
      maps[name] = (scale, z_source[0] - scale * z_target[0])
  return maps


def _table_rows(source: tf_keras.Model, name: str, source_path: str) -> int:
  """The row count of the source model's embedding table of feature `name` (`models.model.EmbeddedFeatures`)."""
  try:
    return int(source.get_layer(f'embedding_{name}').input_dim)
  except ValueError as error:
    raise ValueError(f'The CTNet source model {source_path} has no embedding table embedding_{name}: it is not a '
                     'model of this project\'s embedding front.') from error
