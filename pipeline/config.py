"""Every setting of a pipeline run, in one place. Runners build a `PipelineConfig`; nothing else reads flags."""
import dataclasses
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from data.split import SPLITS
from models.features import FeatureSpec

DEFAULT_PIPELINE_NAME = 'mdctr'  # Kubeflow needs [a-z0-9][a-z0-9-]*: no underscores
LOCAL_BEAM_ARGS = ('--direct_running_mode=in_memory', '--direct_num_workers=1')

# A run without a Beam runner runs its Beam components in memory, or on a worker per CPU from this much input
# on: `direct-multiprocess` ran the Beam components of a 1M-row run of the default data (47.6 MB of CSV) in 473 s
# against 600 s in memory (benchmarks/pipeline_scaling.py, 2 CPUs), and was the slower one at 160k rows.
MULTIPROCESS_MIN_INPUT_BYTES = 40 * 2 ** 20
# The Evaluator of such a run stays in memory below this much input (about 3M rows of the default data): it
# evaluates whole batches (components/batched_evaluation.py), so starting worker processes costs more than they
# save. With a baseline model, on 2 CPUs, the Evaluator alone took 9.0 s in memory against 14.3 s on worker
# processes for the 200k test rows of a 1M-row run (47.6 MB of CSV), and 25.6 s against 23.0 s for 800k.
EVALUATOR_MULTIPROCESS_MIN_INPUT_BYTES = 3 * 45 * 2 ** 20

# Beam runners for the Beam-powered components (ExampleGen, StatisticsGen, Transform, Evaluator, ...), and the
# arguments each adds to `beam_pipeline_args`. More (or overriding) arguments follow with `--beam-arg`.
BEAM_RUNNER_ARGS: Dict[str, Tuple[str, ...]] = {
    # In memory, one worker: tests and small local runs (the default below MULTIPROCESS_MIN_INPUT_BYTES).
    'direct': LOCAL_BEAM_ARGS,
    # One worker process per CPU: local runs on data that outgrows one core (the default from
    # MULTIPROCESS_MIN_INPUT_BYTES on).
    'direct-multiprocess': ('--direct_running_mode=multi_processing', '--direct_num_workers=0'),
    # Google Cloud Dataflow, Runner v2. The workers run a custom SDK container holding this repository
    # (components/, models/), given with --sdk_container_image; the project, region and a gs:// temp location
    # are required too.
    'dataflow': ('--runner=DataflowRunner', '--experiments=use_runner_v2'),
    # A Flink cluster (Flink's REST endpoint); the uber jar is submitted by the launching process, and the
    # Python workers run beside it (LOOPBACK), so they see this repository without a custom container.
    'flink': ('--runner=FlinkRunner', '--flink_master=http://localhost:8081', '--flink_submit_uber_jar',
              '--environment_type=LOOPBACK'),
    # A Spark standalone cluster (its REST submission endpoint, port 6066), uber jar and LOOPBACK workers.
    'spark': ('--runner=SparkRunner', '--spark_rest_url=http://localhost:6066', '--spark_submit_uber_jar',
              '--environment_type=LOOPBACK'),
}
BEAM_REQUIRED_ARGS: Dict[str, Tuple[str, ...]] = {
    'dataflow': ('--project', '--region', '--temp_location', '--sdk_container_image'),
}

# Continual runs: raw data arrives in span folders `span-1/`, `span-2/`, ... under the data root.
SPAN_FOLDER = 'span-{SPAN}'  # ExampleGen's pattern; the newest span is ingested
# The challenger that is the control of the fine-tune stage's size: the base with its hidden layers widened until
# it has as many parameters as the fine-tune stage's model (adapters included), trained from scratch.
PARAMETER_MATCHED = 'pretrain:param_matched'
_SPAN_FOLDER_RE = re.compile(r'^span-(\d+)$')


