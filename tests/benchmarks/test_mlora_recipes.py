"""The MLoRA recipe benchmark's settings, statistics and published tables (benchmarks/mlora_recipes.py), from
hand-made results. No model is trained."""
import pytest

from benchmarks import mlora_recipes
from models.features import FeatureSpec

SPEC = FeatureSpec(domain='domain', domains=['big', 'small'], label='click', vocab=['item'], hashed={'user': 50})


def _run(method, seed, wauc, small_auc, recipe='-', big_count=3000):
  domains = {'big': {'auc': wauc, 'count': big_count}, 'small': {'auc': small_auc, 'count': 100}}
  return {'dataset': 'ciao', 'backbone': 'mlp', 'method': method, 'recipe': recipe, 'seed': seed,
          'eval_wauc': wauc - 0.01, 'parameters': 1000, 'examples_per_second': 5e4, 'best_epoch': 1,
          'test': {'wauc': wauc, 'domains': domains}}


RESULTS = ([_run('base', s, w, 0.60) for s, w in enumerate((0.70, 0.71, 0.72))] +
           [_run('no_adapter', s, w, 0.60) for s, w in enumerate((0.705, 0.715, 0.725))] +
           [_run('mlora', s, w, a, recipe='authors')
            for s, (w, a) in enumerate(((0.708, 0.70), (0.7185, 0.71), (0.7275, 0.69)))])


def test_the_methods_are_compared_with_the_best_control_paired_by_seed():
  table = mlora_recipes.summarize(RESULTS)['ciao', 'mlp']
  assert table['best_control'] == 'no_adapter'  # the control with the highest mean test WAUC
  assert 'wauc_change' not in table['methods']['base']
  row = table['methods']['mlora/authors']
  assert row['against'] == 'no_adapter'
  assert row['wauc_change']['mean'] == pytest.approx(0.0030)
  assert row['wauc_change']['p_value'] < 0.05
  assert row['domains']['small']['auc_change']['mean'] == pytest.approx(0.10)


def test_a_large_domain_significantly_worse_is_named():
  worse = [_run('mlora', s, w, 0.6, recipe='authors') for s, w in enumerate((0.700, 0.710, 0.7195))]
  row = mlora_recipes.summarize(RESULTS[:6] + worse)['ciao', 'mlp']['methods']['mlora/authors']
  assert mlora_recipes.worse_domains(row) == ['big']
  assert mlora_recipes.worse_domains(row, min_rows=5000) == []


def test_the_markdown_has_a_row_per_method_and_the_domain_changes():
  text = mlora_recipes.format_markdown({'command': 'benchmarks/mlora_recipes.py --datasets ciao', 'results': RESULTS})
  assert '**ciao, mlp**, seeds [0, 1, 2]; best control: no_adapter' in text
  assert '| mlora/authors | 0.7080 ± ' in text and '+0.0030 ± ' in text
  assert '| small | 100 | +0.1000 ± ' in text
  assert text.endswith('Command: `benchmarks/mlora_recipes.py --datasets ciao`')


def test_a_recipe_sets_mlora_and_only_its_embedding_settings_reach_the_control():
  mlora = mlora_recipes.run_config(SPEC, 'mlora', 'authors', 'dcn', 3, {})
  assert mlora.adaptation_options == {'placement': 'hidden', 'domain_bias': True}
  assert (mlora.finetune_embedding_learning_rate, mlora.backbone, mlora.seed) == (0.0, 'dcn', 3)
  assert mlora.early_stopping_patience == mlora_recipes.PATIENCE
  control = mlora_recipes.run_config(SPEC, 'no_adapter', 'authors', 'dcn', 3, {})
  assert control.adaptation_options == {} and control.finetune_embedding_learning_rate == 0.0
  base = mlora_recipes.run_config(SPEC, 'base', '-', 'mlp', 0, {'pretrain_steps': 10})
  assert base.finetune_embedding_learning_rate is None and base.pretrain_steps == 10


def test_the_joint_recipe_trains_mlora_in_the_pretrain_stage():
  joint = mlora_recipes.run_config(SPEC, 'mlora', 'joint', 'mlp', 0, {})
  assert mlora_recipes.stage_of('mlora', joint) == 'pretrain'
  assert mlora_recipes.stage_of('mlora', mlora_recipes.run_config(SPEC, 'mlora', 'authors', 'mlp', 0, {})) == 'finetune'


def test_the_method_rows_alone_leave_the_domains_out():
  text = mlora_recipes.format_markdown({'command': 'c', 'results': RESULTS}, domains=False)
  assert '| mlora/authors | 0.7080 ± ' in text and '| small |' not in text
