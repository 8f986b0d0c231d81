"""Promotion gate: a paired, per-domain statistical decision whether the candidate model replaces production.

Candidate and production (baseline) models are scored on the same held-out test examples. `evaluate`
computes, per domain and overall, every model's AUC, log loss and calibration with intervals
(models/significance.py) and the candidate - baseline differences of AUC, WAUC and log loss (paired:
DeLong for AUC, per-example loss differences for log loss). `decide` applies the rule below.

Deciding domains: a domain decides only with at least `min_examples` test examples and at least
`min_positives` positives and as many negatives; smaller domains are reported with intervals at the
family confidence and never decide alone (their examples still count in the overall figures).

Multiple testing: the m tests that can block share a family-wise confidence `confidence` (0.95) by
Bonferroni: every deciding domain's and the overall slice's intervals are two-sided at 1 - alpha / m,
alpha = 1 - confidence, recorded as `per_test_alpha`. A block reads one bound of a two-sided interval, so
the chance of any false block is at most alpha / 2 (conservative).
  With a baseline, m = 2 D + 2 (D deciding domains): per domain the AUC and log-loss differences,
  overall the WAUC and log-loss differences.
  First run, m = D + 2: per domain the AUC, overall the AUC and the log loss against the constant rate.

With a production (baseline) model, with d = candidate - baseline and [lo, hi] its interval:
  BLOCK   a deciding domain's AUC is significantly worse than the tolerance: hi(dAUC_d) < -auc_tolerance;
  BLOCK   the overall WAUC is significantly worse: hi(dWAUC) < 0;
  BLOCK   the log loss is significantly worse, overall or in a deciding domain: lo(dLogLoss) > logloss_tolerance;
  else PROMOTE when the candidate is not worse overall, dWAUC >= 0 (the point estimate),
  else do not promote: not better overall.
First run (no baseline):
  BLOCK   a deciding domain's or the overall AUC interval lies below the floor: hi(AUC) < min_domain_auc;
  BLOCK   the overall log loss is significantly worse than the constant click rate's (the best constant):
          lo(LogLoss - H(click rate)) > 0;
  else PROMOTE.
The first failing check, in the order listed, is the Decision's rule; every check gives one reason.
A figure that cannot be computed (e.g. a single class) blocks nothing; when the overall figure the
verdict rests on (dWAUC, or the first run's overall AUC) cannot be computed, the model is not promoted.

In the pipeline, `PromotionGate` scores the candidate, the production model (the latest blessed one) and the
pretrained model of the run (the report's "before") on the test split in one pass through their
`serving_default` signatures, applies the rule to every task output of the model (a multi-task model's
`ctr`, `cvr`, ... each against its own label and floor; the model is blessed when every task is), and writes
a ModelBlessing that Pusher and the LatestBlessedModelResolver read, with `evaluation.json` (the figures,
the decision and its reasons) inside it.

Why a component and not TFMA thresholds: TFMA 0.47 thresholds compare point estimates only (its intervals,
20 jackknife replicates, never reach a threshold), it has no DeLong test, and this rule is conditional
across slices (a domain decides only with enough examples and positives; the first run judges interval
bounds against floors; calibration through paired log-loss differences). The Evaluator still computes
TFMA's per-domain metrics of the candidate against production for TFMA's tools.
"""
import dataclasses
import json
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_transform.tf_metadata import schema_utils
from tfx import v1 as tfx
from tfx.utils import io_utils, path_utils

from models import significance
from models.significance import Calibration, Estimate

OVERALL = 'overall'

# Decision.rule: the check that decided.
DOMAIN_AUC_WORSE = 'domain_auc_worse'
WAUC_WORSE = 'wauc_worse'
LOGLOSS_WORSE = 'logloss_worse'
NOT_WORSE_OVERALL = 'not_worse_overall'
NOT_BETTER_OVERALL = 'not_better_overall'
AUC_BELOW_FLOOR = 'auc_below_floor'
WORSE_THAN_CONSTANT = 'worse_than_constant'
FIRST_RUN = 'first_run'
NOT_COMPUTABLE = 'not_computable'


