"""The run report's rendering, on report dicts written here (the shared run's report is read by the e2e tests)."""
from pipeline import report as run_report


def report_without_figures() -> dict:
  """A report whose every figure could not be computed: every test label one class, no production model."""
  row = {'domain': 'home_feed', 'train_examples': 900, 'test_examples': 300, 'auc_pretrain': None,
         'auc_pretrain_ci': None, 'auc_finetune': None, 'auc_finetune_ci': None, 'auc_production': None,
         'auc_change': None, 'logloss': None, 'constant_logloss': None, 'calibration': None, 'deciding': False}
  figures = {f'{figure}_{stage}{ci}': None for figure in ('auc', 'wauc') for stage in ('pretrain', 'finetune')
             for ci in ('', '_ci')}
  return {'split': 'test', 'domains': [row], **figures, 'logloss_finetune': None, 'constant_logloss': None,
          'calibration_finetune': None, 'reliability_finetune': [], 'production': None, 'blessed': False,
          'gate_rule': 'first_run', 'gate_reasons': ['overall: AUC cannot be computed'], 'pushed_model': None}


def test_figures_that_cannot_be_computed_show_as_such(tmp_path):
  report = report_without_figures()
  table = run_report.format_table(report)
  assert 'home_feed' in table and 'n/a' in table and 'not promoted' in table
  run_report.plot_domain_auc(report, str(tmp_path / 'plot.png'))
  assert (tmp_path / 'plot.png').stat().st_size > 1000
