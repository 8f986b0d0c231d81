"""Multi-task heads x loss balancing x gradient surgery (none, PCGrad, GradVac) on the default data, over
seeds: per-task, per-domain test AUC and log loss of the trained model (and of its MLoRA fine-tune), each
surgery against `none` paired by seed.

Trains in-process on the transformed examples of one pipeline run in OUTPUT_DIR (running the pipeline
first, on `--rows` synthetic rows, seed 0, and with token training, when OUTPUT_DIR holds none), through the
Trainer's own `input_fn` (shuffled by the training seed) on its train split, and scores its test split (the
pipeline's hash split: train fits, eval selects, test judges; nothing here selects, so eval is unused). Each
task is scored over all exposures (ctr on the click, cvr and ctcvr on the conversion: the entire space);
`cvr_clicked` scores the same CVR output on the clicked samples only, the space a directly trained CVR sees,
to show ESMM's entire-space effect (a directly trained CVR's log loss over all exposures is not what it was
trained for: read its `cvr_clicked`).

Over the seeds, every figure is the mean with its 95% t-interval, and each surgery's change against `none`
(same head, balancing, model and seed) the mean of the per-seed differences with its paired 95% interval and
paired t-test (`pipeline.bench.paired_change`). GradVac's own figure: its target cosine per task pair at the
end of training (the moving average of the observed cosines of the task gradients on the shared weights).
Prints the tables (`format_markdown`) and writes every record to `--json` (default OUTPUT_DIR/multitask.json)
after each training, and the tables to OUTPUT_DIR/multitask.md.

    .venv/bin/python benchmarks/multitask.py --output-dir outputs/mt-bench [--rows 200000] [--steps 1600] \
        [--finetune-steps 300 (0: no fine-tune)] [--heads esmm,mmoe] [--balancings fixed,dwa] \
        [--surgeries none,pcgrad,gradvac] [--seeds 0,1,2] [--json FILE]
"""
import argparse
import itertools
import json
import os
import sys
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

import tfx_runner  # noqa: E402
from benchmarks.trainer_throughput import TFRecordAccessor, _latest  # noqa: E402
from data import synthetic  # noqa: E402
from models import heads, metrics  # noqa: E402
from models import model as model_lib  # noqa: E402
from models.features import DOMAIN_INDEX  # noqa: E402
from models.multitask import BALANCINGS, SURGERIES  # noqa: E402
from models.preprocessing import vocabulary_sizes  # noqa: E402
from models.trainer import epoch_plan, input_fn  # noqa: E402
from pipeline import bench  # noqa: E402
from pipeline.bench import mean_std, paired_change  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402

SPEC = synthetic.FEATURE_SPEC
DEFAULTS = PipelineConfig('', '', '', SPEC)  # the pipeline's training settings
COLUMNS = ['ctr', 'cvr', 'cvr_clicked', 'ctcvr']  # scored outputs; ctcvr for ESMM only
DOMAIN_COLUMNS = ('ctr', 'cvr')  # the per-domain tables
METRICS = ('auc', 'logloss')
STAGES = ('pretrained', 'mlora')
NO_SURGERY = 'none'  # the plain gradient of the summed objective, every surgery's baseline
DATA_SEED = 0  # the pipeline run's synthetic data; the --seeds vary the training alone
SCORED_SPLIT = 'test'


def transform_output(output_dir: str, rows: int):
  """(TFTransformOutput, {split: file pattern}) of the latest pipeline run in `output_dir`, running one first
  (its own models are not used: token training steps) when there is none."""
  root = os.path.join(output_dir, 'pipeline_root', 'Transform')
  if not os.path.isdir(os.path.join(root, 'transformed_examples')):
    tfx_runner.main(['run', '--output-dir', output_dir, '--rows', str(rows), '--seed', str(DATA_SEED),
                     '--pretrain-steps', '1', '--finetune-steps', '1', '--eval-steps', '1', '--min-domain-auc', '0'])
  examples = _latest(os.path.join(root, 'transformed_examples'))
  return (tft.TFTransformOutput(_latest(os.path.join(root, 'transform_graph'))),
          {split: os.path.join(examples, f'Split-{split}', '*') for split in ('train', SCORED_SPLIT)})


