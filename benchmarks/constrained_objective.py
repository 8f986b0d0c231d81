"""Constrained multi-task training (models/constraints.py): a multi-task model whose objective favours CTR, so
that its CVR AUC falls below a bound, against the same model trained under the constraint `cvr_auc>=B`.

Runs in-process like `benchmarks/calibration.py` (whose split, Transform and Trainer helpers it uses): the
default data (`synthetic.generate(ROWS, seed=0)`, with click and conversion labels) split 60/20/20, then the
pretrain Trainer (`pretrain_run_fn`: selection on eval, export of the serving SavedModel) of a `shared_bottom`
head, whose `cvr` task is trained on the clicked exposures (and so its AUC, the constraint's, is measured on
them). Models, per seed:

- `weighted`: the cvr task's loss weighted by CVR_WEIGHT (`task_weights`): the unconstrained baseline;
- `balanced`: both tasks weighted 1, the reference the bound is chosen from;
- `constrained`: `weighted` plus the constraint `cvr_auc>=B`, its multiplier raised by dual ascent on the
  eval batches while the constraint is broken.

The bound B is chosen from EVAL figures only, never the test split: midway between the weighted and the
balanced model's eval CVR AUC (means over the seeds), rounded to 3 decimals (`--bound` sets it instead).
Every test figure is the exported model's `serving_default` on the test split: CTR AUC and log loss over all
exposures, CVR AUC and log loss over the clicked ones, overall and per domain; the constraint's test value
and whether it holds; the multiplier's trajectory (per epoch, training_stats.json). Over seeds: means with
95% intervals, and the constrained model's change against `weighted`, paired by seed (t-test).

    .venv/bin/python benchmarks/constrained_objective.py [--rows 200000] [--seeds 0,1,2] [--bound B] \
        [--cvr-weight 0.05] [--work-dir /tmp/constrained_objective] [--set KEY=VALUE ...] [--json FILE]
"""
import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

from benchmarks import calibration, in_process  # noqa: E402
from data import synthetic  # noqa: E402
from models import metrics  # noqa: E402
from models.trainer import TRAINING_STATS_FILE, keras_model_path  # noqa: E402
from pipeline.bench import mean_std, paired_change, plus_minus  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402

SPEC = synthetic.FEATURE_SPEC
CONVERSION = SPEC.extra_labels[0]
HEAD = 'shared_bottom'  # its cvr task is trained (on the clicked exposures): a constraint can name it
TASK = 'cvr'
CVR_WEIGHT = 0.05
BASELINE, REFERENCE, CONSTRAINED = 'weighted', 'balanced', 'constrained'
MODELS = (BASELINE, REFERENCE, CONSTRAINED)
COMPARED = ('ctr_auc', 'ctr_logloss', 'cvr_auc', 'cvr_logloss')  # the figures of the paired comparison


def constraint_text(bound: float) -> str:
  """The constraint as `--constraint` and PipelineConfig.constraints write it."""
  return f'{TASK}_auc>={bound:g}'


def choose_bound(eval_auc: dict) -> float:
  """Midway between the weighted and the balanced model's eval CVR AUC ({model: [per seed]}), to 3 decimals."""
  return round(float((np.mean(eval_auc[BASELINE]) + np.mean(eval_auc[REFERENCE])) / 2), 3)


def head_options(model: str, cvr_weight: float) -> dict:
  """The PipelineConfig `head_options` of `model`: the cvr task's weight."""
  return {} if model == REFERENCE else {'task_weights': {TASK: cvr_weight}}


def cvr_auc(frame, outputs) -> float:
  """The constraint's metric: the `cvr` output's AUC on the clicked exposures, as validation measures it."""
  clicked = frame[SPEC.label].to_numpy() == 1
  return metrics.auc(frame[CONVERSION].to_numpy()[clicked], outputs[TASK][clicked])


def scorecard(test, outputs) -> dict:
  """A model's test figures: {'ctr': domain_report on every exposure, 'cvr': domain_report on the clicked ones}."""
  clicked = test[SPEC.label].to_numpy() == 1
  domains = test[SPEC.domain].to_numpy()
  return {'ctr': metrics.domain_report(test[SPEC.label].to_numpy(), outputs['ctr'], domains),
          'cvr': metrics.domain_report(test[CONVERSION].to_numpy()[clicked], outputs[TASK][clicked],
                                       domains[clicked])}


def training_stats(serving_dir: str) -> dict:
  """The training_stats.json the Trainer wrote beside the Keras model of `serving_dir`."""
  with open(os.path.join(os.path.dirname(keras_model_path(serving_dir)), TRAINING_STATS_FILE)) as f:
    return json.load(f)


