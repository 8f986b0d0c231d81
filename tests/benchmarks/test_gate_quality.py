"""The gate-quality benchmark's pure logic (benchmarks/gate_quality.py): the pair plan, the truth that
confirms a pair's kind, the corruptions and the table from hand-made result rows. No model is trained."""
import dataclasses

import pandas as pd
import pytest

from benchmarks import gate_quality as gq

RULES = {'min_examples': 200, 'auc_tolerance': 0.005, 'logloss_tolerance': 0.001, 'calibrated': True}
SETTINGS = {'rows': 200000, 'seed': 0, 'steps': 1000, 'test_examples': 40000, 'rules': RULES}
LIVE_LOGLOSS_BLOCK = 'live: log loss 0.5327 - 0.5003 = +0.0324 [0.0094, 0.0554] (99.69% CI) is significantly above'
HOME_FEED_AUC_BLOCK = 'home_feed: AUC 0.5 - 0.7 = -0.2000 [-0.21, -0.19] (99.69% CI) is significantly below'


def _row(kind, promoted, rule, confirmed=True, domain=None, examples=None, dwauc=0.0, domain_dauc=None,
         blocks=(), true_domains=None, half_width=0.01, deciding=True):
  row = {'key': f'{kind}:{len(str(rule))}', 'kind': kind, 'promoted': promoted, 'rule': rule,
         'confirmed': confirmed, 'domain': domain, 'true_dwauc': dwauc, 'true_dlogloss': 0.0,
         'blocks': list(blocks), 'true_domains': true_domains or {}}
  if domain:  # the gate's estimate is the truth, with an interval of +- half_width
    row.update(domain_test_examples=examples, true_domain_dauc=domain_dauc, domain_deciding=deciding,
               gate_domain_dauc=[domain_dauc, domain_dauc - half_width, domain_dauc + half_width])
  return row


def test_the_plan_reuses_one_production_model_per_seed():
  pairs = gq.plan_pairs(productions=4, better=3, corruptions=['home_feed:labels:1', 'new_user:labels:1'] * 3,
                        better_row_share=0.5)
  by_kind = {kind: [p for p in pairs if p.kind == kind] for kind in gq.KINDS}
  assert [len(by_kind[k]) for k in gq.KINDS] == [3, 4, 6]
  assert len({p.key for p in pairs}) == len(pairs)
  assert all(p.production.row_share == 0.5 and p.candidate == gq.Recipe(i) for i, p in enumerate(by_kind['better']))
  assert [(p.candidate.seed, p.production.seed) for p in by_kind['equivalent']] == [(1, 0), (2, 1), (3, 2), (0, 3)]
  assert [p.production.seed for p in by_kind['worse']] == [0, 1, 2, 3, 0, 1]
  assert by_kind['worse'][1].corrupted_domain == 'new_user'
  with pytest.raises(ValueError):
    gq.plan_pairs(productions=2, better=3, corruptions=[], better_row_share=0.5)


def test_the_truth_confirms_a_kind_only_by_a_material_change():
  def difference(wauc, logloss, new_user_auc=0.0):
    return {'wauc': wauc, 'logloss': logloss, 'domains': {'new_user': {'auc': new_user_auc}}}
  assert gq.confirmed('better', difference(0.02, -0.001), None, 0.001)
  assert not gq.confirmed('better', difference(0.005, -0.001), None, 0.001)  # within seed noise
  assert not gq.confirmed('better', difference(0.03, 0.02), None, 0.001)  # worse calibrated
  assert gq.confirmed('worse', difference(0.001, 0.0, -0.05), 'new_user', 0.001)
  assert not gq.confirmed('worse', difference(-0.01, 0.0, 0.004), 'new_user', 0.001)
  assert gq.confirmed('equivalent', difference(-0.004, 0.003), None, 0.001)


