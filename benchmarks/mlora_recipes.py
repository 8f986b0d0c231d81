"""MLoRA on real domain shift: which fine-tune recipe, against which controls, per dataset and backbone.

One grid of (dataset, backbone, method, seed) runs, two uses of it:
- `--methods mlora --recipes project,authors,...` compares MLoRA's recipes (RECIPES) on the **eval** split:
  the recipe with the highest mean eval WAUC is the one to ship (eval selects);
- `--methods base,no_adapter,param_matched,mlora,star,...` with one recipe compares every method on the **test**
  split: each method against the best control (CONTROLS: the one with the highest mean test WAUC, the hardest
  to beat), paired by seed (mean change, 95% interval, paired t-test), per domain too.

Datasets (each split per domain 60/20/20 by `data.split.random_split`, seed 0): `ciao` (one domain per product
category, `rating == 5`), `movielens:gender`, `movielens:age`, `movielens:occupation` (MovieLens-100K, `rating >= 4`),
and `synthetic`, the embedded default data (200k rows), whose generator builds the domain differences in.

Methods: `base` is the pretrain stage (one shared model, the domain a feature); `mlora` the recipe's MLoRA on the
base's frozen backbone (or, with the `joint` recipe, trained with the backbone from scratch); the controls beside
`base` are `no_adapter` (the same fine-tune, with the recipe's embedding settings, without an adapter: what the
extra training alone gives) and `param_matched` (the base with its hidden layers widened until the model has the
MLoRA model's parameter count); `star`, `adasparse`, `pepnet` are fine-tuned like MLoRA; `separate` is one model
per domain.

Runs in-process like benchmarks/ranking_loss.py: the project's `preprocessing_fn` analyzed once per dataset, the
Trainer's own run_fns (eval selects the epoch, `early_stopping_patience` 2 by default, and fits the calibration),
and every figure is the exported SavedModel's `serving_default` on the eval or test split. Every finished run is a
line of `--results` (a rerun skips the runs found there), which is also what `format_markdown` reads.

    .venv/bin/python benchmarks/mlora_recipes.py --results FILE [--datasets ciao] [--backbones mlp,deepfm,dcn] \
        [--methods base,no_adapter,param_matched,mlora] [--recipes authors] [--seeds 0,1,2,3,4] \
        [--work-dir /tmp/mlora_recipes] [--set KEY=VALUE ...] [--plot-dir DIR]
"""
import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow_transform as tft  # noqa: E402

from benchmarks import calibration, in_process, ranking_loss  # noqa: E402
from data import synthetic  # noqa: E402
from data.prepare import DATASETS as LOADERS  # noqa: E402
from data.split import random_split  # noqa: E402
from models import metrics  # noqa: E402
from models import model as model_lib  # noqa: E402
from models.preprocessing import vocabulary_sizes  # noqa: E402
from models.trainer import TRAINING_STATS_FILE, keras_model_path  # noqa: E402
from pipeline import bench  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from schemas import build_schema  # noqa: E402

DATASETS = ('ciao', 'movielens:gender', 'movielens:age', 'movielens:occupation', 'synthetic')
MOVIELENS_LABEL_RULE = 'ge4'
PATIENCE = 2


@dataclasses.dataclass(frozen=True)
class Method:
  """A model of the grid: `stage` `pretrain` trains it from scratch, `finetune` on the base's frozen backbone;
  `recipe`: it takes the recipe's settings (MLoRA's; the control `no_adapter`, the embedding ones alone);
  `matched`: its hidden layers are widened to the recipe's MLoRA parameter count."""
  stage: str
  adaptation: str
  recipe: bool = False
  matched: bool = False


METHODS: Dict[str, Method] = {
    'base': Method('pretrain', 'none'),
    'no_adapter': Method('finetune', 'none', recipe=True),
    'param_matched': Method('pretrain', 'none', matched=True),
    'mlora': Method('finetune', 'mlora', recipe=True),
    'star': Method('finetune', 'star'),
    'adasparse': Method('finetune', 'adasparse'),
    'pepnet': Method('finetune', 'pepnet'),
    'separate': Method('pretrain', 'separate'),
}
CONTROLS = ('base', 'no_adapter', 'param_matched')
_AUTHORS = {'adaptation_options': {'placement': 'hidden', 'domain_bias': True},
            'finetune_embedding_learning_rate': 0.0, 'finetune_freeze_domain_embedding': True}
