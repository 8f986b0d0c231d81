"""The multi-domain CTR pipeline: validate, transform, pretrain the backbone, fine-tune MLoRA adapters,
evaluate per domain, gate on paired per-domain statistics against production, push for TF Serving."""
import functools
import json
from typing import List, Optional

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.proto import example_gen_pb2

from components.anomalies_gate import AnomaliesGate
from components.csv_example_gen import CsvExampleGen
from components.ctnet_transfer import CTNetTrainer, SourceModelResolver
from components.promotion_gate import PromotionGate, gate_settings
from models import heads
from pipeline.config import SPAN_FOLDER, PipelineConfig

PREPROCESSING_FN = 'models.preprocessing.preprocessing_fn'
STAGE_RUN_FNS = {'pretrain': 'models.trainer.pretrain_run_fn', 'finetune': 'models.trainer.finetune_run_fn'}
TUNER_FN = 'models.tuning.tuner_fn'
EVALUATOR_MODULE = 'components.batched_evaluation'  # TFMA evaluates whole batches (its module doc)
TUNER_ID = 'Tuner'
TRAINING_SPANS_RESOLVER = 'TrainingSpansResolver'
PREDICTION_KEY = 'ctr'
VERTEX_MACHINE_TYPE = 'n1-standard-8'  # each Trainer replica's machine


def trainer_id(stage: str, challenger: Optional[str] = None) -> str:
  """The node id of a stage's Trainer (`PretrainTrainer`), or of a challenger's (`FinetuneTrainer_star`)."""
  return f'{stage.capitalize()}Trainer' + (f'_{challenger}' if challenger else '')


SPLIT_BUCKETS = (('train', 3), ('eval', 1), ('test', 1))  # train fits, eval selects, test judges: 60/20/20
EVALUATION_SPLIT = 'test'


def example_gen(config: PipelineConfig):
  """Reads the raw input: a fixed train/eval/test split from subfolders, or one pool split 3:1:1 into
  train, eval and test by a hash of each example (deterministic): every data file under `data_path` (of
  the format's extension: the description files beside them are not data), in its subfolders too when
  they hold no test/. With spans, the same inside the newest `span-N/` folder (its number becomes the
  Examples artifact's span)."""
  data_format, splits = config.input_layout()
  prefix = f'{SPAN_FOLDER}/' if config.spans else ''
  if splits:
    inputs = [example_gen_pb2.Input.Split(name=s, pattern=f'{prefix}{s}/*') for s in splits]
    output_config = None
  else:
    inputs = [example_gen_pb2.Input.Split(name='single_split', pattern=f'{prefix}{config.pool_pattern()}')]
    output_config = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets) for name, buckets in SPLIT_BUCKETS]))
  component = CsvExampleGen if data_format == 'csv' else tfx.components.ImportExampleGen
  return component(input_base=config.data_path, input_config=example_gen_pb2.Input(splits=inputs),
                   output_config=output_config)


def task_labels(config: PipelineConfig) -> dict:
  """{model output: the label column it is scored against}: `ctr` against the click, and a multi-task
  model's tasks over all exposures (cvr and ctcvr against the conversion)."""
  if not config.head:
    return {PREDICTION_KEY: config.feature_spec.label}
  columns = heads.label_columns(config.feature_spec)
  return {task: columns[heads.EVAL_LABELS[task]] for task in heads.OUTPUTS[config.head]}


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
  """TFMA's metrics of every model output, per domain slice and overall: example count, mean label and
  prediction, log loss, AUC and WAUC, from one combiner (components.domain_metrics). Report only: the
  PromotionGate decides the blessing."""
  domain = config.feature_spec.domain
  tasks = task_labels(config)
  metrics = [tfma.MetricConfig(class_name='DomainCTRMetrics', module='components.domain_metrics',
                               config=json.dumps({'domain_key': domain}))]
  if config.head:
    model_spec = tfma.ModelSpec(signature_name='serving_default', model_type='tf_generic', label_keys=tasks,
                                prediction_keys={t: t for t in tasks})
    metrics_specs = [tfma.MetricsSpec(output_names=[t], metrics=metrics) for t in tasks]
  else:
    model_spec = tfma.ModelSpec(signature_name='serving_default', label_key=config.feature_spec.label,
                                prediction_key=PREDICTION_KEY, model_type='tf_generic')
    metrics_specs = [tfma.MetricsSpec(metrics=metrics)]
  return tfma.EvalConfig(model_specs=[model_spec], metrics_specs=metrics_specs,
                         slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[domain])])


