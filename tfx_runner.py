"""Entry point: `python tfx_runner.py run --output-dir DIR` runs the whole pipeline locally;
`prepare` turns a public dataset into its input.

Thin by design: parse flags into a PipelineConfig, run the pipeline with TFX's LocalDagRunner, print
the report.
"""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')  # Keras 2 for TFX, TFT, TFMA and TFRS: before TF is imported
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))


def _hidden_units(text: str):
  try:
    units = tuple(int(u) for u in text.split('-'))
  except ValueError:
    units = ()
  if not units or min(units) < 1:
    raise argparse.ArgumentTypeError(f'expected positive layer sizes joined by "-", like 256-128-64; got {text!r}')
  return units


def _names(text: str):
  """Comma-separated names, like user_id,item_id."""
  return [name for name in text.split(',') if name]


def _task_thresholds(text: str):
  try:
    return {task: float(value) for task, value in (item.split('=') for item in text.split(','))}
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected TASK=AUC pairs joined by ",", like cvr=0.6,ctcvr=0.6; got {text!r}')


def _constraint(text: str) -> str:
  """A `--constraint` spec, checked as models/constraints.py parses it (its task is checked against the head's)."""
  from models.constraints import parse_constraint  # pylint: disable=g-import-not-at-top  # imports TF
  try:
    parse_constraint(text)
  except ValueError as error:
    raise argparse.ArgumentTypeError(str(error)) from error
  return text


def _option(text: str):
  """KEY=VALUE, VALUE read as JSON when it parses (numbers, lists, true/false), else as a string."""
  key, sep, value = text.partition('=')
  if not sep or not key:
    raise argparse.ArgumentTypeError(f'expected KEY=VALUE, like adasparse_form=scaling or sparsity_range=[0.1,0.2]; '
                                     f'got {text!r}')
  try:
    return key, json.loads(value)
  except ValueError:
    return key, value


def _positive(kind):
  def parse(text):
    value = kind(text)
    if value <= 0:
      raise argparse.ArgumentTypeError(f'must be positive, got {text}')
    return value
  return parse


def _non_negative(text):
  value = float(text)
  if value < 0:
    raise argparse.ArgumentTypeError(f'must be 0 or more, got {text}')
  return value


BEAM_RUNNER_HELP = ('Beam runner for the Beam components, with its arguments (pipeline/config.py BEAM_RUNNER_ARGS): '
                    'direct (in memory), direct-multiprocess (a worker per CPU; the Evaluator stays in memory below '
                    '135 MiB of input), dataflow, flink, spark; further --beam-arg values follow them. Default: '
                    '--beam-arg values alone, else by the input\'s size: direct below 40 MiB, direct-multiprocess from '
                    'there (pipeline/config.py default_beam_args)')


DISTRIBUTION_HELP = ('the Trainers\' tf.distribute strategy (models/distribution.py): none (one process, the default), '
                     'mirrored (this machine\'s GPUs), multi_worker or parameter_server (the cluster from TF_CONFIG)')
# A simulated day learns from the last three days: one 20k-row day alone is too little for a candidate that is
# truly better than the production model trained before it.
SIMULATE_TRAINING_SPANS = 3


def _add_training_options(parser: argparse.ArgumentParser) -> None:
  """The training-length and model-size options every pipeline-running command shares."""
  from models.ranking import LOSSES  # pylint: disable=g-import-not-at-top
  from pipeline.config import PipelineConfig  # pylint: disable=g-import-not-at-top
  defaults = {f.name: f.default for f in dataclasses.fields(PipelineConfig)}
  parser.add_argument('--pretrain-steps', type=_positive(int), default=None,
                      help=f'backbone training steps (default {defaults["pretrain_steps"]})')
  parser.add_argument('--finetune-steps', type=_positive(int), default=None,
                      help=f'MLoRA fine-tune steps (default {defaults["finetune_steps"]})')
  parser.add_argument('--eval-steps', type=_positive(int), default=None,
                      help=f'validation steps per epoch (default {defaults["eval_steps"]})')
  parser.add_argument('--batch-size', type=_positive(int), default=None,
                      help=f'training batch size (default {defaults["batch_size"]})')
  parser.add_argument('--hidden-units', type=_hidden_units, default=None,
                      help=f'backbone MLP sizes (default {"-".join(map(str, defaults["hidden_units"]))})')
  parser.add_argument('--embedding-dim', type=_positive(int), default=None,
                      help=f'size of every field embedding (default {defaults["embedding_dim"]})')
  parser.add_argument('--pretrain-learning-rate', type=_positive(float), default=None,
                      help=f'Adam learning rate of the pretrain stage (default {defaults["pretrain_learning_rate"]})')
  parser.add_argument('--finetune-learning-rate', type=_positive(float), default=None,
                      help=f'Adam learning rate of the fine-tune stage (default {defaults["finetune_learning_rate"]})')
  parser.add_argument('--finetune-embedding-learning-rate', type=_non_negative, default=None,
                      help='the fine-tune stage\'s learning rate of the embedding tables: 0 freezes them (default: the '
                           'stage\'s own rate)')
  parser.add_argument('--finetune-freeze-domain-embedding', action='store_true', default=None,
                      help='the fine-tune stage keeps the domain\'s embedding as pretrained')
  parser.add_argument('--loss', choices=LOSSES, default=None,
                      help='click model training loss: logloss; ranknet, the pairwise loss -log sigmoid(s+ - s-) over '
                           'the positive/negative pairs of each batch within the same domain (the served probability '
                           'then comes from the per-domain calibration); ranknet+logloss, both (default '
                           f'{defaults["loss"]})')
  parser.add_argument('--rank-weight', type=_positive(float), default=None,
                      help='with --loss ranknet or ranknet+logloss: the weight W of the pairwise term '
                           f'(default {defaults["rank_weight"]})')


