import itertools

import numpy as np
import tensorflow as tf

from models.layers.interactions import FactorizationMachine


def test_fm_equals_the_sum_of_pairwise_dot_products():
  fields = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(np.float32)
  expected = [sum(fields[b, i] @ fields[b, j] for i, j in itertools.combinations(range(4), 2)) for b in range(5)]
  output = FactorizationMachine()(tf.constant(fields)).numpy()
  assert output.shape == (5, 1)
  np.testing.assert_allclose(output[:, 0], expected, rtol=1e-5)


def test_fm_config_round_trip():
  layer = FactorizationMachine(name='fm')
  assert FactorizationMachine.from_config(layer.get_config()).name == 'fm'
