"""The run's result table, from the metadata store of the latest run: every domain's test AUC of the pretrained
and the fine-tuned model with 95% intervals, calibration, the candidate against production, the gate's
decision and the rule that made it, and the pushed model; plots of the per-domain AUC and of the reliability
curves. The figures are the PromotionGate's (components/promotion_gate.py), which scores every model on the
same test examples."""
import collections
import json
import os
from typing import Dict, List, Optional

import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from components.promotion_gate import CANDIDATE, PRETRAINED, PRODUCTION, read_evaluation
from models.model import PREDICTION
from pipeline.config import PipelineConfig

REPORT_FILE = 'report.json'
PLOT_FILE = 'domain_auc.png'
RELIABILITY_PLOT_FILE = 'reliability.png'
Z95 = 1.959964  # a displayed interval is the figure +- Z95 standard errors (the gate decides on its own levels)


def _latest_run(config: PipelineConfig):
  """(the metadata store, the pipeline's most recent run context, {node id: its context})."""
  store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(config.metadata_path))
  run = max(store.get_contexts_by_type('pipeline_run'), key=lambda c: c.id)
  prefix = f'{config.pipeline_name}.'
  nodes = {node.name[len(prefix):]: node for node in store.get_contexts_by_type('node')
           if node.name.startswith(prefix)}
  return store, run, nodes


def latest_run_artifacts(config: PipelineConfig) -> Dict[str, Dict[str, List]]:
  """{node id: {artifact type name: [artifacts]}} for the pipeline's most recent run."""
  store, run, nodes = _latest_run(config)
  in_run = {a.id for a in store.get_artifacts_by_context(run.id)}
  types = {t.id: t.name for t in store.get_artifact_types()}
  by_node = collections.defaultdict(lambda: collections.defaultdict(list))
  for node_id, node in nodes.items():
    for artifact in store.get_artifacts_by_context(node.id):
      if artifact.id in in_run:
        by_node[node_id][types[artifact.type_id]].append(artifact)
  return by_node