@dataclasses.dataclass
class PipelineConfig:
  """A pipeline run's settings.

  Paths: `data_path` holds the raw input (CSV with a header or TFRecord of tf.Example, directly or in
  `train/`, `eval/` and `test/` subdirectories for a fixed split); `schema_path` is the curated schema;
  `output_dir` receives the pipeline root, the metadata store, the serving directory and the report.

  Continual runs: with `spans`, `data_path` holds span folders (`span-1/`, `span-2/`, ..., each laid out
  as above) and every run ingests the newest one; with `warm_start`, the pretrain stage starts from the
  latest blessed model's backbone instead of from scratch. Both default to whether span folders are
  there. `data_format` and `data_splits` describe the input without looking at it (for a pipeline
  compiled for a data root that is not on this machine); by default the files are inspected.
  """
  data_path: str
  schema_path: str
  output_dir: str
  feature_spec: FeatureSpec
  pipeline_name: str = DEFAULT_PIPELINE_NAME
  model_name: str = 'ctr'
  # Model and training.
  backbone: str = 'mlp'
  # Domain adaptation (models/adaptation): `adaptation` is the fine-tune stage's method on the frozen
  # backbone; `pretrain_adaptation` the first stage's ('none': one shared model, the domain a feature).
  adaptation: str = 'mlora'
  pretrain_adaptation: str = 'none'
  hidden_units: Tuple[int, ...] = (256, 128, 64)
  embedding_dim: int = 16
  alpha: int = 8
  # Further settings of the adaptation methods (models/adaptation; ADAPTATION_OPTIONS): AdaSparse's
  # adasparse_form, sparsity_range, ..., PEPNet's gate_hidden_units and persona_fields.
  adaptation_options: Dict[str, object] = dataclasses.field(default_factory=dict)
  batch_size: int = 1024
  pretrain_steps: int = 1600
  finetune_steps: int = 300
  eval_steps: int = 50
  # Each stage trains in EPOCHS (models/trainer.py) chunks, validated after each; with a patience, a stage stops
  # once that many chunks in a row have not beaten its best (the best chunk's weights are kept either way).
  early_stopping_patience: Optional[int] = None
  pretrain_learning_rate: float = 1e-3
  finetune_learning_rate: float = 3e-3  # adapters start at B = 0 and have few weights: a larger step
  # What else the fine-tune stage trains beside the adaptation's weights (the recipe; benchmarks/mlora_recipes.py
  # compares them): the embedding tables at `finetune_embedding_learning_rate` (None: the stage's rate; 0: frozen,
  # as the authors' MLoRA code has them), and the domain's embedding unless `finetune_freeze_domain_embedding`.
  finetune_embedding_learning_rate: Optional[float] = None
  finetune_freeze_domain_embedding: bool = False
  seed: int = 0
  # Regularization and trained fallbacks (issue 13; benchmarks/calibration.py measures them). `embedding_l2`:
  # L2 penalty on every embedding table, in both stages: the id embeddings (hashed users, item vocabulary)
  # otherwise memorize the training split and the model turns overconfident. `domain_dropout`: the share of
  # training examples scored as an unknown domain (models/layers/domain_dropout.py), in the pretrain stage and
  # (`finetune_domain_dropout`) the fine-tune stage, so that an unseen domain is scored by a trained path (the
  # backbone and the unknown-domain embedding row, from which onboarding starts a new domain).
  # `vocabulary_frequency_threshold`: Transform keeps in a vocabulary only the tokens seen at least this many
  # times in the training split; rarer ones share the OOV row, which so gets trained.
  # `calibrate`: each stage's click logit ends in a per-domain Platt scaling (models/layers/calibration.py),
  # fitted on the eval split after training with every other weight fixed and exported in the serving graph
  # (single-task models; a multi-task head keeps its outputs as they are).
  calibrate: bool = True
  embedding_l2: float = 1e-3
  domain_dropout: float = 0.1
  finetune_domain_dropout: float = 0.1
  vocabulary_frequency_threshold: int = 10
  # The click model's training loss (models/ranking.py LOSSES): `logloss`; `ranknet`, the pairwise loss over
  # the positive/negative pairs of a batch within the same domain, whose served probability then comes from
  # the calibration alone (it needs `calibrate`); `ranknet+logloss`, both. `rank_weight` weighs the pairwise
  # term. Single-task models: a multi-task head trains log loss per task.
  loss: str = 'logloss'
  rank_weight: float = 1.0
  # Multi-task (models/heads, models/multitask.py): with `head` (shared_bottom, esmm, mmoe, ple) both stages
  # predict click and conversion tasks (`ctr`, `cvr`, and `ctcvr` for ESMM) on the head's MLP bottom instead
  # of the single click model (None); `balancing` (fixed, uncertainty, dwa) weighs the task losses and
  # `gradient_surgery` (pcgrad, gradvac; models/multitask.py SURGERIES) adjusts conflicting task gradients on
  # the shared weights; `head_options` holds head settings (gate_dropout,
  # ple_levels, num_experts, tower_units, task_weights, ...). `constraints` (models/constraints.py), like
  # `cvr_auc>=0.70` or `cvr_loss<=0.3`, each add a Lagrangian term whose multiplier rises by dual ascent
  # (step `dual_step`) on the eval batches while the constraint is broken; the Trainers keep the best epoch
  # among those that meet them and log each multiplier's trajectory in training_stats.json.
  head: Optional[str] = None
  balancing: str = 'fixed'
  gradient_surgery: Optional[str] = None
  constraints: Tuple[str, ...] = ()
  dual_step: float = 10.0  # models/constraints.py DUAL_STEP
  head_options: Dict[str, object] = dataclasses.field(default_factory=dict)
  # Promotion gate (components/promotion_gate.py): candidate and production scored on the same test examples.
  # A domain decides with at least `gate_min_examples` test examples and `gate_min_positives` of each class;
  # the candidate is blocked when a deciding domain's AUC is significantly worse than production's by more
  # than `auc_tolerance`, when the WAUC is significantly worse, or when the log loss is significantly worse
  # by more than `logloss_tolerance` (nats); else promoted when its WAUC is not below production's. On a
  # first run (no production model), blocked when an AUC interval lies below `min_domain_auc`, or the log
  # loss is significantly worse than predicting the click rate. A multi-task model is gated on every task
  # output, task t's floor `task_min_auc[t]` (default `min_domain_auc`).
  min_domain_auc: float = 0.55
  auc_tolerance: float = 0.0
  logloss_tolerance: float = 0.001
  gate_min_examples: int = 200
  gate_min_positives: int = 20
  task_min_auc: Dict[str, float] = dataclasses.field(default_factory=dict)
  beam_pipeline_args: Optional[List[str]] = None  # None: by the input's size (default_beam_args)
  # Continual runs.
  spans: Optional[bool] = None  # None: whether data_path holds span folders
  warm_start: Optional[bool] = None  # None: as `spans`, or True with `transfer_source`
  # With spans, Transform and the Trainers learn from the newest `training_spans` spans (a rolling window,
  # TFX's SpanRangeStrategy over the ExampleGen's artifacts); the Evaluator and the gate judge the newest.
  training_spans: int = 1
  # CTNet continual transfer (models/ctnet.py): the source model, as a Model artifact directory or the output
  # folder of a source pipeline run of this project (its latest blessed model, resolved when each run starts).
  # The pretrain stage becomes CTNet's target tower beside that model's frozen tower, warm-started from the
  # production model.
  transfer_source: Optional[str] = None
  # Onboarding: domains appended to the feature spec since the production model (the latest blessed one)
  # was trained. The run trains their MLoRA adapters alone on that model, skipping the pretrain stage;
  # every other weight stays as in production (models/onboarding.py).
  onboard_domains: Tuple[str, ...] = ()
  # Challengers: more Trainers in the same run, for comparing methods on the same data and backbone
  # (`tfx_runner.py bench`). Each is `stage:adaptation`: `pretrain:star` trains STAR end to end beside the
  # pretrain stage, `finetune:pepnet` adds PEPNet to the pretrained backbone beside the fine-tune stage;
  # `pretrain:param_matched` (PARAMETER_MATCHED) trains the base widened to the fine-tune model's size. Only
  # the fine-tune stage's model is evaluated, gated and pushed.
  challengers: Tuple[str, ...] = ()
  # Tuning (models/tuning.py): a TFX Tuner searches the fine-tune stage's alpha, learning rate and embedding
  # learning rate on the eval split before it, and the fine-tune Trainer takes the best. It costs
  # `tune_trials` more fine-tunes of `finetune_steps` each (the run prints the Tuner's time): off by default.
  tune: bool = False
  tune_trials: int = 6
  data_format: Optional[str] = None  # 'csv' or 'tfrecord'; None: from the files
  # With data_format: the split folders (train, eval, test; without test they are pooled), or None for
  # files directly under the span folder; both split by hash unless all three are given.
  data_splits: Optional[Tuple[str, ...]] = None
  # Training beyond one process (models/distribution.py): the Trainers' tf.distribute strategy, `none`,
  # `mirrored` (this machine's GPUs), `multi_worker` or `parameter_server` (the cluster from TF_CONFIG).
  # `trainer_replicas` > 1 (Kubeflow spec only): each Trainer runs as a Vertex AI custom job of that many
  # multi_worker replicas in `trainer_image`, in `vertex_project` and `vertex_region`
  # (pipeline/pipeline.py vertex_training_config).
  distribution: str = 'none'
  trainer_replicas: int = 1
  trainer_image: Optional[str] = None
  vertex_project: Optional[str] = None
  vertex_region: Optional[str] = None
  # Reuse the outputs of components whose inputs and settings did not change (a re-run after a failure).
  # ImportSchemaGen has no inputs: it is keyed on the schema's path, so a changed schema needs a new path.
  enable_cache: bool = False

  def __post_init__(self):
    if self.spans is None:
      self.spans = bool(span_numbers(self.data_path))
    if self.warm_start is None:
      self.warm_start = self.spans or bool(self.transfer_source)
    if self.beam_pipeline_args is None:
      self.beam_pipeline_args = default_beam_args(self._input_folder() if os.path.isdir(self.data_path) else '')
    if self.training_spans < 1 or (self.training_spans > 1 and not self.spans):
      raise ValueError(f'training_spans {self.training_spans}: needs 1, or more with span folders in data_path '
                       f'(span-1/, span-2/, ...).')
    from models import distribution  # pylint: disable=g-import-not-at-top  # imports TF
    distribution.check(self.distribution)
    if self.trainer_replicas > 1 and self.distribution != distribution.MULTI_WORKER:
      raise ValueError(f'trainer_replicas {self.trainer_replicas} needs distribution multi_worker (got '
                       f'{self.distribution!r}): replicas of a single-process Trainer would each train alone.')
    if self.trainer_replicas > 1 and not (self.vertex_project and self.vertex_region and self.trainer_image):
      raise ValueError('trainer_replicas > 1 runs the Trainers as Vertex AI custom jobs: set vertex_project, '
                       'vertex_region and trainer_image (compile: --vertex-project, --vertex-region, --image).')
    if self.data_format not in (None, 'csv', 'tfrecord'):
      raise ValueError(f'data_format must be csv or tfrecord, got {self.data_format!r}.')
    if not self.head and (self.balancing != 'fixed' or self.gradient_surgery or self.task_min_auc or
                          self.head_options or self.constraints):
      raise ValueError('balancing, gradient_surgery, task_min_auc, head_options and constraints apply to a multi-task '
                       'model: set head.')
    if self.finetune_embedding_learning_rate is not None and self.finetune_embedding_learning_rate < 0:
      raise ValueError(f'finetune_embedding_learning_rate must be 0 (frozen) or more, or None (the fine-tune '
                       f'stage\'s rate), got {self.finetune_embedding_learning_rate}.')
    self._check_loss()
    self._check_constraints()
    if self.onboard_domains and (self.adaptation != 'mlora' or self.head or self.transfer_source):
      raise ValueError('onboard_domains trains new MLoRA adapters on the production model: it needs adaptation '
                       '"mlora", without head or transfer_source.')
    from models.adaptation import ADAPTATION_OPTIONS  # pylint: disable=g-import-not-at-top  # imports TF
    settable = [o for o in ADAPTATION_OPTIONS if o not in ('alpha', 'trainable_domains')]  # own fields/onboarding
    unknown = sorted(set(self.adaptation_options) - set(settable))
    if unknown:
      raise ValueError(f'Unknown adaptation options {unknown}: expected some of {settable} (MLoRA\'s rank divisor '
                       'is `alpha`).')
    for stage, adaptation in self.challenger_stages():
      if (stage, adaptation) in (('pretrain', self.pretrain_adaptation), ('finetune', self.adaptation)):
        raise ValueError(f'challenger {stage}:{adaptation} is the {stage} stage itself.')
    if self.tune and self.onboard_domains:
      raise ValueError('tune searches the fine-tune stage on this run\'s pretrained backbone, and onboard_domains has '
                       'none (it trains new adapters on the production model): set tune or onboard_domains, not both.')
    if self.tune_trials < 1:
      raise ValueError(f'tune_trials must be at least 1, got {self.tune_trials}.')
    if self.challengers and (self.onboard_domains or self.transfer_source):
      raise ValueError('challengers compare methods on a freshly pretrained backbone: not with onboard_domains or '
                       'transfer_source.')
    if self.head and self.transfer_source:  # CTNet's adapters join the backbone's dense_0, dense_1, ... layers
      raise ValueError('transfer_source (CTNet) adapts the backbone\'s hidden layers, which a multi-task head '
                       'replaces: set head or transfer_source, not both.')

  def _check_loss(self) -> None:
    """ValueError, naming the field and the fix, for a training loss the run cannot use."""
    from models.multitask import SURGERIES  # pylint: disable=g-import-not-at-top  # imports TF
    from models.ranking import LOGLOSS, RANKNET, check_loss  # pylint: disable=g-import-not-at-top
    if self.gradient_surgery is not None and self.gradient_surgery not in SURGERIES:
      raise ValueError(f'gradient_surgery {self.gradient_surgery!r}: choose one of {sorted(SURGERIES)}, or None.')
    check_loss(self.loss)
    if not self.rank_weight > 0:
      raise ValueError(f'rank_weight must be positive, got {self.rank_weight}.')
    if self.loss == LOGLOSS and self.rank_weight != 1.0:
      raise ValueError(f'rank_weight {self.rank_weight} weighs the pairwise term of loss ranknet or ranknet+logloss: '
                       'set loss to one of them, or leave rank_weight at 1 with logloss.')
    if self.loss != LOGLOSS and self.head:
      raise ValueError(f'loss {self.loss!r} trains the single-task click model; a multi-task head trains log loss '
                       'per task: leave loss at logloss with head.')
    if self.loss == RANKNET and not self.calibrate:
      raise ValueError('loss ranknet orders the scores within each domain but leaves their level free: the served '
                       'probability needs calibrate=True, or use loss ranknet+logloss.')

  def _check_constraints(self) -> None:
    """ValueError, naming the constraint and the fix, for one the head cannot train under."""
    from models.constraints import check_dual_step, parse_constraint  # pylint: disable=g-import-not-at-top
    from models.heads import TARGETS  # pylint: disable=g-import-not-at-top
    for text in self.constraints:
      parse_constraint(text, list(TARGETS[self.head]))
    check_dual_step(self.dual_step)

  def challenger_stages(self) -> List[Tuple[str, str]]:
    """The challengers as (stage, adaptation) pairs; ValueError for one not written `stage:adaptation` with
    stage pretrain or finetune and a known adaptation, or `PARAMETER_MATCHED`."""
    from models.adaptation import ADAPTATIONS  # pylint: disable=g-import-not-at-top
    pairs = []
    for text in self.challengers:
      stage, _, adaptation = text.partition(':')
      if stage not in ('pretrain', 'finetune') or adaptation not in ADAPTATIONS and text != PARAMETER_MATCHED:
        raise ValueError(f'challenger {text!r}: expected pretrain:ADAPTATION or finetune:ADAPTATION, ADAPTATION one '
                         f'of {sorted(ADAPTATIONS)}, or {PARAMETER_MATCHED}.')
      pairs.append((stage, adaptation))
    return pairs

  def input_layout(self) -> Tuple[str, Optional[List[str]]]:
    """(format, the split folders train/eval/test, or None for a hash split) of the input ExampleGen
    reads: as configured, or found in the files of the newest span (or of `data_path` without spans)."""
    if self.data_format:
      return self.data_format, list(self.data_splits) if set(self.data_splits or ()) == set(SPLITS) else None
    folder = self._input_folder()
    return input_format(folder), input_splits(folder)

  def pool_pattern(self) -> str:
    """The files ExampleGen pools and splits by hash when the input has no test/ folder: the data files of
    the format (not the description files beside them), in the split folders when there are some."""
    data_format, _ = self.input_layout()
    if self.data_format:
      nested = bool(self.data_splits)
    else:
      folder = self._input_folder()
      nested = bool(split_folders(folder))
      names = [n for _, _, files in os.walk(folder) for n in files]
    if data_format == 'csv':
      name = '*.csv'
    else:
      name = '*.tfrecord*' if self.data_format or any('.tfrecord' in n for n in names) else '*.gz'
    return f'*/{name}' if nested else name

  def gate_rules(self):
    """The PromotionGate's rules (components/promotion_gate.py GateRules) from this config."""
    from components.promotion_gate import GateRules  # pylint: disable=g-import-not-at-top  # imports TFX
    return GateRules(min_examples=self.gate_min_examples, min_positives=self.gate_min_positives,
                     auc_tolerance=self.auc_tolerance, logloss_tolerance=self.logloss_tolerance,
                     min_domain_auc=self.min_domain_auc)

  def evaluator_beam_args(self) -> List[str]:
    """The Evaluator's own Beam arguments, which override the run's: in memory when the run's DirectRunner
    runs worker processes and its input is a local folder of less than EVALUATOR_MULTIPROCESS_MIN_INPUT_BYTES,
    else none."""
    modes = [arg.split('=', 1)[1] for arg in self.beam_pipeline_args if arg.startswith('--direct_running_mode=')]
    small = (os.path.isdir(self.data_path)
             and input_bytes(self._input_folder()) < EVALUATOR_MULTIPROCESS_MIN_INPUT_BYTES)
    return list(LOCAL_BEAM_ARGS) if modes[-1:] == ['multi_processing'] and small else []

  def _input_folder(self) -> str:
    return latest_span_path(self.data_path) if self.spans else self.data_path

  @property
  def pipeline_root(self) -> str:
    return os.path.join(self.output_dir, 'pipeline_root')

  @property
  def metadata_path(self) -> str:
    return os.path.join(self.output_dir, 'metadata', 'metadata.db')

  @property
  def serving_dir(self) -> str:
    """TF Serving's model base path: versions land in `<serving_dir>/<version>/`."""
    return os.path.join(self.output_dir, 'serving', self.model_name)

  def trainer_config(self, stage: str, adaptation: Optional[str] = None) -> dict:
    """The `custom_config` a Trainer stage reads; `adaptation` replaces the stage's own (a challenger's). The
    `PARAMETER_MATCHED` challenger is the base widened to the fine-tune stage's model size."""
    if f'{stage}:{adaptation}' == PARAMETER_MATCHED:
      from models.trainer import MATCH_PARAMETERS_OF  # pylint: disable=g-import-not-at-top  # imports TF
      return {**self.trainer_config(stage, 'none'), MATCH_PARAMETERS_OF: self.adaptation}
    return {
        'feature_spec': self.feature_spec.to_dict(),
        'backbone': self.backbone,
        'hidden_units': list(self.hidden_units),
        'embedding_dim': self.embedding_dim,
        'adaptation': adaptation or (self.pretrain_adaptation if stage == 'pretrain' else self.adaptation),
        'adaptation_options': {**self.adaptation_options, 'alpha': self.alpha},
        'batch_size': self.batch_size,
        'learning_rate': self.pretrain_learning_rate if stage == 'pretrain' else self.finetune_learning_rate,
        'seed': self.seed,
        'embedding_l2': self.embedding_l2,
        'domain_dropout': self.domain_dropout if stage == 'pretrain' else self.finetune_domain_dropout,
        'calibrate': self.calibrate,
        'loss': self.loss,
        'rank_weight': self.rank_weight,
        'onboard_domains': list(self.onboard_domains) if stage == 'finetune' else [],
        # Absent unless set, so that the Trainers' settings (and cache keys) stay as they were.
        **({'early_stopping_patience': self.early_stopping_patience} if self.early_stopping_patience else {}),
        **({'embedding_learning_rate': self.finetune_embedding_learning_rate}
           if stage == 'finetune' and self.finetune_embedding_learning_rate is not None else {}),
        **({'freeze_domain_embedding': True} if stage == 'finetune' and self.finetune_freeze_domain_embedding else {}),
        **({'tune_trials': self.tune_trials} if stage == 'finetune' and self.tune else {}),
        **({'head': self.head, 'head_options': {**self.head_options, 'balancing': self.balancing,
                                                'gradient_surgery': self.gradient_surgery,
                                                'constraints': list(self.constraints),
                                                'dual_step': self.dual_step}} if self.head else {}),
        # Absent when `none`, so that the Trainers' settings (and cache keys) stay as they were.
        **({'distribution': self.distribution} if self.distribution != 'none' else {}),
    }

  def transform_config(self) -> dict:
    """The `custom_config` of the Transform component (models/preprocessing.py reads it)."""
    return {'feature_spec': self.feature_spec.to_dict(),
            'vocabulary_frequency_threshold': self.vocabulary_frequency_threshold}


