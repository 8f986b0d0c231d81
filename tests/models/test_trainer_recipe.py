"""The fine-tune recipe's embedding settings, as the Trainer's optimizer applies them, and the parameter-matched
control's size."""
import types

import pytest
import tf_keras

from models import model as model_lib
from models import trainer
from models.optimizers import LayerRateAdam
from tests.models import zoo


def _tables(model):
  return {l.name: l.trainable for l in model.layers if isinstance(l, tf_keras.layers.Embedding)}


def test_by_default_every_table_trains_at_the_stage_rate():
  model = zoo.build('deepfm', 'mlora', freeze_backbone=True)
  optimizer = trainer.stage_optimizer(model, {'learning_rate': 3e-3})
  assert type(optimizer) is tf_keras.optimizers.Adam
  assert all(_tables(model).values())


def test_rate_zero_freezes_every_table():
  model = zoo.build('deepfm', 'mlora', freeze_backbone=True)
  trainer.stage_optimizer(model, {'learning_rate': 3e-3, 'embedding_learning_rate': 0.0})
  assert _tables(model) and not any(_tables(model).values())


def test_frozen_domain_embedding_and_a_slower_rate_for_the_other_tables():
  model = zoo.build('deepfm', 'mlora', freeze_backbone=True)
  optimizer = trainer.stage_optimizer(model, {'learning_rate': 3e-3, 'embedding_learning_rate': 3e-4,
                                              'freeze_domain_embedding': True})
  frozen = {name for name, trainable in _tables(model).items() if not trainable}
  assert frozen == {'embedding_domain_index', 'linear_domain_index'}
  assert isinstance(optimizer, LayerRateAdam) and optimizer.layer_rate == pytest.approx(3e-4)
  assert set(optimizer.layer_names) == set(_tables(model)) - frozen


def test_the_parameter_matched_base_reaches_the_mlora_models_size():
  mlora = zoo.build('mlp', 'mlora', freeze_backbone=True).count_params()
  units = model_lib.parameter_matched_units(lambda u: zoo.build('mlp', 'none', hidden_units=u), zoo.HIDDEN, mlora)
  assert units[0] > zoo.HIDDEN[0] and units[0] / units[1] == pytest.approx(zoo.HIDDEN[0] / zoo.HIDDEN[1], rel=0.3)
  assert zoo.build('mlp', 'none', hidden_units=units).count_params() == pytest.approx(mlora, rel=0.05)


def test_the_trainer_builds_the_parameter_matched_control_from_its_config():
  output = types.SimpleNamespace(vocabulary_size_by_name=lambda name: 10)
  config = {'hidden_units': list(zoo.HIDDEN), 'embedding_dim': zoo.EMBEDDING_DIM, 'backbone': 'mlp',
            'adaptation': 'none', 'adaptation_options': {'alpha': zoo.ALPHA}}
  mlora = trainer.build_stage_model({**config, 'adaptation': 'mlora'}, zoo.SPEC, output, freeze_backbone=True)
  matched = trainer.build_stage_model({**config, trainer.MATCH_PARAMETERS_OF: 'mlora'}, zoo.SPEC, output,
                                      freeze_backbone=False)
  assert not model_lib.adaptation_weights(matched)
  assert matched.count_params() == pytest.approx(mlora.count_params(), rel=0.05)
  assert matched.get_layer('dense_0').units > zoo.HIDDEN[0]