def promotion_settings(config: PipelineConfig) -> str:
  """The PromotionGate's settings: the test split, the domain column, each output's label and floor; a
  multi-task output trained on clicked samples only (CVR: P(conversion | click)) is judged by AUC alone."""
  tasks = task_labels(config)
  trained_on_every_exposure = {t for t, target in heads.TARGETS[config.head].items()
                               if target.mask is None} if config.head else set(tasks)
  return gate_settings(EVALUATION_SPLIT, config.feature_spec.domain, tasks, config.gate_rules(),
                       {t: config.task_min_auc.get(t, config.min_domain_auc) for t in tasks},
                       uncalibrated=[t for t in tasks if t not in trained_on_every_exposure])


def vertex_training_config(config: PipelineConfig) -> dict:
  """The Trainer `custom_config` entries that run it as a Vertex AI custom job of `config.trainer_replicas`
  replicas: a chief and trainer_replicas - 1 workers, each running the Trainer's run_fn in
  `config.trainer_image`; Vertex sets each replica's TF_CONFIG.

  Why this extension: a KFP v2 container spec has no replica count, and TFX 1.16 ships no Kubeflow TFJob
  launcher; the Vertex Trainer extension (tfx.extensions.google_cloud_ai_platform) is TFX's own multi-replica
  Trainer, and compiling it needs no cloud account (the job starts when the pipeline runs)."""
  from tfx.extensions.google_cloud_ai_platform import constants  # pylint: disable=g-import-not-at-top
  from tfx.extensions.google_cloud_ai_platform.trainer import executor  # pylint: disable=g-import-not-at-top
  pool = {'machine_spec': {'machine_type': VERTEX_MACHINE_TYPE}, 'container_spec': {'image_uri': config.trainer_image}}
  return {
      constants.ENABLE_VERTEX_KEY: True,
      constants.VERTEX_REGION_KEY: config.vertex_region,
      executor.TRAINING_ARGS_KEY: {'project': config.vertex_project, 'job_spec': {'worker_pool_specs': [
          {**pool, 'replica_count': 1}, {**pool, 'replica_count': config.trainer_replicas - 1}]}},
  }


