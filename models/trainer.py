"""TFX Trainer module: `pretrain_run_fn` trains the backbone on every domain, `finetune_run_fn` freezes its
dense weights and trains one MLoRA adapter per domain (and the embeddings).

Both keep the weights with the best validation AUC, the starting ones included (`BestValidationWeights`), then
fit the model's per-domain calibration (`DomainCalibration`, when built with `calibrate`) on the same
validation batches with every other weight fixed (train fits, eval selects and calibrates, test judges), and
export a TF Serving SavedModel (`serving_signatures`: `serving_default` on serialized tf.Example with
the Transform graph inside, `serving_raw` on named raw feature tensors, `classify` for TF Serving's Classify
API, `transform_features` for the Evaluator) and keep the bare Keras model beside it in the same Model
artifact, where the next stage loads it from.
"""
import functools
import json
import logging
import os
import time
from typing import Dict, NamedTuple, Optional, Sequence

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras  # noqa: E402
from tfx import v1 as tfx  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402
from tf_keras.src.saving.legacy.saved_model import utils as keras_saved_model_utils  # noqa: E402

from models import constraints  # noqa: E402
from models import ctnet  # noqa: E402
from models import distribution  # noqa: E402
from models import heads  # noqa: E402
from models import model as model_lib  # noqa: E402
from models import onboarding  # noqa: E402
from models import ranking  # noqa: E402
from models import warm_start  # noqa: E402
from models.features import DOMAIN_INDEX, FeatureSpec  # noqa: E402
from models.layers.calibration import fit_domain_calibration  # noqa: E402
from models.multitask import MultiTaskModel  # noqa: E402
from models.optimizers import LayerRateAdam  # noqa: E402
from models.preprocessing import vocabulary_sizes  # noqa: E402
from serving import signatures  # noqa: E402

_LOG = logging.getLogger(__name__)
TRAINING_STATS_FILE = 'training_stats.json'  # throughput and parameter counts, beside the Keras model
MAX_IN_MEMORY_EXAMPLES = 2_000_000  # about 120 MB of parsed features for the default model
IN_MEMORY_READ_BATCH = 8192
EPOCHS = 5  # the training steps are logged in this many chunks, each with its throughput
PARAMETER_SERVER_STEPS_PER_EXECUTION = 10
MATCH_PARAMETERS_OF = 'match_parameters_of'  # trainer config: the parameter-matched control's method


def keras_model_path(model_artifact_dir: str) -> str:
  """Where a stage keeps its bare Keras model, given the Model artifact's `Format-Serving` directory."""
  return os.path.join(os.path.dirname(model_artifact_dir), 'keras', 'model.keras')


class ThroughputLogger(tf_keras.callbacks.Callback):
  """Logs training examples/second for every epoch, validation time excluded (the figure benchmarks quote)."""

  def __init__(self, batch_size: int, steps_per_epoch: int):
    super().__init__()
    self.examples_per_epoch = batch_size * steps_per_epoch
    self.rates = []

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()
    self._train_seconds = None

  def on_test_begin(self, logs=None):  # validation starts: the epoch's training part is over
    self._train_seconds = time.perf_counter() - self._start

  def on_epoch_end(self, epoch, logs=None):
    rate = self.examples_per_epoch / (self._train_seconds or time.perf_counter() - self._start)
    self.rates.append(rate)
    metrics = ' '.join(f'{k}={v:.4f}' for k, v in (logs or {}).items())
    _LOG.info('epoch %d/%d: %.0f training examples/s %s', epoch + 1, self.params['epochs'], rate, metrics)


