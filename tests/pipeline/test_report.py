"""The report's reliability plot, from the gate's reliability bins."""
import os

from pipeline.report import plot_reliability


def _bins(slope: float):
  return [{'lower': p - 0.01, 'upper': p + 0.01, 'mean_prediction': p, 'observed_rate': slope * p, 'count': 100}
          for p in (0.05, 0.1, 0.2, 0.4)]


def test_reliability_plot_has_a_panel_for_every_domain_and_all_together(tmp_path):
  report = {'split': 'test', 'reliability_pretrain': _bins(0.8), 'reliability_finetune': _bins(1.0),
            'domains': [{'domain': name, 'reliability_pretrain': _bins(0.9), 'reliability_finetune': None}
                        for name in ('a', 'b', 'c', 'd', 'e')]}
  path = plot_reliability(report, str(tmp_path / 'reliability.png'))
  assert os.path.getsize(path) > 1000
