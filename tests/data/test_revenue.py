"""Value labels: an exposure is positive when its revenue beats its domain's running average revenue."""
import numpy as np
import pytest

from data import revenue, synthetic
from models.features import FeatureSpec
import schemas


def test_value_labels_by_hand():
  domains = ['a', 'a', 'b', 'a', 'b', 'a', 'a']
  earned = [0.0, 2.0, -1.0, 0.5, 0.0, 1.0, -0.5]
  # a: averages before each row 0, 0, 1, 0.833..., 0.875; b: 0, -1
  np.testing.assert_array_equal(revenue.value_labels(domains, earned), [0, 1, 0, 0, 1, 1, 0])


def test_loss_making_exposures_are_negatives_and_zero_revenue_beats_them():
  frame = synthetic.generate(5000, seed=3, revenue=True)
  labels = revenue.value_labels(frame.domain, frame.revenue)
  assert labels[frame.revenue.to_numpy() < 0].sum() == 0  # the domains' averages stay above 0
  assert 0 < labels.mean() < frame.click.mean()  # a click is needed, not enough


def test_missing_revenue_is_named():
  with pytest.raises(ValueError, match='revenue has 1 missing values'):
    revenue.value_labels(['a', 'a'], [1.0, np.nan])
  with pytest.raises(ValueError, match="'revenue' column: generate the data with revenue=True"):
    revenue.value_frame(synthetic.generate(100))


def test_write_value_data_is_a_data_path_folder(tmp_path):
  frame = synthetic.generate(300, seed=1, revenue=True)
  revenue.write_value_data(frame, str(tmp_path))
  spec = FeatureSpec.load(str(tmp_path))
  assert spec == revenue.VALUE_SPEC and spec.label == 'value'
  written = (tmp_path / 'data.csv').read_text().splitlines()[0].split(',')
  assert written == spec.raw_columns and 'revenue' not in written  # the revenue is no feature
  schema = schemas.load_schema(str(tmp_path / schemas.SCHEMA_FILE))
  assert [f.name for f in schema.feature] == spec.raw_columns