class BestValidationWeights(tf_keras.callbacks.Callback):
  """Keeps the weights with the highest validation AUC, `monitor` (`val_auc`; `val_ctr_auc` for a
  multi-task model), among the starting weights and every epoch's end, and restores them when training
  ends: a stage never exports a model that scores worse on validation than the one it started from (a
  fine-tune that only overfits leaves the pretrained model as it was), nor a late, overfitted epoch.
  `best_epoch` is 0 for the starting weights. With `constraints` (`models.constraints.Constraint`) weights
  that meet them all on validation beat any that do not, whatever their AUC. With `patience`, training stops
  once that many epochs in a row have not beaten the best: on sparse data the best epoch comes early, and the
  epochs after it only overfit."""

  def __init__(self, validation, monitor: str = 'val_auc', constraints=(), steps: Optional[int] = None,
               patience: Optional[int] = None):
    super().__init__()
    self.validation, self.monitor = validation, monitor  # `validation`: the same batches as fit's
    self.constraints = list(constraints)
    self.steps = steps  # as fit's validation_steps
    self.patience = patience

  def _rank(self, logs, prefix):
    """(whether the constraints hold, the monitored AUC) of the logs: the larger, the better."""
    feasible = all(c.violation(logs[prefix + c.name]) <= 0 for c in self.constraints)
    return feasible, logs[prefix + self.monitor[len('val_'):]]

  def on_train_begin(self, logs=None):
    start = self.model.evaluate(self.validation, steps=self.steps, return_dict=True, verbose=0)
    self.best_rank, self.best_epoch, self.best_weights = self._rank(start, ''), 0, self.model.get_weights()
    _LOG.info('starting weights: %s=%.4f', self.monitor, self.best)

  @property
  def best(self) -> float:
    return self.best_rank[1]

  def on_epoch_end(self, epoch, logs=None):
    rank = self._rank(logs, 'val_')
    if rank > self.best_rank:
      self.best_rank, self.best_epoch, self.best_weights = rank, epoch + 1, self.model.get_weights()
    elif self.patience and epoch + 1 - self.best_epoch >= self.patience:
      self.model.stop_training = True

  def on_train_end(self, logs=None):
    _LOG.info('keeping the weights of epoch %d (0: the starting weights): %s=%.4f', self.best_epoch, self.monitor,
              self.best)
    self.model.set_weights(self.best_weights)


def input_fn(file_pattern, data_accessor, tf_transform_output, spec: FeatureSpec, batch_size: int, seed: int,
             feature_names, max_in_memory_examples: int = MAX_IN_MEMORY_EXAMPLES,
             label_columns: Optional[Dict[str, str]] = None, validation_steps: Optional[int] = None,
             validation_domains: Sequence[str] = ()):
  """Shuffled batches of (model features, click label) from Transform's materialized examples, repeated;
  with `label_columns` ({name: label column}, a multi-task model's) the labels are a dict of those columns.
  With `validation_steps`, instead the same batches on every pass: the first `validation_steps` batches of
  the split in file order, once, so that validation scores of different weights compare; with
  `validation_domains`, of those domains' examples alone.

  Parsing gzipped tf.Examples costs about as much CPU as a training step of a small CTR model, so a split
  of up to `max_in_memory_examples` is parsed once, kept as tensors (a few dozen bytes an example), and
  served by gathering a fresh permutation each epoch. A larger split streams through TFXIO.
  """
  def select(features):
    labels = {k: features[c] for k, c in label_columns.items()} if label_columns else features[spec.label]
    return {k: features[k] for k in feature_names}, labels

  def stream(batch, num_epochs=None):
    return data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=batch, shuffle_seed=seed, num_epochs=num_epochs,
                                       shuffle=num_epochs is None),
        tf_transform_output.transformed_metadata.schema).map(select, num_parallel_calls=tf.data.AUTOTUNE)

  if validation_steps:
    batches = stream(batch_size, num_epochs=1)
    if validation_domains:
      ids = tf.constant([spec.domains.index(d) for d in validation_domains], tf.int64)
      batches = batches.unbatch().filter(
          lambda features, _: tf.reduce_any(tf.equal(tf.cast(features[DOMAIN_INDEX], tf.int64), ids))).batch(batch_size)
    return batches.take(validation_steps).cache().prefetch(tf.data.AUTOTUNE)
  batches = []
  for batch in stream(IN_MEMORY_READ_BATCH, num_epochs=1):
    batches.append(batch)
    if len(batches) * IN_MEMORY_READ_BATCH > max_in_memory_examples:
      return stream(batch_size).prefetch(tf.data.AUTOTUNE)
  features, labels = tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *batches)
  examples = int(tf.nest.flatten(labels)[0].shape[0])
  return (tf.data.Dataset.range(examples).shuffle(examples, seed=seed).repeat().batch(batch_size)
          .map(lambda rows: tf.nest.map_structure(lambda t: tf.gather(t, rows), (features, labels)))
          .prefetch(tf.data.AUTOTUNE))