def component_times(config: PipelineConfig) -> List[dict]:
  """Every component execution of the pipeline's most recent run, in the order they started: the component,
  its wall time in seconds and its state (COMPLETE, CACHED, FAILED, ...)."""
  store, run, nodes = _latest_run(config)
  in_run = {e.id for e in store.get_executions_by_context(run.id)}
  executions = [(node_id, e) for node_id, node in nodes.items() for e in store.get_executions_by_context(node.id)
                if e.id in in_run]
  return [{'component': node_id, 'seconds': (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000,
           'state': metadata_store_pb2.Execution.State.Name(e.last_known_state)}
          for node_id, e in sorted(executions, key=lambda pair: pair[1].create_time_since_epoch)]


def _single(by_node, node: str, type_name: str):
  artifacts = by_node.get(node, {}).get(type_name, [])
  return max(artifacts, key=lambda a: a.id) if artifacts else None


def domain_counts(examples_uri: str, split: str, domain_column: str) -> Dict[str, int]:
  """Examples per domain in one split of an ExampleGen output."""
  files = tf.io.gfile.glob(os.path.join(examples_uri, f'Split-{split}', '*'))
  dataset = tf.data.TFRecordDataset(files, compression_type='GZIP').batch(4096).map(
      lambda x: tf.io.parse_example(x, {domain_column: tf.io.FixedLenFeature([], tf.string, default_value='')}))
  counts = collections.Counter()
  for batch in dataset:
    counts.update(v.decode() for v in batch[domain_column].numpy())
  return dict(counts)


def latest_gate_evaluation(config: PipelineConfig) -> dict:
  """The evaluation.json of the latest run's PromotionGate."""
  return read_evaluation(_single(latest_run_artifacts(config), 'PromotionGate', 'ModelBlessing').uri)


def _interval(estimate: Optional[dict]) -> Optional[List[float]]:
  """The 95% interval [lower, upper] of a gate estimate; None when it could not be computed."""
  if not estimate or estimate['value'] is None or estimate['se'] is None:
    return None
  return [estimate['value'] - Z95 * estimate['se'], estimate['value'] + Z95 * estimate['se']]


def _figure(estimate: Optional[dict]) -> Optional[float]:
  return estimate['value'] if estimate else None


def _model_figures(slice_: dict, model: str, wauc: bool = False) -> dict:
  """One model's AUC (and WAUC) with 95% intervals and its calibration on a gate slice; {} when absent."""
  figures = slice_['models'].get(model)
  if not figures:
    return {}
  calibration = figures['calibration']
  result = {'auc': _figure(figures['auc']), 'auc_ci': _interval(figures['auc']),
            'logloss': calibration['logloss'], 'constant_logloss': calibration['constant_logloss'],
            'calibration': calibration['ratio'], 'reliability': calibration['reliability']}
  if wauc:
    result.update(wauc=_figure(figures['wauc']), wauc_ci=_interval(figures['wauc']))
  return result


def _change(slice_: dict, figure: str) -> Optional[dict]:
  """The candidate - production difference of `figure` on a gate slice: value, 95% interval, p-value."""
  difference = (slice_.get('difference') or {}).get(figure)
  if not difference:
    return None
  return {'value': difference['value'], 'ci': _interval(difference), 'p_value': difference['p_value']}


def task_report(task: dict) -> dict:
  """A task's figures from its gate result: per domain (`domains`, as the gate names them) and overall."""
  evaluation = task['evaluation']

  def figures(slice_: dict, overall: bool) -> dict:
    return {'test_examples': slice_['count'], 'positives': slice_['positives'], 'deciding': slice_['deciding'],
            'pretrain': _model_figures(slice_, PRETRAINED, overall),
            'finetune': _model_figures(slice_, CANDIDATE, overall),
            'production': _model_figures(slice_, PRODUCTION, overall),
            'auc_change': _change(slice_, 'auc'), 'logloss_change': _change(slice_, 'logloss'),
            **({'wauc_change': _change(slice_, 'wauc')} if overall else {})}

  return {'domains': {name: figures(s, False) for name, s in evaluation['domains'].items()},
          'overall': figures(evaluation['overall'], True),
          'blessed': task['decision']['blessed'], 'rule': task['decision']['rule'],
          'reasons': task['decision']['reasons']}


def build_report(config: PipelineConfig) -> dict:
  """The run's report: the click output's (`ctr`) per-domain rows and overall figures at the top level,
  every task of a multi-task model under `tasks`, the gate's decision and the pushed model."""
  by_node = latest_run_artifacts(config)
  examples = next(a for node, types in by_node.items() for a in types.get('Examples', [])
                  if node.endswith('ExampleGen'))
  gate = read_evaluation(_single(by_node, 'PromotionGate', 'ModelBlessing').uri)
  train_counts = domain_counts(examples.uri, 'train', config.feature_spec.domain)
  tasks = {name: task_report(task) for name, task in gate['tasks'].items()}
  click = tasks[PREDICTION]
  domains = []
  for name in config.feature_spec.domains:
    row = click['domains'].get(name, {'test_examples': 0, 'pretrain': {}, 'finetune': {}, 'production': {}})
    domains.append({'domain': name, 'train_examples': train_counts.get(name, 0),
                    'test_examples': row['test_examples'],
                    'auc_pretrain': row['pretrain'].get('auc'), 'auc_pretrain_ci': row['pretrain'].get('auc_ci'),
                    'auc_finetune': row['finetune'].get('auc'), 'auc_finetune_ci': row['finetune'].get('auc_ci'),
                    'auc_production': row['production'].get('auc'), 'auc_change': row.get('auc_change'),
                    'logloss': row['finetune'].get('logloss'),
                    'constant_logloss': row['finetune'].get('constant_logloss'),
                    'calibration': row['finetune'].get('calibration'), 'deciding': row.get('deciding', False),
                    **{f'reliability_{stage}': row[stage].get('reliability') for stage in ('pretrain', 'finetune')}})
  overall = click['overall']
  pushed = _single(by_node, 'Pusher', 'PushedModel')
  is_pushed = bool(pushed and pushed.custom_properties['pushed'].int_value)
  pushed_model = pushed.custom_properties['pushed_destination'].string_value if is_pushed else None
  return {
      'split': gate['split'],
      'domains': domains,
      **{f'{figure}_{stage}': overall[stage].get(figure) for stage in ('pretrain', 'finetune')
         for figure in ('auc', 'wauc')},
      **{f'{figure}_{stage}_ci': overall[stage].get(f'{figure}_ci') for stage in ('pretrain', 'finetune')
         for figure in ('auc', 'wauc')},
      'logloss_finetune': overall['finetune'].get('logloss'),
      'constant_logloss': overall['finetune'].get('constant_logloss'),
      'calibration_finetune': overall['finetune'].get('calibration'),
      **{f'reliability_{stage}': overall[stage].get('reliability') for stage in ('pretrain', 'finetune')},
      'production': ({'auc': overall['production']['auc'], 'wauc': overall['production']['wauc'],
                      'auc_change': overall['auc_change'], 'wauc_change': overall['wauc_change'],
                      'logloss_change': overall['logloss_change']} if overall['production'] else None),
      'blessed': gate['blessed'],
      'gate_rule': ','.join(task['rule'] for task in tasks.values()),
      'gate_reasons': [reason for task in tasks.values() for reason in task['reasons']],
      'pushed_model': pushed_model,
      'pushed_version': os.path.basename(pushed_model) if pushed_model else None,
      'components': component_times(config),
      **({'tasks': tasks} if config.head else {}),
  }


NOT_COMPUTED = 'n/a'  # a figure the data cannot give (a single class, an empty domain): never a crash


def format_number(value: Optional[float], spec: str = '.4f') -> str:
  """`value` in `spec`, 'n/a' when it could not be computed."""
  return NOT_COMPUTED if value is None else format(value, spec)


def format_with_interval(value: Optional[float], interval: Optional[List[float]]) -> str:
  """'0.7349 ±0.0081' (the 95% interval's half-width), 'n/a' when it could not be computed."""
  if value is None:
    return NOT_COMPUTED
  return f'{value:.4f} ±{(interval[1] - interval[0]) / 2:.4f}' if interval else f'{value:.4f}'


def _delta(after: Optional[float], before: Optional[float]) -> Optional[float]:
  return None if after is None or before is None else after - before


def format_table(report: dict) -> str:
  """The per-domain table (test split, 95% intervals), calibration, the comparison with production, the gate's
  decision with its rule and the pushed model."""
  header = (f'{"domain":<16}{"train":>8}{"test":>7}{"AUC pre":>17}{"AUC LoRA":>17}{"delta":>9}'
            f'{"logloss":>9}{"const":>8}{"calib":>7}')
  lines = [f'{report["split"]} split, 95% intervals', header, '-' * len(header)]
  for row in report['domains']:
    lines.append(f'{row["domain"]:<16}{row["train_examples"]:>8}{row["test_examples"]:>7}'
                 f'{format_with_interval(row["auc_pretrain"], row["auc_pretrain_ci"]):>17}'
                 f'{format_with_interval(row["auc_finetune"], row["auc_finetune_ci"]):>17}'
                 f'{format_number(_delta(row["auc_finetune"], row["auc_pretrain"]), "+.4f"):>9}'
                 f'{format_number(row["logloss"]):>9}{format_number(row["constant_logloss"]):>8}'
                 f'{format_number(row["calibration"], ".2f"):>7}')
  lines.append('-' * len(header))
  for name in ('auc', 'wauc'):
    before, after = report[f'{name}_pretrain'], report[f'{name}_finetune']
    lines.append(f'{name.upper() + " (all domains)":<31}'
                 f'{format_with_interval(before, report[f"{name}_pretrain_ci"]):>17}'
                 f'{format_with_interval(after, report[f"{name}_finetune_ci"]):>17}'
                 f'{format_number(_delta(after, before), "+.4f"):>9}')
  lines.append(f'log loss {format_number(report["logloss_finetune"])} (predicting the click rate: '
               f'{format_number(report["constant_logloss"])}), calibration '
               f'{format_number(report["calibration_finetune"], ".3f")}')
  production = report['production']
  if production:
    change = production['wauc_change']
    interval = f' [{change["ci"][0]:+.4f}, {change["ci"][1]:+.4f}]' if change and change['ci'] else ''
    lines.append(f'vs production: WAUC {format_number(production["wauc"])} -> '
                 f'{format_number(report["wauc_finetune"])}, '
                 f'change {format_number(change and change["value"], "+.4f")}{interval}')
  else:
    lines.append('vs production: none yet (first run)')
  for task, values in report.get('tasks', {}).items():  # a multi-task model: every task output's AUC
    lines.append(f'task {task}: AUC {format_number(values["overall"]["pretrain"].get("auc"))} -> '
                 f'{format_number(values["overall"]["finetune"].get("auc"))}, gate {values["rule"]}')
  lines.append(f'gate: {"promoted" if report["blessed"] else "not promoted"} ({report["gate_rule"]})')
  lines.append(f'blessed: {report["blessed"]}')
  lines.append(f'pushed model: {report["pushed_model"] or "none (not blessed)"}')
  return '\n'.join(lines)


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_domain_auc(report: dict, path) -> None:
  """Per-domain test AUC before and after fine-tuning, with 95% intervals, as PNG to `path` (a file name or a
  binary file)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  plt = _pyplot()
  rows = report['domains']
  positions = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
  for offset, stage, label in ((-0.2, 'pretrain', 'pretrained backbone'), (0.2, 'finetune', '+ MLoRA')):
    values = [r[f'auc_{stage}'] or 0 for r in rows]
    errors = [(r[f'auc_{stage}_ci'][1] - r[f'auc_{stage}_ci'][0]) / 2 if r[f'auc_{stage}_ci'] else 0
              for r in rows]
    ax.bar(positions + offset, values, width=0.4, yerr=errors, capsize=2, label=label)
  ax.set_xticks(positions, [f'{r["domain"]}\n({r["test_examples"]})' for r in rows], fontsize=8)
  values = [r[k] for r in rows for k in ('auc_pretrain', 'auc_finetune') if r[k] is not None]
  ax.set_ylim(max(0.0, min(values) - 0.1) if values else 0.0, 1.0)
  ax.set_ylabel(f'AUC ({report["split"]} split, 95% interval)')
  ax.set_title(f'Per-domain AUC; WAUC {format_number(report["wauc_pretrain"])} -> '
               f'{format_number(report["wauc_finetune"])}')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_reliability(report: dict, path: str) -> str:
  """The reliability curves of the pretrained and the fine-tuned model, all domains together and each domain
  alone: the observed click rate of each equal-count bin of predictions against its mean prediction (on the
  diagonal: calibrated; below it: over-predicting)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  panels = [('all domains', report)] + [(row['domain'], row) for row in report['domains']]
  columns = 4
  rows = -(-len(panels) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
  for ax, (title, figures) in zip(axes.flat, panels):
    curves = {stage: figures.get(f'reliability_{stage}') or [] for stage in ('pretrain', 'finetune')}
    top = max([b[k] for bins in curves.values() for b in bins for k in ('mean_prediction', 'observed_rate')] + [0.1])
    ax.plot([0, top], [0, top], color='grey', linewidth=0.8)
    for stage, label in (('pretrain', 'pretrained backbone'), ('finetune', '+ MLoRA')):
      ax.plot([b['mean_prediction'] for b in curves[stage]], [b['observed_rate'] for b in curves[stage]],
              marker='o', markersize=3, label=label)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
  for ax in axes.flat[len(panels):]:
    ax.axis('off')
  axes.flat[0].legend(fontsize=7)
  fig.supxlabel(f'mean prediction ({report["split"]} split, equal-count bins)', fontsize=9)
  fig.supylabel('observed click rate', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def write_report(config: PipelineConfig) -> dict:
  """Writes report.json, the per-domain AUC plot and report.html (pipeline/report_html.py) into the output
  folder; returns the report."""
  from pipeline import report_html  # pylint: disable=g-import-not-at-top  # it renders this module's figures

  report = build_report(config)
  with open(os.path.join(config.output_dir, REPORT_FILE), 'w') as f:
    json.dump(report, f, indent=2)
  plot_domain_auc(report, os.path.join(config.output_dir, PLOT_FILE))
  plot_reliability(report, os.path.join(config.output_dir, RELIABILITY_PLOT_FILE))
  report_html.write_html(config, report)
  return report
