"""Train/eval/test splits of a domain-tagged frame, each returned with a JSON-ready description.

`random_split` is stratified by domain: every domain is shuffled and cut by the ratios on its own,
so each domain has the requested shares in every split. `temporal_split` cuts by time: the earliest
rows train, the latest test, and the boundary times are recorded. Both keep the frame's row order
within a split.
"""
from typing import Dict, Sequence, Tuple

import numpy as np
import pandas as pd

SPLITS = ('train', 'eval', 'test')
DEFAULT_RATIOS = (0.6, 0.2, 0.2)

Splits = Dict[str, pd.DataFrame]


def _check_ratios(ratios: Sequence[float]) -> np.ndarray:
  ratios = np.asarray(ratios, dtype=float)
  if ratios.shape != (len(SPLITS),) or (ratios <= 0).any() or not np.isclose(ratios.sum(), 1.0):
    raise ValueError(f'ratios must be {len(SPLITS)} positive shares of {SPLITS} summing to 1, '
                     f'got {ratios.tolist()}.')
  return ratios


def _cut_points(ratios: np.ndarray, num_rows: int) -> np.ndarray:
  """Row counts at which the sorted or shuffled rows move to the next split."""
  return np.round(np.cumsum(ratios)[:-1] * num_rows).astype(int)


def _describe(frame: pd.DataFrame, assignment: np.ndarray, domain_column: str, method: str,
              ratios: np.ndarray, **details) -> Tuple[Splits, dict]:
  """The splits named by `assignment` (an index into SPLITS per row) and their description."""
  splits = {name: frame[assignment == index] for index, name in enumerate(SPLITS)}
  domain_counts = {name: part[domain_column].value_counts().sort_index() for name, part in splits.items()}
  info = {
      'method': method,
      'ratios': dict(zip(SPLITS, ratios.tolist())),
      **details,
      'rows': {name: len(part) for name, part in splits.items()},
      'rows_per_domain': {name: {str(domain): int(count) for domain, count in counts.items()}
                          for name, counts in domain_counts.items()},
  }
  return splits, info


def random_split(frame: pd.DataFrame, domain_column: str, ratios: Sequence[float] = DEFAULT_RATIOS,
                 seed: int = 0) -> Tuple[Splits, dict]:
  """Shuffles each domain's rows with `seed` and cuts them by `ratios`; equal seeds, equal splits."""
  ratios = _check_ratios(ratios)
  rng = np.random.default_rng(seed)
  assignment = np.empty(len(frame), dtype=int)
  domains = frame[domain_column].to_numpy()
  for domain in sorted(set(domains)):
    rows = rng.permutation(np.flatnonzero(domains == domain))
    for index, part in enumerate(np.split(rows, _cut_points(ratios, len(rows)))):
      assignment[part] = index
  return _describe(frame, assignment, domain_column, 'random', ratios, seed=seed)


def temporal_split(frame: pd.DataFrame, domain_column: str, time_column: str,
                   ratios: Sequence[float] = DEFAULT_RATIOS) -> Tuple[Splits, dict]:
  """Train on the earliest rows, test on the latest, with shares near `ratios`.

  The boundaries are times: train holds rows before `eval_start`, eval rows from `eval_start` up to
  `test_start`, test the rest, so rows with equal times always share a split.
  """
  ratios = _check_ratios(ratios)
  times = frame[time_column].to_numpy()
  ordered = np.sort(times, kind='stable')
  boundaries = ordered[np.minimum(_cut_points(ratios, len(times)), len(times) - 1)]
  assignment = np.searchsorted(boundaries, times, side='right')
  return _describe(frame, assignment, domain_column, 'temporal', ratios, time_column=time_column,
                   boundaries=dict(zip(['eval_start', 'test_start'], boundaries.tolist())))