def read_split(files, tf_transform_output):
  """Every transformed example of a split once, as numpy columns."""
  dataset = TFRecordAccessor.tf_dataset_factory(
      files, tfxio.TensorFlowDatasetOptions(batch_size=8192, num_epochs=1, shuffle=False),
      tf_transform_output.transformed_metadata.schema)
  batches = list(dataset)
  return {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}


def _figures(labels, probabilities) -> dict:
  return {'auc': metrics.auc(labels, probabilities), 'logloss': metrics.logloss(labels, probabilities)}


def score(model, evaluation, feature_names):
  """{column: {'all': {'auc', 'logloss'}, domain: {'auc', 'logloss'}}}; see the module doc for the columns."""
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
    result[column] = {'all': _figures(labels, probabilities)}
    for index, name in enumerate(SPEC.domains):
      result[column][name] = _figures(labels[in_domain == index], probabilities[in_domain == index])
  return result


def train(model, dataset, steps: int, learning_rate: float):
  epochs, steps_per_epoch = epoch_plan(steps)  # as the Trainer runs
  model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate))
  model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0)


def surgery_cosines(model) -> Optional[Dict[str, float]]:
  """GradVac's target cosine of every task pair ('ctr/cvr': phi_hat) after training; None for another
  surgery (PCGrad keeps no state to read)."""
  targets = getattr(model.step_state.surgery, 'targets', None)
  if targets is None:
    return None
  targets = targets.numpy()
  return {f'{a}/{b}': float(targets[i, j]) for (i, a), (j, b) in itertools.combinations(enumerate(model.tasks), 2)}


def run_cell(head, balancing, surgery, seed, args, dataset, evaluation, vocab_sizes):
  """Trains one configuration (`surgery`: one of `SURGERIES` or `NO_SURGERY`) with `seed`, then, with
  `args.finetune_steps`, its MLoRA fine-tune; {'pretrained': scores, 'mlora': scores (or absent),
  'cosines': `surgery_cosines` of the trained model}."""
  options = {'balancing': balancing, 'gradient_surgery': None if surgery == NO_SURGERY else surgery,
             'seed': seed, 'dwa_period': epoch_plan(args.steps)[1]}
  build = lambda **kw: model_lib.build_model(SPEC, vocab_sizes, args.hidden_units, DEFAULTS.embedding_dim,  # noqa: E731
                                             head=head, **kw)
  tf_keras.utils.set_random_seed(seed)
  pretrained = build(options=options)
  feature_names = list(pretrained.input.keys())
  train(pretrained, dataset, args.steps, DEFAULTS.pretrain_learning_rate)
  result = {'pretrained': score(pretrained, evaluation, feature_names), 'cosines': surgery_cosines(pretrained)}
  if args.finetune_steps:
    finetuned = build(adaptation='mlora', freeze_backbone=True,
                      options={**options, 'alpha': DEFAULTS.alpha, 'dwa_period': epoch_plan(args.finetune_steps)[1]})
    model_lib.load_backbone_weights(finetuned, pretrained)
    train(finetuned, dataset, args.finetune_steps, DEFAULTS.finetune_learning_rate)
    result['mlora'] = score(finetuned, evaluation, feature_names)
  return result


