"""The calibration benchmark's published figures (benchmarks/calibration.py's format_markdown) from a hand-made
results file. No model is trained."""
from benchmarks import calibration

DOMAINS = calibration.SPEC.domains
CONSTANT = 0.5


def _record(variant, stage, worse_domains=(), fallback_wauc=True):
  """A result whose log loss is above the constant in `worse_domains` and below it elsewhere."""
  table = {name: {'auc': 0.7, 'logloss': CONSTANT + (0.1 if name in worse_domains else -0.1), 'constant': CONSTANT,
                  'calibration': 1.01, 'rate': 0.25, 'count': 100} for name in DOMAINS + ['all']}
  table['wauc'] = 0.72
  fallback = {'auc_known': 0.76, 'auc_unknown': 0.68, 'calibration_known': 1.02, 'calibration_unknown': 1.18}
  if fallback_wauc:
    fallback.update(wauc_known=0.75, wauc_unknown=0.69)
  return {'variant': variant, 'seed': 0, 'stage': stage, 'table': table, 'fallback': fallback}


def test_the_markdown_marks_log_losses_worse_than_the_constant_and_counts_the_domains_that_beat_it():
  worse = DOMAINS[:2]
  results = {'commands': ['benchmarks/calibration.py --variants before,after --seeds 0'],
             'results': [_record('before', 'finetune', worse_domains=worse, fallback_wauc=False),
                         _record('after', 'finetune')]}
  text = calibration.format_markdown(results)
  assert '| domain | test rows | constant | log loss before | log loss after | ratio before | ratio after |' in text
  assert f'| {worse[0]} | 100 | 0.5000 | 0.6000 ✗ | 0.4000 | 1.010 | 1.010 | 0.7000 | 0.7000 |' in text
  assert f'| {DOMAINS[2]} | 100 | 0.5000 | 0.4000 | 0.4000 |' in text
  assert text.count('✗') == 3  # the two worse domains of `before`, and the legend
  assert (f'| `before` | 0 | finetune | 0.7200 | {len(DOMAINS) - 2}/{len(DOMAINS)} | 0.7600 / 0.6800 |  | '
          '1.020 / 1.180 |') in text
  every_domain = f'{len(DOMAINS)}/{len(DOMAINS)}'
  assert f'| `after` | 0 | finetune | 0.7200 | {every_domain} | 0.7600 / 0.6800 | 0.7500 / 0.6900 |' in text