def split_folders(data_path: str) -> List[str]:
  """The split folders (train/, eval/, test/) under `data_path`."""
  return [s for s in SPLITS if os.path.isdir(os.path.join(data_path, s))]


def input_splits(data_path: str) -> Optional[List[str]]:
  """The fixed splits under `data_path` when it holds train/, eval/ and test/ folders; None when the input
  is pooled and split by hash: no split folders, or train/ and eval/ without test/ (the test split must be
  held out from what selected the model, so eval/ alone cannot serve both)."""
  present = split_folders(data_path)
  if present == list(SPLITS):
    return present
  if not present or present == ['train', 'eval']:
    return None
  raise ValueError(f'{data_path} has split folders {present}: give train/, eval/ and test/ for a fixed split, '
                   'train/ and eval/ to pool them for a train/eval/test hash split, or none.')


def input_format(data_path: str) -> str:
  """'csv' or 'tfrecord', from the files under `data_path`."""
  names = [n for _, _, files in os.walk(data_path) for n in files if not n.startswith('.')]
  if any(n.endswith('.csv') for n in names):
    return 'csv'
  if any('.tfrecord' in n or n.endswith('.gz') for n in names):
    return 'tfrecord'
  raise ValueError(f'No input found in {data_path}: expected CSV files with a header (*.csv) or TFRecord files '
                   'of tf.Example (*.tfrecord, *.tfrecord.gz).')


