"""The multi-domain CTR pipeline: validate, transform, pretrain the backbone, fine-tune MLoRA adapters,
gate on per-domain AUC, push for TF Serving."""
import functools
import json
from typing import List, Optional

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.proto import example_gen_pb2

from components.anomalies_gate import AnomaliesGate
from components.ctnet_transfer import CTNetTrainer, SourceModelResolver
from models import heads
from pipeline.config import SPAN_FOLDER, PipelineConfig

PREPROCESSING_FN = 'models.preprocessing.preprocessing_fn'
STAGE_RUN_FNS = {'pretrain': 'models.trainer.pretrain_run_fn', 'finetune': 'models.trainer.finetune_run_fn'}
PREDICTION_KEY = 'ctr'


def trainer_id(stage: str, challenger: Optional[str] = None) -> str:
  """The node id of a stage's Trainer (`PretrainTrainer`), or of a challenger's (`FinetuneTrainer_star`)."""
  return f'{stage.capitalize()}Trainer' + (f'_{challenger}' if challenger else '')


def example_gen(config: PipelineConfig):
  """Reads the raw input: a fixed train/eval(/test) split from subfolders, or one pool split 4:1 by a
  hash of each example (deterministic). With spans, the same layout inside `span-N/` folders, and the
  newest span is read (its number becomes the Examples artifact's span)."""
  data_format, splits = config.input_layout()
  prefix = f'{SPAN_FOLDER}/' if config.spans else ''
  if splits:
    inputs = [example_gen_pb2.Input.Split(name=s, pattern=f'{prefix}{s}/*') for s in splits]
  else:  # one pool: everything under data_path, or under the span folder
    inputs = [example_gen_pb2.Input.Split(name='single_split', pattern=f'{prefix}*')] if config.spans else None
  output_config = None if splits else example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
      example_gen_pb2.SplitConfig.Split(name='train', hash_buckets=4),
      example_gen_pb2.SplitConfig.Split(name='eval', hash_buckets=1)]))
  component = tfx.components.CsvExampleGen if data_format == 'csv' else tfx.components.ImportExampleGen
  return component(input_base=config.data_path, input_config=example_gen_pb2.Input(splits=inputs) if inputs else None,
                   output_config=output_config)


def evaluation_split(config: PipelineConfig) -> str:
  """The split the Evaluator scores: the held-out test split when the input has one."""
  return 'test' if 'test' in (config.input_layout()[1] or []) else 'eval'


def eval_config(config: PipelineConfig, gate: bool) -> tfma.EvalConfig:
  """AUC per domain slice and overall, WAUC, and (with `gate`) the thresholds that decide the blessing:
  every slice's AUC at least `min_domain_auc` and no worse than the latest blessed model by more than
  `max_auc_drop`; the same change bound for WAUC. A multi-task model (`config.head`) gets these metrics
  for each task output (`ctr`, `cvr`, `ctcvr`), scored over all exposures against its label (click for
  ctr, conversion for cvr and ctcvr), with the task's AUC bound `task_min_auc` (default `min_domain_auc`)."""
  domain = config.feature_spec.domain

  def threshold(min_value: Optional[float]):
    if not gate:
      return None
    return tfma.MetricThreshold(
        value_threshold=(tfma.GenericValueThreshold(lower_bound={'value': min_value})
                         if min_value is not None else None),
        change_threshold=tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                                     absolute={'value': -config.max_auc_drop}))

  def metrics_spec(min_auc: float, output_names=()):
    return tfma.MetricsSpec(output_names=list(output_names), metrics=[
        tfma.MetricConfig(class_name='ExampleCount'),
        tfma.MetricConfig(class_name='AUC', threshold=threshold(min_auc)),
        tfma.MetricConfig(class_name='BinaryCrossentropy'),
        tfma.MetricConfig(class_name='MeanPrediction'),
        tfma.MetricConfig(class_name='MeanLabel'),
        tfma.MetricConfig(class_name='WeightedDomainAUC', module='components.wauc_metric',
                          config=json.dumps({'domain_key': domain}), threshold=threshold(None)),
    ])

  if config.head:
    tasks, columns = heads.OUTPUTS[config.head], heads.label_columns(config.feature_spec)
    model_spec = tfma.ModelSpec(signature_name='serving_default', model_type='tf_generic',
                                label_keys={t: columns[heads.EVAL_LABELS[t]] for t in tasks},
                                prediction_keys={t: t for t in tasks})
    metrics_specs = [metrics_spec(config.task_min_auc.get(t, config.min_domain_auc), [t]) for t in tasks]
  else:
    model_spec = tfma.ModelSpec(signature_name='serving_default', label_key=config.feature_spec.label,
                                prediction_key=PREDICTION_KEY, model_type='tf_generic')
    metrics_specs = [metrics_spec(config.min_domain_auc)]
  return tfma.EvalConfig(model_specs=[model_spec], metrics_specs=metrics_specs,
                         slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[domain])])


