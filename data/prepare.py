"""`prepare`: turns a public dataset into split, described pipeline input, all or nothing.

Output layout:
  <output_dir>/{train,eval,test}/data.csv   the splits, columns of features.json in order
  <output_dir>/features.json               the FeatureSpec
  <output_dir>/schema.pbtxt                the schema ExampleValidator checks each span against
  <output_dir>/split.json                  the dataset, the rows its loader dropped, how it was split, the
                                           rows per split and domain and each split's positive rate
Everything is written into a hidden directory beside `output_dir` and renamed into place at the end,
so an error leaves nothing behind.
"""
import json
import os
import shutil
import tempfile
from typing import Callable, Dict, Sequence

from data.loaders import (DataFormatError, Loaded, load_ali_ccp, load_ciao, load_csv, load_kuairand,
                          load_movielens)
from data.split import DEFAULT_RATIOS, random_split, temporal_split
from data.synthetic import write_csv
from schemas import SCHEMA_FILE, build_schema, write_schema

__all__ = ['DATASETS', 'DataFormatError', 'SPLIT_FILE', 'prepare']

DATASETS: Dict[str, Callable[..., Loaded]] = {
    'movielens': load_movielens,
    'ali-ccp': load_ali_ccp,
    'kuairand': load_kuairand,
    'ciao': load_ciao,
    'csv': load_csv,
}
SPLIT_FILE = 'split.json'


def prepare(dataset: str, source: str, output_dir: str, split: str = 'random',
            ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0, time_column: str = 'timestamp',
            overwrite: bool = False, **loader_options) -> dict:
  """Loads `dataset` from `source`, splits it and writes it to `output_dir`; returns split.json's content.

  Args:
    dataset: One of DATASETS: 'movielens', 'ali-ccp', 'kuairand', 'ciao' or 'csv'.
    source: The dataset's file or directory, as its loader expects.
    output_dir: Where to write; it must not exist unless `overwrite`.
    split: 'random' (stratified by domain, with `seed`) or 'temporal' (by `time_column`).
    ratios: Shares of train, eval and test.
    seed: Seed of the random split.
    time_column: Column ordering a temporal split; the named loaders call it 'timestamp'.
    overwrite: Replace an existing `output_dir`, once the new one is complete.
    **loader_options: Passed to the loader, for example `domain='age'` for MovieLens or
      `label_rule='ge4'` for Ciao.

  Raises:
    DataFormatError: A source file does not match its format, or a loader option is unknown.
    ValueError: An unknown dataset or split, or a split that would be empty.
    FileExistsError: `output_dir` exists and `overwrite` is false.
  """
  if dataset not in DATASETS:
    raise ValueError(f'Unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}.')
  if split not in ('random', 'temporal'):
    raise ValueError(f"Unknown split {split!r}; expected 'random' or 'temporal'.")
  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir) and not overwrite:
    raise FileExistsError(f'{output_dir} exists; pass overwrite=True to replace it.')

  frame, spec, column_types, dropped_rows = DATASETS[dataset](source, **loader_options)
  if split == 'random':
    splits, split_info = random_split(frame, spec.domain, ratios, seed)
  elif time_column not in frame:
    raise ValueError(f'A temporal split needs a time column; {dataset} data has no {time_column!r} '
                     f'(columns: {list(frame.columns)}).')
  else:
    splits, split_info = temporal_split(frame, spec.domain, time_column, ratios)
  empty = [name for name, part in splits.items() if part.empty]
  if empty:
    raise ValueError(f'Splits {empty} would be empty ({len(frame)} rows, ratios {list(ratios)}).')
  info = {'dataset': dataset, 'source': os.path.abspath(source), 'loader_options': loader_options,
          'dropped_rows': dict(dropped_rows), **split_info,
          'positive_rate': {name: round(float(part[spec.label].mean()), 4) for name, part in splits.items()}}

  parent = os.path.dirname(output_dir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(output_dir)}.', dir=parent)
  try:
    os.chmod(staging, 0o755)
    for name, part in splits.items():
      write_csv(part, os.path.join(staging, name))
    spec.save(staging)
    write_schema(build_schema(spec, column_types), os.path.join(staging, SCHEMA_FILE))
    with open(os.path.join(staging, SPLIT_FILE), 'w') as f:
      json.dump(info, f, indent=2)
    _move_into_place(staging, output_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return info


def _move_into_place(staging: str, output_dir: str) -> None:
  """Renames `staging` to `output_dir`, replacing an existing one only once `staging` is complete."""
  if not os.path.exists(output_dir):
    os.rename(staging, output_dir)
    return
  retired = staging + '.old'
  os.rename(output_dir, retired)
  os.rename(staging, output_dir)
  shutil.rmtree(retired)
