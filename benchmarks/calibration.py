"""Calibration and trained fallbacks on the default data: per-domain test AUC, log loss against the constant
rate, and the unknown-domain path of the served model, before and after the project's regularization defaults.

Runs in-process, without the pipeline: the default data (`data.synthetic.generate(ROWS, seed=0)`) split 60/20/20
into train/eval/test by a seeded permutation, the project's `preprocessing_fn` analyzed on train by tf.Transform
(Beam, in memory) and applied to every split, then the Trainer's own `pretrain_run_fn` and `finetune_run_fn`
(selection on the eval split, export of the serving SavedModel) for each variant and seed. Every figure is the
exported SavedModel's `serving_default` on the test split's serialized tf.Examples, as TF Serving scores them:

- per domain and stage (pretrain, MLoRA fine-tune): test AUC, log loss, the constant-rate log loss (predicting
  the domain's own test click rate), and calibration (mean prediction / click rate);
- the unknown-domain check: the same test rows with their domain replaced by one the model never saw, AUC and
  mean prediction / click rate, against the rows as they are.

Variants: `before` turns the calibration, the regularization and the fallback training off (the project as it
was), `calibration_only` the calibration alone on, `after` is the `PipelineConfig` defaults. Train fits, eval
selects (the Trainers' `BestValidationWeights`) and calibrates, test judges.

    .venv/bin/python benchmarks/calibration.py [--seeds 0,1] [--variants before,after] [--rows 200000] \
        [--work-dir /tmp/calibration] [--set KEY=VALUE ...]
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tfx.components.trainer.fn_args_utils import FnArgs  # noqa: E402

from benchmarks import in_process  # noqa: E402
from data import synthetic  # noqa: E402
from models import metrics  # noqa: E402
from models import trainer  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from serving import signatures  # noqa: E402

SPEC = synthetic.FEATURE_SPEC
SPLITS = {'train': 0.6, 'eval': 0.2, 'test': 0.2}
UNSEEN_DOMAIN = 'a_domain_never_seen'
UNSEEN_ITEM_COLUMN, UNSEEN_ITEM = 'item_id', 10 ** 9  # an item id outside the data: the OOV row
STAGES = ('pretrain', 'finetune')
# variant: (PipelineConfig fields over the defaults, stages trained). `before`: the calibration, the
# regularization and the fallback training off, the project as it was before issue 13; `calibration_only`: the
# per-domain calibration alone; `after`: the defaults; `no_domain`: a model that never sees the domain, the
# reference for the unknown-domain path (the best a domain-blind score does).
REGULARIZATION_OFF = {'embedding_l2': 0.0, 'domain_dropout': 0.0, 'finetune_domain_dropout': 0.0,
                      'vocabulary_frequency_threshold': 0}
VARIANTS = {'before': ({**REGULARIZATION_OFF, 'calibrate': False}, STAGES),
            'calibration_only': (REGULARIZATION_OFF, STAGES), 'after': ({}, STAGES),
            'no_domain': ({'pretrain_adaptation': 'no_domain'}, ('pretrain',))}
COMPARED = ('before', 'calibration_only', 'after')  # the variants of the per-domain tables


def split(frame, seed: int = 0):
  """{split: rows}: a seeded 60/20/20 permutation split."""
  order = np.random.default_rng(seed).permutation(len(frame))
  bounds = np.cumsum([0] + [int(round(share * len(frame))) for share in SPLITS.values()])
  bounds[-1] = len(frame)
  return {name: frame.iloc[order[bounds[i]:bounds[i + 1]]].reset_index(drop=True)
          for i, name in enumerate(SPLITS)}


def stage_fn_args(stage: str, config: PipelineConfig, accessor, transform_dir: str, model_dir: str,
                  base_model=None, hyperparameters=None) -> FnArgs:
  """The FnArgs the pipeline gives `stage`'s Trainer (the fine-tune stage's Tuner gets the same, with a
  working_dir), its model going to the Model artifact folder `model_dir`."""
  return FnArgs(train_files='train', eval_files='eval', train_steps=config.pretrain_steps if stage == 'pretrain'
                else config.finetune_steps, eval_steps=config.eval_steps, transform_output=transform_dir,
                transform_graph_path=transform_dir, data_accessor=accessor,
                serving_model_dir=os.path.join(model_dir, 'Format-Serving'),
                model_run_dir=os.path.join(model_dir, 'logs'),
                base_model=base_model, hyperparameters=hyperparameters, custom_config=config.trainer_config(stage))


def train_stage(stage: str, config: PipelineConfig, accessor, transform_dir: str, model_dir: str,
                base_model=None, hyperparameters=None) -> str:
  """Runs the Trainer's run_fn of `stage` as the pipeline would; the Format-Serving directory it exported."""
  fn_args = stage_fn_args(stage, config, accessor, transform_dir, model_dir, base_model, hyperparameters)
  (trainer.pretrain_run_fn if stage == 'pretrain' else trainer.finetune_run_fn)(fn_args)
  return fn_args.serving_model_dir


