"""Reconstructed objective for ads: revenue per exposure of the top k ranked per domain (`revenue@k`) on the
test split, for the click model against the same model trained on the value label (`data/revenue.py`: an
exposure is positive when its revenue beats its domain's running average revenue per exposure).

Runs in-process like `benchmarks/calibration.py` (whose split, Transform and Trainer helpers it uses): the
default data with its revenue column (`synthetic.generate(ROWS, seed=0, revenue=True)`), value labels built
over all rows in time order (each from the rows before it), a seeded 60/20/20 split, then the pretrain
Trainer (`pretrain_run_fn`; selection and calibration on eval) once on clicks and once on value labels. The
value model is trained by putting the value label in the click column: the Transform graph and the curated
schema are the same for both, only the label differs. Every figure is the exported model's `serving_default`
on the test split. Per model: revenue@k per domain and over the domains (weighted by their test exposures),
and the test AUC against its own label and against clicks.

    .venv/bin/python benchmarks/reconstructed_objective.py [--rows 200000] [--seeds 0,1,2] [--k 10,50] \
        [--work-dir /tmp/reconstructed_objective] [--set KEY=VALUE ...] [--json FILE]
"""
import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

from benchmarks import calibration, in_process  # noqa: E402
from data import revenue, synthetic  # noqa: E402
from models import metrics  # noqa: E402
from pipeline.bench import mean_std, paired_change, plus_minus  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402

SPEC = synthetic.FEATURE_SPEC
MODELS = ('click', 'value')  # the label each model trains on


def model_frames(frames: dict) -> dict:
  """{model: {split: rows}}: the splits as each model trains on them, the value model's with the value label
  in the click column."""
  return {'click': frames, 'value': {name: frame.assign(**{SPEC.label: frame[revenue.VALUE_LABEL]})
                                     for name, frame in frames.items()}}


def scorecard(test, scores, ks) -> dict:
  """A model's test figures: revenue@k per domain and overall (the domains' mean weighted by their test
  exposures), and AUC against clicks and against value labels."""
  domains, earned = test[SPEC.domain].to_numpy(), test[synthetic.REVENUE_COLUMN].to_numpy()
  counts = test[SPEC.domain].value_counts()
  card = {'auc_click': metrics.auc(test[SPEC.label], scores),
          'auc_value': metrics.auc(test[revenue.VALUE_LABEL], scores)}
  for k in ks:
    per_domain = metrics.revenue_at_k(earned, scores, domains, k)
    card[f'revenue@{k}'] = {**per_domain,
                            'all': float(sum(v * counts[d] for d, v in per_domain.items()) / counts.sum())}
  return card


def format_table(results, ks) -> str:
  """Per model (mean over seeds): test AUC on clicks and value labels, and revenue@k over the domains."""
  header = f'{"model":8}{"AUC click":>11}{"AUC value":>11}' + ''.join(f'{f"revenue@{k}":>14}' for k in ks)
  lines = [header, '-' * len(header)]
  for model in MODELS:
    cards = [r['scores'] for r in results if r['model'] == model]
    if not cards:
      continue
    mean = lambda key: np.mean([key(c) for c in cards])  # noqa: E731
    lines.append(f'{model:8}{mean(lambda c: c["auc_click"]):11.4f}{mean(lambda c: c["auc_value"]):11.4f}'
                 + ''.join(f'{mean(lambda c, k=k: c[f"revenue@{k}"]["all"]):14.4f}' for k in ks))
  lines.append(f'expected revenue per exposure of the test split: {results[0]["base_revenue"]:.4f}' if results else '')
  return '\n'.join(lines)


def revenue_keys(results) -> list:
  """The `revenue@k` figures of a results file's records, in k order."""
  return sorted((key for key in results[0]['scores'] if key.startswith('revenue@')), key=lambda k: int(k[8:]))


