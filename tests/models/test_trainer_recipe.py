"""The fine-tune recipe's embedding settings, as the Trainer's optimizer applies them."""
import pytest
import tf_keras

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