def _serving_feature_spec(tf_transform_output, spec: FeatureSpec) -> dict:
  """How serving parses a request's tf.Examples: every raw column but the labels, a column the schema
  requires (presence 1) as a scalar FixedLenFeature, so that an example without it fails with
  INVALID_ARGUMENT naming it, any other column as Transform's raw feature spec has it."""
  required = {f.name for f in tf_transform_output.raw_metadata.schema.feature if f.presence.min_fraction == 1.0}
  return {k: tf.io.FixedLenFeature([], v.dtype) if k in required else v
          for k, v in tf_transform_output.raw_feature_spec().items() if k not in spec.label_columns}


def _transform_input(value, feature):
  """A column of a serving request as Transform's raw feature spec has it: a dense [batch] tensor becomes a
  SparseTensor with one value per row where that spec is variable-length."""
  if isinstance(value, tf.SparseTensor) or isinstance(feature, tf.io.FixedLenFeature):
    return value
  rows = tf.shape(value, out_type=tf.int64)[0]
  indices = tf.stack([tf.range(rows), tf.zeros([rows], tf.int64)], axis=1)
  return tf.SparseTensor(indices, value, tf.stack([rows, 1]))


def serving_signatures(model, tf_transform_output, spec: FeatureSpec):
  """The SavedModel's signatures, all on raw features with the Transform graph inside:

  - `serving_default`: serialized tf.Example (`examples`, string [batch]) -> one output per task, named
    after it, shape [batch] (`ctr`: click probability);
  - `serving_raw`: one [batch] tensor per raw feature column, named and typed as the column -> the same
    outputs, for clients that send named feature tensors;
  - `classify`: TF Serving's Classify API on serialized tf.Example (`inputs`) -> `classes` ('0', '1') and
    `scores` (1 - ctr, ctr), each [batch, 2];
  - `transform_features`: serialized tf.Example -> the transformed features (used by the Evaluator).
  Their names are in `serving.signatures`, the contract clients share.
  """
  model.tft_layer = tf_transform_output.transform_features_layer()  # tracked, so it is saved
  raw_spec = tf_transform_output.raw_feature_spec()
  serving_spec = _serving_feature_spec(tf_transform_output, spec)
  feature_names = list(model.input.keys())

  @tf.function(autograph=False)  # traced once, shared by the signatures that score
  def predict(features):
    transformed = model.tft_layer({k: _transform_input(v, raw_spec[k]) for k, v in features.items()})
    outputs = tf.nest.flatten(model({k: transformed[k] for k in feature_names}))
    return {name: tf.reshape(output, [-1]) for name, output in zip(model.output_names, outputs)}

  examples = tf.TensorSpec([None], tf.string, name=signatures.EXAMPLES_INPUT)

  @tf.function(autograph=False, input_signature=[examples])
  def serve(serialized):
    return predict(tf.io.parse_example(serialized, serving_spec))

  @tf.function(autograph=False,
               input_signature=[{k: tf.TensorSpec([None], v.dtype, name=k) for k, v in serving_spec.items()}])
  def serve_raw(features):
    return predict(features)

  @tf.function(autograph=False,
               input_signature=[tf.TensorSpec([None], tf.string, name=tf.saved_model.CLASSIFY_INPUTS)])
  def classify(serialized):
    ctr = predict(tf.io.parse_example(serialized, serving_spec))[model_lib.PREDICTION]
    classes = tf.tile(tf.constant([signatures.CLASSES]), [tf.shape(ctr)[0], 1])
    return {tf.saved_model.CLASSIFY_OUTPUT_CLASSES: classes,
            tf.saved_model.CLASSIFY_OUTPUT_SCORES: tf.stack([1.0 - ctr, ctr], axis=1)}

  @tf.function(autograph=False, input_signature=[examples])
  def transform_features(serialized):
    return model.tft_layer(tf.io.parse_example(serialized, raw_spec))

  return {signatures.DEFAULT: serve, signatures.RAW: serve_raw, signatures.CLASSIFY: classify,
          signatures.TRANSFORM: transform_features}