def summarize(records: List[dict]) -> List[dict]:
  """One row per head x balancing x surgery x model (stage) over the seeds of `records` (`run_cell`'s, with
  head, balancing, surgery and seed): {'head', 'balancing', 'surgery', 'stage', 'seeds', 'scores': {column:
  {'all' or domain: {metric: {**mean_std, 'change': paired_change against NO_SURGERY or None}}}}, 'cosines':
  {pair: mean_std} or None}. The change pairs the seeds of the same head, balancing and model."""
  groups: Dict[tuple, Dict[int, dict]] = {}
  for record in records:
    key = (record['head'], record['balancing'], record['surgery'])
    groups.setdefault(key, {})[record['seed']] = record
  rows = []
  for (head, balancing, surgery), by_seed in groups.items():
    baseline = groups.get((head, balancing, NO_SURGERY)) if surgery != NO_SURGERY else None
    for stage in STAGES:
      seeds = sorted(s for s, r in by_seed.items() if stage in r)
      if not seeds:
        continue
      first = by_seed[seeds[0]][stage]
      scores = {}
      for column, parts in first.items():
        scores[column] = {}
        for part, figures in parts.items():
          scores[column][part] = {}
          for metric in figures:
            values = {s: by_seed[s][stage][column][part][metric] for s in seeds}
            paired = ({s: r[stage][column][part][metric] for s, r in baseline.items() if stage in r}
                      if baseline else None)
            scores[column][part][metric] = {**mean_std(list(values.values())),
                                            'change': paired_change(values, paired) if paired else None}
      cosines = [by_seed[s]['cosines'] for s in seeds if by_seed[s].get('cosines')]
      rows.append({'head': head, 'balancing': balancing, 'surgery': surgery, 'stage': stage, 'seeds': seeds,
                   'scores': scores,
                   'cosines': {pair: mean_std([c[pair] for c in cosines]) for pair in cosines[0]} if cosines else None})
  return rows


def _p(change: Optional[dict]) -> str:
  """The paired t-test's p; '' without one (a single seed, no baseline)."""
  if change is None or change['p_value'] is None:
    return ''
  return '<0.001' if change['p_value'] < 0.001 else f'{change["p_value"]:.3f}'