@dataclasses.dataclass(frozen=True)
class GateRules:
  """The gate's parameters.

  min_examples, min_positives: a domain decides with >= min_examples test examples and >= min_positives
    of each class. With 20 of each class the DeLong intervals are close to nominal (binormal simulation,
    AUC 0.76, 20 positives / 180 negatives: 92% coverage for one AUC, 95% for a paired difference; 10
    positives: 90%, 5: 85%), and the log-loss mean of 200 skewed per-example losses is near normal.
  confidence: family-wise confidence of the blocking tests (Bonferroni over them).
  auc_tolerance: non-inferiority margin of a domain's AUC. It applies to the interval's upper bound, so a
    block needs the drop to exceed it with confidence. 0 by default: benchmarks/gate_quality.py (34 pairs of
    known quality) promoted a candidate truly 0.052 AUC worse in a 1934-example domain whose interval,
    [-0.066, -0.002], stayed above -0.005, and 0 changed no other verdict there; small domains' intervals
    are wide enough that any margin lets real drops through.
  logloss_tolerance: log-loss increase (nats) tolerated; 0.001 is ~0.3% of a typical CTR log loss
    (0.2 - 0.5), below what moves bids, while a significant increase beyond it is a calibration regression.
  min_domain_auc: first-run floor, as PipelineConfig.min_domain_auc.
  calibrated: whether the scores are probabilities of the label on these examples, so that log loss judges
    them; False for a multi-task model's CVR scored over every exposure (it is P(conversion | click)): then
    only its AUC checks apply.
  """
  min_examples: int = 200
  min_positives: int = 20
  confidence: float = 0.95
  auc_tolerance: float = 0.0
  logloss_tolerance: float = 0.001
  min_domain_auc: float = 0.55
  calibrated: bool = True


@dataclasses.dataclass(frozen=True)
class ModelFigures:
  """One model on one slice: AUC, log loss (and its paired difference to the constant click rate's),
  calibration; `wauc` on the overall slice only."""
  auc: Estimate
  logloss: Estimate
  logloss_vs_constant: Estimate
  calibration: Calibration
  wauc: Optional[Estimate] = None


@dataclasses.dataclass(frozen=True)
class Difference:
  """Candidate - baseline on one slice (paired); `wauc` on the overall slice only."""
  auc: Estimate
  logloss: Estimate
  wauc: Optional[Estimate] = None