def create_pipeline(config: PipelineConfig, local_metadata: bool = True) -> tfx.dsl.Pipeline:
  """The pipeline, top to bottom; with `local_metadata`, connected to the SQLite metadata store under the
  output folder (LocalDagRunner, Airflow), else to none, for an orchestrator that brings its own (Kubeflow).

  The latest blessed model (the production model) is the Evaluator's baseline and, with
  `config.warm_start`, the pretrain stage's `base_model`: the backbone continues from it (nothing resolves
  on the first run, which starts from scratch). The fine-tune stage always starts from this run's backbone.
  """
  examples = example_gen(config)
  statistics = tfx.components.StatisticsGen(examples=examples.outputs['examples'])
  schema = tfx.components.ImportSchemaGen(schema_file=config.schema_path)
  validator = tfx.components.ExampleValidator(statistics=statistics.outputs['statistics'],
                                              schema=schema.outputs['schema'])
  gate = AnomaliesGate(anomalies=validator.outputs['anomalies'], statistics=statistics.outputs['statistics'],
                       schema_hint=config.schema_path)

  transform = tfx.components.Transform(
      examples=examples.outputs['examples'], schema=schema.outputs['schema'], preprocessing_fn=PREPROCESSING_FN,
      custom_config={'feature_spec': config.feature_spec.to_dict()}, disable_statistics=True)
  transform.add_upstream_node(gate)  # no feature engineering, hence no training, on data that failed validation

  def trainer(stage: str, steps: int, base_model=None, source_model=None, adaptation=None):
    make = tfx.components.Trainer if source_model is None else functools.partial(CTNetTrainer,
                                                                                 source_model=source_model)
    return make(
        run_fn=STAGE_RUN_FNS[stage], examples=transform.outputs['transformed_examples'],
        transform_graph=transform.outputs['transform_graph'], schema=schema.outputs['schema'],
        base_model=base_model, train_args=tfx.proto.TrainArgs(num_steps=steps),
        eval_args=tfx.proto.EvalArgs(num_steps=config.eval_steps),
        custom_config=config.trainer_config(stage, adaptation))

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
  finetune = trainer('finetune', config.finetune_steps, base_model=before).with_id(trainer_id('finetune'))
  # Challengers train beside the stages (pretrain from scratch, fine-tune on the same pretrained backbone)
  # for offline comparison; nothing downstream reads their models.
  challengers = [trainer(stage, config.pretrain_steps if stage == 'pretrain' else config.finetune_steps,
                         base_model=None if stage == 'pretrain' else pretrain.outputs['model'],
                         adaptation=adaptation).with_id(trainer_id(stage, adaptation))
                 for stage, adaptation in config.challenger_stages()]

  # The pretrained backbone is scored on the same split, without a gate, for the before/after report.
  split = evaluation_split(config)
  pretrain_evaluator = tfx.components.Evaluator(
      examples=examples.outputs['examples'], model=before, example_splits=[split],
      eval_config=eval_config(config, gate=False)).with_id('PretrainEvaluator')
  evaluator = tfx.components.Evaluator(
      examples=examples.outputs['examples'], model=finetune.outputs['model'], example_splits=[split],
      baseline_model=latest_blessed.outputs['model'], eval_config=eval_config(config, gate=True))
  pusher = tfx.components.Pusher(
      model=finetune.outputs['model'], model_blessing=evaluator.outputs['blessing'],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(base_directory=config.serving_dir)))

  components: List = [examples, statistics, schema, validator, gate, transform, finetune, pretrain_evaluator,
                      latest_blessed, evaluator, pusher] + ([source] if source else []) + challengers
  if not config.onboard_domains:
    components.append(pretrain)
  return tfx.dsl.Pipeline(
      pipeline_name=config.pipeline_name, pipeline_root=config.pipeline_root, components=components,
      enable_cache=config.enable_cache,
      metadata_connection_config=(tfx.orchestration.metadata.sqlite_metadata_connection_config(
          config.metadata_path) if local_metadata else None),
      beam_pipeline_args=config.beam_pipeline_args)
