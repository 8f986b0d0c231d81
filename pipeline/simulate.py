"""Continual runs, simulated: daily spans with drift, the pipeline once per span, a table per run.

The days are slices of one synthetic world (`data.synthetic.generate` with one seed: the same users,
items and hidden tastes every day), with two drifts:

- the click rate of `drift_domain` falls day after day: on day d, a share `1 - (1 - click_drop) ** (d - 1)`
  of its clicks is lost (the click and its conversion become a non-click);
- from day `new_domain_day`, a new domain takes `new_domain_share` of the traffic, drawn from every
  domain's rows, with a behaviour of its own: it keeps only `NEW_DOMAIN_WEB_CLICKS` of the clicks outside
  the app. That day the domain is appended to the feature contract and to the schema's domain list
  (`features.json` and `schema.pbtxt` at the data root), or validation would stop the span. Its adapter is
  onboarded without retraining anything from scratch: the backbone warm-starts from the production model
  (the new domain's embedding from the old unknown-domain one, see `models.warm_start`), and the fine-tune
  stage builds one more adapter, which starts at zero (the backbone's prediction) and trains with the rest.

Each span is written as `DATA_ROOT/span-N/{train,eval,test}/data.csv`; the run is whatever `make_config(data
root)` and `run_pipeline(config)` do (the `run` command's path), so the newest span is ingested, the
backbone warm-started from the production model and trained on the config's `training_spans` newest spans,
and the candidate evaluated against it on the newest span's test split.
"""
import dataclasses
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import pandas as pd

from components.anomalies_gate import DataValidationError
from data import synthetic
from data.split import DEFAULT_RATIOS, SPLITS
from models.features import FeatureSpec
from pipeline import lineage
from pipeline import report as report_lib
from components.promotion_gate import OVERALL
from models.model import PREDICTION
from pipeline.config import SPAN_FOLDER, PipelineConfig
import schemas

NEW_DOMAIN_WEB_CLICKS = 0.3
SPLIT_SHARES = DEFAULT_RATIOS  # train, eval, test: each day's rows in that order


@dataclasses.dataclass(frozen=True)
class Drift:
  """How the simulated days change (see the module docstring)."""
  drift_domain: str = 'banner'
  click_drop: float = 0.15
  new_domain: str = 'mini_program'
  new_domain_day: int = 4
  new_domain_share: float = 0.1


def day_frame(world: pd.DataFrame, day: int, rows: int, drift: Drift, seed: int) -> pd.DataFrame:
  """Day `day`'s traffic (1-based): its slice of `world`, drifted."""
  frame = world.iloc[(day - 1) * rows:day * rows].reset_index(drop=True).copy()
  rng = np.random.default_rng([seed, day])
  lost = 1.0 - (1.0 - drift.click_drop) ** (day - 1)
  _drop_clicks(frame, (frame.domain == drift.drift_domain).to_numpy(), lost, rng)
  if day >= drift.new_domain_day:
    new = rng.random(len(frame)) < drift.new_domain_share
    frame.loc[new, 'domain'] = drift.new_domain
    _drop_clicks(frame, new & ~frame.context.str.startswith('app_').to_numpy(), 1.0 - NEW_DOMAIN_WEB_CLICKS, rng)
  return frame


def _drop_clicks(frame: pd.DataFrame, rows: np.ndarray, share: float, rng: np.random.Generator) -> None:
  """Turns a `share` of the clicks among `rows` into non-clicks (a conversion only follows a click)."""
  lost = rows & (frame.click.to_numpy() == 1) & (rng.random(len(frame)) < share)
  frame.loc[lost, ['click', 'conversion']] = 0


def day_spec(day: int, drift: Drift) -> FeatureSpec:
  """The feature contract on day `day`: the new domain appended from its first day."""
  spec = synthetic.FEATURE_SPEC
  if day < drift.new_domain_day:
    return spec
  return dataclasses.replace(spec, domains=list(spec.domains) + [drift.new_domain])


RESULTS_FILE = 'simulate.json'  # the run's summaries, in its output folder


def training_steps(rows_per_span: int, pretrain_steps: Optional[int], finetune_steps: Optional[int]) -> dict:
  """The steps of each day's Trainers: those given, else PipelineConfig's scaled by the span's size against the
  default data's, so that a day gets as many passes over its training split (a 20000-row day trained for the
  200000-row default's 1600 steps would see its rows 130 times and overfit)."""
  scale = rows_per_span / synthetic.DEFAULT_ROWS
  return {'pretrain_steps': pretrain_steps or max(1, round(PipelineConfig.pretrain_steps * scale)),
          'finetune_steps': finetune_steps or max(1, round(PipelineConfig.finetune_steps * scale))}


def write_contract(data_root: str, spec: FeatureSpec) -> None:
  """`features.json`, and the curated schema with `spec`'s domain list, at the data root."""
  os.makedirs(data_root, exist_ok=True)
  spec.save(data_root)
  schema = schemas.load_schema(schemas.DEFAULT_SCHEMA_PATH)
  domain = next(d for d in schema.string_domain if d.name == spec.domain)
  del domain.value[:]
  domain.value.extend(spec.domains)
  schemas.write_schema(schema, os.path.join(data_root, schemas.SCHEMA_FILE))