@dataclasses.dataclass(frozen=True)
class SliceEvaluation:
  """A domain's or the overall slice's figures; every Estimate records its confidence (the Bonferroni
  level 1 - per_test_alpha when the slice decides, else the family confidence)."""
  count: int
  positives: int
  negatives: int
  deciding: bool
  models: Dict[str, ModelFigures]
  difference: Optional[Difference] = None


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Everything `decide` reads; `to_dict()` is its JSON form (nan as None)."""
  candidate: str
  baseline: Optional[str]
  rules: GateRules
  tests: int
  per_test_alpha: float
  domains: Dict[str, SliceEvaluation]
  overall: SliceEvaluation

  def to_dict(self) -> dict:
    return significance.to_jsonable(self)


@dataclasses.dataclass(frozen=True)
class Decision:
  """blessed, the rule that decided (one of the rule names above) and one reason per check."""
  blessed: bool
  rule: str
  reasons: List[str]
  per_test_alpha: float

  def to_dict(self) -> dict:
    return significance.to_jsonable(self)


def evaluate(labels, domains, predictions: Mapping[str, object], baseline: Optional[str] = None,
             candidate: Optional[str] = None, rules: GateRules = GateRules()) -> Evaluation:
  """Per-domain and overall figures of every model in `predictions` ({model name: scores}, all on the
  examples of `labels` and `domains`), and candidate - baseline differences when `baseline` names one.

  `candidate` defaults to the only model that is not the baseline. Domains come out as str (bytes
  decoded).
  """
  names = list(predictions)
  if baseline is not None and baseline not in predictions:
    raise ValueError(f'baseline {baseline!r} is not among the scored models {names}')
  if candidate is None:
    others = [name for name in names if name != baseline]
    if len(others) != 1:
      raise ValueError(f'name the candidate among {others}')
    candidate = others[0]
  elif candidate not in predictions or candidate == baseline:
    raise ValueError(f'candidate {candidate!r} must be a scored model other than the baseline')
  y = (np.asarray(labels, dtype=np.float64).reshape(-1) > 0).astype(np.float64)
  scores = np.stack([np.asarray(predictions[name], dtype=np.float64).reshape(-1) for name in names])
  if scores.shape[1] != y.size or np.size(domains) != y.size:
    raise ValueError(f'{y.size} labels, {np.size(domains)} domains, {scores.shape[1]} predictions per model')

  groups = {_domain_name(d): idx for d, idx in significance.split_by_domain(domains).items()}
  deciding = {d: _decides(y[idx], rules) for d, idx in groups.items()}
  tests = (2 if baseline is not None else 1) * sum(deciding.values()) + 2
  per_test_alpha = (1 - rules.confidence) / tests
  domain_parts, slices = [], {}
  for d, idx in groups.items():
    result = significance.delong(y[idx], scores[:, idx])
    domain_parts.append((idx.size, result))
    slices[d] = _slice(y[idx], scores[:, idx], result, deciding[d],
                       1 - per_test_alpha if deciding[d] else rules.confidence, names, candidate, baseline)
  overall = _slice(y, scores, significance.delong(y, scores), True, 1 - per_test_alpha, names, candidate,
                   baseline, domain_parts)
  return Evaluation(candidate, baseline, rules, tests, per_test_alpha, slices, overall)


def decide(evaluation: Evaluation, rules: Optional[GateRules] = None) -> Decision:
  """Blessed or not by the module's rule; `rules` (default: the evaluation's) may change tolerances and
  floors, not what the intervals were computed with."""
  rules = rules or evaluation.rules
  changed = [f for f in ('min_examples', 'min_positives', 'confidence')
             if getattr(rules, f) != getattr(evaluation.rules, f)]
  if changed:
    raise ValueError(f'the evaluation was computed with other {", ".join(changed)}: evaluate again')
  first_run = evaluation.baseline is None
  checks = _first_run_checks(evaluation, rules) if first_run else _baseline_checks(evaluation, rules)
  reasons = [reason for _, _, reason in checks] + [
      f'{d}: {_small_domain_text(evaluation, s)}; too small to decide alone (needs {rules.min_examples} '
      f'examples, {rules.min_positives} positives and as many negatives)'
      for d, s in evaluation.domains.items() if not s.deciding]
  blocked = [rule for rule, failed, _ in checks if failed]
  alpha = evaluation.per_test_alpha
  if blocked:
    return Decision(False, blocked[0], reasons, alpha)
  overall, c = evaluation.overall, evaluation.candidate
  if first_run:
    if math.isnan(overall.models[c].auc.value):
      return Decision(False, NOT_COMPUTABLE, reasons + [f'{OVERALL}: AUC cannot be computed: not promoted'], alpha)
    return Decision(True, FIRST_RUN, reasons + [f'{OVERALL}: first run, no check blocks: promote'], alpha)
  wauc = overall.difference.wauc
  if math.isnan(wauc.value):
    return Decision(False, NOT_COMPUTABLE, reasons + [f'{OVERALL}: WAUC cannot be computed: not promoted'], alpha)
  text = f'{OVERALL}: WAUC {_values(overall, evaluation, "wauc")}{wauc.value:+.4f}'
  if wauc.value >= 0:
    return Decision(True, NOT_WORSE_OVERALL, reasons + [f'{text} >= 0: not worse overall, promote'], alpha)
  return Decision(False, NOT_BETTER_OVERALL, reasons + [f'{text} < 0: not better overall, not promoted'], alpha)


def _baseline_checks(evaluation: Evaluation, rules: GateRules) -> list:
  """(rule, failed, reason) of every check against the baseline; the first failed one is the rule."""
  deciding = [(d, s) for d, s in evaluation.domains.items() if s.deciding]
  overall = evaluation.overall
  auc_bound = -rules.auc_tolerance or 0.0  # not -0.0 in the reasons
  checks = [_check(DOMAIN_AUC_WORSE, d, 'AUC', s, s.difference.auc, auc_bound, False,
                   _values(s, evaluation, 'auc')) for d, s in deciding]
  checks.append(_check(WAUC_WORSE, OVERALL, 'WAUC', overall, overall.difference.wauc, 0.0, False,
                       _values(overall, evaluation, 'wauc')))
  if rules.calibrated:
    checks += [_check(LOGLOSS_WORSE, d, 'log loss', s, s.difference.logloss, rules.logloss_tolerance, True,
                      _values(s, evaluation, 'logloss')) for d, s in [(OVERALL, overall)] + deciding]
  return checks


def _first_run_checks(evaluation: Evaluation, rules: GateRules) -> list:
  """(rule, failed, reason) of every first-run check; the first failed one is the rule."""
  c = evaluation.candidate
  slices = [(d, s) for d, s in evaluation.domains.items() if s.deciding] + [(OVERALL, evaluation.overall)]
  checks = [_check(AUC_BELOW_FLOOR, d, 'AUC', s, s.models[c].auc, rules.min_domain_auc, False)
            for d, s in slices]
  figures = evaluation.overall.models[c]
  if rules.calibrated:
    checks.append(_check(
        WORSE_THAN_CONSTANT, OVERALL, 'log loss vs the constant click rate', evaluation.overall,
        figures.logloss_vs_constant, 0.0, True,
        f'{figures.logloss.value:.4f} - {figures.calibration.constant_logloss:.4f} = '))
  return checks


def _check(rule: str, name: str, figure: str, s: SliceEvaluation, estimate: Estimate, threshold: float,
           above: bool, values: str = '') -> tuple:
  """(rule, failed, reason): fails when the interval lies entirely above `threshold` (lower > threshold,
  `above`) or entirely below it (upper < threshold). `values` ("a - b = ") marks a difference. An
  interval that cannot be computed does not fail."""
  counts = f'n={s.count}, {s.positives} positives'
  if math.isnan(estimate.lower) or math.isnan(estimate.upper):
    return rule, False, f'{name}: {figure} interval cannot be computed ({counts})'
  failed = estimate.lower > threshold if above else estimate.upper < threshold
  relation = ('' if failed else 'not ') + ('significantly above' if above else 'significantly below')
  return rule, failed, (f'{name}: {figure} {_interval(estimate, values)} is {relation} {threshold:.4f} '
                        f'({counts})')


def _small_domain_text(evaluation: Evaluation, s: SliceEvaluation) -> str:
  """A non-deciding domain's AUC (first run) or AUC difference, with its interval and counts."""
  if evaluation.baseline is None:
    estimate, values = s.models[evaluation.candidate].auc, ''
  else:
    estimate, values = s.difference.auc, _values(s, evaluation, 'auc')
  text = 'AUC cannot be computed' if math.isnan(estimate.value) else f'AUC {_interval(estimate, values)}'
  return f'{text} (n={s.count}, {s.positives} positives)'