def figure(record: dict, name: str, domain: str = 'all') -> float:
  """`name` (task_metric: ctr_auc, cvr_logloss, ...) of a record's test figures, overall or in `domain`."""
  task, metric = name.split('_', 1)
  report = record['test'][task]
  return report[metric] if domain == 'all' else report['domains'][domain][metric]


def judge(records, bound: float) -> None:
  """Adds to each record its `constraint` on test: the metric's value, the bound and whether it holds."""
  for record in records:
    value = figure(record, f'{TASK}_auc')
    record['constraint'] = {'name': constraint_text(bound), 'value': value, 'holds': bool(value >= bound)}


def summarize(results: dict) -> dict:
  """Over seeds: per model, `mean_std` of every compared figure (overall and per domain), the eval CVR AUC and
  the seeds where the constraint holds on test; per figure, the constrained model's `paired_change` against
  the weighted one."""
  by_model = {m: sorted((r for r in results['results'] if r['model'] == m), key=lambda r: r['seed']) for m in MODELS}
  by_model = {m: rs for m, rs in by_model.items() if rs}
  domains = list(next(iter(by_model.values()))[0]['test']['ctr']['domains'])
  places = ['all'] + domains
  summary = {'bound': results['bound'], 'domains': domains, 'models': {}, 'changes': {}}
  for model, records in by_model.items():
    summary['models'][model] = {
        'seeds': [r['seed'] for r in records],
        'eval_cvr_auc': mean_std([r['eval_cvr_auc'] for r in records]),
        'holds': sum(r['constraint']['holds'] for r in records),
        **{f'{name}/{place}': mean_std([figure(r, name, place) for r in records])
           for name in COMPARED for place in places}}
  if BASELINE in by_model and CONSTRAINED in by_model:
    for name in COMPARED:
      for place in places:
        seed_values = {m: {r['seed']: figure(r, name, place) for r in by_model[m]} for m in (BASELINE, CONSTRAINED)}
        summary['changes'][f'{name}/{place}'] = paired_change(seed_values[CONSTRAINED], seed_values[BASELINE])
  return summary


def format_markdown(results: dict) -> str:
  """The tables of a results file (`--json`): per model the overall figures and the constraint on test; per
  domain the weighted and the constrained model and the paired change; the multiplier's trajectory."""
  row = calibration.markdown_row
  summary = summarize(results)
  models, changes = summary['models'], summary['changes']
  seeds = sorted({s for m in models.values() for s in m['seeds']})
  lines = [f'Constraint `{constraint_text(results["bound"])}` ({results["bound_reason"]}). Test split; mean over '
           f'seeds {",".join(map(str, seeds))} ± the half-width of the 95% t-interval; change: {CONSTRAINED} - '
           f'{BASELINE}, paired by seed (± its 95% interval; p: paired t-test). CTR on every exposure, CVR on the '
           'clicked ones.', '',
           row(['model', 'eval CVR AUC', 'CTR AUC', 'CTR log loss', 'CVR AUC (the constraint)', 'CVR log loss',
                'holds on test']), '|---|' + '---:|' * 6]
  for model, figures in models.items():
    lines.append(row([f'`{model}`', plus_minus(figures['eval_cvr_auc'])]
                     + [plus_minus(figures[f'{name}/all']) for name in COMPARED]
                     + [f'{figures["holds"]}/{len(figures["seeds"])}']))
  if changes:
    lines.append(row(['change', ''] + [plus_minus(changes[f'{name}/all'], '+.4f', with_p=True) for name in COMPARED]
                     + ['']))
    for task in ('ctr', 'cvr'):
      header = ['domain'] + [f'{task.upper()} {metric} {model}' for metric in ('AUC', 'log loss')
                             for model in (BASELINE, CONSTRAINED, 'change')]
      lines += ['', row(header), '|---|' + '---:|' * (len(header) - 1)]
      for place in summary['domains'] + ['all']:
        cells = [place]
        for metric in ('auc', 'logloss'):
          key = f'{task}_{metric}/{place}'
          cells += [plus_minus(models[BASELINE][key]), plus_minus(models[CONSTRAINED][key]),
                    plus_minus(changes[key], '+.4f', with_p=True)]
        lines.append(row(cells))
  constrained = sorted((r for r in results['results'] if r['model'] == CONSTRAINED), key=lambda r: r['seed'])
  if constrained:
    lines += ['', 'Multiplier trajectory: per epoch, the validation CVR AUC and the multiplier after that epoch\'s '
                  'dual ascent step; on the epoch whose weights the Trainer exported, the test CVR AUC and whether '
                  'the constraint holds on test (an exported epoch 0 is the starting weights).', '',
              row(['seed', 'epoch', 'eval CVR AUC', 'multiplier', 'test CVR AUC', 'holds on test']),
              '|---:|---:|---:|---:|---:|---|']
    for record in constrained:
      test = [f'{record["constraint"]["value"]:.4f}', 'yes' if record['constraint']['holds'] else 'no']
      if record['best_epoch'] == 0:  # no epoch beat the starting weights: they were exported
        lines.append(row([record['seed'], 0, '', '0.0000'] + test))
      for step in record['trajectory']:
        lines.append(row([record['seed'], step['epoch'], f'{step["value"]:.4f}', f'{step["multiplier"]:.4f}']
                         + (test if step['epoch'] == record['best_epoch'] else ['', ''])))
  return '\n'.join(lines)