def _add_head_options(parser: argparse.ArgumentParser) -> None:
  """The multi-task head and its constraints, options of `run`, `simulate` and `bench`."""
  from models.heads import HEADS  # pylint: disable=g-import-not-at-top
  from pipeline.config import PipelineConfig  # pylint: disable=g-import-not-at-top
  parser.add_argument('--head', choices=sorted(HEADS), default=None,
                      help='multi-task head on its own MLP bottom, predicting click and conversion (ctr, cvr; ctcvr '
                           'for esmm), served and gated per task (default: the single-task click model)')
  parser.add_argument('--constraint', type=_constraint, action='append', default=None, metavar='TASK_METRIC>=BOUND',
                      help='repeatable, with --head: a bound the training must keep on the eval batches, an AUC floor '
                           '(cvr_auc>=0.70) or a loss ceiling (cvr_loss<=0.3), through a Lagrangian multiplier raised '
                           'by dual ascent while it is broken (models/constraints.py)')
  parser.add_argument('--dual-step', type=_positive(float), default=None,
                      help='with --constraint: the dual ascent step of the multipliers per epoch (default '
                           f'{PipelineConfig.dual_step:g})')


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
  """The options of a pipeline run that `run` and `simulate` (a run per simulated day) share."""
  from models.adaptation import ADAPTATIONS  # pylint: disable=g-import-not-at-top
  from models.backbones import BACKBONES  # pylint: disable=g-import-not-at-top
  from models.multitask import BALANCINGS, SURGERIES  # pylint: disable=g-import-not-at-top
  from models.distribution import STRATEGIES  # pylint: disable=g-import-not-at-top
  from pipeline.config import BEAM_RUNNER_ARGS  # pylint: disable=g-import-not-at-top
  _add_training_options(parser)
  parser.add_argument('--alpha', type=_positive(int), default=None,
                      help='MLoRA rank divisor: each layer gets rank max(d_out // alpha, 1) (default 8)')
  parser.add_argument('--backbone', choices=sorted(BACKBONES), default=None,
                      help='CTR backbone both Trainers build; MLoRA adapts its dense layers (default mlp)')
  parser.add_argument('--adaptation', choices=sorted(ADAPTATIONS), default=None,
                      help='domain adaptation the fine-tune Trainer adds to the frozen backbone (default mlora)')
  parser.add_argument('--pretrain-adaptation', choices=sorted(ADAPTATIONS), default=None,
                      help='domain adaptation the pretrain Trainer trains end to end with the backbone (default '
                           'none: one shared model with the domain as a feature)')
  parser.add_argument('--adaptation-option', type=_option, action='append', default=None, metavar='KEY=VALUE',
                      help='repeatable: a setting of the adaptation methods, like adasparse_form=scaling, '
                           'sparsity_range=[0.1,0.2] or persona_fields=["user_id"] (models/adaptation)')
  parser.add_argument('--challenger', action='append', default=None, metavar='STAGE:ADAPTATION',
                      help='repeatable: one more Trainer in the run, for comparison only (neither gated nor '
                           'pushed): pretrain:ADAPTATION trains it end to end, finetune:ADAPTATION adds it to the '
                           'pretrained backbone; `bench` scores these models')
  _add_head_options(parser)
  parser.add_argument('--balancing', choices=sorted(BALANCINGS), default=None,
                      help='with --head: how the task losses are weighed (default fixed)')
  parser.add_argument('--gradient-surgery', choices=sorted(SURGERIES), default=None,
                      help='with --head: adjust the task gradients on the shared weights before summing them: pcgrad '
                           'projects a conflicting component off (negative cosine), gradvac turns each task pair '
                           'toward its moving-average cosine (default: neither)')
  parser.add_argument('--pcgrad', dest='gradient_surgery', action='store_const', const='pcgrad',
                      help='the same as --gradient-surgery pcgrad')
  parser.add_argument('--min-domain-auc', type=float, default=None,
                      help='promotion gate, first run (no production model yet): a domain with enough test data, '
                           'or the whole test split, blocks the model when its AUC interval lies below this '
                           '(default 0.55)')
  parser.add_argument('--task-min-auc', type=_task_thresholds, default=None, metavar='TASK=AUC,...',
                      help='with --head: the first-run AUC floor of each task output, like cvr=0.6,ctcvr=0.6 '
                           '(default --min-domain-auc)')
  parser.add_argument('--auc-tolerance', type=float, default=None,
                      help='promotion gate: a domain with enough test data blocks the candidate when its AUC is '
                           'significantly below production\'s by more than this (default 0: any significant drop)')
  parser.add_argument('--logloss-tolerance', type=float, default=None,
                      help='promotion gate: the candidate is blocked when its log loss is significantly above '
                           'production\'s by more than this, overall or in a domain with enough data (default 0.001)')
  parser.add_argument('--gate-min-examples', type=_positive(int), default=None,
                      help='promotion gate: test examples a domain needs to decide alone (default 200)')
  parser.add_argument('--gate-min-positives', type=_positive(int), default=None,
                      help='promotion gate: positives (and negatives) a domain needs to decide alone (default 20)')
  parser.add_argument('--beam-arg', action='append', default=None, metavar='ARG',
                      help='Beam pipeline argument, repeatable (default: as --beam-runner says)')
  parser.add_argument('--beam-runner', choices=list(BEAM_RUNNER_ARGS), default=None, help=BEAM_RUNNER_HELP)
  parser.add_argument('--training-spans', type=_positive(int), default=None,
                      help='with span folders: learn from the newest N spans, a rolling window (the Evaluator and '
                           'the gate judge the newest span alone; default 1 for run, 3 for simulate)')
  parser.add_argument('--transfer-source', metavar='PATH',
                      help='CTNet continual transfer: the source model, a Model artifact of this project or the '
                           '--output-dir of a source pipeline run (its latest blessed model, taken when the run '
                           'starts); the pretrain stage trains beside its frozen copy, warm-started from production')
  parser.add_argument('--verbose', action='store_true',
                      help='print the TFX, Beam and TensorFlow logs on the terminal too; they always go to '
                           'OUTPUT_DIR/logs/run.log, and the terminal shows a line per finished component')
  parser.add_argument('--distribution', choices=list(STRATEGIES), default=None, help=DISTRIBUTION_HELP)
  parser.add_argument('--enable-cache', action='store_true', default=None,
                      help='reuse the outputs of components whose inputs and settings did not change since an '
                           'earlier run in OUTPUT_DIR (a re-run after a failed run); off by default')