def write_span(frame: pd.DataFrame, data_root: str, day: int) -> str:
  """`span-<day>/train/`, `eval/` and `test/`, consecutive slices of the day's rows by SPLIT_SHARES: train
  fits, eval selects (the Trainers' epochs), test judges (the Evaluator and the gate); returns the folder."""
  folder = os.path.join(data_root, SPAN_FOLDER.replace('{SPAN}', str(day)))
  cuts = np.round(np.cumsum(SPLIT_SHARES)[:-1] * len(frame)).astype(int)
  for split, part in zip(SPLITS, np.split(np.arange(len(frame)), cuts)):
    synthetic.write_csv(frame.iloc[part], os.path.join(folder, split))
  return folder


def candidate_and_production(config: PipelineConfig) -> Dict[Optional[str], Dict[str, object]]:
  """{domain, or OVERALL for all domains: {'candidate': AUC, 'production': AUC or None, 'change_ci': the 95%
  interval of the difference or None}} from the latest run's PromotionGate, which scores both on the same
  test examples; production is None where there is no production model yet."""
  task = report_lib.task_report(report_lib.latest_gate_evaluation(config)['tasks'][PREDICTION])
  slices = {**task['domains'], OVERALL: task['overall']}
  return {domain: {'candidate': s['finetune'].get('auc'), 'production': s['production'].get('auc'),
                   'change_ci': (s['auc_change'] or {}).get('ci')}
          for domain, s in slices.items()}


def _fmt(value: Optional[float], spec: str = '.4f') -> str:
  return '-' if value is None else format(value, spec)


def format_run(summary: dict) -> str:
  """One run's table: per-domain test AUC of the candidate and the production model, their difference with
  its 95% interval, blessed, pushed."""
  lines = [f'span {summary["span"]}: {summary["rows"]} rows, {len(summary["domains"])} domains, '
           f'warm start: {summary["warm_start"] or "none (from scratch)"}, wall time {summary["wall_s"]:.0f} s']
  if summary['stopped']:
    return '\n'.join(lines + [f'stopped by validation, production unchanged:\n{summary["stopped"]}'])
  header = f'{"domain":<16}{"AUC cand":>10}{"AUC prod":>10}{"delta":>9}  95% interval'
  lines += [header, '-' * len(header)]
  for domain in summary['domains'] + [OVERALL]:
    auc = summary['auc'].get(domain, {})
    candidate, production, interval = auc.get('candidate'), auc.get('production'), auc.get('change_ci')
    delta = None if candidate is None or production is None else candidate - production
    interval = f'[{interval[0]:+.4f}, {interval[1]:+.4f}]' if interval else '-'
    name = 'all domains' if domain == OVERALL else domain
    lines.append(f'{name:<16}{_fmt(candidate):>10}{_fmt(production):>10}{_fmt(delta, "+.4f"):>9}  {interval}')
  lines.append(f'blessed: {summary["blessed"]} ({summary["rule"]})  pushed: {summary["pushed"] or "no"}')
  return '\n'.join(lines)


def format_summary(summaries: List[dict]) -> str:
  """One line per run: span, size, wall time, warm start, overall test AUC of candidate and production and
  the 95% interval of their difference, the verdict and the rule that decided it; then the promotion count."""
  header = (f'{"span":>4}{"rows":>8}{"wall s":>8}{"warm":>6}{"AUC cand":>10}{"AUC prod":>10}  {"95% interval":<20}'
            f'{"blessed":>8}{"pushed":>8}  rule')
  lines = [header, '-' * len(header)]
  for s in summaries:
    overall = s['auc'].get(OVERALL, {})
    interval = overall.get('change_ci')
    interval = f'[{interval[0]:+.4f}, {interval[1]:+.4f}]' if interval else '-'
    lines.append(f'{s["span"]:>4}{s["rows"]:>8}{s["wall_s"]:>8.0f}{"yes" if s["warm_start"] else "no":>6}'
                 f'{_fmt(overall.get("candidate")):>10}{_fmt(overall.get("production")):>10}  {interval:<20}'
                 f'{"stopped" if s["stopped"] else str(s["blessed"]):>8}{"yes" if s["pushed"] else "no":>8}'
                 f'  {s["rule"] or "-"}')
  later = summaries[1:]
  lines.append(f'promoted on {sum(bool(s["pushed"]) for s in later)} of {len(later)} days after the first '
               f'(test split of each span; interval: candidate minus production AUC)')
  return '\n'.join(lines)


def simulate(data_root: str, spans: int, rows_per_span: int, make_config: Callable[[str], PipelineConfig],
             run_pipeline: Callable[[PipelineConfig], dict], drift: Drift = Drift(), seed: int = 0,
             show: Callable[[str], None] = print) -> List[dict]:
  """Writes span after span under `data_root` and runs the pipeline on each; shows each run's table and
  returns one summary per run (span, rows, domains, warm_start, auc, blessed, rule, pushed, stopped, wall_s)."""
  world = synthetic.generate(rows_per_span * spans, seed)
  summaries = []
  for day in range(1, spans + 1):
    spec = day_spec(day, drift)
    write_contract(data_root, spec)
    write_span(day_frame(world, day, rows_per_span, drift, seed), data_root, day)
    config = make_config(data_root)
    start = time.time()
    summary = {'span': day, 'rows': rows_per_span, 'domains': list(spec.domains), 'auc': {}, 'blessed': False,
               'rule': None, 'pushed': None, 'stopped': None, 'warm_start': None}
    try:
      report = run_pipeline(config)
      summary.update(auc=candidate_and_production(config), blessed=report['blessed'], rule=report['gate_rule'],
                     pushed=report['pushed_model'], warm_start=lineage.warm_start_source(config))
    except DataValidationError as error:
      summary['stopped'] = str(error)
    summary['wall_s'] = time.time() - start
    show(format_run(summary))
    summaries.append(summary)
  return summaries