def train(model: str, seed: int, args, accessor, transform_dir: str, bound=None) -> str:
  """Trains `model` of `seed` (under `cvr_auc>=bound` when given); the exported serving directory."""
  constraints = {'constraints': (constraint_text(bound),)} if bound is not None else {}
  config = PipelineConfig('', '', '', SPEC, seed=seed, head=HEAD, head_options=head_options(model, args.cvr_weight),
                          **constraints, **dict(args.set))
  model_dir = os.path.join(args.work_dir, f'{model}-{seed}')
  shutil.rmtree(model_dir, ignore_errors=True)
  return calibration.train_stage('pretrain', config, accessor, transform_dir, model_dir)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rows', type=int, default=synthetic.DEFAULT_ROWS)
  parser.add_argument('--bound', type=float,
                      help='the CVR AUC floor (default: midway between the weighted and the balanced model\'s eval '
                           'CVR AUC)')
  parser.add_argument('--cvr-weight', type=float, default=CVR_WEIGHT,
                      help='the cvr task\'s loss weight of the weighted and the constrained model (default %(default)s)')
  in_process.add_run_options(parser, '/tmp/constrained_objective',
                             seeds_note=' (the data is always generate(ROWS, seed=0))')
  args = parser.parse_args(argv)

  frames = calibration.split(synthetic.generate(args.rows, seed=0))
  examples = {name: in_process.serialize(frame) for name, frame in frames.items()}
  transform_config = PipelineConfig('', '', '', SPEC, **dict(args.set)).transform_config()
  transform_dir, accessor = calibration.cached_transform(
      json.dumps({'rows': args.rows, **transform_config}, sort_keys=True), transform_config, examples, args.work_dir)

  def run(model, seed, bound=None):
    start = time.time()
    serving_dir = train(model, seed, args, accessor, transform_dir, bound)
    outputs = {name: calibration.served_outputs(serving_dir, examples[name]) for name in ('eval', 'test')}
    stats = training_stats(serving_dir)
    record = {'model': model, 'seed': seed, 'eval_cvr_auc': cvr_auc(frames['eval'], outputs['eval']),
              'test': scorecard(frames['test'], outputs['test']), 'best_epoch': stats['best_epoch'],
              'trajectory': next(iter(stats.get('constraints', {}).values()), []), 'seconds': time.time() - start}
    print(f'{model} seed {seed}: eval CVR AUC {record["eval_cvr_auc"]:.4f}, test CTR AUC '
          f'{figure(record, "ctr_auc"):.4f}, CVR AUC {figure(record, "cvr_auc"):.4f} ({record["seconds"]:.0f} s)',
          flush=True)
    return record

  # Unconstrained first: their eval figures choose the bound, which every constrained seed then shares.
  records = [run(model, seed) for model in (BASELINE, REFERENCE) for seed in args.seeds]
  if args.bound is None:
    bound = choose_bound({m: [r['eval_cvr_auc'] for r in records if r['model'] == m] for m in (BASELINE, REFERENCE)})
    reason = (f'midway between the eval CVR AUC of `{BASELINE}` (cvr weight {args.cvr_weight:g}) and `{REFERENCE}` '
              '(weight 1), means over seeds')
  else:
    bound, reason = args.bound, 'set by --bound'
  print(f'bound: {constraint_text(bound)} ({reason})', flush=True)
  records += [run(CONSTRAINED, seed, bound) for seed in args.seeds]
  judge(records, bound)
  results = {'command': ' '.join(sys.argv), 'rows': args.rows, 'cvr_weight': args.cvr_weight, 'bound': bound,
             'bound_reason': reason, 'results': records}
  print(format_markdown(results))
  in_process.write_json(args.json, results)


if __name__ == '__main__':
  main()
