"""RankNet's pairwise loss against log loss alone where clicks are sparse: per-domain test AUC, log loss and
calibration of the pretrained click model trained with each `--loss` (models/ranking.py), over seeds.

Datasets (each split per domain 60/20/20 by `data.split.random_split`, seed 0: train fits, eval selects the
epoch and fits the per-domain calibration, test judges):
- `rare`: the default data (`synthetic.generate(ROWS, seed=0, click_rates=RARE_CLICK_RATES)`) with the
  `search` domain's click rate pushed to 0.5%;
- `movielens`: MovieLens-100K, gender domains, `rating >= 4` (`--movielens-source`);
- `ciao`: Ciao, one domain per product category, `rating == 5` (`--ciao-source`).

Runs in-process like benchmarks/calibration.py, whose Transform and Trainer helpers it uses: the project's
`preprocessing_fn` analyzed once per dataset, then the pretrain Trainer's `run_fn` per loss and seed; every
figure is the exported SavedModel's `serving_default` on the test split. Each loss is compared with log loss
paired by seed (mean change, 95% interval, paired t-test).

    .venv/bin/python benchmarks/ranking_loss.py [--datasets rare,movielens,ciao] [--seeds 0,1,2] \
        [--losses logloss,ranknet+logloss,ranknet] [--rows 200000] [--work-dir /tmp/ranking_loss] \
        [--set KEY=VALUE ...] [--json FILE]
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

from benchmarks import calibration, in_process  # noqa: E402
from data import synthetic  # noqa: E402
from data.prepare import DATASETS as LOADERS  # noqa: E402
from data.split import random_split  # noqa: E402
from models import metrics  # noqa: E402
from models.ranking import LOGLOSS, LOSSES  # noqa: E402
from pipeline import bench  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from schemas import build_schema  # noqa: E402

RARE_CLICK_RATES = {'search': 0.005}
DATASETS = ('rare', 'movielens', 'ciao')
REPO_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = {'movielens': os.path.join(REPO_PARENT, 'shared', 'datasets', 'ml-100k'),
           'ciao': os.path.join(REPO_PARENT, 'shared', 'datasets', 'ciao')}
LOADER_OPTIONS = {'movielens': {'domain': 'gender'}, 'ciao': {}}


def load(dataset: str, rows: int, source: str = None):
  """(frame, FeatureSpec, schema or None for the default data's) of `dataset`."""
  if dataset == 'rare':
    return synthetic.generate(rows, seed=0, click_rates=RARE_CLICK_RATES), synthetic.FEATURE_SPEC, None
  loaded = LOADERS[dataset](source, **LOADER_OPTIONS[dataset])
  return loaded.frame, loaded.spec, build_schema(loaded.spec, loaded.column_types)


def summarize(results) -> dict:
  """{dataset: {'domains': [...], 'losses': {loss: row}}}: per loss, the mean and 95% interval over seeds of
  WAUC, log loss and calibration, per domain AUC and log loss, and the paired change against log loss of WAUC,
  log loss and each domain's AUC."""
  summary = {}
  for dataset in dict.fromkeys(r['dataset'] for r in results):
    runs = [r for r in results if r['dataset'] == dataset]
    first = runs[0]['report']['domains']
    domains = sorted(first, key=lambda d: (-first[d]['count'], d))
    by_loss = {loss: {r['seed']: r['report'] for r in runs if r['loss'] == loss}
               for loss in dict.fromkeys(r['loss'] for r in runs)}
    baseline = by_loss.get(LOGLOSS, {})
    rows = {}
    for loss, reports in by_loss.items():
      def series(figure, of=reports):
        return {seed: figure(report) for seed, report in of.items()}
      row = {m: bench.mean_std(list(series(lambda r, m=m: r[m]).values())) for m in ('wauc', 'logloss', 'calibration')}
      row['domains'] = {d: {'count': first[d]['count'], 'rate': first[d]['rate'],
                            **{m: bench.mean_std([r['domains'][d][m] for r in reports.values()])
                               for m in ('auc', 'logloss', 'calibration')}} for d in domains}
      if loss != LOGLOSS and baseline:
        for m in ('wauc', 'logloss'):
          row[f'{m}_change'] = bench.paired_change(series(lambda r, m=m: r[m]), series(lambda r, m=m: r[m], baseline))
        for d in domains:
          row['domains'][d]['auc_change'] = bench.paired_change(
              series(lambda r, d=d: r['domains'][d]['auc']), series(lambda r, d=d: r['domains'][d]['auc'], baseline))
      row['seeds'] = sorted(reports)
      rows[loss] = row
    summary[dataset] = {'domains': domains, 'losses': rows}
  return summary


def format_markdown(results_file: dict) -> str:
  """The results file's ({'command', 'results'}) tables, per dataset: a row per loss (test WAUC, log loss and
  calibration, mean ± 95% interval over seeds, and the paired change against log loss with its t-test p),
  then each domain's test AUC (with its change) and log loss per loss."""
  sections = []
  for dataset, table in summarize(results_file['results']).items():
    losses = list(table['losses'])
    seeds = table['losses'][losses[0]]['seeds']
    lines = [f'**{dataset}**, test split, seeds {seeds}:', '',
             '| loss | WAUC | change vs log loss | log loss | change vs log loss | calibration |',
             '|---|---|---|---|---|---|']
    for loss, row in table['losses'].items():
      changes = [bench.plus_minus(row.get(f'{m}_change'), '+.4f', with_p=True) for m in ('wauc', 'logloss')]
      lines.append(f'| {loss} | {bench.plus_minus(row["wauc"])} | {changes[0]} | {bench.plus_minus(row["logloss"])} | '
                   f'{changes[1]} | {bench.plus_minus(row["calibration"], ".3f")} |')
    lines += ['', '| domain | test rows | click rate | ' + ' | '.join(f'AUC {loss}' for loss in losses) + ' | ' +
              ' | '.join(f'log loss {loss}' for loss in losses) + ' |', '|---|---|---|' + '---|' * (2 * len(losses))]
    for domain in table['domains']:
      cells = [table['losses'][loss]['domains'][domain] for loss in losses]
      aucs = [bench.number(c['auc']['mean']) + (f' ({bench.plus_minus(c["auc_change"], "+.4f", with_p=True)})'
                                                      if c.get('auc_change') else '')
              for c in cells]
      first = cells[0]
      lines.append(f'| {domain} | {first["count"]} | {first["rate"]:.3f} | ' + ' | '.join(aucs) + ' | ' +
                   ' | '.join(bench.number(c['logloss']['mean']) for c in cells) + ' |')
    sections.append('\n'.join(lines))
  return '\n\n'.join(sections + [f'Command: `{results_file["command"]}`'])


def domain_report(labels, scores, domains) -> dict:
  """`metrics.domain_report` with each domain's click rate."""
  report = metrics.domain_report(labels, scores, domains)
  for name, figures in report['domains'].items():
    figures['rate'] = float(labels[domains == name].mean())
  return report


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--datasets', type=lambda t: t.split(','), default=list(DATASETS),
                      help=f'some of {",".join(DATASETS)} (default: all)')
  parser.add_argument('--losses', type=lambda t: t.split(','), default=list(LOSSES),
                      help=f'some of {",".join(LOSSES)} (default: all; {LOGLOSS} is the baseline)')
  parser.add_argument('--rows', type=int, default=synthetic.DEFAULT_ROWS, help='rows of the `rare` data')
  parser.add_argument('--movielens-source', default=SOURCES['movielens'])
  parser.add_argument('--ciao-source', default=SOURCES['ciao'])
  in_process.add_run_options(parser, '/tmp/ranking_loss', seeds_note=' (the data and its split stay fixed)')
  args = parser.parse_args(argv)
  for name, chosen, allowed in (('datasets', args.datasets, DATASETS), ('losses', args.losses, LOSSES)):
    if set(chosen) - set(allowed):
      parser.error(f'unknown {name} {sorted(set(chosen) - set(allowed))}: choose among {list(allowed)}')

  results = []
  for dataset in args.datasets:
    frame, spec, schema = load(dataset, args.rows, getattr(args, f'{dataset}_source', None))
    splits, _ = random_split(frame, spec.domain, seed=0)
    examples = {name: in_process.serialize(part[spec.raw_columns]) for name, part in splits.items()}
    test = splits['test']
    labels, domains = test[spec.label].to_numpy(), test[spec.domain].astype(str).to_numpy()
    for loss in args.losses:
      for seed in args.seeds:
        start = time.time()
        config = PipelineConfig('', '', '', spec, seed=seed, loss=loss, **dict(args.set))
        transform_dir, accessor = calibration.cached_transform(
            json.dumps({'dataset': dataset, 'rows': len(frame), **config.transform_config()}, sort_keys=True),
            config.transform_config(), examples, args.work_dir, schema)
        model_dir = os.path.join(args.work_dir, f'{dataset}-{loss}-{seed}')
        shutil.rmtree(model_dir, ignore_errors=True)
        serving_dir = calibration.train_stage('pretrain', config, accessor, transform_dir, model_dir)
        report = domain_report(labels, calibration.served_predictions(serving_dir, examples['test']), domains)
        results.append({'dataset': dataset, 'loss': loss, 'seed': seed, 'seconds': time.time() - start,
                        'report': report})
        print(f'{dataset} {loss} seed {seed}: WAUC {report["wauc"]:.4f}, log loss {report["logloss"]:.4f}, '
              f'calibration {report["calibration"]:.3f} ({time.time() - start:.0f} s)', flush=True)
  in_process.publish('benchmarks/ranking_loss.py', results, format_markdown, args.json)


if __name__ == '__main__':
  main()