def build_parser() -> argparse.ArgumentParser:
  from models.backbones import BACKBONES  # pylint: disable=g-import-not-at-top
  from models.distribution import STRATEGIES  # pylint: disable=g-import-not-at-top
  from pipeline.config import BEAM_RUNNER_ARGS  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog='tfx_runner.py', description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest='command', required=True)
  run = commands.add_parser(
      'run', help='run the full pipeline locally (LocalDagRunner)',
      description='Run ExampleGen -> validation -> Transform -> pretrain -> MLoRA fine-tune -> Evaluator -> '
                  'Pusher locally, then print and save the per-domain report.')
  run.add_argument('--output-dir', required=True,
                   help='receives pipeline_root/, metadata/, serving/<model>/<version>/, report.json and the plot; '
                        'reuse it across runs so the gate compares with the latest blessed model')
  run.add_argument('--data-path',
                   help='raw input folder: CSV with a header or TFRecord of tf.Example, optionally in train/ eval/ '
                        'test/ subfolders; a features.json and schema.pbtxt inside describe it (as written by '
                        '`prepare`). Default: generate the embedded synthetic click logs into OUTPUT_DIR/data')
  run.add_argument('--schema', help='schema to validate against (default: DATA_PATH/schema.pbtxt if present, '
                                    'else the curated schemas/synthetic_clicks/schema.pbtxt)')
  run.add_argument('--rows', type=_positive(int), default=None,
                   help='rows of synthetic data to generate (default 200000); ignored with --data-path')
  run.add_argument('--seed', type=int, default=0, help='seed for data generation and training (default 0)')
  run.add_argument('--label', choices=['click', 'value'], default='click',
                   help='the generated data\'s training label: click (default), or value, the reconstructed ads '
                        'objective: an exposure whose revenue beats its domain\'s running average revenue per '
                        'exposure (data/revenue.py); ignored with --data-path, whose features.json names the label')
  _add_pipeline_options(run)
  run.add_argument('--tune', action='store_true', default=None,
                   help='a TFX Tuner searches the fine-tune stage\'s alpha, learning rate and embedding learning rate '
                        'on the eval split, and the fine-tune Trainer takes the best: each trial costs one more '
                        'fine-tune (the Tuner\'s time is printed); off by default')
  run.add_argument('--tune-trials', type=_positive(int), default=None,
                   help='with --tune: the settings tried (default 6)')
  run.add_argument('--onboard-domains', type=lambda text: [d for d in text.split(',') if d], default=None,
                   metavar='DOMAIN[,DOMAIN]',
                   help='domains appended to features.json (and the schema) since the production model was trained: '
                        'train only their MLoRA adapters on the production model of OUTPUT_DIR, leaving the '
                        'backbone, the embeddings and every other adapter as they are (no pretraining)')
  compile_ = commands.add_parser(
      'compile', help='compile the pipeline for a scheduled orchestrator (Kubeflow Pipelines v2)',
      description='Write the pipeline spec KubeflowV2DagRunner compiles (nothing runs): daily runs on the newest '
                  'span-N/ folder of DATA_ROOT, the backbone warm-started from the production model. Schedule '
                  'it as a recurring run in Kubeflow Pipelines or Vertex AI. For Airflow, put '
                  'pipeline/airflow_dag.py in the dags folder instead.')
  compile_.add_argument('--target', choices=['kubeflow'], required=True, help='the orchestrator')
  compile_.add_argument('--output', required=True, help='the pipeline spec file: .json, or .yaml / .yml for YAML')
  compile_.add_argument('--image', required=True,
                        help='container image every component runs in: a TFX 1.16 image with this repository on '
                             'its PYTHONPATH (components/, models/ and pipeline/ are imported by name)')
  compile_.add_argument('--pipeline-root', required=True,
                        help='where runs write (gs://...): artifacts under PIPELINE_ROOT/pipeline_root/, pushed '
                             'models under PIPELINE_ROOT/serving/<model>/<version>/ (the layout of run --output-dir)')
  compile_.add_argument('--data-root', required=True, help='the folder receiving span-1/, span-2/, ... (gs://...)')
  compile_.add_argument('--schema', help='the schema every span is validated against (default DATA_ROOT/schema.pbtxt)')
  compile_.add_argument('--feature-spec', metavar='DIR',
                        help='local folder with the data\'s features.json, as `prepare` writes it (default: the '
                             'embedded synthetic data\'s)')
  compile_.add_argument('--data-format', choices=['csv', 'tfrecord'], default='csv', help='span files (default csv)')
  compile_.add_argument('--splits', type=_names, default=['train', 'eval', 'test'],
                        help='split folders inside each span, comma-separated (default train,eval,test); without '
                             'test they are pooled, "" for files directly in the span folder, both split 3:1:1 '
                             'into train, eval and test by hash')
  compile_.add_argument('--beam-runner', choices=list(BEAM_RUNNER_ARGS), default=None, help=BEAM_RUNNER_HELP)
  compile_.add_argument('--distribution', choices=list(STRATEGIES), default=None,
                        help=DISTRIBUTION_HELP + '; multi_worker by default with --trainer-replicas above 1')
  compile_.add_argument('--trainer-replicas', type=_positive(int), default=None,
                        help='run each Trainer as a Vertex AI custom job of N replicas (a chief and N-1 workers, '
                             'multi_worker) in IMAGE; needs --vertex-project and --vertex-region (default 1: the '
                             'Trainer runs in its pipeline step)')
  compile_.add_argument('--vertex-project', help='the Google Cloud project of the Trainers\' Vertex AI jobs')
  compile_.add_argument('--vertex-region', help='the region of the Trainers\' Vertex AI jobs (e.g. europe-west4)')
  compile_.add_argument('--beam-arg', action='append', default=None, metavar='ARG',
                        help='Beam pipeline argument, repeatable, after the runner\'s (e.g. --beam-arg=--project=P)')

  simulate = commands.add_parser(
      'simulate', help='simulate continual runs: N daily spans with drift, the pipeline once per span',
      description='Generate daily spans of the embedded synthetic data into OUTPUT_DIR/data/span-N/, with one '
                  'domain\'s click rate falling day after day and a new domain appearing on day K (appended to '
                  'features.json and the schema, its adapter onboarded), and run the pipeline on each: it ingests '
                  'the newest span, warm-starts the backbone from the production model and evaluates against it. '
                  'Prints a table per run (per-domain AUC of candidate and production, blessed, pushed). '
                  'Unless given, the training steps scale with --rows-per-span: a day gets as many passes over '
                  'its training split as the defaults give the default data.')
  simulate.add_argument('--output-dir', required=True, help='as for run; the spans go to OUTPUT_DIR/data/')
  simulate.add_argument('--spans', type=_positive(int), default=5, help='days to simulate (default 5)')
  simulate.add_argument('--rows-per-span', type=_positive(int), default=20000, help='rows a day (default 20000)')
  simulate.add_argument('--drift-domain', default='banner',
                        help='the domain whose click rate falls (default banner)')
  simulate.add_argument('--click-drop', type=float, default=0.15,
                        help='share of that domain\'s remaining clicks lost each day (default 0.15)')
  simulate.add_argument('--new-domain-day', type=_positive(int), default=4,
                        help='day the new domain mini_program appears (default 4)')
  simulate.add_argument('--seed', type=int, default=0, help='seed for data generation and training (default 0)')
  _add_pipeline_options(simulate)
  # The days bring their data, and a daily run is not tuned.
  simulate.set_defaults(schema=None, rows=None, onboard_domains=None, label='click', tune=None, tune_trials=None,
                        training_spans=SIMULATE_TRAINING_SPANS)

  prepare = commands.add_parser(
      'prepare', help='turn a public dataset into the pipeline\'s raw, domain-tagged input',
      description='Load a dataset, split it and write train/ eval/ test/ CSVs, features.json, schema.pbtxt and '
                  'split.json to OUTPUT_DIR (all or nothing). Pass OUTPUT_DIR to `run --data-path`.')
  prepare.add_argument('dataset', choices=['movielens', 'ali-ccp', 'kuairand', 'ciao', 'csv'])
  prepare.add_argument('--source', required=True, help='the dataset\'s folder or file (e.g. ../shared/datasets/ml-100k)')
  prepare.add_argument('--output-dir', required=True)
  prepare.add_argument('--split', choices=['random', 'temporal'], default='random',
                       help='random: stratified by domain with --seed; temporal: by the timestamp (default random)')
  prepare.add_argument('--ratios', type=lambda t: tuple(float(x) for x in t.split('/')), default=(0.6, 0.2, 0.2),
                       help='train/eval/test shares (default 0.6/0.2/0.2)')
  prepare.add_argument('--seed', type=int, default=0)
  prepare.add_argument('--overwrite', action='store_true', help='replace OUTPUT_DIR once the new data is complete')
  prepare.add_argument('--domain', help='MovieLens domain field: gender, age or occupation (default gender); '
                                        'csv: the domain column')
  prepare.add_argument('--label-rule', choices=['ge4', 'eq5'],
                       help='MovieLens and Ciao click: rating >= 4 or == 5 (default ge4 for MovieLens, eq5 for Ciao)')
  prepare.add_argument('--label-columns', help='csv: comma-separated label columns, the click label first')
  prepare.add_argument('--categorical', type=_names,
                       help='csv: comma-separated categorical feature columns (default: inferred; integer ids, a '
                            'column named ...id or unique on most rows, are categorical)')
  prepare.add_argument('--numeric', type=_names,
                       help='csv: comma-separated numeric feature columns (default: inferred); with --categorical, '
                            '--numeric or --hashed only the listed columns are features')
  prepare.add_argument('--hashed', type=_names,
                       help='csv: comma-separated categorical columns to hash rather than give a vocabulary (default: '
                            'those with over 50,000 distinct values)')
  prepare.add_argument('--user-column', help='csv: the user id column (a categorical feature; GAUC groups by it)')

  bench = commands.add_parser(
      'bench', help='benchmark grid: dataset x domain split x backbone x adaptation method x seed',
      description='Run one pipeline per (dataset, backbone, seed) in a subprocess, score every adaptation '
                  'method\'s model on the test split and write results.jsonl (one line per finished cell; a '
                  'rerun skips those), results.md, results.json and PNG plots to OUTPUT_DIR.')
  bench.add_argument('--output-dir', required=True,
                     help='receives the prepared data, one folder per cell and the results; reuse it to resume')
  bench.add_argument('--datasets', type=lambda text: text.split(','), default=['movielens:gender', 'movielens:age'],
                     help='comma-separated: movielens:gender, movielens:age, movielens:occupation, ciao or '
                          'synthetic (default movielens:gender,movielens:age)')
  bench.add_argument('--backbones', type=lambda text: text.split(','), default=sorted(BACKBONES),
                     help=f'comma-separated backbones (default {",".join(sorted(BACKBONES))})')
  bench.add_argument('--methods', type=lambda text: text.split(','), default=['base', 'mlora', 'no_adapter',
                                                                                'param_matched'],
                     help='comma-separated methods (pipeline/bench.py METHODS): base, mlora, star, adasparse, pepnet '
                          '(fine-tuned on the frozen backbone), star_e2e, adasparse_e2e, pepnet_e2e (trained end to '
                          'end), no_domain, separate (baselines), no_adapter (the fine-tune stage without a '
                          'method) and param_matched (the base widened to the fine-tune model\'s size): the '
                          'controls, in every grid by default; all trained in one pipeline run per cell '
                          '(default base,mlora,no_adapter,param_matched)')
  bench.add_argument('--seeds', type=lambda text: [int(s) for s in text.split(',')], default=[0, 1, 2],
                     help='comma-separated training seeds (default 0,1,2)')
  bench.add_argument('--movielens-path', default=os.path.join(REPO_ROOT, '..', 'shared', 'datasets', 'ml-100k'),
                     help='MovieLens 100K or 1M folder (default ../shared/datasets/ml-100k beside the repo)')
  bench.add_argument('--ciao-path', default=os.path.join(REPO_ROOT, '..', 'shared', 'datasets', 'ciao'),
                     help='the Ciao release folder (default ../shared/datasets/ciao beside the repo)')
  bench.add_argument('--rows', type=_positive(int), default=None,
                     help='rows of the synthetic dataset (default 200000)')
  bench.add_argument('--label', choices=['click', 'value'], default='click',
                     help='the training label: click (default), or value (synthetic only: the reconstructed ads '
                          'objective of data/revenue.py, prepared into the dataset\'s data, which every cell\'s run '
                          'trains and is scored on)')
  _add_training_options(bench)
  _add_head_options(bench)

  serve = commands.add_parser(
      'serve', help='serve the pushed model over gRPC with TF Serving\'s API (PredictionService, ModelService)',
      description='Serve MODEL_BASE as TF Serving does: the version models.config beside it names (the highest '
                  'by default; pinning one rolls back), switching without dropping requests when Pusher writes '
                  'a new one or a version is removed; a version that fails to load is retried; concurrent '
                  'requests are batched. For local use and tests: production runs tensorflow_model_server on '
                  'the same directory (serving/README.md).')
  serve.add_argument('--model-base', required=True,
                     help='the model\'s base path, holding <version>/saved_model.pb (OUTPUT_DIR/serving/<model>)')
  serve.add_argument('--model-name', help='the name requests give in model_spec (default: MODEL_BASE\'s folder name)')
  serve.add_argument('--port', type=int, default=8500, help='gRPC port; 0 picks a free one (default 8500)')
  serve.add_argument('--host', default='127.0.0.1',
                     help='address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to all)')
  serve.add_argument('--poll-seconds', type=_positive(float), default=1.0,
                     help='how often to look for a new version (default 1)')
  serve.add_argument('--batching-parameters', metavar='FILE',
                     help='TF Serving batching parameters file (default: the built-in values, which `run` also '
                          'writes to OUTPUT_DIR/serving/batching_parameters.txt)')

  docs = commands.add_parser(
      'docs', help='regenerate the published tables and plots from their results files (pipeline/docs.py)',
      description='Rewrite docs/benchmarks/*/results.md, results.json and plots from each grid\'s results.jsonl, '
                  'and every generated block of README.md and docs/*.md from its results file.')
  docs.add_argument('--check', action='store_true',
                    help='write nothing; exit 1 and name the documents whose generated blocks are stale')

  predict = commands.add_parser(
      'predict', help='score raw CSV rows on a running model server (this project\'s or TF Serving)',
      description='Send each row of INPUT as a tf.Example through PredictionService.Predict (serving_default) '
                  'and print the scores as CSV, one row per input row.')
  predict.add_argument('--server', required=True, help='HOST:PORT of the gRPC server')
  predict.add_argument('--input', required=True,
                       help='CSV with a header in the pipeline\'s raw format (label columns, if any, are ignored)')
  predict.add_argument('--output', help='write the scores to this file instead of printing them')
  predict.add_argument('--model-name', default='ctr', help='the model to ask for (default ctr)')
  predict.add_argument('--batch-size', type=_positive(int), default=100, help='rows per request (default 100)')
  return parser


