"""Pipeline construction: components, order and wiring, without running anything."""
import contextlib
import io
import json
import os

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from data import synthetic
from components.promotion_gate import GateRules
from pipeline.config import PARAMETER_MATCHED, PipelineConfig, beam_pipeline_args, input_format, input_splits
from pipeline.pipeline import EVALUATOR_MODULE, create_pipeline, eval_config, promotion_settings
import schemas
import tfx_runner


def _config(tmp_path, **overrides):
  data = tmp_path / 'data'
  synthetic.write_csv(synthetic.generate(50), str(data))
  return PipelineConfig(data_path=str(data), schema_path=schemas.DEFAULT_SCHEMA_PATH,
                        output_dir=str(tmp_path / 'out'), feature_spec=synthetic.FEATURE_SPEC, **overrides)


def test_components_in_order(tmp_path):
  pipeline = create_pipeline(_config(tmp_path))
  ids = [c.id for c in pipeline.components]  # topologically sorted
  assert sorted(ids) == sorted(['CsvExampleGen', 'StatisticsGen', 'ImportSchemaGen', 'ExampleValidator',
                                'AnomaliesGate', 'Transform', 'PretrainTrainer', 'FinetuneTrainer',
                                'LatestBlessedModelResolver', 'Evaluator', 'PromotionGate', 'Pusher'])
  chain = ['ExampleValidator', 'AnomaliesGate', 'Transform', 'PretrainTrainer', 'FinetuneTrainer', 'PromotionGate',
           'Pusher']
  assert [ids.index(c) for c in chain] == sorted(ids.index(c) for c in chain)


def test_wiring(tmp_path):
  components = {c.id: c for c in create_pipeline(_config(tmp_path)).components}
  assert 'AnomaliesGate' in {c.id for c in components['Transform'].upstream_nodes}
  assert components['AnomaliesGate'].exec_properties['labels'] == 'click'  # a single class stops the run
  finetune = components['FinetuneTrainer']
  assert finetune.inputs['base_model'].producer_component_id == 'PretrainTrainer'
  assert finetune.exec_properties['run_fn'] == 'models.trainer.finetune_run_fn'
  for node in ('Evaluator', 'PromotionGate'):  # both judge the candidate against the production model
    assert components[node].inputs['model'].producer_component_id == 'FinetuneTrainer'
    assert components[node].inputs['baseline_model'].producer_component_id == 'LatestBlessedModelResolver'
  assert components['PromotionGate'].inputs['pretrained_model'].producer_component_id == 'PretrainTrainer'
  assert json.loads(components['Evaluator'].exec_properties['example_splits']) == ['test']
  assert components['Evaluator'].exec_properties['module_path'] == EVALUATOR_MODULE
  assert components['Pusher'].inputs['model_blessing'].producer_component_id == 'PromotionGate'


def test_the_evaluator_of_a_small_run_on_worker_processes_runs_in_memory(tmp_path):
  config = _config(tmp_path, beam_pipeline_args=beam_pipeline_args('direct-multiprocess'))
  evaluator = {c.id: c for c in create_pipeline(config).components}['Evaluator']
  options = PipelineOptions(evaluator.executor_spec.beam_pipeline_args).get_all_options()  # the run's, then its own
  assert (options['direct_running_mode'], options['direct_num_workers']) == ('in_memory', 1)


def test_onboarding_trains_the_new_domains_adapters_on_the_production_model(tmp_path):
  """Onboarding's wiring (its run: tests/pipeline/test_spans.py, `make test-all`): nothing is pretrained, the
  fine-tune stage and the gate's "before" are the production model, the new domains reach the fine-tune stage."""
  components = {c.id: c for c in create_pipeline(_config(tmp_path, onboard_domains=('coupon',))).components}
  assert 'PretrainTrainer' not in components
  finetune = components['FinetuneTrainer']
  assert finetune.inputs['base_model'].producer_component_id == 'LatestBlessedModelResolver'
  assert components['PromotionGate'].inputs['pretrained_model'].producer_component_id == 'LatestBlessedModelResolver'
  assert json.loads(finetune.exec_properties['custom_config'])['onboard_domains'] == ['coupon']


def test_challengers_train_beside_the_stages_and_are_not_pushed(tmp_path):
  config = _config(tmp_path, challengers=('finetune:star', 'pretrain:separate'))
  components = {c.id: c for c in create_pipeline(config).components}
  star, separate = components['FinetuneTrainer_star'], components['PretrainTrainer_separate']
  assert star.inputs['base_model'].producer_component_id == 'PretrainTrainer'  # the same backbone as MLoRA
  assert star.exec_properties['run_fn'] == 'models.trainer.finetune_run_fn'
  assert 'base_model' not in separate.inputs or not separate.inputs['base_model']
  assert separate.exec_properties['run_fn'] == 'models.trainer.pretrain_run_fn'
  assert json.loads(star.exec_properties['custom_config'])['adaptation'] == 'star'
  assert json.loads(separate.exec_properties['custom_config'])['adaptation'] == 'separate'
  assert json.loads(components['FinetuneTrainer'].exec_properties['custom_config'])['adaptation'] == 'mlora'
  assert components['Evaluator'].inputs['model'].producer_component_id == 'FinetuneTrainer'


