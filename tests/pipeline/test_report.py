"""The run report's rendering: report.html in headless Chromium (the shared run's, and one whose figures could not
be computed), the text table and the reliability plot."""
import os
import re
import shutil
import subprocess

import pytest

from pipeline import report as run_report
from pipeline import report_html
from pipeline.report import plot_reliability

CHROMIUM = shutil.which('chromium')
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason='needs Debian\'s chromium package (.ci/run installs it)')
# Added to the page here, not in the product: titles the rendered page with the images that decoded.
IMAGE_PROBE = ('<script>window.addEventListener("load", () => { document.title = "images decoded: " + '
               '[...document.images].filter(i => i.complete && i.naturalWidth > 0).length + "/" + '
               'document.images.length; });</script>')


def render_in_chromium(page: str, folder) -> tuple:
  """(the DOM headless Chromium renders from `page` after load, its console messages)."""
  path = os.path.join(str(folder), 'rendered.html')
  with open(path, 'w') as f:
    f.write(page.replace('</body>', IMAGE_PROBE + '</body>'))
  result = subprocess.run([CHROMIUM, '--headless', '--disable-gpu', '--no-sandbox', '--enable-logging=stderr', '--v=0',
                           '--dump-dom', f'file://{path}'], capture_output=True, text=True, timeout=120, check=True)
  return result.stdout, [line for line in result.stderr.splitlines() if ':CONSOLE' in line]


def assert_renders(page: str, folder) -> str:
  """Renders `page` and checks the per-domain table and both plots are there, and no console message; returns
  the rendered DOM."""
  dom, console = render_in_chromium(page, folder)
  assert console == []
  assert re.search(r'<table id="domains">.*home_feed', dom, re.S)
  assert '<title>images decoded: 2/2</title>' in dom
  return dom


def report_without_figures() -> dict:
  """A report whose every figure could not be computed: every test label one class, no production model."""
  row = {'domain': 'home_feed', 'train_examples': 900, 'test_examples': 300, 'auc_pretrain': None,
         'auc_pretrain_ci': None, 'auc_finetune': None, 'auc_finetune_ci': None, 'auc_production': None,
         'auc_change': None, 'logloss': None, 'constant_logloss': None, 'calibration': None, 'deciding': False}
  figures = {f'{figure}_{stage}{ci}': None for figure in ('auc', 'wauc') for stage in ('pretrain', 'finetune')
             for ci in ('', '_ci')}
  return {'split': 'test', 'domains': [row], **figures, 'logloss_finetune': None, 'constant_logloss': None,
          'calibration_finetune': None, 'reliability_finetune': [], 'production': None, 'blessed': False,
          'gate_rule': 'first_run', 'gate_reasons': ['overall: AUC cannot be computed'], 'pushed_model': None,
          'pushed_version': None, 'components': [{'component': 'PromotionGate', 'seconds': 2.5, 'state': 'COMPLETE'}]}


def test_figures_that_cannot_be_computed_show_as_such(tmp_path):
  report = report_without_figures()
  table = run_report.format_table(report)
  assert 'home_feed' in table and 'n/a' in table and 'not promoted' in table
  run_report.plot_domain_auc(report, str(tmp_path / 'plot.png'))
  assert (tmp_path / 'plot.png').stat().st_size > 1000


@needs_chromium
def test_report_html_shows_figures_that_cannot_be_computed(tmp_path):
  dom = assert_renders(report_html.render(report_without_figures(), {}, {}), tmp_path)
  assert 'n/a' in dom and 'not promoted' in dom and 'nothing (not blessed)' in dom


@pytest.mark.e2e
@needs_chromium
def test_the_runs_report_html_renders(shared_run, tmp_path):
  """The shared run's report.html: the decision, the table, the plots, TFDV's statistics and anomalies and the
  component times, rendered without a console message."""
  with open(os.path.join(shared_run.output_dir, report_html.HTML_FILE)) as f:
    dom = assert_renders(f.read(), tmp_path)
  assert 'promoted</b>, by the rule <code>first_run</code>' in dom
  assert f'version {shared_run.version}' in dom
  assert re.search(r'<h3>train: \d+ examples</h3>', dom) and 'no anomalies' in dom
  assert re.search(r'<table id="components">.*PromotionGate', dom, re.S)
  assert os.path.getsize(os.path.join(shared_run.output_dir, report_html.STATISTICS_FILE)) > 1000


def _bins(slope: float):
  return [{'lower': p - 0.01, 'upper': p + 0.01, 'mean_prediction': p, 'observed_rate': slope * p, 'count': 100}
          for p in (0.05, 0.1, 0.2, 0.4)]


def test_reliability_plot_has_a_panel_for_every_domain_and_all_together(tmp_path):
  report = {'split': 'test', 'reliability_pretrain': _bins(0.8), 'reliability_finetune': _bins(1.0),
            'domains': [{'domain': name, 'reliability_pretrain': _bins(0.9), 'reliability_finetune': None}
                        for name in ('a', 'b', 'c', 'd', 'e')]}
  path = plot_reliability(report, str(tmp_path / 'reliability.png'))
  assert os.path.getsize(path) > 1000