# The `prepare` flags each loader takes, named as its arguments (csv's --domain and --label-columns aside).
PREPARE_OPTIONS = {
    'movielens': ('domain', 'label_rule'),
    'ciao': ('label_rule',),
    'csv': ('categorical', 'numeric', 'hashed', 'user_column'),
}


def prepare_data(args) -> int:
  from data.prepare import DataFormatError, prepare  # pylint: disable=g-import-not-at-top

  options = {k: getattr(args, k) for k in PREPARE_OPTIONS.get(args.dataset, ()) if getattr(args, k)}
  if args.dataset == 'csv':
    if not args.domain or not args.label_columns:
      raise SystemExit('prepare csv needs --domain (the domain column) and --label-columns.')
    options = {'domain_column': args.domain, 'label_columns': args.label_columns.split(','), **options}
  try:
    record = prepare(args.dataset, args.source, args.output_dir, split=args.split, ratios=args.ratios,
                     seed=args.seed, overwrite=args.overwrite, **options)
  except (DataFormatError, ValueError, FileExistsError, FileNotFoundError) as error:
    print(f'prepare failed, nothing written: {error}', file=sys.stderr)
    return 2
  print(json.dumps(record, indent=2))
  print(f'Prepared {args.dataset} in {os.path.abspath(args.output_dir)}: run it with '
        f'`python tfx_runner.py run --data-path {args.output_dir} --output-dir DIR`')
  return 0


