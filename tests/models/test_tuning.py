"""The fine-tune stage's Tuner (models/tuning.py): the best hyperparameters mapped onto the trainer config, and
(slow) a search on tiny transformed data whose best the fine-tune Trainer trains."""
import json
import os

import attr
import keras_tuner
import pytest
import tensorflow_transform as tft

from benchmarks import calibration
from models import model as model_lib
from models import trainer
from models import tuning
from tests.models import cluster

CONFIG = {'adaptation_options': {'alpha': 8, 'rank': 2}, 'learning_rate': 3e-3, 'seed': 0}


def _best(**values) -> dict:
  """A best_hyperparameters.txt as the Tuner writes it: a HyperParameters config over the search space."""
  space = tuning.search_space()
  space.values.update(values)
  return json.loads(json.dumps(space.get_config()))


def test_each_hyperparameter_lands_on_its_trainer_setting():
  tuned = tuning.apply_hyperparameters(CONFIG, _best(alpha=32, learning_rate=1e-2, embedding_learning_rate=3e-4))
  assert tuned['adaptation_options'] == {'alpha': 32, 'rank': 2}
  assert (tuned['learning_rate'], tuned['embedding_learning_rate']) == (1e-2, 3e-4)
  assert CONFIG['adaptation_options']['alpha'] == 8  # the config itself is left as it was


@pytest.mark.parametrize('rate, setting', [(tuning.SAME_AS_LEARNING_RATE, None), (0.0, 0.0)])
def test_embedding_learning_rate_minus_one_is_the_learning_rate_and_zero_freezes(rate, setting):
  assert tuning.apply_hyperparameters(CONFIG, _best(embedding_learning_rate=rate))['embedding_learning_rate'] == setting


def test_an_unknown_hyperparameter_is_refused():
  space = keras_tuner.HyperParameters()
  space.Fixed('dropout', 0.1)
  with pytest.raises(ValueError, match=r"\['dropout'\].*alpha"):
    tuning.apply_hyperparameters(CONFIG, space.get_config())



@pytest.mark.slow
def test_the_search_finds_settings_the_finetune_trainer_then_trains(tmp_path):
  """Two trials on tiny transformed data (tests/models/cluster.py), each a real fine-tune of a real pretrained
  model; the fine-tune run_fn given the best exports adapters of the best alpha's size, not the configured one's."""
  work = str(tmp_path)
  transform_dir, accessor = cluster.transformed(work)
  # Wide enough layers that MLoRA's rank, d_out // alpha, differs for every alpha; an alpha outside the space.
  settings = dict(hidden_units=(32, 16), alpha=2, tune=True, tune_trials=2)
  pretrained = cluster.run_stage('pretrain', work, os.path.join(work, 'pretrain'), None, settings)
  config = cluster.config(work, **settings)
  # The Tuner's FnArgs: the Trainer's common ones (no transform_output, no model folders) and a working_dir.
  fn_args = attr.evolve(calibration.stage_fn_args('finetune', config, accessor, transform_dir, work, pretrained),
                        transform_output=None, serving_model_dir=None, model_run_dir=None,
                        working_dir=os.path.join(work, 'tuning'))
  result = tuning.tuner_fn(fn_args)
  result.tuner.search(**result.fit_kwargs)
  trials = result.tuner.oracle.get_best_trials(2)
  assert len(trials) == 2 and all(t.score > 0.5 for t in trials)
  best = json.loads(json.dumps(result.tuner.get_best_hyperparameters()[0].get_config()))  # as the file holds it

  serving_dir = calibration.train_stage('finetune', config, accessor, transform_dir, os.path.join(work, 'finetune'),
                                        pretrained, hyperparameters=best)
  with open(os.path.join(os.path.dirname(trainer.keras_model_path(serving_dir)), trainer.TRAINING_STATS_FILE)) as f:
    exported = json.load(f)['adapter_parameters_per_domain']

  def adapter_parameters(alpha):
    stage_config = config.trainer_config('finetune')
    stage_config['adaptation_options']['alpha'] = alpha
    model = trainer.build_stage_model(stage_config, config.feature_spec, tft.TFTransformOutput(transform_dir),
                                      freeze_backbone=True)
    return sum(w.shape.num_elements() for w in model_lib.adaptation_weights(model)) // config.feature_spec.num_domains

  assert exported == adapter_parameters(best['values'][tuning.ALPHA]) != adapter_parameters(2)