def test_the_parameter_matched_challenger_is_the_base_sized_as_the_finetune_model(tmp_path):
  config = _config(tmp_path, challengers=(PARAMETER_MATCHED,), adaptation='star')
  matched = {c.id: c for c in create_pipeline(config).components}['PretrainTrainer_param_matched']
  custom = json.loads(matched.exec_properties['custom_config'])
  assert matched.exec_properties['run_fn'] == 'models.trainer.pretrain_run_fn'
  assert (custom['adaptation'], custom['match_parameters_of']) == ('none', 'star')
  with pytest.raises(ValueError, match='param_matched'):
    _config(tmp_path, challengers=('finetune:param_matched',)).challenger_stages()


@pytest.mark.parametrize('challenger, message', [('finetune:lora', 'lora'), ('star', 'star'),
                                                 ('finetune:mlora', 'is the finetune stage itself')])
def test_bad_challenger_is_a_clear_error(tmp_path, challenger, message):
  with pytest.raises(ValueError, match=message):
    create_pipeline(_config(tmp_path, challengers=(challenger,)))


def test_adaptation_options_reach_every_trainer(tmp_path):
  options = {'adasparse_form': 'scaling', 'sparsity_range': [0.1, 0.2]}
  config = _config(tmp_path, adaptation='adasparse', adaptation_options=options, alpha=4)
  for node in ('PretrainTrainer', 'FinetuneTrainer'):
    custom = json.loads({c.id: c for c in create_pipeline(config).components}[node].exec_properties['custom_config'])
    assert custom['adaptation_options'] == {**options, 'alpha': 4}


@pytest.mark.parametrize('options', [{'adasparse_from': 'scaling'}, {'alpha': 4}, {'trainable_domains': ['a']}])
def test_unknown_adaptation_option_names_the_known_ones(tmp_path, options):
  with pytest.raises(ValueError, match=f'{list(options)[0]}.*adasparse_form'):
    _config(tmp_path, adaptation_options=options)


def test_adaptation_option_flags_are_read_as_json(tmp_path):
  args = tfx_runner.build_parser().parse_args(
      ['run', '--output-dir', str(tmp_path), '--adaptation-option', 'adasparse_form=scaling',
       '--adaptation-option', 'sparsity_range=[0.1,0.2]', '--challenger', 'finetune:adasparse'])
  config = tfx_runner.config_from_args(args)
  assert config.adaptation_options == {'adasparse_form': 'scaling', 'sparsity_range': [0.1, 0.2]}
  assert config.challengers == ('finetune:adasparse',)
  with pytest.raises(SystemExit, match='adasparse_from'):
    tfx_runner.main(['run', '--output-dir', str(tmp_path / 'x'), '--rows', '100',
                     '--adaptation-option', 'adasparse_from=scaling'])


def test_the_distribution_flag_reaches_both_trainers_and_none_leaves_their_settings_as_they_were(tmp_path):
  args = tfx_runner.build_parser().parse_args(['run', '--output-dir', str(tmp_path), '--distribution', 'multi_worker'])
  config = tfx_runner.config_from_args(args)
  for node in ('PretrainTrainer', 'FinetuneTrainer'):
    custom = json.loads({c.id: c for c in create_pipeline(config).components}[node].exec_properties['custom_config'])
    assert custom['distribution'] == 'multi_worker'
  assert 'distribution' not in _config(tmp_path).trainer_config('pretrain')
  with pytest.raises(ValueError, match='distribution .horovod. is unknown: choose one of none, mirrored'):
    _config(tmp_path, distribution='horovod')


def test_gate_settings_come_from_the_config_and_tfma_only_reports(tmp_path):
  config = _config(tmp_path, min_domain_auc=0.6, auc_tolerance=0.02, logloss_tolerance=0.003, gate_min_examples=50,
                   gate_min_positives=5)
  settings = json.loads(promotion_settings(config))
  assert settings['split'] == 'test' and settings['domain'] == 'domain'
  assert settings['task_labels'] == {'ctr': 'click'} and settings['task_floors'] == {'ctr': 0.6}
  assert GateRules(**settings['rules']) == GateRules(min_examples=50, min_positives=5, auc_tolerance=0.02,
                                                     logloss_tolerance=0.003, min_domain_auc=0.6)
  tfma_config = eval_config(config)  # every metric per domain slice, no threshold: the gate blesses
  assert [s.feature_keys for s in tfma_config.slicing_specs] == [[], ['domain']]
  assert [(m.class_name, m.module) for m in tfma_config.metrics_specs[0].metrics] == [
      ('DomainCTRMetrics', 'components.domain_metrics')]
  assert json.loads(tfma_config.metrics_specs[0].metrics[0].config) == {'domain_key': 'domain'}
  assert not any(m.HasField('threshold') for m in tfma_config.metrics_specs[0].metrics)


