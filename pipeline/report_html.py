"""report.html: the run's report (the dict of report.json) as one page to read in a browser, written beside
report.json: the promotion decision and the rule that made it, the pushed version, the per-domain table, the
AUC and calibration plots, the data statistics and anomalies, and the component wall times.

The page is self-contained (plots inline as PNG) and renders offline. TFDV's interactive statistics view
(Facets), which loads its code from the web, is written beside it as statistics.html and linked.
"""
import base64
import html
import io
import os
from typing import Callable, Dict, List, Sequence

import tensorflow_data_validation as tfdv
from tensorflow_data_validation.utils import display_util
from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2
from tfx.types import artifact_utils

from components.anomalies_gate import ANOMALIES_FILE
from pipeline import lineage
from pipeline import report as run_report
from pipeline.config import PipelineConfig

HTML_FILE = 'report.html'
STATISTICS_FILE = 'statistics.html'
STATISTICS_PROTO = 'FeatureStats.pb'
STYLE = '''
body { font-family: sans-serif; margin: 2em; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.promoted { color: #176117; } .not-promoted { color: #a11; }
img { max-width: 100%; margin-right: 1em; }
'''


def _table(header: Sequence[str], rows: List[Sequence], table_id: str = '') -> str:
  """An HTML table of `rows` (cells escaped) under `header`."""
  head = ''.join(f'<th>{html.escape(str(name))}</th>' for name in header)
  body = ''.join('<tr>' + ''.join(f'<td>{html.escape(str(cell))}</td>' for cell in row) + '</tr>' for row in rows)
  return f'<table{f" id={table_id!r}" if table_id else ""}><tr>{head}</tr>{body}</table>'


def _image(plot: Callable[[dict, io.BytesIO], None], report: dict, title: str) -> str:
  """`plot`'s PNG of `report`, inline."""
  png = io.BytesIO()
  plot(report, png)
  return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(png.getvalue()).decode()}">'


def decision_section(report: dict) -> str:
  """Promoted or not, the rule that decided and every check's reason, and the pushed version."""
  promoted = report['blessed']
  reasons = ''.join(f'<li>{html.escape(reason)}</li>' for reason in report['gate_reasons'])
  pushed = (f'version {html.escape(report["pushed_version"])} ({html.escape(report["pushed_model"])})'
            if report['pushed_model'] else 'nothing (not blessed)')
  return (f'<h2>Promotion</h2><p class="{"promoted" if promoted else "not-promoted"}" id="decision">'
          f'<b>{"promoted" if promoted else "not promoted"}</b>, by the rule <code>{html.escape(report["gate_rule"])}'
          f'</code></p><ul>{reasons}</ul><p>Pushed: {pushed}</p>')


def domain_section(report: dict) -> str:
  """The per-domain table of format_table (the gate's split, 95% intervals) and the overall figures."""
  number, with_interval = run_report.format_number, run_report.format_with_interval
  rows = [[r['domain'], r['train_examples'], r['test_examples'], with_interval(r['auc_pretrain'], r['auc_pretrain_ci']),
           with_interval(r['auc_finetune'], r['auc_finetune_ci']), number(r['auc_production']), number(r['logloss']),
           number(r['constant_logloss']), number(r['calibration'], '.2f'), 'yes' if r['deciding'] else 'no']
          for r in report['domains']]
  rows += [[f'{name.upper()} (all domains)', '', '', with_interval(report[f'{name}_pretrain'],
                                                                   report[f'{name}_pretrain_ci']),
            with_interval(report[f'{name}_finetune'], report[f'{name}_finetune_ci']),
            number((report['production'] or {}).get(name)), '', '', '', ''] for name in ('auc', 'wauc')]
  header = ['domain', 'train', report['split'], 'AUC pretrained', 'AUC + MLoRA', 'AUC production', 'log loss',
            'constant log loss', 'calibration', 'decides alone']
  return (f'<h2>Per domain ({html.escape(report["split"])} split, 95% intervals)</h2>'
          + _table(header, rows, 'domains')
          + f'<p>Log loss {number(report["logloss_finetune"])} (predicting the click rate: '
            f'{number(report["constant_logloss"])}), calibration {number(report["calibration_finetune"], ".3f")}.</p>')