def served_outputs(serving_dir: str, examples, batch_size: int = 8192) -> dict:
  """{output: [n] scores} of the exported model for serialized examples, through `serving_default`: `ctr`,
  and a multi-task model's other tasks (`cvr`, ...)."""
  serve = tf.saved_model.load(serving_dir).signatures[signatures.DEFAULT]
  batches = [serve(**{signatures.EXAMPLES_INPUT: tf.constant(examples[i:i + batch_size])})
             for i in range(0, len(examples), batch_size)]
  return {name: np.concatenate([batch[name].numpy() for batch in batches]) for name in batches[0]}


def served_predictions(serving_dir: str, examples, batch_size: int = 8192) -> np.ndarray:
  """The exported model's `ctr` for serialized examples, through `serving_default`."""
  return served_outputs(serving_dir, examples, batch_size)['ctr']


def domain_table(labels, predictions, domains) -> dict:
  """{domain or 'all': {auc, logloss, constant, calibration, count}}, plus 'wauc'."""
  table = {}
  for name in ['all'] + SPEC.domains:
    rows = np.ones(len(labels), bool) if name == 'all' else domains == name
    y, p = labels[rows], predictions[rows]
    rate = y.mean()
    table[name] = {'auc': metrics.auc(y, p), 'logloss': metrics.logloss(y, p),
                   'constant': metrics.logloss(y, np.full(len(y), rate)), 'calibration': p.mean() / rate,
                   'rate': float(rate), 'count': int(rows.sum())}
  table['wauc'] = metrics.wauc(labels, predictions, domains)
  return table


def fallback_check(labels, known, unknown, domains) -> dict:
  """The unknown-domain path against the known one, on the same rows: AUC over all rows, WAUC (within each
  domain, weighted by its rows), calibration, and each domain's AUC and calibration."""
  check = {'auc_known': metrics.auc(labels, known), 'auc_unknown': metrics.auc(labels, unknown),
           'wauc_known': metrics.wauc(labels, known, domains), 'wauc_unknown': metrics.wauc(labels, unknown, domains),
           'calibration_known': known.mean() / labels.mean(), 'calibration_unknown': unknown.mean() / labels.mean()}
  for name in dict.fromkeys(domains):
    rows = domains == name
    check[f'{name}/auc_unknown'] = metrics.auc(labels[rows], unknown[rows])
    check[f'{name}/calibration_unknown'] = unknown[rows].mean() / labels[rows].mean()
  return check


