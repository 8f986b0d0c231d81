"""CTNet transfer on the default data: a small target domain trained with and without a source model
trained on the other domains.

1. Generates the synthetic click logs and splits them by domain: the target domain's rows (`--target`,
   default coupon, 5% of the traffic) and the rest, the source (fixed 80/20 train/eval split each).
2. Runs the pipeline (`tfx_runner.py run`) on the source rows: its blessed model is the source model.
3. Runs the pipeline on the target rows twice, without and with `--transfer-source` (pretrain + MLoRA,
   the gate, push), and reads the target's eval AUC from each report.
4. Trains the first-stage model in process on the target's Transform output (`models.trainer.input_fn`),
   without and with the source tower, and with an untrained copy of it (the control: the same added
   capacity without the source's knowledge), the same steps and seeds, and prints the eval AUC of each.

    .venv/bin/python benchmarks/ctnet_transfer.py --output-dir outputs/ctnet-bench \\
        [--rows 100000 --target coupon --steps 300 --seeds 0,1,2]

A rerun reuses the pipeline runs whose report.json exists (delete the folder to redo them).
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

from benchmarks.trainer_throughput import TFRecordAccessor  # noqa: E402
from components.ctnet_transfer import resolve_source_model  # noqa: E402
from data import synthetic  # noqa: E402
from models import ctnet, metrics  # noqa: E402
from models import model as model_lib  # noqa: E402
from models.layers.transfer import IdLookup  # noqa: E402
from models.preprocessing import vocabulary_sizes  # noqa: E402
from models.trainer import input_fn, keras_model_path  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from pipeline.report import latest_run_artifacts  # noqa: E402
import schemas  # noqa: E402

SPEC = synthetic.FEATURE_SPEC


def write_data(output_dir: str, rows: int, seed: int, target: str) -> None:
  frame = synthetic.generate(rows, seed)
  for name, part in (('source', frame[frame.domain != target]), ('target', frame[frame.domain == target])):
    cut = int(len(part) * 0.8)
    synthetic.write_csv(part.iloc[:cut], os.path.join(output_dir, f'{name}-data', 'train'))
    synthetic.write_csv(part.iloc[cut:], os.path.join(output_dir, f'{name}-data', 'eval'))


def run_pipeline(output_dir: str, data: str, flags) -> dict:
  """`tfx_runner.py run` in a subprocess (its log beside it), or the report of an earlier run."""
  report = os.path.join(output_dir, 'report.json')
  if not os.path.exists(report):
    start = time.time()
    with open(output_dir + '.log', 'w') as log:
      subprocess.run([sys.executable, os.path.join(REPO, 'tfx_runner.py'), 'run', '--output-dir', output_dir,
                      '--data-path', data] + flags, check=True, stdout=log, stderr=subprocess.STDOUT)
    print(f'  {os.path.basename(output_dir)}: {time.time() - start:.0f} s', flush=True)
  with open(report) as f:
    return json.load(f)


def transform_outputs(run_dir: str):
  """(transformed examples URI, TFTransformOutput) of a pipeline run's Transform."""
  config = PipelineConfig(data_path=run_dir, schema_path=schemas.DEFAULT_SCHEMA_PATH, output_dir=run_dir,
                          feature_spec=SPEC)
  by_type = latest_run_artifacts(config)['Transform']
  transformed = max(by_type['Examples'], key=lambda a: a.id)  # its input, the raw examples, came first
  return transformed.uri, tft.TFTransformOutput(by_type['TransformGraph'][0].uri)


def train_and_score(tower, examples_uri, tf_transform_output, args, seed: int) -> float:
  """Eval AUC of the first-stage model (with CTNet's source `tower`, or without one) after `args.steps`."""
  tf_keras.utils.set_random_seed(seed)
  sizes = vocabulary_sizes(SPEC, tf_transform_output)
  if tower is None:
    model = model_lib.build_model(SPEC, sizes, args.hidden_units)
  else:
    model = ctnet.build_ctnet_model(SPEC, sizes, args.hidden_units, tower=tower)
  names = list(model.input.keys())
  train = input_fn(os.path.join(examples_uri, 'Split-train', '*'), TFRecordAccessor, tf_transform_output, SPEC,
                   args.batch_size, seed, names)
  model.compile(tf_keras.optimizers.Adam(args.learning_rate), tf_keras.losses.BinaryCrossentropy())
  model.fit(train, epochs=1, steps_per_epoch=args.steps, verbose=0)
  evaluation = TFRecordAccessor.tf_dataset_factory(
      os.path.join(examples_uri, 'Split-eval', '*'),
      tfxio.TensorFlowDatasetOptions(batch_size=4096, label_key=SPEC.label, num_epochs=1, shuffle=False),
      tf_transform_output.transformed_metadata.schema)
  labels, scores = [], []
  for features, label in evaluation:
    scores.append(model({k: features[k] for k in names}).numpy().ravel())
    labels.append(label.numpy().ravel())
  return metrics.auc(np.concatenate(labels), np.concatenate(scores))