def run_bench(args) -> int:
  """Runs the benchmark grid (pipeline/bench.py) and prints its table and the total wall time."""
  from data import synthetic  # pylint: disable=g-import-not-at-top
  from pipeline import bench  # pylint: disable=g-import-not-at-top

  start = time.time()
  try:
    datasets = [bench.Dataset.parse(text, args.movielens_path, args.rows or synthetic.DEFAULT_ROWS, args.ciao_path,
                                    args.label)
                for text in args.datasets]
    cells = bench.build_grid(datasets, args.backbones, args.seeds, args.methods)
  except ValueError as error:
    raise SystemExit(f'bench: {error}') from error
  training = bench.Training(
      pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps, eval_steps=args.eval_steps,
      batch_size=args.batch_size, hidden_units='-'.join(map(str, args.hidden_units)) if args.hidden_units else None,
      embedding_dim=args.embedding_dim,
      pretrain_learning_rate=args.pretrain_learning_rate, finetune_learning_rate=args.finetune_learning_rate,
      loss=args.loss, rank_weight=args.rank_weight, head=args.head, constraint=tuple(args.constraint or ()),
      dual_step=args.dual_step)
  if training.constraint and not training.head:  # else every cell's run would fail on it
    raise SystemExit('bench: --constraint applies to a multi-task model: set --head.')
  summary = bench.run_grid(cells, training, os.path.abspath(args.output_dir))
  print('\n' + bench.format_markdown(summary))
  print(f'results: {os.path.join(args.output_dir, bench.RESULTS_MD)}  total wall time: {time.time() - start:.0f} s')
  return 1 if summary['failed'] else 0


