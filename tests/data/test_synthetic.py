import pandas as pd
import pytest

from data import synthetic


def test_same_seed_same_data():
  pd.testing.assert_frame_equal(synthetic.generate(3000, seed=7), synthetic.generate(3000, seed=7))


def test_other_seed_other_data():
  assert not synthetic.generate(3000, seed=1).equals(synthetic.generate(3000, seed=2))


def test_columns_match_the_feature_spec_and_types():
  frame = synthetic.generate(2000)
  assert list(frame.columns) == [c for c in synthetic.COLUMN_TYPES]
  assert set(synthetic.FEATURE_SPEC.raw_columns) == set(frame.columns)


def test_domain_skew():
  shares = synthetic.generate(100_000).domain.value_counts(normalize=True)
  assert set(shares.index) == set(synthetic.FEATURE_SPEC.domains)
  assert 0.35 <= shares.max() <= 0.45
  assert shares.min() <= 0.02 + 0.003
  assert shares.idxmax() == 'home_feed' and shares.idxmin() == 'new_user'


def test_labels_are_binary_and_conversion_only_after_click():
  frame = synthetic.generate(20_000)
  assert set(frame.click.unique()) == {0, 1} and set(frame.conversion.unique()) == {0, 1}
  assert (frame.conversion <= frame.click).all()
  assert 0.1 < frame.click.mean() < 0.4


def test_click_rate_differs_by_domain():
  rates = synthetic.generate(50_000).groupby('domain').click.mean()
  assert rates.max() - rates.min() > 0.05


def test_tiny_samples_hold_every_domain():
  assert synthetic.generate(7).domain.nunique() == 7
  with pytest.raises(ValueError, match='num_rows'):
    synthetic.generate(3)


def test_write_csv_keeps_float_columns_float(tmp_path):
  path = synthetic.write_csv(synthetic.generate(500), str(tmp_path))
  header, first = open(path).read().splitlines()[:2]
  row = dict(zip(header.split(','), first.split(',')))
  assert '.' in row['price'] and '.' in row['user_activity']
  assert not list(tmp_path.glob('*.tmp'))


def test_click_rates_push_one_domain_below_one_percent_and_leave_the_others():
  plain = synthetic.generate(50_000, seed=3)
  rare = synthetic.generate(50_000, seed=3, click_rates={'coupon': 0.005})
  coupon = rare.domain == 'coupon'
  assert coupon.sum() > 2000 and 0.002 < rare.click[coupon].mean() < 0.01
  assert plain.click[coupon].mean() > 0.05  # it was not rare before
  pd.testing.assert_frame_equal(rare[~coupon], plain[~coupon])
  assert (rare.conversion <= rare.click).all()


@pytest.mark.parametrize('rates, message', [({'kiosk': 0.01}, 'kiosk'), ({'coupon': 0.0}, 'strictly between')])
def test_bad_click_rates_name_the_domain_or_the_range(rates, message):
  with pytest.raises(ValueError, match=message):
    synthetic.generate(100, click_rates=rates)


def test_revenue_is_optional_and_leaves_the_other_columns_as_they_are():
  plain, with_revenue = synthetic.generate(3000, seed=4), synthetic.generate(3000, seed=4, revenue=True)
  pd.testing.assert_frame_equal(with_revenue.drop(columns=['revenue']), plain)
  earned = with_revenue.revenue
  assert (earned[with_revenue.click == 0] == 0).all()  # no click, no fee
  converted = with_revenue.conversion == 1
  assert earned[converted].abs().mean() > earned[(with_revenue.click == 1) & ~converted].abs().mean()
  loss_making = with_revenue.groupby('item_id').revenue.min() < 0
  assert 0 < loss_making.mean() < 0.2  # some negative-revenue stock, about LOSS_MAKING_SHARE of the items
  assert earned.mean() > 0
