"""How the pipeline's wall time grows with its input: each component's seconds at several input sizes.

Generates the synthetic default data at each size (100k, 300k and 1M rows unless told), runs the whole
pipeline on it through `tfx_runner.py run` (the command a user runs; the Trainers' steps those given, else
scaled to the rows as `simulate` scales them, so every size gets as many passes over its training split) and
reads each component's wall time from the run's report (the metadata store's execution times). Prints one
table, a row per component and a column per size (and Beam runner, with `--beam-runners`: the Beam
components' runner, `run --beam-runner`), with the growth in seconds per 100k rows (least-squares slope over
the sizes) and the test rows the Evaluator and the PromotionGate score per second, and appends one line per
run to `--results`. With `--runs 2`, each size runs again into the same output folder, as the next day's run
would: the first run's blessed model is then the production model, which the Evaluator scores beside the
candidate, and the PromotionGate beside the candidate and the pretrained model.

    .venv/bin/python benchmarks/pipeline_scaling.py --work-dir /tmp/scaling [--rows 100000 300000 1000000] \
        [--beam-runners direct,direct-multiprocess] [--results docs/benchmarks/pipeline_scaling/results.jsonl] \
        [--pretrain-steps 3000 --finetune-steps 1500] [--runs 2]
"""
import argparse
import json
import os
import sys
import time
from typing import List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

import tfx_runner  # noqa: E402
from data import synthetic  # noqa: E402
from pipeline.simulate import training_steps  # noqa: E402

TOTAL = 'whole run'
SCORING = ('Evaluator', 'PromotionGate')  # the components that score the test split


def run_size(rows: int, work_dir: str, seed: int, beam_runner: str = 'direct', label: Optional[str] = None,
             pretrain_steps: Optional[int] = None, finetune_steps: Optional[int] = None, run: int = 1) -> dict:
  """One pipeline run on `rows` synthetic rows with the Beam components on `beam_runner` and the Trainers'
  steps given (else scaled to the rows), the `run`-th into its output folder; {'rows', 'beam_runner',
  'seconds': {component: s, TOTAL: s}, 'test_rows', 'command'}, with `label` when given and `run` from 2."""
  data_dir = os.path.join(work_dir, f'{rows}', 'data')
  output_dir = os.path.join(work_dir, f'{rows}', 'out' if beam_runner == 'direct' else f'out-{beam_runner}')
  if not os.path.exists(os.path.join(data_dir, 'train')):
    synthetic.write_csv(synthetic.generate(rows, seed=seed), data_dir)
  steps = training_steps(rows, pretrain_steps, finetune_steps)
  args = ['run', '--data-path', data_dir, '--output-dir', output_dir, '--seed', str(seed), '--beam-runner', beam_runner,
          '--pretrain-steps', str(steps['pretrain_steps']), '--finetune-steps', str(steps['finetune_steps'])]
  start = time.time()
  status = tfx_runner.main(args)
  wall = time.time() - start
  if status != 0:
    raise SystemExit(f'the run on {rows} rows failed (exit status {status}): see {output_dir}')
  with open(os.path.join(output_dir, 'report.json')) as f:
    report = json.load(f)
  seconds = {c['component']: round(c['seconds'], 1) for c in report['components']}
  seconds[TOTAL] = round(wall, 1)
  return {'rows': rows, 'beam_runner': beam_runner, 'seconds': seconds,
          'test_rows': sum(d['test_examples'] for d in report['domains']), 'command': 'tfx_runner.py ' + ' '.join(args),
          **({'label': label} if label else {}), **({'run': run} if run > 1 else {})}


def per_100k(results: Sequence[dict], component: str) -> float:
  """Seconds added per 100k rows: the least-squares slope of `component`'s time over the sizes (their first
  runs)."""
  results = [r for r in results if not r.get('run')]
  rows = np.array([r['rows'] for r in results], float) / 1e5
  seconds = np.array([r['seconds'].get(component, 0.0) for r in results])
  return float(np.polyfit(rows, seconds, 1)[0])


def table(results: Sequence[dict]) -> str:
  """A markdown table: a row per component (in run order, the whole run last), a column per size, and the
  growth per 100k rows where there are two sizes or more."""
  components: List[str] = []
  for result in results:
    components += [c for c in result['seconds'] if c not in components and c != TOTAL]
  growth = len({r['rows'] for r in results}) > 1
  runners = len({r.get('beam_runner', 'direct') for r in results}) > 1
  header = ['component'] + [f'{r["rows"]:,} rows' + (f', {r["beam_runner"]}' if runners else '') +
                            (f', {r["label"]}' if r.get('label') else '') +
                            (f', run {r["run"]} (with a production model)' if r.get('run') else '') + ' (s)'
                            for r in results] + (['s per 100k rows'] if growth else [])
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for component in components + [TOTAL]:
    cells = [component] + [f'{r["seconds"].get(component, 0.0):.1f}' for r in results]
    cells += [f'{round(per_100k(results, component), 1) + 0.0:.1f}'] if growth else []  # + 0.0: no -0.0
    lines.append('| ' + ' | '.join(cells) + ' |')
  for component in SCORING:
    if all(r.get('test_rows') and r['seconds'].get(component) for r in results):
      lines.append(f'| {component}: test rows scored per s | ' +
                   ' | '.join(f'{r["test_rows"] / r["seconds"][component]:,.0f}' for r in results) +
                   (' | |' if growth else ' |'))
  return '\n'.join(lines)


def format_markdown(results_file: dict) -> str:
  """The table of a results file ({'command', 'results': the runs}), with its command."""
  return table(results_file['results']) + f"\n\nCommand: `{results_file['command']}`."


def main(argv=None) -> List[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--work-dir', required=True, help='where each size writes its data and its run')
  parser.add_argument('--rows', type=int, nargs='+', default=[100_000, 300_000, 1_000_000])
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--beam-runners', type=lambda t: t.split(','), default=['direct'],
                      help='the Beam runners to run each size on, like direct,direct-multiprocess (default direct)')
  parser.add_argument('--results', help='a JSONL file to append one line per size to')
  parser.add_argument('--label', help='a name for these runs in the table\'s header (like the commit measured)')
  parser.add_argument('--pretrain-steps', type=int, help='the pretrain Trainer\'s steps (default: scaled to the rows)')
  parser.add_argument('--finetune-steps', type=int, help='the fine-tune Trainer\'s steps (default: scaled to the rows)')
  parser.add_argument('--runs', type=int, default=1,
                      help='runs of each size into one output folder (from the second on, with a production model)')
  args = parser.parse_args(argv)
  results = []
  for rows in sorted(args.rows):
    for runner in args.beam_runners:
      for run in range(1, args.runs + 1):
        print(f'[pipeline_scaling] {rows:,} rows, Beam {runner}, run {run} ...', flush=True)
        results.append(run_size(rows, args.work_dir, args.seed, runner, args.label, args.pretrain_steps,
                                args.finetune_steps, run))
        print(f'[pipeline_scaling] {rows:,} rows, Beam {runner}, run {run}: {results[-1]["seconds"][TOTAL]:.0f} s',
              flush=True)
        if args.results:
          os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
          with open(args.results, 'a') as f:
            f.write(json.dumps(results[-1]) + '\n')  # the components in run order
  print(table(results))
  return results


if __name__ == '__main__':
  main()