def generate_docs(args) -> int:
  """Regenerates the published figures from their results files, or checks that they are current."""
  from pipeline import docs  # pylint: disable=g-import-not-at-top

  paths = docs.generate(check=args.check)
  if args.check:
    for path in paths:
      print(f'stale: {os.path.relpath(path, REPO_ROOT)} (run `python tfx_runner.py docs`)', file=sys.stderr)
    return 1 if paths else 0
  for path in paths:
    print(f'wrote {os.path.relpath(path, REPO_ROOT)}')
  return 0


def serve_model(args) -> int:
  """Runs the gRPC model server until interrupted (Ctrl-C or SIGTERM)."""
  import signal  # pylint: disable=g-import-not-at-top
  from serving.batching import BatchingParameters  # pylint: disable=g-import-not-at-top
  from serving.server import ModelServer  # pylint: disable=g-import-not-at-top
  from serving.tf_serving import read_batching_parameters  # pylint: disable=g-import-not-at-top

  batching = read_batching_parameters(args.batching_parameters) if args.batching_parameters else BatchingParameters()
  server = ModelServer(args.model_base, args.model_name, host=args.host, port=args.port, batching=batching,
                       poll_seconds=args.poll_seconds).start()
  signal.signal(signal.SIGTERM, lambda *_: server.stop())
  served = server.repository.states()
  print(f'Serving model {server.repository.name} from {server.repository.base_path} on {args.host}:{server.port} '
        f'(versions: {served or "none yet"})', flush=True)
  try:
    server.wait()
  except KeyboardInterrupt:
    server.stop()
  return 0


def predict_scores(args) -> int:
  """Scores a raw CSV file on a running server and prints or writes the scores."""
  import grpc  # pylint: disable=g-import-not-at-top
  from serving.client import PredictionClient, format_scores  # pylint: disable=g-import-not-at-top

  try:
    with PredictionClient(args.server, args.model_name) as client:
      outputs, version = client.predict_csv(args.input, args.batch_size)
  except (grpc.RpcError, ValueError, OSError) as error:
    details = f'{error.code().name}: {error.details()}' if isinstance(error, grpc.RpcError) else error
    print(f'predict failed: {details}', file=sys.stderr)
    return 2
  text = format_scores(outputs)
  if args.output:
    with open(args.output, 'w') as f:
      f.write(text)
  else:
    sys.stdout.write(text)
  print(f'{len(next(iter(outputs.values()), []))} rows scored by model {args.model_name} version {version}',
        file=sys.stderr)
  return 0