def test_fixed_split_folders(tmp_path):
  for split in ('train', 'eval', 'test'):
    synthetic.write_csv(synthetic.generate(20), str(tmp_path / split))
  assert input_splits(str(tmp_path)) == ['train', 'eval', 'test']
  assert input_format(str(tmp_path)) == 'csv'


def test_without_a_test_folder_the_input_is_pooled_and_split_three_ways(tmp_path):
  for split in ('train', 'eval'):
    synthetic.write_csv(synthetic.generate(20), str(tmp_path / 'nested' / split))
  flat = tmp_path / 'flat'  # the data file beside the files that describe it
  synthetic.write_csv(synthetic.generate(20), str(flat))
  (flat / 'features.json').write_text('{}')
  (flat / 'schema.pbtxt').write_text('')
  for folder, pattern in (('nested', '*/*.csv'), ('flat', '*.csv')):
    assert input_splits(str(tmp_path / folder)) is None
    config = PipelineConfig(data_path=str(tmp_path / folder), schema_path=schemas.DEFAULT_SCHEMA_PATH,
                            output_dir=str(tmp_path / 'out'), feature_spec=synthetic.FEATURE_SPEC)
    assert config.pool_pattern() == pattern  # only data files are data
    example_gen = next(c for c in create_pipeline(config).components if c.id == 'CsvExampleGen')
    assert json.loads(example_gen.exec_properties['input_config'])['splits'] == [
        {'name': 'single_split', 'pattern': pattern}]
    split_config = json.loads(example_gen.exec_properties['output_config'])['split_config']['splits']
    assert [(s['name'], s['hash_buckets']) for s in split_config] == [('train', 3), ('eval', 1), ('test', 1)]


def test_split_folders_need_train_and_eval(tmp_path):
  (tmp_path / 'train').mkdir()
  with pytest.raises(ValueError, match='train/, eval/ and test/'):
    input_splits(str(tmp_path))


def test_no_input_files_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='No input found'):
    input_format(str(tmp_path))


def test_loss_and_gradient_surgery_flags_reach_the_trainers(tmp_path):
  data = str(tmp_path / 'data')
  synthetic.write_csv(synthetic.generate(50), data)
  parse = lambda *flags: tfx_runner.config_from_args(tfx_runner.build_parser().parse_args(  # noqa: E731
      ['run', '--output-dir', str(tmp_path / 'out'), '--data-path', data, *flags]))
  config = parse('--loss', 'ranknet+logloss', '--rank-weight', '0.5')
  for node in ('PretrainTrainer', 'FinetuneTrainer'):
    custom = json.loads({c.id: c for c in create_pipeline(config).components}[node].exec_properties['custom_config'])
    assert (custom['loss'], custom['rank_weight']) == ('ranknet+logloss', 0.5)
  assert (parse().loss, parse().rank_weight) == ('logloss', 1.0)
  assert parse('--head', 'mmoe', '--gradient-surgery', 'gradvac').trainer_config('pretrain')['head_options'][
      'gradient_surgery'] == 'gradvac'
  assert parse('--head', 'esmm', '--pcgrad').gradient_surgery == 'pcgrad'  # the older flag, the same setting
  args = tfx_runner.build_parser().parse_args(['bench', '--output-dir', str(tmp_path), '--loss', 'ranknet'])
  assert args.loss == 'ranknet'
  constrained = parse('--head', 'mmoe', '--constraint', 'cvr_auc>=0.7', '--constraint', 'ctr_loss<=0.5',
                      '--dual-step', '4')
  for node in ('PretrainTrainer', 'FinetuneTrainer'):
    custom = json.loads({c.id: c for c in create_pipeline(constrained).components}[node].exec_properties[
        'custom_config'])
    assert custom['head_options']['constraints'] == ['cvr_auc>=0.7', 'ctr_loss<=0.5']
    assert custom['head_options']['dual_step'] == 4.0
  with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as stderr:
    parse('--head', 'mmoe', '--constraint', 'cvr_auc<=0.7')
  assert 'an AUC constraint is a floor; write cvr_auc>=0.7' in stderr.getvalue()