# MLoRA's recipes: PipelineConfig fields over the defaults. `project`: the defaults (an adapter on every dense map,
# the embedding tables training at the fine-tune rate, alpha 8); `authors`: the authors' code (adapters on the DNN
# hidden layers, a per-domain logit bias, embeddings frozen), at alpha 8 and at the paper's best MLP alpha, 128;
# `slow_embeddings`: the authors' placement with the embedding tables at a tenth of the rate; `joint`: the
# authors' placement trained with the backbone from scratch (their MovieLens configs).
RECIPES: Dict[str, dict] = {
    'project': {},
    'authors': _AUTHORS,
    'authors_alpha128': {**_AUTHORS, 'alpha': 128},
    'slow_embeddings': {**_AUTHORS, 'finetune_embedding_learning_rate': 3e-4,
                        'finetune_freeze_domain_embedding': False},
    'joint': {'adaptation_options': {'placement': 'hidden', 'domain_bias': True}, 'pretrain_adaptation': 'mlora'},
}
EMBEDDING_FIELDS = ('finetune_embedding_learning_rate', 'finetune_freeze_domain_embedding')


def load(dataset: str, source: str):
  """(frame, FeatureSpec, schema or None for the default data's) of `ciao`, `movielens:<user field>` or
  `synthetic`."""
  if dataset == 'synthetic':
    return synthetic.generate(synthetic.DEFAULT_ROWS, seed=0), synthetic.FEATURE_SPEC, None
  name, _, domain = dataset.partition(':')
  options = {'domain': domain, 'label_rule': MOVIELENS_LABEL_RULE} if name == 'movielens' else {}
  loaded = LOADERS[name](source, **options)
  return loaded.frame, loaded.spec, build_schema(loaded.spec, loaded.column_types)


def run_config(spec, method: str, recipe: str, backbone: str, seed: int, settings: dict) -> PipelineConfig:
  """The PipelineConfig of one run: `settings` (--set), then the recipe's fields as `method` takes them."""
  fields = {'early_stopping_patience': PATIENCE, **settings}
  if METHODS[method].recipe:
    fields.update(RECIPES[recipe] if method == 'mlora' else
                  {k: v for k, v in RECIPES[recipe].items() if k in EMBEDDING_FIELDS})
  return PipelineConfig('', '', '', spec, seed=seed, backbone=backbone, **fields)


def stage_of(method: str, config: PipelineConfig) -> str:
  """The Trainer stage that trains `method`: the joint recipe trains MLoRA in the pretrain stage."""
  return 'pretrain' if method == 'mlora' and config.pretrain_adaptation == 'mlora' else METHODS[method].stage


def matched_hidden_units(config: PipelineConfig, tf_transform_output, target: int) -> List[int]:
  """The base's hidden units, all scaled by one factor, that bring the base model closest to `target`
  parameters (`model_lib.parameter_matched_units`)."""
  spec = config.feature_spec
  sizes = vocabulary_sizes(spec, tf_transform_output)
  return model_lib.parameter_matched_units(
      lambda units: model_lib.build_model(spec, sizes, units, config.embedding_dim, backbone=config.backbone,
                                          options={'calibrate': config.calibrate}), config.hidden_units, target)


def mlora_parameters(config: PipelineConfig, tf_transform_output) -> int:
  """The parameter count of the recipe's MLoRA model on `config`'s backbone."""
  spec = config.feature_spec
  return model_lib.build_model(
      spec, vocabulary_sizes(spec, tf_transform_output), config.hidden_units, config.embedding_dim,
      backbone=config.backbone, adaptation='mlora',
      options={**config.adaptation_options, 'alpha': config.alpha, 'calibrate': config.calibrate}).count_params()


