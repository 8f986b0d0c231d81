"""Trainer input as the split grows: examples/s streamed vs held in memory, and peak memory (issue 15, item 4).

The split is what Transform writes: gzip TFRecords of transformed tf.Examples. The default data's
`preprocessing_fn` is analyzed in-process on SHARD_ROWS rows of `synthetic.generate`, those rows go through its
graph and are written as one shard, and a split of N rows is N / SHARD_ROWS hard links to that shard (the
readers see N rows; what they keep in memory does not depend on the values).

Each measurement runs in a fresh process, so that its peak resident memory (`ru_maxrss`) is its own: the
Trainer's `input_fn` over the split, with the Trainer's threshold (`trainer`: held in memory up to
`models.trainer.MAX_IN_MEMORY_EXAMPLES` examples, streamed through TFXIO beyond) or always streamed
(`streamed`), feeding the default model (`benchmarks/trainer_throughput.py`'s `measure`: examples/s over the
epochs after the first). Goals: streamed at least 90% of in memory; peak memory flat in rows.

    .venv/bin/python benchmarks/input_memory.py [--rows 1000000,3000000,10000000] [--steps 200] \
        [--work-dir /tmp/input_memory] [--json FILE]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

SHARD_ROWS = 250_000
BATCH_SIZE = 1024
MODES = {'trainer': None, 'streamed': 0}  # mode: max_in_memory_examples (None: the Trainer's threshold)


def write_shard(work_dir: str) -> str:
  """The transform graph's folder under `work_dir`, with SHARD_ROWS transformed rows in `shard.gz` beside it
  (made once)."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from benchmarks import in_process  # pylint: disable=g-import-not-at-top
  from data import synthetic  # pylint: disable=g-import-not-at-top
  from pipeline.config import PipelineConfig  # pylint: disable=g-import-not-at-top
  shard = os.path.join(work_dir, 'shard.gz')
  if not os.path.exists(shard):
    os.makedirs(work_dir, exist_ok=True)
    start = time.time()
    raw = in_process.serialize(synthetic.generate(SHARD_ROWS, seed=0))
    transform_config = PipelineConfig('', '', '', synthetic.FEATURE_SPEC).transform_config()
    output = in_process.analyze(raw, transform_config, os.path.join(work_dir, 'transform'))
    columns = in_process.transform(raw, output)
    records = in_process.serialize(pd.DataFrame({k: v.reshape(len(v)) for k, v in columns.items()}))
    with tf.io.TFRecordWriter(shard + '.tmp', options='GZIP') as writer:
      for record in records:
        writer.write(record)
    os.replace(shard + '.tmp', shard)
    print(f'shard of {SHARD_ROWS} transformed rows: {time.time() - start:.0f} s', flush=True)
  return os.path.join(work_dir, 'transform')


def split_pattern(work_dir: str, rows: int) -> str:
  """A file pattern of `rows` rows: hard links to the shard."""
  if rows % SHARD_ROWS:
    raise ValueError(f'rows must be a multiple of {SHARD_ROWS}, got {rows}')
  folder = os.path.join(work_dir, f'split-{rows}')
  os.makedirs(folder, exist_ok=True)
  for i in range(rows // SHARD_ROWS):
    link = os.path.join(folder, f'part-{i:05d}.gz')
    if not os.path.exists(link):
      os.link(os.path.join(work_dir, 'shard.gz'), link)
  return os.path.join(folder, '*.gz')


def measure_here(work_dir: str, rows: int, mode: str, steps: int) -> dict:
  """One measurement in this process: examples/s and this process's peak resident memory."""
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  from benchmarks.trainer_throughput import TFRecordAccessor, measure  # pylint: disable=g-import-not-at-top
  from data import synthetic  # pylint: disable=g-import-not-at-top
  from models import model as model_lib  # pylint: disable=g-import-not-at-top
  from models.trainer import MAX_IN_MEMORY_EXAMPLES, input_fn  # pylint: disable=g-import-not-at-top
  tf_transform_output = tft.TFTransformOutput(os.path.join(work_dir, 'transform'))
  threshold = MAX_IN_MEMORY_EXAMPLES if MODES[mode] is None else MODES[mode]
  start = time.time()
  dataset = input_fn(split_pattern(work_dir, rows), TFRecordAccessor, tf_transform_output, synthetic.FEATURE_SPEC,
                     BATCH_SIZE, 0, list(model_lib.model_inputs(synthetic.FEATURE_SPEC)), threshold)
  ready = time.time() - start
  rate = measure(dataset, tf_transform_output, BATCH_SIZE, steps)
  return {'rows': rows, 'mode': mode, 'in_memory': rows <= threshold, 'examples_per_second': rate,
          'input_ready_s': ready, 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def format_markdown(results: dict) -> str:
  """Examples/s, the share of the in-memory rate at the same rows, and peak memory, per (rows, mode)."""
  in_memory = {r['rows']: r['examples_per_second'] for r in results['measurements'] if r['in_memory']}
  lines = ['| rows | mode | input | examples/s | of in memory | input ready (s) | peak RSS (MB) |',
           '|---:|---|---|---:|---:|---:|---:|']
  for r in results['measurements']:
    share = r['examples_per_second'] / in_memory[r['rows']] if r['rows'] in in_memory else None
    lines.append(f"| {r['rows']} | {r['mode']} | {'in memory' if r['in_memory'] else 'streamed'} | "
                 f"{r['examples_per_second']:.0f} | {'' if share is None else f'{share:.0%}'} | "
                 f"{r['input_ready_s']:.1f} | {r['peak_rss_mb']:.0f} |")
  return '\n'.join(lines) + (f"\n\nBatch {BATCH_SIZE}, {results['steps']} steps a measured epoch, "
                             f"{results['cpus']} CPUs; command: `{results['command']}`.")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rows', type=lambda t: [int(r) for r in t.split(',')],
                      default=[1_000_000, 3_000_000, 10_000_000], help='split sizes (multiples of %d)' % SHARD_ROWS)
  parser.add_argument('--steps', type=int, default=200, help='steps a measured epoch (default %(default)s)')
  parser.add_argument('--work-dir', default='/tmp/input_memory')
  parser.add_argument('--json', help='also write the measurements to this file')
  parser.add_argument('--measure', nargs=2, metavar=('ROWS', 'MODE'), help=argparse.SUPPRESS)  # a child process
  args = parser.parse_args(argv)
  if args.measure:
    print(json.dumps(measure_here(args.work_dir, int(args.measure[0]), args.measure[1], args.steps)))
    return
  write_shard(args.work_dir)
  measurements = []
  for rows in args.rows:
    for mode in MODES:
      child = subprocess.run([sys.executable, os.path.abspath(__file__), '--measure', str(rows), mode, '--steps',
                              str(args.steps), '--work-dir', args.work_dir], check=True, capture_output=True,
                             text=True)
      measurements.append(json.loads(child.stdout.strip().splitlines()[-1]))
      r = measurements[-1]
      print(f"{rows} rows, {mode}: {r['examples_per_second']:.0f} examples/s, peak RSS {r['peak_rss_mb']:.0f} MB",
            flush=True)
  results = {'command': ' '.join(['benchmarks/input_memory.py'] + (argv or sys.argv[1:])), 'steps': args.steps,
             'cpus': os.cpu_count(), 'measurements': measurements}
  print(format_markdown(results))
  from benchmarks import in_process  # pylint: disable=g-import-not-at-top
  in_process.write_json(args.json, results)


if __name__ == '__main__':
  main()