def _values(s: SliceEvaluation, evaluation: Evaluation, figure: str) -> str:
  """"candidate - baseline = " of one ModelFigures field on a slice."""
  c, b = (getattr(s.models[m], figure).value for m in (evaluation.candidate, evaluation.baseline))
  return f'{c:.4f} - {b:.4f} = '


def _interval(estimate: Estimate, values: str = '') -> str:
  """"a - b = +d [lo, hi] (C% CI)" for a difference, "v [lo, hi] (C% CI)" for a single figure."""
  value = f'{values}{estimate.value:+.4f}' if values else f'{estimate.value:.4f}'
  return (f'{value} [{estimate.lower:.4f}, {estimate.upper:.4f}] '
          f'({100 * estimate.confidence:.4g}% CI)')


def _slice(y, scores, result, deciding, confidence, names, candidate, baseline, domain_parts=None):
  """SliceEvaluation of the examples (y, scores [K, n]) with their DeLong `result`; `domain_parts`
  ([(n_d, DeLong_d)]) adds WAUC figures (the overall slice)."""
  k = len(names)
  models = {}
  for i, name in enumerate(names):
    unit = np.eye(k)[i]
    models[name] = ModelFigures(
        auc=significance.delong_estimate(result, unit, confidence),
        logloss=significance.logloss_interval(y, scores[i], confidence),
        logloss_vs_constant=significance.logloss_versus_constant(y, scores[i], confidence),
        calibration=significance.calibration_figures(y, scores[i]),
        wauc=significance.weighted_estimate(domain_parts, unit, confidence) if domain_parts is not None else None)
  difference = None
  if baseline is not None:
    contrast = np.eye(k)[names.index(candidate)] - np.eye(k)[names.index(baseline)]
    difference = Difference(
        auc=significance.delong_estimate(result, contrast, confidence),
        logloss=significance.logloss_difference(
            y, scores[names.index(candidate)], scores[names.index(baseline)], confidence),
        wauc=significance.weighted_estimate(domain_parts, contrast, confidence) if domain_parts is not None else None)
  positives = int(y.sum())
  return SliceEvaluation(int(y.size), positives, int(y.size) - positives, deciding, models, difference)