def test_value_label_generates_its_own_data_spec_and_schema(tmp_path):
  args = tfx_runner.build_parser().parse_args(['run', '--output-dir', str(tmp_path), '--rows', '300', '--label',
                                               'value'])
  config = tfx_runner.config_from_args(args)
  assert config.feature_spec.label == 'value'
  assert config.schema_path == os.path.join(config.data_path, schemas.SCHEMA_FILE)
  assert 'value' in {f.name for f in schemas.load_schema(config.schema_path).feature}
  default = tfx_runner.config_from_args(tfx_runner.build_parser().parse_args(
      ['run', '--output-dir', str(tmp_path / 'clicks'), '--rows', '300']))
  assert (default.feature_spec, default.schema_path) == (synthetic.FEATURE_SPEC, schemas.DEFAULT_SCHEMA_PATH)


@pytest.mark.parametrize('overrides, message', [
    ({'loss': 'hinge'}, "loss 'hinge'.*ranknet"),
    ({'rank_weight': 2.0}, 'rank_weight 2.0 weighs the pairwise term'),
    ({'loss': 'ranknet', 'rank_weight': -1.0}, 'rank_weight must be positive'),
    ({'loss': 'ranknet', 'calibrate': False}, 'calibrate=True, or use loss ranknet\\+logloss'),
    ({'loss': 'ranknet', 'head': 'esmm'}, 'leave loss at logloss with head'),
    ({'head': 'esmm', 'gradient_surgery': 'mgda'}, "gradient_surgery 'mgda'.*gradvac"),
    ({'gradient_surgery': 'gradvac'}, 'set head'),
    ({'constraints': ('cvr_auc>=0.7',)}, 'constraints apply to a multi-task model: set head'),
    ({'head': 'esmm', 'constraints': ('cvr_auc>=0.7',)}, "task 'cvr' is not trained by this head.*ctcvr"),
    ({'head': 'mmoe', 'constraints': ('cvr_auc>=0.7',), 'dual_step': 0.0}, 'dual_step must be positive'),
])
def test_bad_loss_or_surgery_settings_name_the_field_and_the_fix(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    _config(tmp_path, **overrides)


def test_the_fine_tune_recipe_reaches_the_fine_tune_trainer_alone(tmp_path):
  config = _config(tmp_path, finetune_embedding_learning_rate=0.0, finetune_freeze_domain_embedding=True)
  assert config.trainer_config('finetune')['embedding_learning_rate'] == 0.0
  assert config.trainer_config('finetune')['freeze_domain_embedding'] is True
  assert 'embedding_learning_rate' not in config.trainer_config('pretrain')
  assert 'embedding_learning_rate' not in _config(tmp_path).trainer_config('finetune')  # cache keys as they were
  with pytest.raises(ValueError, match='finetune_embedding_learning_rate must be 0'):
    _config(tmp_path, finetune_embedding_learning_rate=-1.0)


def test_tune_adds_a_tuner_on_the_pretrained_model_whose_best_the_finetune_trainer_takes(tmp_path):
  components = {c.id: c for c in create_pipeline(_config(tmp_path, tune=True, tune_trials=3)).components}
  tuner, finetune = components['Tuner'], components['FinetuneTrainer']
  assert tuner.inputs['base_model'].producer_component_id == 'PretrainTrainer'
  assert tuner.inputs['examples'].producer_component_id == 'Transform'
  assert tuner.exec_properties['tuner_fn'] == 'models.tuning.tuner_fn'
  assert json.loads(tuner.exec_properties['custom_config']) == json.loads(finetune.exec_properties['custom_config'])
  assert json.loads(tuner.exec_properties['custom_config'])['tune_trials'] == 3
  assert finetune.inputs['hyperparameters'].producer_component_id == 'Tuner'
  assert finetune.inputs['hyperparameters'].output_key == 'best_hyperparameters'
  untuned = {c.id: c for c in create_pipeline(_config(tmp_path)).components}
  assert 'Tuner' not in untuned and 'hyperparameters' not in untuned['FinetuneTrainer'].inputs
  assert 'tune_trials' not in json.loads(untuned['FinetuneTrainer'].exec_properties['custom_config'])


def test_tune_flags_reach_the_config_and_tuning_is_off_by_default(tmp_path):
  args = tfx_runner.build_parser().parse_args(['run', '--output-dir', str(tmp_path), '--rows', '50', '--tune',
                                               '--tune-trials', '2'])
  config = tfx_runner.config_from_args(args)
  assert (config.tune, config.tune_trials) == (True, 2)
  assert not _config(tmp_path).tune


def test_tune_with_onboard_domains_names_both_fields(tmp_path):
  with pytest.raises(ValueError, match='set tune or onboard_domains, not both'):
    _config(tmp_path, tune=True, onboard_domains=('coupon',))
