"""The run's result table: per-domain AUC of the pretrained and fine-tuned models, WAUC, the gate's
verdict and the pushed model, read back from the metadata store of the latest run."""
import collections
import json
import os
from typing import Dict, List, Optional

import tensorflow as tf
import tensorflow_model_analysis as tfma
from ml_metadata.metadata_store import metadata_store
from tfx.orchestration import metadata
from tfx.types import artifact_utils

from models import heads
from pipeline.config import PipelineConfig

REPORT_FILE = 'report.json'
PLOT_FILE = 'domain_auc.png'


def latest_run_artifacts(config: PipelineConfig) -> Dict[str, Dict[str, List]]:
  """{node id: {artifact type name: [artifacts]}} for the pipeline's most recent run."""
  connection = metadata.sqlite_metadata_connection_config(config.metadata_path)
  store = metadata_store.MetadataStore(connection)
  run = max(store.get_contexts_by_type('pipeline_run'), key=lambda c: c.id)
  in_run = {a.id for a in store.get_artifacts_by_context(run.id)}
  types = {t.id: t.name for t in store.get_artifact_types()}
  by_node = collections.defaultdict(lambda: collections.defaultdict(list))
  for node in store.get_contexts_by_type('node'):
    prefix = f'{config.pipeline_name}.'
    if not node.name.startswith(prefix):
      continue
    for artifact in store.get_artifacts_by_context(node.id):
      if artifact.id in in_run:
        by_node[node.name[len(prefix):]][types[artifact.type_id]].append(artifact)
  return by_node


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


def slice_metrics(evaluation_uri: str, domain_column: str,
                  output_name: str = '') -> Dict[Optional[str], Dict[str, float]]:
  """{domain or None for overall: {metric: value}} for the candidate model of an Evaluator output, of the
  model output `output_name` (a multi-task model's task; '' for a single-output model)."""
  result = tfma.load_eval_result(evaluation_uri)
  metrics = {}
  for slice_key, values in result.slicing_metrics:
    if slice_key and (len(slice_key) != 1 or slice_key[0][0] != domain_column):
      continue
    domain = None if not slice_key else slice_key[0][1]
    domain = domain.decode() if isinstance(domain, bytes) else domain
    flat = values.get(output_name, {}).get('', {})
    metrics[domain] = {name: value['doubleValue'] for name, value in flat.items() if 'doubleValue' in value}
  return metrics


def build_report(config: PipelineConfig) -> dict:
  by_node = latest_run_artifacts(config)
  examples = next(a for node, types in by_node.items() for a in types.get('Examples', [])
                  if node.endswith('ExampleGen'))
  split_names = artifact_utils.decode_split_names(examples.properties['split_names'].string_value)
  eval_split = 'test' if 'test' in split_names else 'eval'
  domain = config.feature_spec.domain
  train_counts = domain_counts(examples.uri, 'train', domain)
  eval_counts = domain_counts(examples.uri, eval_split, domain)
  outputs = heads.OUTPUTS[config.head] if config.head else ('',)  # the click output first
  before_uri, after_uri = (_single(by_node, node, 'ModelEvaluation').uri for node in ('PretrainEvaluator', 'Evaluator'))
  before = {o: slice_metrics(before_uri, domain, o) for o in outputs}
  after = {o: slice_metrics(after_uri, domain, o) for o in outputs}
  tasks = {o: {'domains': {name: {'auc_pretrain': before[o].get(name, {}).get('auc'),
                                  'auc_finetune': after[o].get(name, {}).get('auc')}
                           for name in config.feature_spec.domains},
               'auc_pretrain': before[o][None]['auc'], 'auc_finetune': after[o][None]['auc']}
           for o in outputs if o}
  before, after = before[outputs[0]], after[outputs[0]]
  blessing = _single(by_node, 'Evaluator', 'ModelBlessing')
  pushed = _single(by_node, 'Pusher', 'PushedModel')

  domains = []
  for name in config.feature_spec.domains:
    domains.append({
        'domain': name,
        'train_examples': train_counts.get(name, 0),
        'eval_examples': eval_counts.get(name, 0),
        'auc_pretrain': before.get(name, {}).get('auc'),
        'auc_finetune': after.get(name, {}).get('auc'),
    })
  is_pushed = bool(pushed and pushed.custom_properties['pushed'].int_value)
  return {
      'domains': domains,
      'auc_pretrain': before[None]['auc'],
      'auc_finetune': after[None]['auc'],
      'wauc_pretrain': before[None]['wauc'],
      'wauc_finetune': after[None]['wauc'],
      'blessed': bool(blessing and blessing.custom_properties['blessed'].int_value),
      'pushed_model': pushed.custom_properties['pushed_destination'].string_value if is_pushed else None,
      'eval_split': eval_split,
      **({'tasks': tasks} if tasks else {}),  # a multi-task model's AUC per task output
  }


