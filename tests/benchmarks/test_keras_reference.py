"""The Keras reference MLP (benchmarks/keras_reference.py) on a tiny prepared folder: its vocabularies, its
input and a one-epoch run scored per domain."""
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from benchmarks import keras_reference
from data import synthetic
from data.split import random_split
from models.features import FeatureSpec

SPEC = dataclasses.replace(synthetic.FEATURE_SPEC, multivalent={'tags': 3})
TAGS = ['a', 'a|b', 'b|c|d|e', 'rare|a']


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """A prepared folder of 600 synthetic rows with a multivalent `tags` column, split 60/20/20 per domain; each
  split's clicks alternate within a domain, so every domain of every split has both classes."""
  directory = tmp_path_factory.mktemp('prepared')
  frame = synthetic.generate(600, seed=0)
  frame['tags'] = [TAGS[i % (len(TAGS) - 1)] for i in range(len(frame))]
  frame.loc[0, 'tags'] = TAGS[-1]
  splits, _ = random_split(frame, SPEC.domain, (0.6, 0.2, 0.2), 0)
  for split, part in splits.items():
    part = part.copy()
    part['click'] = part.groupby('domain').cumcount() % 2
    synthetic.write_csv(part[SPEC.raw_columns], str(directory / split))
  SPEC.save(str(directory))
  return str(directory)


def test_tokens_seen_fewer_than_min_count_times_share_the_oov_row():
  assert keras_reference.vocabulary(pd.Series(['c', 'a', 'c', 'b', 'a', 'c']), 2) == {'a': 1, 'c': 2}
  train = pd.DataFrame({'domain': ['x', 'x', 'y', 'y'], 'click': ['0', '1', '0', '1'],
                        'item': ['a', 'a', 'b', 'c'], 'tags': ['a|b', 'b', 'b|c', 'a|a']})
  spec = FeatureSpec(domain='domain', domains=['x', 'y'], label='click', vocab=['item'], multivalent={'tags': 2})
  encoder = keras_reference.fit_encoder(train, spec, min_count=2)
  assert encoder.vocabularies == {'domain': {'x': 1, 'y': 2}, 'item': {'a': 1}, 'tags': {'a': 1, 'b': 2}}
  frame = pd.DataFrame({'domain': ['y', 'z'], 'item': ['a', 'b'], 'tags': ['c|a|b', 'b']})
  features = keras_reference.encode(frame, encoder)
  assert features['domain'].tolist() == [2, keras_reference.OOV]
  assert features['item'].tolist() == [1, keras_reference.OOV]  # 'b', seen once, is OOV
  assert features['tags'].tolist() == [[1, 2], [3, 0]]  # ids + 1: 1 is OOV ('c'), 0 pads; at most 2 values


def test_the_input_has_each_feature_column_and_the_domain(folder):
  train = keras_reference.read_split(folder, 'train')
  encoder = keras_reference.fit_encoder(train, SPEC, min_count=2)
  features = keras_reference.encode(train, encoder)
  assert sorted(features) == sorted(['domain', 'item_id', 'category', 'context', 'user_id', 'price',
                                     'user_activity', 'tags'])  # no label
  assert all(len(values) == len(train) for values in features.values())
  assert features['tags'].shape == (len(train), 3) and features['tags'].dtype == np.int64
  assert encoder.vocabularies['tags'] == {'a': 1, 'b': 2, 'c': 3, 'd': 4, 'e': 5}  # 'rare', seen once, is not
  assert set(features['tags'][:, 0]) - {1} == {2, 3}  # a row's first tag: 'a' or 'b' (+ 1), or 'rare' as OOV
  assert 0 <= features['user_id'].min() and features['user_id'].max() < SPEC.hashed['user_id']
  assert features['price'].dtype == np.float32
  assert abs(features['price'].mean()) < 1e-4 and features['price'].std(ddof=1) == pytest.approx(1, abs=1e-4)
  assert features['domain'].min() >= 1  # every domain is in the train split's vocabulary


@pytest.fixture
def eagerly():
  """Keras steps run eagerly: autograph's first trace of fit's step takes ~20 s of a 1-step run."""
  tf.config.run_functions_eagerly(True)
  yield
  tf.config.run_functions_eagerly(False)


@pytest.mark.filterwarnings('ignore:Even though the `tf.config.experimental_run_functions_eagerly`')
def test_one_epoch_gives_finite_figures_for_every_domain(folder, eagerly):
  settings = keras_reference.Settings(hidden=(8,), epochs=1)
  [record] = keras_reference.run(folder, settings, seeds=[0])
  assert (record['best_epoch'], record['epochs']) == (1, 1) and record['examples_per_second'] > 0
  for split in ('eval', 'test'):
    report = record[split]
    assert sorted(report['domains']) == sorted(SPEC.domains)
    figures = [report[m] for m in ('wauc', 'auc', 'logloss')]
    figures += [d[m] for d in report['domains'].values() for m in ('auc', 'logloss')]
    assert all(math.isfinite(x) for x in figures)
  assert '| 0 | ' in keras_reference.table([record]) and '| new_user | ' in keras_reference.table([record])
