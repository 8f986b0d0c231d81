"""Random (domain-stratified) and temporal splits."""
import numpy as np
import pandas as pd
import pytest

from data import synthetic
from data.split import SPLITS, random_split, temporal_split


@pytest.fixture(scope='module')
def frame():
  rows = synthetic.generate(20_000, seed=3)
  rows['timestamp'] = np.random.default_rng(0).integers(0, 5_000, size=len(rows))  # many ties
  return rows


def test_random_split_is_deterministic(frame):
  first, info = random_split(frame, 'domain', seed=7)
  again, info_again = random_split(frame, 'domain', seed=7)
  other, _ = random_split(frame, 'domain', seed=8)
  for name in SPLITS:
    pd.testing.assert_frame_equal(first[name], again[name])
  assert info == info_again and info['seed'] == 7 and info['method'] == 'random'
  assert not first['train'].index.equals(other['train'].index)


def test_random_split_partitions_rows_in_order(frame):
  splits, info = random_split(frame, 'domain')
  indices = np.concatenate([splits[name].index for name in SPLITS])
  assert sorted(indices) == list(frame.index)
  assert all(splits[name].index.is_monotonic_increasing for name in SPLITS)
  assert info['rows'] == {name: len(splits[name]) for name in SPLITS}


@pytest.mark.parametrize('ratios', [(0.6, 0.2, 0.2), (0.8, 0.1, 0.1)])
def test_random_split_is_stratified_by_domain(frame, ratios):
  _, info = random_split(frame, 'domain', ratios)
  assert info['ratios'] == dict(zip(SPLITS, ratios))
  for domain, size in frame.domain.value_counts().items():
    for name, ratio in zip(SPLITS, ratios):
      assert abs(info['rows_per_domain'][name][domain] - ratio * size) <= 1  # off only by rounding


def test_temporal_split_orders_by_time(frame):
  splits, info = temporal_split(frame, 'domain', 'timestamp')
  eval_start, test_start = info['boundaries']['eval_start'], info['boundaries']['test_start']
  assert splits['train'].timestamp.max() < eval_start == splits['eval'].timestamp.min()
  assert splits['eval'].timestamp.max() < test_start == splits['test'].timestamp.min()
  assert info['method'] == 'temporal' and info['time_column'] == 'timestamp'
  for name, ratio in zip(SPLITS, (0.6, 0.2, 0.2)):
    assert info['rows'][name] == pytest.approx(ratio * len(frame), abs=20)  # ties stay together
  assert sum(info['rows_per_domain']['test'].values()) == info['rows']['test']


@pytest.mark.parametrize('ratios', [(0.5, 0.5), (0.6, 0.3, 0.3), (1.0, 0.0, 0.0)])
def test_bad_ratios_are_rejected(frame, ratios):
  with pytest.raises(ValueError, match='ratios'):
    random_split(frame, 'domain', ratios)