def cached_transform(key: str, transform_config: dict, examples: dict, work_dir: str, schema=None):
  """(transform graph directory, InMemoryAccessor over the transformed train and eval splits) for
  `transform_config` (examples read with `schema`, the default data's when None), reused from `work_dir` when
  an earlier run made them for the same `key`."""
  transform_dir = os.path.join(work_dir, 'transform-' + hashlib.sha1(key.encode()).hexdigest()[:10])
  columns_path = os.path.join(transform_dir, 'transformed.npz')
  if not os.path.exists(columns_path):
    shutil.rmtree(transform_dir, ignore_errors=True)
    start = time.time()
    tf_transform_output = in_process.analyze(examples['train'], transform_config, transform_dir, schema)
    columns = {f'{name}/{k}': v for name in ('train', 'eval')
               for k, v in in_process.transform(examples[name], tf_transform_output).items()}
    np.savez(columns_path, **columns)
    print(f'transform {transform_config}: {time.time() - start:.0f} s', flush=True)
  columns = np.load(columns_path)
  files = {name: {k.split('/', 1)[1]: columns[k] for k in columns.files if k.startswith(name + '/')}
           for name in ('train', 'eval')}
  return transform_dir, in_process.InMemoryAccessor(files)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rows', type=int, default=synthetic.DEFAULT_ROWS)
  parser.add_argument('--variants', type=lambda t: t.split(','), default=list(VARIANTS),
                      help=f'some of {", ".join(VARIANTS)} (default: all)')
  in_process.add_run_options(parser, '/tmp/calibration', seeds=(0, 1),
                             seeds_note=' (the data is always generate(ROWS, seed=0))')
  parser.add_argument('--verbose', action='store_true', help='log the Trainers\' epochs')
  args = parser.parse_args(argv)
  unknown = sorted(set(args.variants) - set(VARIANTS))
  if unknown:
    parser.error(f'unknown variants {unknown}: choose among {list(VARIANTS)}')
  in_process.log_trainer_epochs(args.verbose)

  frames = split(synthetic.generate(args.rows, seed=0))
  examples = {name: in_process.serialize(frame) for name, frame in frames.items()}
  test = frames['test']
  labels, domains = test[SPEC.label].to_numpy(), test[SPEC.domain].to_numpy()
  probes = {'known': examples['test'],
            'unknown_domain': in_process.serialize(test.assign(**{SPEC.domain: UNSEEN_DOMAIN})),
            'unseen_item': in_process.serialize(test.assign(**{UNSEEN_ITEM_COLUMN: UNSEEN_ITEM}))}

  results = []
  for variant in args.variants:
    overrides, stages = VARIANTS[variant]
    for seed in args.seeds:
      config = PipelineConfig('', '', '', SPEC, seed=seed, **{**overrides, **dict(args.set)})
      transform_config = config.transform_config()
      transform_dir, accessor = cached_transform(json.dumps({'rows': args.rows, **transform_config}, sort_keys=True),
                                                 transform_config, examples, args.work_dir)
      base = None
      for stage in stages:
        start = time.time()
        model_dir = os.path.join(args.work_dir, f'{variant}-{seed}', stage)
        shutil.rmtree(model_dir, ignore_errors=True)
        base = train_stage(stage, config, accessor, transform_dir, model_dir, base_model=base)
        scores = {name: served_predictions(base, probe) for name, probe in probes.items()}
        result = {'variant': variant, 'seed': seed, 'stage': stage, 'seconds': time.time() - start,
                  'table': domain_table(labels, scores['known'], domains),
                  'fallback': fallback_check(labels, scores['known'], scores['unknown_domain'], domains),
                  'unseen_item': {'auc': metrics.auc(labels, scores['unseen_item']),
                                  'calibration': scores['unseen_item'].mean() / labels.mean()}}
        results.append(result)
        print(summary_line(result), flush=True)
  print(format_report(results, args))
  in_process.write_json(args.json, {'command': ' '.join(sys.argv), 'results': results})


def beats_constant(cell: dict) -> bool:
  """Whether a domain's log loss is below that of predicting its own test click rate."""
  return cell['logloss'] < cell['constant']


def domains_beating_constant(table: dict) -> int:
  return sum(beats_constant(table[d]) for d in SPEC.domains)