def export_serving_model(model, tf_transform_output, spec: FeatureSpec, path: str) -> None:
  """Writes the TF Serving SavedModel of `model` (its `serving_signatures`) to `path`.

  `tf.saved_model.save` would also trace every Keras layer's call functions, so that the SavedModel could be
  revived as Keras layers. Nothing here revives them (the next stage loads `model.keras`; TF Serving, the
  Evaluator and the local server call the signatures), and those traces took most of an export's time: they
  are left out, and the signatures are traced without AutoGraph (no Python control flow on tensors in the
  models), which cuts an export from tens of seconds to a few.
  """
  with keras_saved_model_utils.keras_option_scope(save_traces=False, in_tf_saved_model_scope=True):
    tf.saved_model.save(model, path, signatures=serving_signatures(model, tf_transform_output, spec))


class Fitted(NamedTuple):
  """What `fit_stage` leaves: the validation batches, the kept weights' record, the throughput, the dual ascent
  callback (none without constraints)."""
  evaluation: tf.data.Dataset
  best: BestValidationWeights
  throughput: ThroughputLogger
  dual: list


def fit_stage(fn_args: tfx.components.FnArgs, model: tf_keras.Model, spec: FeatureSpec, tf_transform_output,
              config: dict, strategy: tf.distribute.Strategy) -> Fitted:
  """Trains `model` (built in `strategy`'s scope) for `fn_args.train_steps` on the train split and keeps its
  best weights on the eval split: a Trainer stage's training, which the Tuner's trials run too. `batch_size`
  is the global batch: synchronous replicas split it; each parameter-server worker takes whole batches of it."""
  batch_size, seed = config['batch_size'], config['seed']
  feature_names = list(model.input.keys())
  multitask = isinstance(model, MultiTaskModel)
  labels = heads.label_columns(spec) if multitask else None
  parameter_server = isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)
  train = input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output, spec, batch_size, seed,
                   feature_names, label_columns=labels,
                   # The workers build the dataset: they read the files rather than receive the split as constants.
                   max_in_memory_examples=0 if parameter_server else MAX_IN_MEMORY_EXAMPLES)
  if not parameter_server:
    # Every synchronous replica builds the same pipeline and keeps its share of each global batch, so the
    # replicas together see what one process would.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train = train.with_options(options)
  evaluation = input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, spec, batch_size, seed,
                        feature_names, label_columns=labels, validation_steps=fn_args.eval_steps,
                        # Onboarding changes the new domains' scores alone: they alone judge its epochs.
                        validation_domains=config.get('onboard_domains') or ())
  # Parameter-server steps are remote calls: a few steps a call saves round trips.
  steps_per_execution = PARAMETER_SERVER_STEPS_PER_EXECUTION if parameter_server else 1
  with strategy.scope():  # the optimizer's and the metrics' variables, beside the model's
    trained = training_model(model, config, steps_per_execution)
  epochs, steps_per_epoch = epoch_plan(fn_args.train_steps)
  throughput = ThroughputLogger(batch_size, steps_per_epoch)
  # Parameter-server workers evaluate a set number of steps (the end of a finite dataset cancels them): the
  # same batches, repeated.
  validation_steps = fn_args.eval_steps if parameter_server else None
  validation = evaluation.repeat() if parameter_server else evaluation
  lagrangian = model.lagrangian if multitask and model.lagrangian.constraints else None
  best = BestValidationWeights(validation, monitor=f'val_{model_lib.PREDICTION}_auc' if multitask else 'val_auc',
                               constraints=lagrangian.constraints if lagrangian else (), steps=validation_steps,
                               patience=config.get('early_stopping_patience'))
  dual = [constraints.DualAscent(lagrangian)] if lagrangian else []
  trained.fit(train, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=validation,
              validation_steps=validation_steps, callbacks=[throughput, best] + dual, verbose=0)
  return Fitted(evaluation, best, throughput, dual)