def test_corruptions_touch_only_their_domain():
  frame = pd.DataFrame({'domain': ['new_user'] * 200 + ['home_feed'] * 200, 'item_id': range(400),
                        'click': [1, 0] * 200})
  rows, shuffled = gq.Corruption.parse('new_user:shuffle:item_id').apply(frame, seed=0)
  assert list(rows) == list(range(200))
  assert sorted(shuffled['item_id']) == list(range(200)) and list(shuffled['item_id']) != list(range(200))
  rows, noised = gq.Corruption.parse('home_feed:labels:1').apply(frame, seed=0)
  assert list(rows) == list(range(200, 400)) and 0.3 < noised['click'].mean() < 0.7
  assert (noised['click'].to_numpy() != frame['click'].to_numpy()[rows]).any()
  with pytest.raises(ValueError, match='unknown corruption'):
    gq.Corruption.parse('coupon:drop:price').apply(frame, seed=0)


def test_the_table_gives_the_promotion_rate_per_kind_with_the_domain_sizes():
  rows = ([_row('better', True, 'not_worse_overall', dwauc=0.04)] * 9
          + [_row('better', False, 'logloss_worse', blocks=[LIVE_LOGLOSS_BLOCK],
                  true_domains={'live': {'auc': 0.01, 'logloss': 0.025}})]
          + [_row('equivalent', True, 'not_worse_overall'), _row('equivalent', False, 'not_better_overall')]
          + [_row('worse', False, 'domain_auc_worse', domain='home_feed', examples=15972, domain_dauc=-0.18,
                  blocks=[HOME_FEED_AUC_BLOCK], true_domains={'home_feed': {'auc': -0.18, 'logloss': 0.06}})] * 2
          + [_row('worse', False, 'not_better_overall', domain='new_user', examples=779, domain_dauc=-0.05)]
          + [_row('worse', True, 'not_worse_overall', confirmed=False, domain='new_user', examples=779,
                  domain_dauc=0.01)])
  lines = {line['kind']: line for line in gq.summarize(rows, RULES)}
  assert list(lines) == ['better', 'equivalent', 'worse', 'worse, all domains', 'worse, not confirmed by the truth']
  assert (lines['better']['pairs'], lines['better']['promoted'], lines['better']['rate']) == (10, 9, 0.9)
  assert (lines['better']['blocked'], lines['better']['truly_blocked']) == (1, 1)
  assert (lines['equivalent']['blocked'], lines['equivalent']['truly_blocked']) == (0, 0)
  assert lines['better']['rules'] == {'not_worse_overall': 9, 'logloss_worse': 1}
  assert lines['worse, all domains']['test_examples'] == {'home_feed': 15972, 'new_user': 779}
  assert gq.goal(rows) == {'worse_promoted': 0, 'worse': 3, 'better_rate': 0.9, 'below_resolution': 0,
                           'below_resolution_promoted': 0, 'met': True}  # the unconfirmed pair is out

  table = gq.format_markdown({'settings': SETTINGS, 'pairs': rows})
  assert ('| better |  | WAUC +0.000 to +0.040 | 10 | 9 | 90% | 1 (1) | not_worse_overall (9), logloss_worse (1) |'
          in table)
  assert ('| worse | home_feed (15972) | domain AUC -0.180 | 2 | 0 | 0% | 2 (2) | domain_auc_worse (2) |\n'
          '| worse | new_user (779) | domain AUC -0.050 | 1 | 0 | 0% | 0 (0) | not_better_overall (1) |') in table
  assert 'Goal met: 0 of 3 truly worse candidates promoted, 90% of the truly better promoted. A worse' in table
  assert 'auc_tolerance=0.005' in table and 'calibrated' not in table

  promoted_worse = rows + [_row('worse', True, 'not_worse_overall', domain='coupon', examples=1934,
                                domain_dauc=-0.02)]
  assert gq.goal(promoted_worse)['met'] is False
  assert 'Goal not met: 1 of 4 truly worse candidates promoted' in gq.format_markdown(
      {'settings': SETTINGS, 'pairs': promoted_worse})