def span_numbers(data_path: str) -> List[int]:
  """The span numbers of the `span-N` folders under `data_path`, ascending; [] when there are none."""
  if not os.path.isdir(data_path):
    return []
  matches = (_SPAN_FOLDER_RE.match(name) for name in os.listdir(data_path))
  return sorted(int(m.group(1)) for m in matches if m and os.path.isdir(os.path.join(data_path, m.group(0))))


def latest_span_path(data_path: str) -> str:
  """The newest span's folder: the one a run ingests."""
  spans = span_numbers(data_path)
  if not spans:
    raise ValueError(f'No span folders (span-1/, span-2/, ...) in {data_path}.')
  return os.path.join(data_path, SPAN_FOLDER.replace('{SPAN}', str(spans[-1])))


def default_beam_args(input_folder: str) -> List[str]:
  """The Beam arguments of a run that names no runner: `direct` (in memory), or `direct-multiprocess` when the
  files under `input_folder` hold MULTIPROCESS_MIN_INPUT_BYTES or more."""
  multiprocess = input_bytes(input_folder) >= MULTIPROCESS_MIN_INPUT_BYTES
  return list(BEAM_RUNNER_ARGS['direct-multiprocess' if multiprocess else 'direct'])


def input_bytes(folder: str) -> int:
  """The size of the files under `folder` (a local folder; anything else counts as empty)."""
  return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def beam_pipeline_args(runner: Optional[str], extra: Optional[Sequence[str]] = None) -> Optional[List[str]]:
  """`runner`'s arguments (`BEAM_RUNNER_ARGS`) followed by `extra`; `extra` alone without a runner, None
  without either (the config's default). Raises ValueError when an argument the runner needs is missing."""
  if runner is None:
    return list(extra) if extra is not None else None
  if runner not in BEAM_RUNNER_ARGS:
    raise ValueError(f'Unknown Beam runner {runner!r}; choose one of {sorted(BEAM_RUNNER_ARGS)}.')
  args = list(BEAM_RUNNER_ARGS[runner]) + list(extra or ())
  given = {arg.split('=', 1)[0] for arg in args}
  missing = [name for name in BEAM_REQUIRED_ARGS.get(runner, ()) if name not in given]
  if missing:
    raise ValueError(f'The {runner} runner needs {", ".join(missing)}: add each as --beam-arg={missing[0]}=...')
  return args