def _train_and_export(fn_args: tfx.components.FnArgs, model: tf_keras.Model, spec: FeatureSpec,
                      tf_transform_output, config: dict, strategy: tf.distribute.Strategy) -> None:
  """Trains `model` (`fit_stage`), fits its calibration and exports it with its training statistics."""
  evaluation, best, throughput, dual = fit_stage(fn_args, model, spec, tf_transform_output, config, strategy)
  calibration = model_lib.calibration_layer(model)
  if calibration is not None:
    onboard = [spec.domains.index(d) for d in config.get('onboard_domains') or ()]
    fit_calibration(model, calibration, evaluation, spec, domains=onboard or None)
  steady_rates = throughput.rates[1:] or throughput.rates  # the first epoch pays for tracing
  stats = {
      'examples_per_second': sum(steady_rates) / len(steady_rates),
      'best_epoch': best.best_epoch,
      'validation_auc': float(best.best),
      'parameters': model.count_params(),
      'trainable_parameters': int(sum(w.shape.num_elements() for w in model.trainable_weights)),
      'calibration': calibration.calibration.numpy().tolist() if calibration is not None else None,
      'adapter_parameters_per_domain': int(sum(w.shape.num_elements() for w in model_lib.adaptation_weights(model))
                                           / max(spec.num_domains, 1)),
      # Per constraint, each epoch's validation value and the multiplier after its dual ascent step.
      **({'constraints': dual[0].trajectory} if dual else {}),
  }
  _LOG.info('training throughput: %.0f examples/s (mean of epochs after the first)', stats['examples_per_second'])

  with distribution.writer_path(fn_args.serving_model_dir, strategy) as serving_model_dir:
    keras_path = keras_model_path(serving_model_dir)
    tf.io.gfile.makedirs(os.path.dirname(keras_path))
    model.save(keras_path)
    with tf.io.gfile.GFile(os.path.join(os.path.dirname(keras_path), TRAINING_STATS_FILE), 'w') as f:
      json.dump(stats, f, indent=2)
    export_serving_model(model, tf_transform_output, spec, serving_model_dir)
  distribution.wait_for_every_replica(strategy)


def training_model(model: tf_keras.Model, config: dict, steps_per_execution: int = 1) -> tf_keras.Model:
  """`model`, or the model that trains its weights, compiled with the stage's Adam step: a multi-task model
  trains on its own task losses (its train step); a click model on log loss, or with `loss` ranknet or
  ranknet+logloss on `ranking.click_objective` (`ranking.RankingLossModel`, weighted by `rank_weight`)."""
  optimizer = stage_optimizer(model, config)
  if isinstance(model, MultiTaskModel):
    model.compile(optimizer=optimizer, steps_per_execution=steps_per_execution)
    return model
  loss = config.get('loss', ranking.LOGLOSS)
  if loss == ranking.LOGLOSS:
    model.compile(optimizer=optimizer, loss=tf_keras.losses.BinaryCrossentropy(),
                  metrics=[tf_keras.metrics.AUC(name='auc')], steps_per_execution=steps_per_execution)
    return model
  trained = ranking.RankingLossModel(model, model_lib.PREDICTION, loss, config.get('rank_weight', 1.0))
  trained.compile(optimizer=optimizer, steps_per_execution=steps_per_execution)
  return trained


def stage_optimizer(model: tf_keras.Model, config: dict) -> tf_keras.optimizers.Optimizer:
  """The stage's Adam step at `learning_rate`, after the fine-tune recipe's embedding settings: with
  `freeze_domain_embedding` the domain's embedding row and first-order weight stay as pretrained;
  `embedding_learning_rate` None (the default) trains the embedding tables at the stage's rate, 0 freezes
  them, any other value is their own rate (`LayerRateAdam`): adapters learn fast on tables that move slowly."""
  tables = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.Embedding)]
  rate = config.get('embedding_learning_rate')
  for layer in tables:
    if rate == 0 or (config.get('freeze_domain_embedding') and layer.name.endswith(DOMAIN_INDEX)):
      layer.trainable = False
  if rate is None or rate == 0 or rate == config['learning_rate']:
    return tf_keras.optimizers.Adam(config['learning_rate'])
  return LayerRateAdam(config['learning_rate'], rate, [layer.name for layer in tables if layer.trainable])