def _delta(after, before):
  return None if after is None or before is None else after - before


def format_table(report: dict) -> str:
  def fmt(value, spec='.4f'):
    return '-' if value is None else format(value, spec)

  header = f'{"domain":<16}{"train":>9}{"eval":>8}{"AUC pre":>10}{"AUC LoRA":>10}{"delta":>9}'
  lines = [header, '-' * len(header)]
  for row in report['domains']:
    lines.append(f'{row["domain"]:<16}{row["train_examples"]:>9}{row["eval_examples"]:>8}'
                 f'{fmt(row["auc_pretrain"]):>10}{fmt(row["auc_finetune"]):>10}'
                 f'{fmt(_delta(row["auc_finetune"], row["auc_pretrain"]), "+.4f"):>9}')
  lines.append('-' * len(header))
  for name in ('auc', 'wauc'):
    before, after = report[f'{name}_pretrain'], report[f'{name}_finetune']
    lines.append(f'{name.upper() + " (all domains)":<33}{fmt(before):>10}{fmt(after):>10}'
                 f'{fmt(_delta(after, before), "+.4f"):>9}')
  tasks = report.get('tasks', {})
  if tasks:  # a multi-task model: AUC of every task output, each over all exposures
    lines.append(f'{"task AUC":<16}' + ''.join(f'{t + " pre":>12}{t + " LoRA":>12}' for t in tasks))
    for row in report['domains'] + [{'domain': None}]:
      values = [v['domains'][row['domain']] if row['domain'] else v for v in tasks.values()]
      lines.append(f'{row["domain"] or "all domains":<16}' + ''.join(
          f'{fmt(v["auc_pretrain"]):>12}{fmt(v["auc_finetune"]):>12}' for v in values))
  lines.append(f'blessed: {report["blessed"]}')
  lines.append(f'pushed model: {report["pushed_model"] or "none (not blessed)"}')
  return '\n'.join(lines)


def plot_domain_auc(report: dict, path: str) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  rows = report['domains']
  positions = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
  for offset, key, label in ((-0.2, 'auc_pretrain', 'pretrained backbone'), (0.2, 'auc_finetune', '+ MLoRA')):
    ax.bar(positions + offset, [r[key] or 0 for r in rows], width=0.4, label=label)
  ax.set_xticks(positions, [f'{r["domain"]}\n({r["train_examples"]})' for r in rows], fontsize=8)
  values = [r[k] for r in rows for k in ('auc_pretrain', 'auc_finetune') if r[k] is not None]
  ax.set_ylim(max(0.0, min(values) - 0.05) if values else 0.0, 1.0)
  ax.set_ylabel('AUC (eval split)')
  ax.set_title(f'Per-domain AUC; WAUC {report["wauc_pretrain"]:.4f} -> {report["wauc_finetune"]:.4f}')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def write_report(config: PipelineConfig) -> dict:
  report = build_report(config)
  with open(os.path.join(config.output_dir, REPORT_FILE), 'w') as f:
    json.dump(report, f, indent=2)
  plot_domain_auc(report, os.path.join(config.output_dir, PLOT_FILE))
  return report