def read_results(path: str) -> List[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _key(record: dict) -> tuple:
  return record['dataset'], record['backbone'], record['method'], record['recipe'], record['seed']


def summarize(results: List[dict]) -> Dict[tuple, dict]:
  """{(dataset, backbone): {'domains', 'methods': {label: row}}}: a label is the method, `method/<recipe>` for one
  that takes the recipe (mlora, no_adapter, param_matched). Per
  row: eval and test WAUC (mean ± 95% interval), parameters, examples/s, each domain's test AUC, and against the
  best control (the control with the highest mean test WAUC; none for the controls themselves) the paired change
  of test WAUC and of each domain's AUC."""
  summary = {}
  for group in dict.fromkeys((r['dataset'], r['backbone']) for r in results):
    runs = [r for r in results if (r['dataset'], r['backbone']) == group]
    first = runs[0]['test']['domains']
    domains = sorted(first, key=lambda d: (-first[d]['count'], d))
    by_label, controls = {}, []
    for run in runs:
      label = run['method'] if run['recipe'] == '-' else f'{run["method"]}/{run["recipe"]}'
      by_label.setdefault(label, {})[run['seed']] = run
      if run['method'] in CONTROLS and label not in controls:
        controls.append(label)
    best_control = max(controls, key=lambda c: np.mean([r['test']['wauc'] for r in by_label[c].values()]),
                       default=None)
    rows = {}
    for label, by_seed in by_label.items():
      def series(figure, of=by_seed):
        return {seed: figure(run) for seed, run in of.items()}
      row = {'seeds': sorted(by_seed), 'eval_wauc': bench.mean_std(list(series(lambda r: r['eval_wauc']).values())),
             'test_wauc': bench.mean_std(list(series(lambda r: r['test']['wauc']).values())),
             'parameters': int(np.mean(list(series(lambda r: r['parameters']).values()))),
             'examples_per_second': float(np.mean(list(series(lambda r: r['examples_per_second']).values()))),
             'best_epoch': sorted(series(lambda r: r['best_epoch']).values()),
             'domains': {d: {'count': first[d]['count'],
                             'auc': bench.mean_std([r['test']['domains'][d]['auc'] for r in by_seed.values()])}
                         for d in domains}}
      if best_control and label not in controls:
        control = by_label[best_control]
        row['against'] = best_control
        row['wauc_change'] = bench.paired_change(series(lambda r: r['test']['wauc']),
                                                 series(lambda r: r['test']['wauc'], control))
        for d in domains:
          row['domains'][d]['auc_change'] = bench.paired_change(
              series(lambda r, d=d: r['test']['domains'][d]['auc']),
              series(lambda r, d=d: r['test']['domains'][d]['auc'], control))
      rows[label] = row
    summary[group] = {'domains': domains, 'best_control': best_control, 'methods': rows}
  return summary


def worse_domains(row: dict, min_rows: int = 2000) -> List[str]:
  """The domains with at least `min_rows` test rows whose AUC is significantly (p < 0.05) below the control's."""
  return [d for d, figures in row['domains'].items()
          if figures['count'] >= min_rows and figures.get('auc_change') and figures['auc_change']['mean'] < 0
          and (figures['auc_change'].get('p_value') or 1.0) < 0.05]


def format_markdown(results_file: dict, domains: bool = True) -> str:
  """The results file's ({'command', 'results'}) tables, per dataset and backbone: a row per method (eval and
  test WAUC, the paired test change against the best control with its t-test p, parameters, training
  examples/s, the domains of 2,000+ test rows significantly worse), then, with `domains`, for up to 12 domains
  by size, the test AUC change of each non-control method."""
  sections = []
  for (dataset, backbone), table in summarize(results_file['results']).items():
    seeds = sorted({s for row in table['methods'].values() for s in row['seeds']})
    lines = [f'**{dataset}, {backbone}**, seeds {seeds}; best control: {table["best_control"] or "-"}', '',
             '| method | eval WAUC | test WAUC | change vs best control | parameters | examples/s | best epochs | '
             'domains (2,000+ test rows) significantly worse |', '|---|---|---|---|---|---|---|---|']
    for label, row in table['methods'].items():
      worse = worse_domains(row) if row.get('wauc_change') else []
      lines.append(f'| {label} | {bench.plus_minus(row["eval_wauc"])} | {bench.plus_minus(row["test_wauc"])} | '
                   f'{bench.plus_minus(row.get("wauc_change"), "+.4f", with_p=True)} | {row["parameters"]:,} | '
                   f'{row["examples_per_second"]:,.0f} | {row["best_epoch"]} | {", ".join(worse) or "none"} |')
    compared = [label for label, row in table['methods'].items() if row.get('wauc_change')]
    if domains and compared and len(table['domains']) > 1:
      shown = table['domains'][:12]
      lines += ['', '| domain | test rows | ' + ' | '.join(f'{label} AUC change' for label in compared) + ' |',
                '|---|---|' + '---|' * len(compared)]
      for domain in shown:
        cells = [table['methods'][label]['domains'][domain].get('auc_change') for label in compared]
        lines.append(f'| {domain} | {table["methods"][compared[0]]["domains"][domain]["count"]:,} | ' +
                     ' | '.join(bench.plus_minus(c, '+.4f', with_p=True) for c in cells) + ' |')
    sections.append('\n'.join(lines))
  return '\n\n'.join(sections + [f'Command: `{results_file["command"]}`'])


def plot_domains(summary: Dict[tuple, dict], directory: str) -> List[str]:
  """Per dataset and backbone, each domain's test AUC change (mean, 95% interval) of every compared method
  against the best control, domains by test rows: domain_auc_change_<dataset>_<backbone>.png."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  written = []
  for (dataset, backbone), table in summary.items():
    compared = [label for label, row in table['methods'].items() if row.get('wauc_change')]
    if not compared:
      continue
    domains = table['domains']
    figure, axis = pyplot.subplots(figsize=(max(8, 0.45 * len(domains)), 4.5))
    width = 0.8 / len(compared)
    for i, label in enumerate(compared):
      changes = [table['methods'][label]['domains'][d]['auc_change'] for d in domains]
      axis.errorbar(np.arange(len(domains)) + (i - (len(compared) - 1) / 2) * width, [c['mean'] for c in changes],
                    yerr=[c['half_width'] or 0 for c in changes], fmt='o', capsize=2, label=label)
    axis.axhline(0, color='grey', linewidth=0.8)
    axis.set_xticks(np.arange(len(domains)))
    axis.set_xticklabels([f'{d} ({table["methods"][compared[0]]["domains"][d]["count"]})' for d in domains],
                         rotation=70, ha='right', fontsize=7)
    axis.set_ylabel(f'test AUC change vs {table["best_control"]}')
    axis.set_title(f'{dataset}, {backbone}: per-domain AUC change (95% interval), domains by test rows')
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = os.path.join(directory, f'domain_auc_change_{dataset.replace(":", "_")}_{backbone}.png')
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    written.append(path)
  return written


class Grid:
  """One dataset's runs: its split, serialized splits and transform graph; the base models (by backbone and seed)
  the fine-tuned methods start from are trained on first use and kept in the work folder."""

  def __init__(self, dataset: str, source: str, args):
    self.dataset, self.args = dataset, args
    frame, self.spec, self.schema = load(dataset, source)
    splits, _ = random_split(frame, self.spec.domain, seed=0)
    self.test = splits['test'][self.spec.raw_columns]
    self.examples = {name: in_process.serialize(part[self.spec.raw_columns]) for name, part in splits.items()}
    self.truth = {name: (part[self.spec.label].to_numpy(), part[self.spec.domain].astype(str).to_numpy())
                  for name, part in splits.items() if name != 'train'}
    self.rows = len(frame)

  def transform(self, config: PipelineConfig):
    key = json.dumps({'dataset': self.dataset, 'rows': self.rows, **config.transform_config()}, sort_keys=True)
    return calibration.cached_transform(key, config.transform_config(), self.examples, self.args.work_dir, self.schema)

  def train(self, method: str, recipe: str, backbone: str, seed: int) -> dict:
    """Trains one run and scores it: its results record."""
    start = time.time()
    config = run_config(self.spec, method, recipe, backbone, seed, dict(self.args.set))
    transform_dir, accessor = self.transform(config)
    stage = stage_of(method, config)
    overrides = {}
    if METHODS[method].matched:
      recipe_config = run_config(self.spec, 'mlora', recipe, backbone, seed, dict(self.args.set))
      target = mlora_parameters(recipe_config, tft.TFTransformOutput(transform_dir))
      overrides['hidden_units'] = tuple(matched_hidden_units(config, tft.TFTransformOutput(transform_dir), target))
    overrides['pretrain_adaptation' if stage == 'pretrain' else 'adaptation'] = METHODS[method].adaptation
    config = dataclasses.replace(config, **overrides)
    model_dir = self.model_dir(method, recipe, backbone, seed)
    shutil.rmtree(model_dir, ignore_errors=True)
    base = self.base(backbone, seed) if stage == 'finetune' else None
    serving_dir = calibration.train_stage(stage, config, accessor, transform_dir, model_dir, base_model=base)
    with open(os.path.join(os.path.dirname(keras_model_path(serving_dir)), TRAINING_STATS_FILE)) as f:
      stats = json.load(f)
    scores = {name: calibration.served_predictions(serving_dir, self.examples[name]) for name in ('eval', 'test')}
    (eval_labels, eval_domains), (test_labels, test_domains) = self.truth['eval'], self.truth['test']
    return {'dataset': self.dataset, 'backbone': backbone, 'method': method, 'recipe': recipe, 'seed': seed,
            'hidden_units': list(config.hidden_units), 'seconds': time.time() - start,
            'parameters': stats['parameters'], 'trainable_parameters': stats['trainable_parameters'],
            'examples_per_second': stats['examples_per_second'], 'best_epoch': stats['best_epoch'],
            'eval_wauc': metrics.wauc(eval_labels, scores['eval'], eval_domains),
            'test': ranking_loss.domain_report(test_labels, scores['test'], test_domains)}

  def model_dir(self, method: str, recipe: str, backbone: str, seed: int) -> str:
    return os.path.join(self.args.work_dir, self.dataset.replace(':', '_'), backbone, f'seed-{seed}',
                        method if method != 'mlora' else f'mlora-{recipe}')

  def base(self, backbone: str, seed: int) -> str:
    """The base's exported model of (backbone, seed), trained now unless an earlier run left it."""
    serving_dir = os.path.join(self.model_dir('base', '-', backbone, seed), 'Format-Serving')
    if not os.path.exists(keras_model_path(serving_dir)):
      self.train('base', '-', backbone, seed)
    return serving_dir


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--results', required=True,
                      help='the runs, one JSON line each (appended; runs already there are skipped)')
  parser.add_argument('--datasets', type=lambda t: t.split(','), default=['ciao'], help=f'some of {",".join(DATASETS)}')
  parser.add_argument('--backbones', type=lambda t: t.split(','), default=['mlp'])
  parser.add_argument('--methods', type=lambda t: t.split(','), default=['mlora'], help=f'some of {",".join(METHODS)}')
  parser.add_argument('--recipes', type=lambda t: t.split(','), default=['authors'],
                      help=f'MLoRA recipes, some of {",".join(RECIPES)} (default authors)')
  parser.add_argument('--movielens-source', default=ranking_loss.SOURCES['movielens'])
  parser.add_argument('--ciao-source', default=ranking_loss.SOURCES['ciao'])
  parser.add_argument('--plot-dir', help='write the per-domain AUC change plots here')
  parser.add_argument('--verbose', action='store_true', help='log the Trainers\' epochs (training and validation AUC)')
  in_process.add_run_options(parser, '/tmp/mlora_recipes', seeds=(0, 1, 2, 3, 4),
                             seeds_note=' (the data and its split stay fixed)')
  args = parser.parse_args(argv)
  for name, chosen, allowed in (('datasets', args.datasets, DATASETS), ('methods', args.methods, METHODS),
                                ('recipes', args.recipes, RECIPES)):
    if set(chosen) - set(allowed):
      parser.error(f'unknown {name} {sorted(set(chosen) - set(allowed))}: choose among {list(allowed)}')

  in_process.log_trainer_epochs(args.verbose)
  done = {_key(r) for r in read_results(args.results)}
  for dataset in args.datasets:
    grid = Grid(dataset, args.ciao_source if dataset == 'ciao' else args.movielens_source, args)
    for backbone in args.backbones:
      for seed in args.seeds:
        for method in args.methods:
          for recipe in (args.recipes if METHODS[method].recipe or METHODS[method].matched else ['-']):
            if (dataset, backbone, method, recipe, seed) in done:
              continue
            record = grid.train(method, recipe, backbone, seed)
            with open(args.results, 'a') as f:
              f.write(json.dumps(record) + '\n')
            print(f'{dataset} {backbone} seed {seed} {method} {recipe}: eval WAUC {record["eval_wauc"]:.4f}, test WAUC '
                  f'{record["test"]["wauc"]:.4f}, best epoch {record["best_epoch"]} ({record["seconds"]:.0f} s)',
                  flush=True)
  results_file = in_process.publish('benchmarks/mlora_recipes.py', read_results(args.results), format_markdown,
                                    args.json)
  if args.plot_dir:
    os.makedirs(args.plot_dir, exist_ok=True)
    print('\n'.join(plot_domains(summarize(results_file['results']), args.plot_dir)))


if __name__ == '__main__':
  main()