def _decides(y, rules: GateRules) -> bool:
  """Whether a domain with labels y is large enough to decide."""
  positives = int(y.sum())
  return (y.size >= rules.min_examples and positives >= rules.min_positives
          and y.size - positives >= rules.min_positives)


def _domain_name(domain) -> str:
  return domain.decode() if isinstance(domain, bytes) else str(domain)


# --- The TFX component ----------------------------------------------------------------------------------

EVALUATION_FILE = 'evaluation.json'  # inside the ModelBlessing artifact
CANDIDATE, PRODUCTION, PRETRAINED = 'candidate', 'production', 'pretrained'
SCORING_BATCH = 4096


def gate_settings(split: str, domain: str, task_labels: Mapping[str, str], rules: GateRules,
                  task_floors: Mapping[str, float], uncalibrated: Sequence[str] = ()) -> str:
  """PromotionGate's `settings` parameter: the split it judges on, the domain column, {task output: label
  column}, the rules, each task's first-run AUC floor (default rules.min_domain_auc) and the tasks whose
  scores are not probabilities of their label on every example (GateRules.calibrated)."""
  return json.dumps({'split': split, 'domain': domain, 'task_labels': dict(task_labels),
                     'rules': dataclasses.asdict(rules), 'task_floors': dict(task_floors),
                     'uncalibrated': sorted(uncalibrated)}, sort_keys=True)


def read_examples(examples_uri: str, split: str, columns: Mapping[str, object]):
  """(the serialized tf.Examples of `split` in batches of SCORING_BATCH, {column: values}) of an ExampleGen
  output; `columns`: {name: tf dtype} to parse (labels as int64/float, the domain as string). The records stay
  string tensors: a Python bytes object per record cost more than scoring them (measured on 200k rows)."""
  files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, f'Split-{split}', '*')))
  batches = list(tf.data.TFRecordDataset(files, compression_type='GZIP').batch(SCORING_BATCH))
  spec = {name: tf.io.FixedLenFeature([], dtype) for name, dtype in columns.items()}
  parsed = {name: [] for name in columns}
  for batch in batches:
    for name, values in tf.io.parse_example(batch, spec).items():
      parsed[name].append(values.numpy())
  return batches, {name: np.concatenate(values) if values else np.zeros([0]) for name, values in parsed.items()}


def score(model_dir: str, batches: Sequence[tf.Tensor]) -> Dict[str, np.ndarray]:
  """{output: scores} of a SavedModel's serving_default (TF Serving's request path) over `batches` of
  serialized tf.Examples."""
  serve = tf.saved_model.load(model_dir).signatures['serving_default']
  outputs: Dict[str, list] = {}
  for batch in batches:
    for name, values in serve(examples=batch).items():
      outputs.setdefault(name, []).append(values.numpy().reshape(-1))
  return {name: np.concatenate(parts) for name, parts in outputs.items()}