def untrained(tower):
  """The control: `tower` with the source model's weights freshly initialized (the feature maps kept), so
  any gain over no transfer that it also shows comes from the added capacity, not the source's knowledge."""
  tf_keras.utils.set_random_seed(0)
  control = tf_keras.models.clone_model(tower)
  for layer in control.layers:
    if isinstance(layer, IdLookup):
      layer.set_table(tower.get_layer(layer.name).table)
  control.trainable = False
  return control


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output-dir', required=True)
  parser.add_argument('--rows', type=int, default=100_000, help='synthetic rows, all domains (default 100000)')
  parser.add_argument('--data-seed', type=int, default=0)
  parser.add_argument('--target', default='coupon', choices=list(synthetic.DOMAIN_SHARES),
                      help='the small target domain (default coupon); the source gets every other domain')
  parser.add_argument('--source-steps', type=int, default=600, help='source pipeline pretrain steps (default 600)')
  parser.add_argument('--steps', type=int, default=300, help='target training steps, pretrain stage (default 300)')
  parser.add_argument('--finetune-steps', type=int, default=100, help='target pipeline MLoRA steps (default 100)')
  parser.add_argument('--batch-size', type=int, default=256, help='target batch size (default 256)')
  parser.add_argument('--learning-rate', type=float, default=1e-3, help='in-process target learning rate')
  parser.add_argument('--hidden-units', type=lambda t: tuple(int(u) for u in t.split('-')), default=(128, 64),
                      help='hidden units of source and target (default 128-64)')
  parser.add_argument('--seeds', type=lambda t: [int(s) for s in t.split(',')], default=[0, 1, 2])
  args = parser.parse_args()

  out = os.path.abspath(args.output_dir)
  if not os.path.isdir(os.path.join(out, 'target-data')):
    write_data(out, args.rows, args.data_seed, args.target)
  hidden = ['--hidden-units', '-'.join(map(str, args.hidden_units)), '--eval-steps', '20', '--min-domain-auc', '0']
  print('pipeline runs:', flush=True)
  source = run_pipeline(os.path.join(out, 'source'), os.path.join(out, 'source-data'),
                        hidden + ['--pretrain-steps', str(args.source_steps), '--finetune-steps', '150'])
  target = hidden + ['--pretrain-steps', str(args.steps), '--finetune-steps', str(args.finetune_steps),
                     '--batch-size', str(args.batch_size)]
  plain = run_pipeline(os.path.join(out, 'target'), os.path.join(out, 'target-data'), target)
  transfer = run_pipeline(os.path.join(out, 'target-ctnet'), os.path.join(out, 'target-data'),
                          target + ['--transfer-source', os.path.join(out, 'source')])

  examples_uri, tf_transform_output = transform_outputs(os.path.join(out, 'target-ctnet'))
  source_uri, _ = resolve_source_model(os.path.join(out, 'source'))
  serving_dir = os.path.join(source_uri, 'Format-Serving')
  tower = ctnet.load_source_tower(serving_dir, keras_model_path(serving_dir), SPEC, tf_transform_output)
  towers = {'no transfer': None, 'CTNet': tower, 'control': untrained(tower)}
  scores = {name: [] for name in towers}
  print('in process:', flush=True)
  for seed in args.seeds:
    for name, arm in towers.items():
      scores[name].append(train_and_score(arm, examples_uri, tf_transform_output, args, seed))
    print(f'  seed {seed}: ' + '  '.join(f'{name} {values[-1]:.4f}' for name, values in scores.items()), flush=True)

  def examples(report, split):
    return sum(r[f'{split}_examples'] for r in report['domains'])

  print(f'\ntarget: {args.target}, {examples(plain, "train")} train / {examples(plain, "eval")} eval rows; source: '
        f'the other domains, {examples(source, "train")} train rows (source model eval AUC '
        f'{source["auc_finetune"]:.4f})')
  print(f'\n{"target eval AUC":<46}{"no transfer":>16}{"with transfer":>16}{"delta":>9}')
  for key, label in (('auc_pretrain', 'pipeline CTNet, first stage (AUC pre)'),
                     ('auc_finetune', 'pipeline CTNet, + MLoRA (pushed candidate)')):
    print(f'{label:<46}{plain[key]:>16.4f}{transfer[key]:>16.4f}{transfer[key] - plain[key]:>+9.4f}')
  baseline = np.array(scores['no transfer'])
  for name, label in (('CTNet', 'in process, CTNet'), ('control', 'in process, untrained source tower (control)')):
    values = np.array(scores[name])
    print(f'{label:<46}{f"{baseline.mean():.4f} ± {baseline.std():.4f}":>16}'
          f'{f"{values.mean():.4f} ± {values.std():.4f}":>16}{(values - baseline).mean():>+9.4f}')
  print(f'(in process: first-stage model, {args.steps} steps of {args.batch_size}, mean ± std over seeds '
        f'{",".join(map(str, args.seeds))})')

if __name__ == '__main__':
  main()