def compile_pipeline(args) -> int:
  """Compiles the scheduled pipeline for Kubeflow Pipelines v2 (pipeline/orchestrators.py)."""
  from data import synthetic  # pylint: disable=g-import-not-at-top
  from models.features import FeatureSpec  # pylint: disable=g-import-not-at-top
  from pipeline import orchestrators  # pylint: disable=g-import-not-at-top
  from pipeline.config import beam_pipeline_args  # pylint: disable=g-import-not-at-top

  try:
    config = orchestrators.scheduled_config(
        args.data_root, args.pipeline_root,
        FeatureSpec.load(args.feature_spec) if args.feature_spec else synthetic.FEATURE_SPEC,
        schema_path=args.schema, data_format=args.data_format, splits=args.splits,
        beam_pipeline_args=beam_pipeline_args(args.beam_runner, args.beam_arg), distribution=args.distribution,
        trainer_replicas=args.trainer_replicas, trainer_image=args.image, vertex_project=args.vertex_project,
        vertex_region=args.vertex_region)
    path = orchestrators.compile_kubeflow(config, args.image, args.output)
  except (ValueError, RuntimeError, FileNotFoundError) as error:
    raise SystemExit(f'compile: {error}') from error
  print(f'Wrote the Kubeflow Pipelines v2 spec of pipeline {config.pipeline_name} to {path}')
  return 0


def simulate_spans(args) -> int:
  """Simulates daily spans with drift and runs the pipeline on each (pipeline/simulate.py)."""
  from pipeline import simulate  # pylint: disable=g-import-not-at-top

  start = time.time()
  output_dir = os.path.abspath(args.output_dir)
  args = argparse.Namespace(**{**vars(args), **simulate.training_steps(args.rows_per_span, args.pretrain_steps,
                                                                        args.finetune_steps)})
  drift = simulate.Drift(drift_domain=args.drift_domain, click_drop=args.click_drop,
                         new_domain_day=args.new_domain_day)
  summaries = simulate.simulate(
      os.path.join(output_dir, 'data'), args.spans, args.rows_per_span,
      make_config=lambda data_path: config_from_args(argparse.Namespace(**{**vars(args), 'data_path': data_path})),
      run_pipeline=run_pipeline, drift=drift, seed=args.seed, show=lambda text: print('\n' + text, flush=True))
  print('\n' + simulate.format_summary(summaries))
  results = os.path.join(output_dir, simulate.RESULTS_FILE)
  with open(results, 'w') as f:  # what `tfx_runner.py docs` publishes (copied to docs/results/)
    json.dump({'command': args.command_line, 'summaries': summaries}, f, indent=1)
  print(f'\ntotal wall time: {time.time() - start:.0f} s; summaries in {results}')
  return 0


def config_from_args(args):
  from data import revenue, synthetic  # pylint: disable=g-import-not-at-top
  from models.features import FEATURE_SPEC_FILE, FeatureSpec  # pylint: disable=g-import-not-at-top
  from pipeline.config import PipelineConfig, beam_pipeline_args  # pylint: disable=g-import-not-at-top
  import schemas  # pylint: disable=g-import-not-at-top

  output_dir = os.path.abspath(args.output_dir)
  if args.data_path:
    data_path = os.path.abspath(args.data_path)
    if not os.path.isdir(data_path):
      raise SystemExit(f'--data-path {data_path} is not a folder.')
    has_spec = os.path.exists(os.path.join(data_path, FEATURE_SPEC_FILE))
    spec = FeatureSpec.load(data_path) if has_spec else synthetic.FEATURE_SPEC
    local_schema = os.path.join(data_path, schemas.SCHEMA_FILE)
    schema_path = args.schema or (local_schema if os.path.exists(local_schema) else schemas.DEFAULT_SCHEMA_PATH)
  else:
    data_path = os.path.join(output_dir, 'data')
    rows = args.rows or synthetic.DEFAULT_ROWS
    print(f'Generating {rows} rows of synthetic multi-domain click logs (seed {args.seed}) into {data_path}')
    if args.label == revenue.VALUE_LABEL:  # its own features.json and schema: the curated schema has no value
      revenue.write_value_data(synthetic.generate(rows, args.seed, revenue=True), data_path)
      spec, schema_path = revenue.VALUE_SPEC, args.schema or os.path.join(data_path, schemas.SCHEMA_FILE)
    else:
      synthetic.write_csv(synthetic.generate(rows, args.seed), data_path)
      spec, schema_path = synthetic.FEATURE_SPEC, args.schema or schemas.DEFAULT_SCHEMA_PATH

  overrides = {
      'pretrain_steps': args.pretrain_steps, 'finetune_steps': args.finetune_steps, 'eval_steps': args.eval_steps,
      'batch_size': args.batch_size, 'pretrain_learning_rate': args.pretrain_learning_rate,
      'finetune_learning_rate': args.finetune_learning_rate, 'alpha': args.alpha, 'backbone': args.backbone,
      'finetune_embedding_learning_rate': args.finetune_embedding_learning_rate,
      'finetune_freeze_domain_embedding': args.finetune_freeze_domain_embedding,
      'hidden_units': args.hidden_units, 'embedding_dim': args.embedding_dim,
      'adaptation': args.adaptation, 'pretrain_adaptation': args.pretrain_adaptation,
      'min_domain_auc': args.min_domain_auc, 'auc_tolerance': args.auc_tolerance,
      'logloss_tolerance': args.logloss_tolerance, 'gate_min_examples': args.gate_min_examples,
      'gate_min_positives': args.gate_min_positives,
      'head': args.head, 'balancing': args.balancing, 'gradient_surgery': args.gradient_surgery,
      'task_min_auc': args.task_min_auc, 'loss': args.loss, 'rank_weight': args.rank_weight,
      'constraints': tuple(args.constraint) if args.constraint else None, 'dual_step': args.dual_step,
      'beam_pipeline_args': beam_pipeline_args(args.beam_runner, args.beam_arg),
      'transfer_source': os.path.abspath(args.transfer_source) if args.transfer_source else None,
      'onboard_domains': tuple(args.onboard_domains) if args.onboard_domains else None,
      'challengers': tuple(args.challenger) if args.challenger else None,
      'enable_cache': args.enable_cache,
      'tune': args.tune, 'tune_trials': args.tune_trials,
      'distribution': args.distribution, 'training_spans': args.training_spans,
      'adaptation_options': dict(args.adaptation_option) if args.adaptation_option else None,
  }
  if args.onboard_domains and not os.path.isdir(os.path.join(output_dir, 'serving')):
    raise SystemExit(f'--onboard-domains trains new adapters on the production model, and {output_dir} has none '
                     'pushed yet: run the pipeline there once without --onboard-domains first.')
  return PipelineConfig(data_path=data_path, schema_path=os.path.abspath(schema_path), output_dir=output_dir,
                        feature_spec=spec, seed=args.seed,
                        **{k: v for k, v in overrides.items() if v is not None})