def summary_line(result) -> str:
  table, fallback = result['table'], result['fallback']
  beaten = domains_beating_constant(table)
  return (f"{result['variant']} seed {result['seed']} {result['stage']}: WAUC {table['wauc']:.4f} AUC "
          f"{table['all']['auc']:.4f} logloss {table['all']['logloss']:.4f} (constant {table['all']['constant']:.4f}, "
          f"beaten in {beaten}/{len(SPEC.domains)} domains) calibration {table['all']['calibration']:.3f}; unknown "
          f"domain AUC {fallback['auc_unknown']:.4f} WAUC {fallback['wauc_unknown']:.4f} calibration "
          f"{fallback['calibration_unknown']:.3f}; unseen item AUC {result['unseen_item']['auc']:.4f} calibration "
          f"{result['unseen_item']['calibration']:.3f}  ({result['seconds']:.0f} s)")


def _mean(values) -> str:
  """mean ±half the range over seeds."""
  values = np.asarray(values, dtype=float)
  return f'{values.mean():.4f}±{(values.max() - values.min()) / 2:.4f}'


def format_report(results, args) -> str:
  """The before/after table of each stage, per domain, then the fallback checks; each cell the mean over
  seeds ±half their range."""
  runs = {}
  for r in results:
    runs.setdefault((r['variant'], r['stage']), []).append(r)
  seeds = ','.join(map(str, args.seeds))
  lines = [f'\n{args.rows} rows, split 60/20/20, test split ({results[0]["table"]["all"]["count"]} rows); each '
           f'cell: mean over seeds {seeds} ±half their range. constant: log loss of predicting the domain\'s own '
           'test click rate; calibration: mean prediction / click rate.']
  compared = [v for v in COMPARED if v in args.variants]
  for stage in STAGES:
    if not any((v, stage) in runs for v in compared):
      continue
    lines += ['', f'## {stage} stage' + (' (MLoRA fine-tune)' if stage == 'finetune' else ''),
              f'{"domain":<15}{"rows":>6}{"rate":>7}' + ''.join(
                  f'{f"AUC {v}":>17}' for v in compared) + ''.join(
                  f'{f"logloss {v}":>17}' for v in compared) + f'{"constant":>9}' + ''.join(
                  f'{f"calib. {v}":>17}' for v in compared) + f'{"beats const.":>14}']
    for name in SPEC.domains + ['all']:
      cells = {v: [r['table'][name] for r in runs.get((v, stage), [])] for v in compared}
      first = next(c for c in cells.values() if c)[0]
      line = f'{name:<15}{first["count"]:>6}{first["rate"]:>7.3f}'
      line += ''.join(f'{_mean([c["auc"] for c in cells[v]]):>17}' for v in compared)
      line += ''.join(f'{_mean([c["logloss"] for c in cells[v]]):>17}' for v in compared)
      line += f'{first["constant"]:>9.4f}'
      line += ''.join(f'{_mean([c["calibration"] for c in cells[v]]):>17}' for v in compared)
      beats = ' '.join(f'{sum(beats_constant(c) for c in cells[v])}/{len(cells[v])}' for v in compared)
      line += f'{beats:>14}'
      lines.append(line)
    lines.append(f'{"WAUC":<28}' + ''.join(
        f'{_mean([r["table"]["wauc"] for r in runs.get((v, stage), [])]):>17}' for v in compared))
  lines += ['', f'## fallbacks: the test rows with their domain replaced by {UNSEEN_DOMAIN!r} (unknown domain), or '
                f'their {UNSEEN_ITEM_COLUMN} by {UNSEEN_ITEM} (OOV row)',
            f'{"model":<28}{"AUC known":>17}{"AUC unknown":>17}{"WAUC known":>17}{"WAUC unknown":>17}'
            f'{"calib. unknown":>17}{"per domain":>16}{"AUC OOV item":>17}{"calib. OOV item":>17}']
  for (variant, stage), group in runs.items():
    fallback = lambda key: [r['fallback'][key] for r in group]  # noqa: E731
    per_domain = [r['fallback'][f'{d}/calibration_unknown'] for r in group for d in SPEC.domains]
    lines.append(f'{f"{variant}, {stage}":<28}{_mean(fallback("auc_known")):>17}{_mean(fallback("auc_unknown")):>17}'
                 f'{_mean(fallback("wauc_known")):>17}{_mean(fallback("wauc_unknown")):>17}'
                 f'{_mean(fallback("calibration_unknown")):>17}{f"{min(per_domain):.2f}-{max(per_domain):.2f}":>16}'
                 f'{_mean([r["unseen_item"]["auc"] for r in group]):>17}'
                 f'{_mean([r["unseen_item"]["calibration"] for r in group]):>17}')
  if ('no_domain', 'pretrain') in runs:
    lines.append('(no_domain: a model trained without the domain, the practical ceiling of a domain-blind score; its '
                 '"unknown" and "known" are the same.)')
  return '\n'.join(lines)