def judge(examples_uri: str, schema_columns: Mapping[str, object], models: Mapping[str, str], settings: dict) -> dict:
  """Scores `models` ({CANDIDATE, PRODUCTION?, PRETRAINED?: SavedModel dir}) on the settings' split and
  returns {'blessed', 'split', 'examples', 'tasks': {task: {'evaluation', 'decision'}}}: the rule applied
  to every task output, blessed when every task is."""
  rules = GateRules(**settings['rules'])
  labels = settings['task_labels']
  columns = {name: schema_columns[name] for name in {settings['domain'], *labels.values()}}
  batches, parsed = read_examples(examples_uri, settings['split'], columns)
  by_path: Dict[str, Dict[str, np.ndarray]] = {}  # a model named twice (onboarding: production is the "before")
  for path in models.values():
    if path not in by_path:
      by_path[path] = score(path, batches)
  scores = {name: by_path[path] for name, path in models.items()}
  baseline = PRODUCTION if PRODUCTION in models else None
  tasks = {}
  for task, column in labels.items():
    task_rules = dataclasses.replace(rules, min_domain_auc=settings['task_floors'].get(task, rules.min_domain_auc),
                                     calibrated=task not in settings['uncalibrated'])
    evaluation = evaluate(parsed[column], parsed[settings['domain']], {m: s[task] for m, s in scores.items()},
                          baseline=baseline, candidate=CANDIDATE, rules=task_rules)
    tasks[task] = {'evaluation': evaluation.to_dict(), 'decision': decide(evaluation).to_dict()}
  return {'blessed': all(t['decision']['blessed'] for t in tasks.values()), 'split': settings['split'],
          'examples': int(sum(batch.shape[0] for batch in batches)), 'tasks': tasks}


def read_evaluation(blessing_uri: str) -> dict:
  """The evaluation.json a PromotionGate wrote into its blessing."""
  with tf.io.gfile.GFile(os.path.join(blessing_uri, EVALUATION_FILE)) as f:
    return json.load(f)


@tfx.dsl.components.component
def PromotionGate(  # pylint: disable=invalid-name
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    blessing: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    settings: tfx.dsl.components.Parameter[str],
    baseline_model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model] = None,
    pretrained_model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model] = None,
) -> None:
  """Blesses `model` or not by the paired per-domain rule of this module against the production model
  `baseline_model` (none on a first run), reporting the pretrained model beside it; `settings` from
  `gate_settings`."""
  schema_proto = io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(schema.uri))
  columns = {k: v.dtype for k, v in schema_utils.schema_as_feature_spec(schema_proto).feature_spec.items()}
  models = {name: m for name, m in ((CANDIDATE, model), (PRODUCTION, baseline_model),
                                    (PRETRAINED, pretrained_model)) if m is not None}
  result = judge(examples.uri, columns, {name: path_utils.serving_model_path(m.uri) for name, m in models.items()},
                 json.loads(settings))
  result['models'] = {name: m.uri for name, m in models.items()}
  with tf.io.gfile.GFile(os.path.join(blessing.uri, EVALUATION_FILE), 'w') as f:
    json.dump(result, f, indent=1)
  io_utils.write_string_file(os.path.join(blessing.uri, 'BLESSED' if result['blessed'] else 'NOT_BLESSED'), '')
  # What the Evaluator's blessing carries: Pusher reads `blessed`; the LatestBlessedModelResolver and the CTNet
  # source resolver read `current_model_id` (tfx/components/evaluator/executor.py).
  blessing.set_int_custom_property('blessed', int(result['blessed']))
  blessing.set_string_custom_property('current_model', model.uri)
  blessing.set_int_custom_property('current_model_id', model.id)
  if baseline_model is not None:
    blessing.set_string_custom_property('baseline_model', baseline_model.uri)
    blessing.set_int_custom_property('baseline_model_id', baseline_model.id)
  blessing.set_string_custom_property('rule', ','.join(t['decision']['rule'] for t in result['tasks'].values()))