@contextlib.contextmanager
def run_temp_dir():
  """Points this process's temporary files, and its subprocesses' (TMPDIR), at a folder of their own while
  the block runs, and deletes it afterwards. Each of TFX's Beam executors copies TFX into a new temporary
  folder to build an ephemeral sdist for remote workers (42 MB, 4 or more a run) and never deletes it: a
  machine running the pipeline and its tests for a day had 1,188 of them, 48 GB, and its disk filled up."""
  folder = tempfile.mkdtemp(prefix='mdctr-run-')
  before = tempfile.tempdir, os.environ.get('TMPDIR')
  tempfile.tempdir = os.environ['TMPDIR'] = folder
  try:
    yield folder
  finally:
    tempfile.tempdir = before[0]
    if before[1] is None:
      os.environ.pop('TMPDIR')
    else:
      os.environ['TMPDIR'] = before[1]
    shutil.rmtree(folder, ignore_errors=True)


def run_pipeline(config) -> dict:
  """Runs the pipeline with LocalDagRunner and returns the report; a pushed version gets its TF Serving
  warm-up requests, models.config and batching parameters (serving/publish.py)."""
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top
  from pipeline.console import component_lines  # pylint: disable=g-import-not-at-top
  from pipeline.pipeline import create_pipeline  # pylint: disable=g-import-not-at-top
  from pipeline.report import write_report  # pylint: disable=g-import-not-at-top
  from serving.publish import publish  # pylint: disable=g-import-not-at-top

  with component_lines(config), run_temp_dir():
    tfx.orchestration.LocalDagRunner().run(create_pipeline(config))
  report = write_report(config)
  if report['pushed_model']:
    publish(config, report['pushed_model'])
  return report


def run_once(args) -> int:
  """The `run` command: one pipeline run, its report printed; 2 when validation stopped it."""
  from components.anomalies_gate import DataValidationError  # pylint: disable=g-import-not-at-top
  from pipeline.report import format_table  # pylint: disable=g-import-not-at-top

  start = time.time()
  try:
    config = config_from_args(args)
  except ValueError as error:
    raise SystemExit(f'run: {error}') from error
  try:
    report = run_pipeline(config)
  except DataValidationError as error:
    print(f'\nRun stopped before training.\n{error}', file=sys.stderr)
    return 2
  print('\n' + format_table(report))
  print(f'\nreport: {os.path.join(config.output_dir, "report.html")} (and report.json)  '
        f'wall time: {time.time() - start:.0f} s')
  return 0



def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  args.command_line = ' '.join(['python tfx_runner.py'] + [shlex.quote(a) for a in
                                                            (sys.argv[1:] if argv is None else argv)])
  sys.path.insert(0, REPO_ROOT)  # the module files are imported by path (models.trainer.run_fn, ...)
  if args.command == 'prepare':
    return prepare_data(args)
  if args.command == 'bench':
    return run_bench(args)
  if args.command == 'predict':
    return predict_scores(args)
  if args.command == 'docs':
    return generate_docs(args)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
  if args.command == 'serve':
    return serve_model(args)
  if args.command == 'compile':
    return compile_pipeline(args)
  from pipeline.console import logs_to_file  # pylint: disable=g-import-not-at-top

  with logs_to_file(os.path.abspath(args.output_dir), args.verbose) as log_file:
    status = simulate_spans(args) if args.command == 'simulate' else run_once(args)
  print(f'logs: {log_file}')
  return status


if __name__ == '__main__':
  sys.exit(main())