def format_markdown(results: dict) -> str:
  """The tables of a results file (`--json`): per model the test AUCs and revenue@k over the domains, means
  ± the 95% interval over seeds, with the value model's change against the click model paired by seed; then
  per domain revenue@k of both models and the paired change."""
  row, records = calibration.markdown_row, results['results']
  keys = revenue_keys(records)
  by_model = {m: {r['seed']: r['scores'] for r in records if r['model'] == m} for m in MODELS}
  seeds = sorted(by_model[MODELS[0]])

  def over_seeds(model, figure):
    return mean_std([figure(card) for card in by_model[model].values()])

  def change(figure):
    return plus_minus(paired_change(*({s: figure(c) for s, c in by_model[m].items()} for m in ('value', 'click'))),
                      '+.4f', with_p=True)

  figures = {'AUC click': lambda c: c['auc_click'], 'AUC value': lambda c: c['auc_value'],
             **{key: lambda c, key=key: c[key]['all'] for key in keys}}
  lines = [f'Test split; mean over seeds {",".join(map(str, seeds))} ± the half-width of the 95% t-interval; change: '
           'value - click, paired by seed (± its 95% interval; p: paired t-test). revenue@k: revenue per exposure of '
           'the top k per domain, over the domains weighted by their test exposures; an exposure of the test split '
           f'earns {records[0]["base_revenue"]:.4f} on average.', '',
           row(['model', *figures]), '|---|' + '---:|' * len(figures)]
  lines += [row([f'`{model}`'] + [plus_minus(over_seeds(model, f)) for f in figures.values()]) for model in MODELS]
  lines.append(row(['change'] + [change(f) for f in figures.values()]))
  domains = [d for d in records[0]['scores'][keys[0]] if d != 'all']
  header = ['domain'] + [f'{key} {name}' for key in keys for name in (*MODELS, 'change')]
  lines += ['', row(header), '|---|' + '---:|' * (len(header) - 1)]
  for domain in domains + ['all']:
    cells = [domain]
    for key in keys:
      figure = lambda c, key=key: c[key][domain]  # noqa: E731
      cells += [plus_minus(over_seeds(model, figure)) for model in MODELS] + [change(figure)]
    lines.append(row(cells))
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rows', type=int, default=synthetic.DEFAULT_ROWS)
  parser.add_argument('--k', type=lambda t: [int(s) for s in t.split(',')], default=[10, 50],
                      help='top-k sizes per domain (default 10,50)')
  in_process.add_run_options(parser, '/tmp/reconstructed_objective',
                             seeds_note=' (the data is always generate(ROWS, seed=0, revenue=True))')
  args = parser.parse_args(argv)

  frame = synthetic.generate(args.rows, seed=0, revenue=True)
  frame[revenue.VALUE_LABEL] = revenue.value_labels(frame[SPEC.domain], frame[synthetic.REVENUE_COLUMN])
  frames = calibration.split(frame)
  test = frames['test']
  results = []
  for model, splits in model_frames(frames).items():
    examples = {name: in_process.serialize(part[SPEC.raw_columns]) for name, part in splits.items()}
    for seed in args.seeds:
      config = PipelineConfig('', '', '', SPEC, seed=seed, **dict(args.set))
      transform_dir, accessor = calibration.cached_transform(
          json.dumps({'rows': args.rows, 'model': model, **config.transform_config()}, sort_keys=True),
          config.transform_config(), examples, args.work_dir)
      model_dir = os.path.join(args.work_dir, f'{model}-{seed}')
      shutil.rmtree(model_dir, ignore_errors=True)
      serving_dir = calibration.train_stage('pretrain', config, accessor, transform_dir, model_dir)
      scores = calibration.served_predictions(serving_dir, examples['test'])
      results.append({'model': model, 'seed': seed, 'scores': scorecard(test, scores, args.k),
                      'base_revenue': float(test[synthetic.REVENUE_COLUMN].mean())})
      print(f'{model} seed {seed}: ' + ', '.join(f'revenue@{k} {results[-1]["scores"][f"revenue@{k}"]["all"]:.4f}'
                                                 for k in args.k), flush=True)
  print(format_table(results, args.k))
  in_process.write_json(args.json, {'command': ' '.join(sys.argv), 'results': results})


if __name__ == '__main__':
  main()
