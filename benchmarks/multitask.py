"""Multi-task heads x loss balancing x gradient surgery (none, PCGrad, GradVac) on the default data: per-task,
per-domain AUC of the trained model and of its MLoRA fine-tune.

Trains in-process on the transformed examples of one pipeline run in OUTPUT_DIR (running the pipeline
first, on `--rows` synthetic rows and with token training, when OUTPUT_DIR holds none), through the
Trainer's own `input_fn`, and scores the eval split. Each task is scored over all exposures (ctr on the
click, cvr and ctcvr on the conversion: the entire space); `cvr_clicked` scores the same CVR output on the
clicked samples only, the space a directly trained CVR sees, to show ESMM's entire-space effect.
Prints a table and writes multitask.md and multitask.json to OUTPUT_DIR.

    .venv/bin/python benchmarks/multitask.py --output-dir outputs/mt-bench [--rows 200000] [--steps 1600] \
        [--finetune-steps 300] [--heads esmm,mmoe] [--balancings fixed,dwa] \
        [--surgeries none,pcgrad,gradvac]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

import tfx_runner  # noqa: E402
from benchmarks.trainer_throughput import _Accessor, _latest  # noqa: E402
from data import synthetic  # noqa: E402
from models import heads, metrics  # noqa: E402
from models import model as model_lib  # noqa: E402
from models.features import DOMAIN_INDEX  # noqa: E402
from models.multitask import BALANCINGS, SURGERIES  # noqa: E402
from models.preprocessing import vocabulary_sizes  # noqa: E402
from models.trainer import epoch_plan, input_fn  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402

SPEC = synthetic.FEATURE_SPEC
DEFAULTS = PipelineConfig('', '', '', SPEC)  # the pipeline's training settings
COLUMNS = ['ctr', 'cvr', 'cvr_clicked', 'ctcvr']  # scored outputs; ctcvr for ESMM only
NO_SURGERY = 'none'  # the plain gradient of the summed objective


def transform_output(output_dir: str, rows: int, seed: int):
  """(TFTransformOutput, {split: file pattern}) of the latest pipeline run in `output_dir`, running one first
  (its own models are not used: token training steps) when there is none."""
  root = os.path.join(output_dir, 'pipeline_root', 'Transform')
  if not os.path.isdir(os.path.join(root, 'transformed_examples')):
    tfx_runner.main(['run', '--output-dir', output_dir, '--rows', str(rows), '--seed', str(seed),
                     '--pretrain-steps', '1', '--finetune-steps', '1', '--eval-steps', '1', '--min-domain-auc', '0'])
  examples = _latest(os.path.join(root, 'transformed_examples'))
  return (tft.TFTransformOutput(_latest(os.path.join(root, 'transform_graph'))),
          {split: os.path.join(examples, f'Split-{split}', '*') for split in ('train', 'eval')})


def read_split(files, tf_transform_output):
  """Every transformed example of a split once, as numpy columns."""
  dataset = _Accessor.tf_dataset_factory(
      files, tfxio.TensorFlowDatasetOptions(batch_size=8192, num_epochs=1, shuffle=False),
      tf_transform_output.transformed_metadata.schema)
  batches = list(dataset)
  return {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}


def score(model, evaluation, feature_names):
  """{column: {'all': AUC, domain: AUC}}; see the module doc for the columns."""
  columns = heads.label_columns(SPEC)
  predictions = model.predict({k: evaluation[k] for k in feature_names}, batch_size=8192, verbose=0)
  click = evaluation[columns[heads.CLICK]].reshape(-1)
  conversion = evaluation[columns[heads.CONVERSION]].reshape(-1)
  domains = evaluation[DOMAIN_INDEX].reshape(-1)
  scored = {'ctr': (click, predictions['ctr'], slice(None)), 'cvr': (conversion, predictions['cvr'], slice(None)),
            'cvr_clicked': (conversion, predictions['cvr'], click == 1)}
  if 'ctcvr' in predictions:
    scored['ctcvr'] = (conversion, predictions['ctcvr'], slice(None))
  result = {}
  for column, (labels, probabilities, rows) in scored.items():
    labels, probabilities, in_domain = labels[rows], probabilities.reshape(-1)[rows], domains[rows]
    result[column] = {'all': metrics.auc(labels, probabilities)}
    for index, name in enumerate(SPEC.domains):
      result[column][name] = metrics.auc(labels[in_domain == index], probabilities[in_domain == index])
  return result


def train(model, dataset, steps: int, learning_rate: float):
  epochs, steps_per_epoch = epoch_plan(steps)  # as the Trainer runs
  model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate))
  model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0)


def run_cell(head, balancing, surgery, args, dataset, evaluation, vocab_sizes):
  """Trains one configuration (`surgery`: one of `SURGERIES` or `NO_SURGERY`), then its MLoRA fine-tune;
  {'pretrained': scores, 'mlora': scores}."""
  options = {'balancing': balancing, 'gradient_surgery': None if surgery == NO_SURGERY else surgery,
             'seed': args.seed, 'dwa_period': epoch_plan(args.steps)[1]}
  build = lambda **kw: model_lib.build_model(SPEC, vocab_sizes, args.hidden_units, DEFAULTS.embedding_dim,  # noqa: E731
                                             head=head, **kw)
  tf_keras.utils.set_random_seed(args.seed)
  pretrained = build(options=options)
  feature_names = list(pretrained.input.keys())
  train(pretrained, dataset, args.steps, DEFAULTS.pretrain_learning_rate)
  result = {'pretrained': score(pretrained, evaluation, feature_names)}
  finetuned = build(adaptation='mlora', freeze_backbone=True,
                    options={**options, 'alpha': DEFAULTS.alpha, 'dwa_period': epoch_plan(args.finetune_steps)[1]})
  model_lib.load_backbone_weights(finetuned, pretrained)
  train(finetuned, dataset, args.finetune_steps, DEFAULTS.finetune_learning_rate)
  result['mlora'] = score(finetuned, evaluation, feature_names)
  return result


def format_markdown(results) -> str:
  header = ['head', 'balancing', 'surgery', 'model', 'task', 'all'] + SPEC.domains
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for cell in results:
    for stage in ('pretrained', 'mlora'):
      for column in COLUMNS:
        if column in cell[stage]:
          aucs = cell[stage][column]
          values = [f'{aucs[k]:.4f}' if not np.isnan(aucs[k]) else '-' for k in ['all'] + SPEC.domains]
          lines.append('| ' + ' | '.join([cell['head'], cell['balancing'], cell['surgery'], stage, column] + values)
                       + ' |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output-dir', required=True, help='a `tfx_runner.py run` output folder, or a new one')
  parser.add_argument('--rows', type=int, default=synthetic.DEFAULT_ROWS,
                      help='synthetic rows of the pipeline run made when OUTPUT_DIR has none (default %(default)s)')
  parser.add_argument('--steps', type=int, default=DEFAULTS.pretrain_steps, help='training steps (default %(default)s)')
  parser.add_argument('--finetune-steps', type=int, default=DEFAULTS.finetune_steps,
                      help='MLoRA fine-tune steps (default %(default)s)')
  parser.add_argument('--batch-size', type=int, default=DEFAULTS.batch_size)
  parser.add_argument('--hidden-units', type=lambda t: tuple(int(u) for u in t.split('-')),
                      default=DEFAULTS.hidden_units, help='like 256-128-64 (default: the pipeline\'s)')
  parser.add_argument('--heads', type=lambda t: t.split(','), default=sorted(heads.HEADS))
  parser.add_argument('--balancings', type=lambda t: t.split(','), default=list(BALANCINGS))
  parser.add_argument('--surgeries', type=lambda t: t.split(','), default=[NO_SURGERY, *SURGERIES],
                      help=f'gradient surgeries, comma-separated: {NO_SURGERY}, {", ".join(SURGERIES)} '
                           '(default all)')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  unknown = [s for s in args.surgeries if s != NO_SURGERY and s not in SURGERIES]
  if unknown:
    parser.error(f'--surgeries {",".join(unknown)}: expected some of {NO_SURGERY},{",".join(SURGERIES)}')

  output_dir = os.path.abspath(args.output_dir)
  tf_transform_output, files = transform_output(output_dir, args.rows, args.seed)
  dataset = input_fn(files['train'], _Accessor, tf_transform_output, SPEC, args.batch_size, args.seed,
                     list(model_lib.model_inputs(SPEC)), label_columns=heads.label_columns(SPEC))
  evaluation = read_split(files['eval'], tf_transform_output)
  vocab_sizes = vocabulary_sizes(SPEC, tf_transform_output)
  results = []
  for head in args.heads:
    for balancing in args.balancings:
      for surgery in args.surgeries:
        start = time.time()
        cell = run_cell(head, balancing, surgery, args, dataset, evaluation, vocab_sizes)
        results.append({'head': head, 'balancing': balancing, 'surgery': surgery, **cell,
                        'seconds': time.time() - start})
        print(f'{head} {balancing} surgery={surgery}: ' + '  '.join(
            f'{stage} {column} {cell[stage][column]["all"]:.4f}' for stage in ('pretrained', 'mlora')
            for column in COLUMNS if column in cell[stage]) + f'  ({time.time() - start:.0f} s)', flush=True)

  table = format_markdown(results)
  setup = (f'{len(evaluation[DOMAIN_INDEX])} eval examples, {args.steps} steps + {args.finetune_steps} MLoRA steps, '
           f'batch {args.batch_size}, hidden {"-".join(map(str, args.hidden_units))}, seed {args.seed}')
  with open(os.path.join(output_dir, 'multitask.md'), 'w') as f:
    f.write(f'# Multi-task heads: AUC per task and domain\n\n{setup}\n\n{table}\n')
  with open(os.path.join(output_dir, 'multitask.json'), 'w') as f:
    json.dump({'setup': setup, 'results': results}, f, indent=2)
  print(f'\n{setup}\n\n{table}\n\nwritten: {os.path.join(output_dir, "multitask.md")} and multitask.json')


if __name__ == '__main__':
  main()