def fit_calibration(model: tf_keras.Model, calibration, evaluation, spec: FeatureSpec, domains=None) -> None:
  """Fits `calibration` (the model's `DomainCalibration`) on `evaluation`, the validation batches, with every
  other weight as training left it: each domain's (a_d, b_d) on its examples' uncalibrated logits, the
  unknown-domain slot on the same examples scored as an unknown domain. `domains`: the domain indices to fit
  (onboarding's new domains; the other slots keep the production model's values), all by default."""
  logit_model = tf_keras.Model(model.input, calibration.input[0])

  @tf.function(autograph=False)  # one graph for all batches: called eagerly, Keras took 0.2 s a batch of 1,024
  def score(features):
    unknown = {**features, DOMAIN_INDEX: tf.fill(tf.shape(features[DOMAIN_INDEX]),
                                                 tf.cast(spec.num_domains, features[DOMAIN_INDEX].dtype))}
    return logit_model(features, training=False), logit_model(unknown, training=False)

  logits, unknown_logits, labels, slots = [], [], [], []
  for features, label in evaluation:
    known, unknown = score(features)
    logits.append(known.numpy().ravel())
    unknown_logits.append(unknown.numpy().ravel())
    labels.append(label.numpy().ravel())
    slots.append(features[DOMAIN_INDEX].numpy().ravel())
  value = fit_domain_calibration(calibration, *map(np.concatenate, (logits, labels, slots, unknown_logits)),
                                 domains=domains)
  _LOG.info('per-domain calibration (scale, shift), the unknown domain last: %s', np.round(value, 3).tolist())


def epoch_plan(train_steps: int):
  """(epochs, steps per epoch) of a Trainer run of `train_steps` steps."""
  epochs = min(EPOCHS, train_steps)
  return epochs, train_steps // epochs


def setup_stage(fn_args):
  """(config, feature spec, TFTransformOutput, tf.distribute strategy) of a Trainer or Tuner run, the process's
  seeds and determinism set."""
  assert tf_keras.__version__.startswith('2.'), f'Keras 2 (tf_keras) required, got {tf_keras.__version__}'
  config = fn_args.custom_config
  # First: a multi-worker strategy configures the process's collective ops before any op runs.
  strategy = distribution.make_strategy(config.get(distribution.CONFIG_KEY, distribution.NONE))
  tf_keras.utils.set_random_seed(config['seed'])
  # Same seed, same weights; what the deterministic kernels cost: benchmarks/trainer_throughput.py --op-determinism.
  tf.config.experimental.enable_op_determinism()
  spec = FeatureSpec.from_dict(config['feature_spec'])
  if config.get('head'):  # DWA re-weighs the tasks once per epoch; gradient surgery's task order follows the seed
    options = {'dwa_period': epoch_plan(fn_args.train_steps)[1], 'seed': config['seed']}
    config = {**config, 'head_options': {**config['head_options'], **options}}
  # transform_graph_path: the Trainer's FnArgs also name it transform_output, the Tuner's do not.
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
  return config, spec, tf_transform_output, strategy


def build_stage_model(config, spec, tf_transform_output, freeze_backbone: bool, source_tower=None):
  """The stage's model; with a `source_tower`, CTNet's: the same model beside it, adapters between them.
  The model's own settings (`model_lib.MODEL_OPTIONS`: embedding L2, domain dropout, calibration) come from
  `config` when it has them, off otherwise. With `config[MATCH_PARAMETERS_OF]` (an adaptation), the hidden
  layers are widened until the model has as many parameters as that adaptation's model would."""
  build = (functools.partial(model_lib.build_model, head=config.get('head')) if source_tower is None else
           functools.partial(ctnet.build_ctnet_model, tower=source_tower))
  model_options = {k: config[k] for k in model_lib.MODEL_OPTIONS if config.get(k) is not None}
  sizes = vocabulary_sizes(spec, tf_transform_output)

  def build_with(hidden_units, adaptation=config['adaptation'], freeze=freeze_backbone):
    return build(spec, sizes, hidden_units, config['embedding_dim'], backbone=config['backbone'], adaptation=adaptation,
                 freeze_backbone=freeze, options={**config['adaptation_options'], **config.get('head_options', {}),
                                                  **model_options})

  if config.get(MATCH_PARAMETERS_OF):  # the parameter-matched control: as large as that method's model
    target = build_with(config['hidden_units'], adaptation=config[MATCH_PARAMETERS_OF], freeze=True).count_params()
    hidden_units = model_lib.parameter_matched_units(build_with, config['hidden_units'], target)
    _LOG.info('parameter-matched to %s (%d parameters): hidden units %s', config[MATCH_PARAMETERS_OF], target,
              hidden_units)
    return build_with(hidden_units)
  return build_with(config['hidden_units'])


