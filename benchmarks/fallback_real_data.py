"""The unknown-domain path on real data: the served base model scores the test rows as they are and with
their domain replaced by one it never saw (issue 13, item 5's check, beside benchmarks/calibration.py's on the
default data).

On the default data the generator gives every domain its own click model, so no domain-blind score comes
within 0.02 AUC of the domain-aware one (calibration.py's `no_domain` variant is that ceiling). On real data the
domain is one signal among many, and the check asks what the trained unknown-domain row gives there: AUC and
WAUC with the domain known and unseen, their gap, and the calibration ratio (mean prediction / click rate).

The models are benchmarks/mlora_recipes.py's base runs (the pretrain stage with the pipeline's defaults,
`domain_dropout` included), taken from the same work folder when that benchmark left them, else trained; every
figure is the exported SavedModel's `serving_default` on the test split.

    .venv/bin/python benchmarks/fallback_real_data.py [--datasets ciao,movielens:gender,...] \
        [--backbones mlp] [--seeds 0,1,2] [--work-dir /tmp/mlora_recipes] [--json FILE]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from benchmarks import calibration, in_process, mlora_recipes  # noqa: E402
from pipeline import bench  # noqa: E402

REAL_DATASETS = tuple(d for d in mlora_recipes.DATASETS if d != 'synthetic')
GAP_GOAL, CALIBRATION_GOAL = 0.02, 0.10  # issue 13, item 5: AUC within 0.02, mean prediction within 10%


def probe(grid: mlora_recipes.Grid, backbone: str, seed: int) -> dict:
  """The fallback check (`calibration.fallback_check`) of the base model of (backbone, seed)."""
  start = time.time()
  serving_dir = grid.base(backbone, seed)
  labels, domains = grid.truth['test']
  known = calibration.served_predictions(serving_dir, grid.examples['test'])
  unseen = calibration.served_predictions(serving_dir, in_process.serialize(
      grid.test.assign(**{grid.spec.domain: calibration.UNSEEN_DOMAIN})))
  return {'dataset': grid.dataset, 'backbone': backbone, 'seed': seed, 'test_rows': int(labels.size),
          'domains': len(set(domains)), 'seconds': time.time() - start,
          'fallback': calibration.fallback_check(labels, known, unseen, domains)}


def format_markdown(results_file: dict) -> str:
  """One row per (dataset, backbone): mean over seeds ± the 95% t-interval of the known and unseen AUC, their
  gap, the WAUCs and the calibration ratios, and whether the issue's goals hold."""
  lines = ['| dataset | backbone | domains | test rows | seeds | AUC known | AUC unseen domain | gap | WAUC known / '
           'unseen | mean prediction / click rate known / unseen | gap < 0.02, calibration within 10% |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
  results = results_file['results']
  for group in dict.fromkeys((r['dataset'], r['backbone']) for r in results):
    runs = [r for r in results if (r['dataset'], r['backbone']) == group]

    def figure(key):
      return bench.mean_std([r['fallback'][key] for r in runs])
    gap = bench.mean_std([r['fallback']['auc_known'] - r['fallback']['auc_unknown'] for r in runs])
    worst_calibration = max(abs(r['fallback']['calibration_unknown'] - 1) for r in runs)
    met = gap['mean'] + (gap['half_width'] or 0) < GAP_GOAL and worst_calibration <= CALIBRATION_GOAL
    lines.append(f"| {group[0]} | {group[1]} | {runs[0]['domains']} | {runs[0]['test_rows']} | {len(runs)} | "
                 f"{bench.plus_minus(figure('auc_known'), '.4f')} | {bench.plus_minus(figure('auc_unknown'), '.4f')} | "
                 f"{bench.plus_minus(gap, '.4f')} | {figure('wauc_known')['mean']:.4f} / "
                 f"{figure('wauc_unknown')['mean']:.4f} | {figure('calibration_known')['mean']:.3f} / "
                 f"{figure('calibration_unknown')['mean']:.3f} | {'yes' if met else 'no'} |")
  return '\n'.join(lines) + f"\n\nCommand: `{results_file['command']}`."


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--datasets', type=lambda t: t.split(','), default=list(REAL_DATASETS),
                      help=f'some of {",".join(REAL_DATASETS)}')
  parser.add_argument('--backbones', type=lambda t: t.split(','), default=['mlp'])
  parser.add_argument('--movielens-source', default=mlora_recipes.ranking_loss.SOURCES['movielens'])
  parser.add_argument('--ciao-source', default=mlora_recipes.ranking_loss.SOURCES['ciao'])
  in_process.add_run_options(parser, '/tmp/mlora_recipes', seeds=(0, 1, 2),
                             seeds_note=' (the data and its split stay fixed)')
  args = parser.parse_args(argv)
  if set(args.datasets) - set(REAL_DATASETS):
    parser.error(f'unknown datasets {sorted(set(args.datasets) - set(REAL_DATASETS))}: choose among '
                 f'{list(REAL_DATASETS)}')
  results = []
  for dataset in args.datasets:
    grid = mlora_recipes.Grid(dataset, args.ciao_source if dataset == 'ciao' else args.movielens_source, args)
    for backbone in args.backbones:
      for seed in args.seeds:
        result = probe(grid, backbone, seed)
        results.append(result)
        check = result['fallback']
        print(f"{dataset} {backbone} seed {seed}: AUC known {check['auc_known']:.4f}, unseen domain "
              f"{check['auc_unknown']:.4f}; calibration {check['calibration_known']:.3f} / "
              f"{check['calibration_unknown']:.3f} ({result['seconds']:.0f} s)", flush=True)
  in_process.publish('benchmarks/fallback_real_data.py', results, format_markdown, args.json)


if __name__ == '__main__':
  main()
