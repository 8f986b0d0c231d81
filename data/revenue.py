"""A reconstructed objective for ads: a label built from value, not clicks.

An exposure is positive when its revenue beats what an exposure of its domain has earned so far:

    y_i = 1[r_i > m_{d_i}(i)],    m_d(i) = (1 / |{j < i: d_j = d}|) sum_{j < i, d_j = d} r_j   (0 before any)

with r the per-exposure revenue (`data.synthetic` `revenue=True`: click fee plus conversion fee, negative for
the loss-making stock) and rows in time order. A click that earns less than the domain's going rate is a
negative; an exposure of the loss-making stock (r < 0) is a negative wherever the domain's average is not
negative. A model trained on it learns to score that stock below everything; a new item, with no
exposures to learn from, is scored at the zero-revenue prior, above the stock: it still gets exposures,
and so exploration.

`value_frame` adds the label as column `value`; `VALUE_SPEC` is the feature spec that trains on it and
`write_value_data` writes a `run --data-path` folder (data, features.json, schema.pbtxt) with it.
"""
import dataclasses
import os

import numpy as np
import pandas as pd

from data import synthetic
from schemas import SCHEMA_FILE, build_schema, write_schema

VALUE_LABEL = 'value'
# The default data's features, trained on the value label; click and conversion stay in the data as
# labels (not features) for the reports.
VALUE_SPEC = dataclasses.replace(synthetic.FEATURE_SPEC, label=VALUE_LABEL,
                                 extra_labels=[synthetic.FEATURE_SPEC.label, *synthetic.FEATURE_SPEC.extra_labels])


def value_labels(domains, revenue) -> np.ndarray:
  """[n] 0/1: whether each row's revenue exceeds the running average revenue per exposure of its domain over
  the rows before it (0 for a domain's first row). `domains` and `revenue` are [n], in time order."""
  revenue = np.asarray(revenue, np.float64)
  if np.isnan(revenue).any():
    raise ValueError(f'revenue has {int(np.isnan(revenue).sum())} missing values: fill them (0 for an exposure '
                     'that earned nothing) before building value labels.')
  groups = pd.Series(revenue).groupby(np.asarray(domains))
  before = groups.cumsum().to_numpy() - revenue
  count = groups.cumcount().to_numpy()
  average = np.where(count > 0, before / np.maximum(count, 1), 0.0)
  return (revenue > average).astype(np.int64)


def value_frame(frame: pd.DataFrame) -> pd.DataFrame:
  """`frame` (rows in time order, with a `revenue` column: `synthetic.generate(..., revenue=True)`) with the
  `value` label column, and without the revenue, which no model may see."""
  if synthetic.REVENUE_COLUMN not in frame:
    raise ValueError(f'value labels need the {synthetic.REVENUE_COLUMN!r} column: generate the data with '
                     'revenue=True.')
  labels = value_labels(frame[VALUE_SPEC.domain], frame[synthetic.REVENUE_COLUMN])
  return frame.drop(columns=[synthetic.REVENUE_COLUMN]).assign(**{VALUE_LABEL: labels})


def write_value_data(frame: pd.DataFrame, directory: str) -> str:
  """Writes `value_frame(frame)` to `directory` as `run --data-path` reads it: data.csv, features.json
  (`VALUE_SPEC`) and schema.pbtxt. Returns the directory."""
  synthetic.write_csv(value_frame(frame)[VALUE_SPEC.raw_columns], directory)
  VALUE_SPEC.save(directory)
  write_schema(build_schema(VALUE_SPEC, {**synthetic.COLUMN_TYPES, VALUE_LABEL: 'INT'}),
               os.path.join(directory, SCHEMA_FILE))
  return directory