def format_markdown(results: dict) -> str:
  """The published tables of a results file (`{'setup': str, 'records': [run_cell records]}`): for every head,
  balancing and model, per task (all exposures; `cvr_clicked` on the clicked samples) the test AUC and log loss
  of each surgery, with the change against `none` paired by seed (± its 95% interval) and its paired t-test p;
  GradVac's target cosines; then the per-domain AUC of the ctr and cvr tasks."""
  rows = summarize(results['records'])
  lines = [results['setup'], '',
           f'Each figure: mean over the seeds ±its 95% t-interval; change: against `{NO_SURGERY}` (same head, '
           'balancing, model and seed), mean of the per-seed differences ±its paired 95% interval, p: paired '
           't-test.']
  tables: Dict[tuple, List[dict]] = {}
  for row in rows:
    tables.setdefault((row['head'], row['balancing'], row['stage']), []).append(row)
  for (head, balancing, stage), group in tables.items():
    seeds = ','.join(map(str, group[0]['seeds']))
    lines += ['', f'### {head}, {balancing} balancing, {stage}: {SCORED_SPLIT} split, seeds {seeds}', '',
              '| task | surgery | AUC | AUC change | p | log loss | log loss change | p |', '|---' * 8 + '|']
    for column in COLUMNS:
      for row in group:
        if column in row['scores']:
          auc, logloss = row['scores'][column]['all']['auc'], row['scores'][column]['all']['logloss']
          lines.append(f'| {column} | {row["surgery"]} | ' + ' | '.join(
              f'{bench.plus_minus(figure)} | {bench.plus_minus(figure["change"], "+.4f")} | {_p(figure["change"])}'
              for figure in (auc, logloss)) + ' |')
    lines += [f'\nGradVac target cosine {pair}: {bench.plus_minus(figure, ".3f")}' for row in group if row['cosines']
              for pair, figure in row['cosines'].items()]
    lines += ['', f'AUC per domain (change against `{NO_SURGERY}` ±its paired 95% interval):', '',
              '| task | surgery | ' + ' | '.join(SPEC.domains) + ' |', '|---|---|' + '---|' * len(SPEC.domains)]
    for column in DOMAIN_COLUMNS:
      for row in group:
        cells = []
        for domain in SPEC.domains:
          auc = row['scores'][column][domain]['auc']
          mean = bench.number(auc['mean'])
          cells.append(f'{mean} ({bench.plus_minus(auc["change"], "+.4f")})' if auc['change'] and mean != '-' else mean)
        lines.append(f'| {column} | {row["surgery"]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output-dir', required=True, help='a `tfx_runner.py run` output folder, or a new one')
  parser.add_argument('--rows', type=int, default=synthetic.DEFAULT_ROWS,
                      help='synthetic rows of the pipeline run made when OUTPUT_DIR has none (default %(default)s)')
  parser.add_argument('--steps', type=int, default=DEFAULTS.pretrain_steps, help='training steps (default %(default)s)')
  parser.add_argument('--finetune-steps', type=int, default=DEFAULTS.finetune_steps,
                      help='MLoRA fine-tune steps, 0 for none (default %(default)s)')
  parser.add_argument('--batch-size', type=int, default=DEFAULTS.batch_size)
  parser.add_argument('--hidden-units', type=lambda t: tuple(int(u) for u in t.split('-')),
                      default=DEFAULTS.hidden_units, help='like 256-128-64 (default: the pipeline\'s)')
  parser.add_argument('--heads', type=lambda t: t.split(','), default=sorted(heads.HEADS))
  parser.add_argument('--balancings', type=lambda t: t.split(','), default=list(BALANCINGS))
  parser.add_argument('--surgeries', type=lambda t: t.split(','), default=[NO_SURGERY, *SURGERIES],
                      help=f'gradient surgeries, comma-separated: {NO_SURGERY}, {", ".join(SURGERIES)} '
                           '(default all)')
  parser.add_argument('--seeds', type=lambda t: [int(s) for s in t.split(',')], default=[0],
                      help='training seeds, comma-separated (default 0); the data is the same for every seed')
  parser.add_argument('--json', help='the results file (default OUTPUT_DIR/multitask.json)')
  args = parser.parse_args()
  unknown = [s for s in args.surgeries if s != NO_SURGERY and s not in SURGERIES]
  if unknown:
    parser.error(f'--surgeries {",".join(unknown)}: expected some of {NO_SURGERY},{",".join(SURGERIES)}')

  output_dir = os.path.abspath(args.output_dir)
  json_path = args.json or os.path.join(output_dir, 'multitask.json')
  tf_transform_output, files = transform_output(output_dir, args.rows)
  evaluation = read_split(files[SCORED_SPLIT], tf_transform_output)
  vocab_sizes = vocabulary_sizes(SPEC, tf_transform_output)
  results = {'command': ' '.join(sys.argv),
             'setup': f'{len(evaluation[DOMAIN_INDEX])} {SCORED_SPLIT} examples, {args.steps} steps'
                      + (f' + {args.finetune_steps} MLoRA steps' if args.finetune_steps else '')
                      + f', batch {args.batch_size}, hidden {"-".join(map(str, args.hidden_units))}, '
                        f'seeds {",".join(map(str, args.seeds))}',
             'records': []}
  for seed in args.seeds:  # the outer loop: an interrupted run still pairs every configuration on its seeds
    dataset = input_fn(files['train'], TFRecordAccessor, tf_transform_output, SPEC, args.batch_size, seed,
                       list(model_lib.model_inputs(SPEC)), label_columns=heads.label_columns(SPEC))
    for head, balancing, surgery in itertools.product(args.heads, args.balancings, args.surgeries):
      start = time.time()
      cell = run_cell(head, balancing, surgery, seed, args, dataset, evaluation, vocab_sizes)
      results['records'].append({'head': head, 'balancing': balancing, 'surgery': surgery, 'seed': seed, **cell,
                                 'seconds': time.time() - start})
      with open(json_path, 'w') as f:  # after every training: a long run's finished part survives
        json.dump(results, f, indent=2)
      print(f'seed {seed} {head} {balancing} surgery={surgery}: ' + '  '.join(
          f'{stage} {column} AUC {cell[stage][column]["all"]["auc"]:.4f} log loss '
          f'{cell[stage][column]["all"]["logloss"]:.4f}' for stage in STAGES if stage in cell
          for column in COLUMNS if column in cell[stage]) + f'  ({time.time() - start:.0f} s)', flush=True)

  table = format_markdown(results)
  with open(os.path.join(output_dir, 'multitask.md'), 'w') as f:
    f.write(f'# Multi-task heads x gradient surgery: test AUC and log loss per task and domain\n\n{table}\n')
  print(f'\n{table}\n\nwritten: {json_path} and {os.path.join(output_dir, "multitask.md")}')


if __name__ == '__main__':
  main()