def markdown_row(cells) -> str:
  """A Markdown table row of `cells`."""
  return '| ' + ' | '.join(map(str, cells)) + ' |'


def format_markdown(results: dict, seed: int = 0) -> str:
  """The published figures of a results file (`{'commands': [...], 'results': [records of --json outputs]}`): the
  fine-tuned per-domain table of `seed` for the compared variants, then for every record (variant, seed, stage)
  its WAUC, the domains whose log loss beats the constant and the unknown-domain check."""
  records = {(r['variant'], r['seed'], r['stage']): r for r in results['results']}
  compared = [v for v in COMPARED if (v, seed, 'finetune') in records]
  before_after = [v for v in ('before', 'after') if v in compared]
  tables = {v: records[v, seed, 'finetune']['table'] for v in compared}
  header = (['domain', 'test rows', 'constant'] + [f'log loss {v}' for v in compared] +
            [f'ratio {v}' for v in before_after] + [f'AUC {v}' for v in before_after])
  lines = [f'Fine-tuned model, seed {seed}, test split: log loss against the constant rate (✗: worse than the '
           'constant), calibration ratio (mean prediction / click rate) and AUC.', '',
           markdown_row(header), '|---|' + '---:|' * (len(header) - 1)]
  for name in SPEC.domains + ['all']:
    cells = {v: tables[v][name] for v in compared}
    first = cells[compared[0]]
    lines.append(markdown_row(
        [name, first['count'], f"{first['constant']:.4f}"] +
        [f"{cells[v]['logloss']:.4f}" + ('' if beats_constant(cells[v]) else ' ✗') for v in compared] +
        [f"{cells[v]['calibration']:.3f}" for v in before_after] + [f"{cells[v]['auc']:.4f}" for v in before_after]))
  lines += ['', f'Every run (unknown domain: the same test rows with their domain replaced by {UNSEEN_DOMAIN!r}):', '',
            markdown_row(['variant', 'seed', 'stage', 'WAUC', 'log loss beats the constant',
                           'unknown domain: AUC known / unseen', 'WAUC known / unseen',
                           'mean prediction / click rate known / unseen']),
            '|---|---:|---|---:|---:|---:|---:|---:|']
  for record in results['results']:
    table, fallback = record['table'], record['fallback']
    wauc = (f"{fallback['wauc_known']:.4f} / {fallback['wauc_unknown']:.4f}" if 'wauc_known' in fallback else '')
    lines.append(markdown_row(
        [f"`{record['variant']}`", record['seed'], record['stage'], f"{table['wauc']:.4f}",
         f'{domains_beating_constant(table)}/{len(SPEC.domains)}',
         f"{fallback['auc_known']:.4f} / {fallback['auc_unknown']:.4f}", wauc,
         f"{fallback['calibration_known']:.3f} / {fallback['calibration_unknown']:.3f}"]))
  return '\n'.join(lines)


if __name__ == '__main__':
  main()