def statistics_section(statistics: Dict[str, statistics_pb2.DatasetFeatureStatisticsList]) -> str:
  """Per split: the examples, and per feature its type, missing share and range (numbers) or distinct values."""
  parts = ['<h2>Data statistics</h2>',
           f'<p>TFDV\'s interactive view (Facets, loaded from the web): <a href="{STATISTICS_FILE}">'
           f'{STATISTICS_FILE}</a></p>']
  for split, statistics_list in statistics.items():
    dataset = statistics_list.datasets[0]
    rows = []
    for feature in dataset.features:
      kind = feature.WhichOneof('stats')  # num_stats, string_stats, bytes_stats or struct_stats
      common = getattr(feature, kind).common_stats
      missing = 1 - common.num_non_missing / dataset.num_examples if dataset.num_examples else 0
      numbers, strings = feature.num_stats, feature.string_stats
      values = {'num_stats': f'{numbers.min:g} .. {numbers.max:g}, mean {numbers.mean:.4g}',
                'string_stats': f'{strings.unique} distinct'}.get(kind, '')
      rows.append([feature.path.step[-1] if feature.path.step else feature.name,
                   statistics_pb2.FeatureNameStatistics.Type.Name(feature.type), f'{missing:.1%}', values])
    parts.append(f'<h3>{html.escape(split)}: {dataset.num_examples} examples</h3>'
                 + _table(['feature', 'type', 'missing', 'values'], rows))
  return ''.join(parts)


def anomalies_section(anomalies: Dict[str, anomalies_pb2.Anomalies]) -> str:
  """TFDV's anomalies table of every split that has some (a run with any stops before training)."""
  parts = ['<h2>Anomalies (ExampleValidator against the schema)</h2>']
  for split, split_anomalies in anomalies.items():
    frame = display_util.get_anomalies_dataframe(split_anomalies)
    parts.append(f'<h3>{html.escape(split)}</h3>' + (frame.to_html() if len(frame) else '<p>no anomalies</p>'))
  return ''.join(parts)


def components_section(report: dict) -> str:
  rows = [[c['component'], f'{c["seconds"]:.1f}', c['state'].lower()] for c in report['components']]
  return '<h2>Components</h2>' + _table(['component', 'wall time (s)', 'state'], rows, 'components')


def render(report: dict, statistics: Dict[str, statistics_pb2.DatasetFeatureStatisticsList],
           anomalies: Dict[str, anomalies_pb2.Anomalies]) -> str:
  """The page: the report's sections, the plots inline, `statistics` and `anomalies` per split."""
  plots = (_image(run_report.plot_domain_auc, report, 'per-domain AUC')
           + _image(run_report.plot_reliability, report, 'calibration'))
  return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Run report</title><style>{STYLE}</style></head>'
          f'<body><h1>Run report</h1>{decision_section(report)}{domain_section(report)}'
          f'<h2>AUC and calibration</h2><p>{plots}</p>{statistics_section(statistics)}{anomalies_section(anomalies)}'
          f'{components_section(report)}</body></html>')


def statistics_by_split(artifact) -> Dict[str, statistics_pb2.DatasetFeatureStatisticsList]:
  """{split: statistics} of a StatisticsGen output (an MLMD artifact)."""
  return {split: tfdv.load_stats_binary(os.path.join(artifact.uri, f'Split-{split}', STATISTICS_PROTO))
          for split in artifact_utils.decode_split_names(artifact.properties['split_names'].string_value)}


def anomalies_by_split(artifact) -> Dict[str, anomalies_pb2.Anomalies]:
  """{split: anomalies} of an ExampleValidator output (an MLMD artifact); a split without a file has none."""
  anomalies = {}
  for split in artifact_utils.decode_split_names(artifact.properties['split_names'].string_value):
    anomalies[split] = anomalies_pb2.Anomalies()
    path = os.path.join(artifact.uri, f'Split-{split}', ANOMALIES_FILE)
    if os.path.exists(path):
      with open(path, 'rb') as f:
        anomalies[split].ParseFromString(f.read())
  return anomalies


def write_html(config: PipelineConfig, report: dict) -> str:
  """Writes report.html and TFDV's statistics.html (train against eval) into the output folder; returns the
  report's path."""
  [statistics_artifact] = lineage.latest_artifacts(config, 'StatisticsGen', 'statistics', lineage.OUTPUT)
  [anomalies_artifact] = lineage.latest_artifacts(config, 'ExampleValidator', 'anomalies', lineage.OUTPUT)
  statistics, anomalies = statistics_by_split(statistics_artifact), anomalies_by_split(anomalies_artifact)
  with open(os.path.join(config.output_dir, STATISTICS_FILE), 'w') as f:
    f.write(display_util.get_statistics_html(statistics['train'], statistics.get('eval'), lhs_name='train',
                                             rhs_name='eval'))
  path = os.path.join(config.output_dir, HTML_FILE)
  with open(path, 'w') as f:
    f.write(render(report, statistics, anomalies))
  return path