def create_pipeline(config: PipelineConfig, local_metadata: bool = True) -> tfx.dsl.Pipeline:
  """The pipeline, top to bottom; with `local_metadata`, connected to the SQLite metadata store under the
  output folder (LocalDagRunner, Airflow), else to none, for an orchestrator that brings its own (Kubeflow).

  The latest blessed model (the production model) is the Evaluator's and the gate's baseline and, with
  `config.warm_start`, the pretrain stage's `base_model`: the backbone continues from it (nothing resolves
  on the first run, which starts from scratch). The fine-tune stage always starts from this run's backbone.
  """
  examples = example_gen(config)
  statistics = tfx.components.StatisticsGen(examples=examples.outputs['examples'])
  schema = tfx.components.ImportSchemaGen(schema_file=config.schema_path)
  validator = tfx.components.ExampleValidator(statistics=statistics.outputs['statistics'],
                                              schema=schema.outputs['schema'])
  anomalies_gate = AnomaliesGate(anomalies=validator.outputs['anomalies'],
                                 statistics=statistics.outputs['statistics'], schema_hint=config.schema_path,
                                 labels=','.join(sorted(set(task_labels(config).values()))))

  # A rolling window of spans to learn from: resolved when Transform runs, after this run's ExampleGen.
  window = tfx.dsl.Resolver(
      strategy_class=tfx.dsl.experimental.SpanRangeStrategy,
      config={'range_config': tfx.proto.RangeConfig(
          rolling_range=tfx.proto.RollingRange(num_spans=config.training_spans))},
      examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples, producer_component_id=examples.id),
  ).with_id(TRAINING_SPANS_RESOLVER) if config.training_spans > 1 else None
  transform = tfx.components.Transform(
      examples=window.outputs['examples'] if window else examples.outputs['examples'],
      schema=schema.outputs['schema'], preprocessing_fn=PREPROCESSING_FN,
      custom_config=config.transform_config(), disable_statistics=True)
  transform.add_upstream_node(anomalies_gate)  # no feature engineering, hence no training, on invalid data

  def trainer(stage: str, steps: int, base_model=None, source_model=None, adaptation=None, hyperparameters=None):
    make = tfx.components.Trainer if source_model is None else functools.partial(CTNetTrainer,
                                                                                 source_model=source_model)
    custom_config = config.trainer_config(stage, adaptation)
    if config.trainer_replicas > 1:
      make = tfx.extensions.google_cloud_ai_platform.Trainer
      custom_config = {**custom_config, **vertex_training_config(config)}
    return make(
        run_fn=STAGE_RUN_FNS[stage], examples=transform.outputs['transformed_examples'],
        transform_graph=transform.outputs['transform_graph'], schema=schema.outputs['schema'],
        base_model=base_model, train_args=tfx.proto.TrainArgs(num_steps=steps),
        eval_args=tfx.proto.EvalArgs(num_steps=config.eval_steps), custom_config=custom_config,
        # The Tuner's best, for the fine-tune stage only: the CTNet Trainer (pretrain) takes none.
        **({'hyperparameters': hyperparameters} if hyperparameters is not None else {}))

  latest_blessed = tfx.dsl.Resolver(
      strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
      model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
      model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
  ).with_id('LatestBlessedModelResolver')
  # CTNet (`transfer_source`): the source model is resolved when the run starts, and the pretrain stage builds
  # CTNet's target tower beside it (the same run_fn, which the CTNet Trainer also hands the source model).
  source = SourceModelResolver(source=config.transfer_source) if config.transfer_source else None
  pretrain = trainer('pretrain', config.pretrain_steps,
                     base_model=latest_blessed.outputs['model'] if config.warm_start else None,
                     source_model=source.outputs['model'] if source else None).with_id(trainer_id('pretrain'))
  # Onboarding new domains trains their adapters alone on the production model: nothing is pretrained,
  # and the production model is the "before" of the report.
  before = latest_blessed.outputs['model'] if config.onboard_domains else pretrain.outputs['model']
  # Tuning: the fine-tune stage's hyperparameters searched on the same pretrained backbone, the best trained.
  tuner = tfx.components.Tuner(
      tuner_fn=TUNER_FN, examples=transform.outputs['transformed_examples'],
      transform_graph=transform.outputs['transform_graph'], schema=schema.outputs['schema'],
      base_model=pretrain.outputs['model'], train_args=tfx.proto.TrainArgs(num_steps=config.finetune_steps),
      eval_args=tfx.proto.EvalArgs(num_steps=config.eval_steps),
      custom_config=config.trainer_config('finetune')).with_id(TUNER_ID) if config.tune else None
  finetune = trainer('finetune', config.finetune_steps, base_model=before,
                     hyperparameters=tuner.outputs['best_hyperparameters'] if tuner else None
                     ).with_id(trainer_id('finetune'))
  # Challengers train beside the stages (pretrain from scratch, fine-tune on the same pretrained backbone)
  # for offline comparison; nothing downstream reads their models.
  challengers = [trainer(stage, config.pretrain_steps if stage == 'pretrain' else config.finetune_steps,
                         base_model=None if stage == 'pretrain' else pretrain.outputs['model'],
                         adaptation=adaptation).with_id(trainer_id(stage, adaptation))
                 for stage, adaptation in config.challenger_stages()]

  # TFMA's per-domain metrics of the candidate and its differences to production, for TFMA's tools; the
  # gate scores the candidate, production and the run's pretrained model (the report's "before") on the same
  # test examples and decides the blessing Pusher reads.
  evaluator = tfx.components.Evaluator(
      examples=examples.outputs['examples'], model=finetune.outputs['model'], example_splits=[EVALUATION_SPLIT],
      baseline_model=latest_blessed.outputs['model'], eval_config=eval_config(config),
      module_path=EVALUATOR_MODULE).with_beam_pipeline_args(config.evaluator_beam_args())
  gate = PromotionGate(examples=examples.outputs['examples'], schema=schema.outputs['schema'],
                       model=finetune.outputs['model'], baseline_model=latest_blessed.outputs['model'],
                       pretrained_model=before, settings=promotion_settings(config))
  pusher = tfx.components.Pusher(
      model=finetune.outputs['model'], model_blessing=gate.outputs['blessing'],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(base_directory=config.serving_dir)))

  components: List = [examples, statistics, schema, validator, anomalies_gate, transform, finetune, latest_blessed,
                      evaluator, gate, pusher] + ([source] if source else []) + ([tuner] if tuner else []) + (
                          [window] if window else []) + challengers
  if not config.onboard_domains:
    components.append(pretrain)
  return tfx.dsl.Pipeline(
      pipeline_name=config.pipeline_name, pipeline_root=config.pipeline_root, components=components,
      enable_cache=config.enable_cache,
      metadata_connection_config=(tfx.orchestration.metadata.sqlite_metadata_connection_config(
          config.metadata_path) if local_metadata else None),
      beam_pipeline_args=config.beam_pipeline_args)
