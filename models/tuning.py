"""TFX Tuner module: `tuner_fn` searches the fine-tune stage's MLoRA rank divisor (`alpha`), learning rate and
embedding learning rate on the eval split; the fine-tune Trainer takes the best (`apply_hyperparameters`).

Each trial is one fine-tune as the Trainer runs it (`trainer.finetune_model`, `trainer.fit_stage`) on the
pretrained model of the Tuner's `base_model`, scored by the validation AUC of the weights the Trainer would keep:
a search costs about `tune_trials` fine-tunes. KerasTuner's own tuners build Keras 3 models and reject tf_keras
ones (keras-team/keras-tuner#1039), hence a `BaseTuner` that trains the trial itself.
"""
import logging
import os
import time

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import keras_tuner  # noqa: E402
import tf_keras  # noqa: E402
from keras_tuner.engine import base_tuner  # noqa: E402
from tfx import v1 as tfx  # noqa: E402

from models import trainer  # noqa: E402

_LOG = logging.getLogger(__name__)
OBJECTIVE = 'val_auc'
# The hyperparameters' names are a contract: best_hyperparameters.txt holds them, and a pinned file
# (Importer) must use them too.
ALPHA = 'alpha'
LEARNING_RATE = 'learning_rate'
EMBEDDING_LEARNING_RATE = 'embedding_learning_rate'
# embedding_learning_rate's value for "the embeddings train at learning_rate" (None in the trainer config):
# KerasTuner's Choice takes numbers only. 0 freezes the embeddings.
SAME_AS_LEARNING_RATE = -1.0


def search_space() -> keras_tuner.HyperParameters:
  """The fine-tune settings the Tuner searches."""
  space = keras_tuner.HyperParameters()
  space.Choice(ALPHA, [4, 8, 16, 32])  # MLoRA's rank divisor: rank max(d_out // alpha, 1)
  space.Choice(LEARNING_RATE, [1e-3, 3e-3, 1e-2])
  space.Choice(EMBEDDING_LEARNING_RATE, [SAME_AS_LEARNING_RATE, 0.0, 3e-4])
  return space


def apply_hyperparameters(config: dict, hyperparameters: dict) -> dict:
  """The fine-tune trainer config `config` with `hyperparameters` (a keras_tuner HyperParameters config, as
  best_hyperparameters.txt and `fn_args.hyperparameters` hold it) in place of its own settings. A name outside
  the search space is a ValueError: silently ignoring it would train other settings than those tuned."""
  values = keras_tuner.HyperParameters.from_config(hyperparameters).values
  unknown = sorted(set(values) - set(search_space().values))
  if unknown:
    raise ValueError(f'Unknown hyperparameters {unknown}: the fine-tune stage takes {sorted(search_space().values)}.')
  tuned = dict(config)
  if ALPHA in values:
    tuned['adaptation_options'] = {**config['adaptation_options'], 'alpha': int(values[ALPHA])}
  if LEARNING_RATE in values:
    tuned['learning_rate'] = float(values[LEARNING_RATE])
  if EMBEDDING_LEARNING_RATE in values:
    rate = float(values[EMBEDDING_LEARNING_RATE])
    tuned['embedding_learning_rate'] = None if rate == SAME_AS_LEARNING_RATE else rate
  return tuned


def tuned_settings(config: dict) -> dict:
  """The trainer config's values of the tuned settings, for the logs."""
  return {ALPHA: config['adaptation_options'].get('alpha'), LEARNING_RATE: config['learning_rate'],
          EMBEDDING_LEARNING_RATE: config.get('embedding_learning_rate')}


class FinetuneTuner(base_tuner.BaseTuner):
  """Runs each trial as the fine-tune Trainer trains (the same model, data, epochs and kept weights) with the
  trial's hyperparameters, and reports the kept weights' validation AUC."""

  def __init__(self, fn_args: tfx.components.FnArgs, oracle, **kwargs):
    super().__init__(oracle, **kwargs)
    self.fn_args = fn_args
    self.config, self.spec, self.tf_transform_output, self.strategy = trainer.setup_stage(fn_args)

  def run_trial(self, trial, *fit_args, **fit_kwargs):
    del fit_args, fit_kwargs  # the data is the Tuner's examples, read as the Trainer reads them
    start = time.perf_counter()
    tf_keras.backend.clear_session()  # frees the previous trial's model
    # Every trial starts from the same random state: the hyperparameters alone differ.
    tf_keras.utils.set_random_seed(self.config['seed'])
    config = apply_hyperparameters(self.config, trial.hyperparameters.get_config())
    model = trainer.finetune_model(self.fn_args.base_model, config, self.spec, self.tf_transform_output,
                                   self.strategy)
    best = trainer.fit_stage(self.fn_args, model, self.spec, self.tf_transform_output, config, self.strategy).best
    _LOG.info('tuning trial %s: %s -> %s %.4f (epoch %d) in %.1f s', trial.trial_id, tuned_settings(config),
              OBJECTIVE, best.best, best.best_epoch, time.perf_counter() - start)
    return {OBJECTIVE: float(best.best)}

  # TFX's Tuner prints KerasTuner's summaries on stdout, where a run shows one line per component
  # (pipeline/console.py): they go to the logs, beside each trial's line.
  def search_space_summary(self, extended=False):
    del extended
    _LOG.info('tuning search space: %s', {hp.name: hp.values for hp in self.oracle.get_space().space})

  def results_summary(self, num_trials=10):
    for trial in self.oracle.get_best_trials(num_trials):
      _LOG.info('tuning result: trial %s %s -> %s %s', trial.trial_id, trial.hyperparameters.values, OBJECTIVE,
                trial.score)

  def on_search_begin(self):
    super().on_search_begin()
    self.search_start = time.perf_counter()

  def on_search_end(self):
    super().on_search_end()
    [best] = self.oracle.get_best_trials(1)  # a failed trial ends the search with its error: one completed
    _LOG.info('tuning: %d trials in %.1f s; best %s (%s %.4f)', len(self.oracle.trials),
              time.perf_counter() - self.search_start, best.hyperparameters.values, OBJECTIVE, best.score)


def tuner_fn(fn_args: tfx.components.FnArgs) -> tfx.components.TunerFnResult:
  """The Tuner's search: `tune_trials` random draws of `search_space()` (custom_config, the fine-tune trainer
  config), each a fine-tune of `fn_args.train_steps` on the pretrained model of `fn_args.base_model`."""
  config = fn_args.custom_config
  oracle = keras_tuner.oracles.RandomSearchOracle(
      objective=keras_tuner.Objective(OBJECTIVE, 'max'), max_trials=config['tune_trials'],
      seed=config['seed'] + 1,  # KerasTuner draws a random seed for 0
      hyperparameters=search_space(), allow_new_entries=False,
      # A trial runs the fine-tune Trainer's code: its error would fail the Trainer too, so it stops the search
      # (with its traceback) rather than being skipped.
      max_consecutive_failed_trials=1)
  tuner = FinetuneTuner(fn_args, oracle, directory=fn_args.working_dir, project_name='finetune', overwrite=True)
  # verbose 0: KerasTuner prints nothing per trial (run_trial logs its own line).
  return tfx.components.TunerFnResult(tuner=tuner, fit_kwargs={'verbose': 0})