def _source_tower(config, spec, tf_transform_output):
  """CTNet's frozen source tower, from the source Model artifact the CTNet Trainer passes in `custom_config`
  (components/ctnet_transfer.py); None for the plain Trainer."""
  source = config.get(ctnet.SOURCE_MODEL_KEY)
  return ctnet.load_source_tower(source, keras_model_path(source), spec, tf_transform_output) if source else None


def pretrain_run_fn(fn_args: tfx.components.FnArgs) -> None:
  """Stage 1: the shared backbone (or a method trained end to end), on every domain together; with a `base_model` (the production
  model, for continual runs) it starts from that model's backbone (`models.warm_start`). Run by the CTNet
  Trainer (a source model in `custom_config`), the backbone is CTNet's target tower beside the source model's
  frozen tower (`models.ctnet`); the warm start leaves that tower as the newest source model has it."""
  config, spec, tf_transform_output, strategy = setup_stage(fn_args)
  with strategy.scope():
    model = build_stage_model(config, spec, tf_transform_output, freeze_backbone=False,
                   source_tower=_source_tower(config, spec, tf_transform_output))
  if fn_args.base_model:
    base = tf_keras.models.load_model(keras_model_path(fn_args.base_model))
    warm_start.warm_start(ctnet.without_source_tower(model), base, spec, tf_transform_output, fn_args.base_model)
  _train_and_export(fn_args, model, spec, tf_transform_output, config, strategy)


def finetune_model(base_model: Optional[str], config: dict, spec: FeatureSpec, tf_transform_output,
                   strategy: tf.distribute.Strategy) -> tf_keras.Model:
  """The fine-tune stage's model on the pretrained model of `base_model` (its Format-Serving path): the
  backbone frozen with the adaptation added and the pretrained weights loaded; onboarding's model on the
  production model with `onboard_domains`. The fine-tune Trainer and the Tuner's trials build it here."""
  if not base_model:
    raise ValueError('The fine-tune Trainer needs base_model: wire it to the pretrain Trainer\'s model.')
  pretrained = tf_keras.models.load_model(keras_model_path(base_model))
  with strategy.scope():
    if config.get('onboard_domains'):  # base_model is the production model
      return onboarding.onboarding_model(
          spec, vocabulary_sizes(spec, tf_transform_output), config['onboard_domains'], pretrained,
          tf_transform_output, base_model, config['hidden_units'], config['embedding_dim'],
          config['backbone'], config['adaptation_options'])
    model = build_stage_model(config, spec, tf_transform_output, freeze_backbone=True,
                              source_tower=ctnet.find_source_tower(pretrained))
    model_lib.load_backbone_weights(model, ctnet.without_source_tower(pretrained))
  return model


def finetune_run_fn(fn_args: tfx.components.FnArgs) -> None:
  """Stage 2: the pretrained backbone frozen, its dense layers built through the domain adaptation (one
  MLoRA adapter per domain on every dense layer by default); the adaptation's weights and the embeddings
  train. A CTNet model keeps its source tower and adapters, frozen. Onboarding new domains
  (`onboard_domains`), `base_model` is the production model and only the new domains' adapters train. With
  `fn_args.hyperparameters` (the Tuner's best), they replace the configured alpha and learning rates."""
  config, spec, tf_transform_output, strategy = setup_stage(fn_args)
  if fn_args.hyperparameters:
    # Imported here: models.tuning imports this module, and keras_tuner (Keras 3) only a tuned run needs.
    from models import tuning  # pylint: disable=g-import-not-at-top
    config = tuning.apply_hyperparameters(config, fn_args.hyperparameters)
    _LOG.info('tuned hyperparameters: %s', tuning.tuned_settings(config))
  model = finetune_model(fn_args.base_model, config, spec, tf_transform_output, strategy)
  _train_and_export(fn_args, model, spec, tf_transform_output, config, strategy)
