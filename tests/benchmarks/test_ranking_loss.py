"""The ranking-loss benchmark's statistics and published tables (benchmarks/ranking_loss.py) from hand-made
results. No model is trained."""
import pytest

from benchmarks import ranking_loss


def _result(loss, seed, wauc, rare_auc, logloss=0.4):
  domains = {'big': {'auc': wauc, 'logloss': logloss, 'calibration': 1.0, 'count': 900, 'rate': 0.3},
             'rare': {'auc': rare_auc, 'logloss': 0.05, 'calibration': 1.2, 'count': 100, 'rate': 0.005}}
  return {'dataset': 'rare', 'loss': loss, 'seed': seed,
          'report': {'wauc': wauc, 'logloss': logloss, 'calibration': 1.0, 'domains': domains}}


RESULTS = [_result('logloss', 0, 0.70, 0.60), _result('logloss', 1, 0.72, 0.62), _result('logloss', 2, 0.71, 0.58),
           _result('ranknet+logloss', 0, 0.71, 0.70, 0.41), _result('ranknet+logloss', 1, 0.73, 0.71, 0.41),
           _result('ranknet+logloss', 2, 0.72, 0.69, 0.41)]


def test_each_loss_is_compared_with_log_loss_paired_by_seed():
  table = ranking_loss.summarize(RESULTS)['rare']
  assert table['domains'] == ['big', 'rare']  # the largest domain first
  assert 'wauc_change' not in table['losses']['logloss']
  row = table['losses']['ranknet+logloss']
  assert row['wauc_change']['mean'] == pytest.approx(0.01)
  assert row['wauc_change']['std'] == pytest.approx(0.0, abs=1e-12)  # the same +0.01 in every seed
  assert row['logloss_change']['mean'] == pytest.approx(0.01)
  assert row['domains']['rare']['auc_change']['mean'] == pytest.approx(0.10)
  assert row['domains']['rare']['auc_change']['p_value'] < 0.05
  assert row['wauc']['mean'] == pytest.approx(0.72)


def test_the_markdown_has_a_row_per_loss_and_a_row_per_domain():
  text = ranking_loss.format_markdown({'command': 'benchmarks/ranking_loss.py --datasets rare', 'results': RESULTS})
  assert '**rare**, test split, seeds [0, 1, 2]:' in text
  assert text.count('\n| logloss | 0.7100 ± ') == 1
  assert '| ranknet+logloss | 0.7200 ± ' in text
  assert '| rare | 100 | 0.005 | 0.6000 | 0.7000 (+0.1000 ± 0.0248 (p 0.0033)) | 0.0500 | 0.0500 |' in text
  assert text.endswith('Command: `benchmarks/ranking_loss.py --datasets rare`')


def test_a_single_seed_has_no_interval_or_test():
  row = ranking_loss.summarize([RESULTS[0], RESULTS[3]])['rare']['losses']['ranknet+logloss']
  assert row['wauc_change']['half_width'] is None and row['wauc_change']['p_value'] is None