def test_a_worse_pair_counts_only_when_the_test_split_can_resolve_its_drop():
  resolved = _row('worse', False, 'domain_auc_worse', domain='coupon', examples=1934, domain_dauc=-0.03,
                  half_width=0.023)
  below = _row('worse', True, 'not_worse_overall', domain='new_user', examples=779, domain_dauc=-0.012,
               half_width=0.041)
  not_deciding = _row('worse', False, 'not_better_overall', domain='new_user', examples=150, domain_dauc=-0.2,
                      deciding=False)
  assert gq.resolvable(resolved) and not gq.resolvable(below) and not gq.resolvable(not_deciding)
  rows = [_row('better', True, 'not_worse_overall', dwauc=0.04), resolved, below, not_deciding]
  outcome = gq.goal(rows)
  assert (outcome['worse_promoted'], outcome['worse'], outcome['below_resolution'],
          outcome['below_resolution_promoted'], outcome['met']) == (0, 1, 2, 1, True)
  lines = {line['kind']: line for line in gq.summarize(rows, RULES)}
  assert lines['worse']['pairs'] == 1 and lines['worse']['test_examples'] == {'coupon': 1934}
  below_line = lines["worse, below the test split's resolution"]
  assert (below_line['pairs'], below_line['promoted']) == (2, 1)
  table = gq.format_markdown({'settings': SETTINGS, 'pairs': rows})
  assert "0 of 1 truly worse candidate promoted (below the test split's resolution: 1 of 2 promoted)" in table


def test_a_block_is_true_when_the_truth_is_beyond_the_gates_threshold():
  live = {'live': {'auc': 0.01, 'logloss': 0.0005}}
  assert gq.block_is_true(_row('better', True, 'not_worse_overall'), RULES) is None
  assert gq.block_is_true(_row('better', False, 'logloss_worse', blocks=[LIVE_LOGLOSS_BLOCK],
                               true_domains=live), RULES) is False  # within the tolerance: a false block
  live['live']['logloss'] = 0.002
  assert gq.block_is_true(_row('better', False, 'logloss_worse', blocks=[LIVE_LOGLOSS_BLOCK],
                               true_domains=live), RULES) is True
  overall = _row('equivalent', False, 'wauc_worse', dwauc=0.001, blocks=['overall: WAUC 0.7 - 0.71 = ...'])
  assert gq.block_is_true(overall, RULES) is False


def test_what_if_rules_are_gate_rules_with_changes():
  rules = gq.parse_rules('logloss_tolerance=0.01,calibrated=false,min_examples=100',
                         _Rules(min_examples=200, logloss_tolerance=0.001, calibrated=True))
  assert rules == _Rules(min_examples=100, logloss_tolerance=0.01, calibrated=False)
  with pytest.raises(ValueError, match='unknown GateRules fields'):
    gq.parse_rules('auc_tol=0.1', _Rules())


def test_the_what_if_table_counts_promotions_per_rules():
  def row(kind, promoted, promoted_if_lenient):
    return {**_row(kind, promoted, 'x'), 'what_if': {'logloss_tolerance=0.01': {'promoted': promoted_if_lenient}}}
  rows = [row('better', False, True), row('better', True, True), row('equivalent', False, False)]
  table = gq.what_if_markdown(rows, ['logloss_tolerance=0.01'])
  assert "| the gate's rules | 1/2 | 0/1 |" in table and '| logloss_tolerance=0.01 | 2/2 | 0/1 |' in table
  assert gq.what_if_markdown(rows, []) == ''


@dataclasses.dataclass(frozen=True)
class _Rules:
  """GateRules' field types, without importing the gate (TensorFlow)."""
  min_examples: int = 200
  logloss_tolerance: float = 0.001
  calibrated: bool = True
