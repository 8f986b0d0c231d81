"""How good is the promotion gate? Candidate/production pairs of known quality on the default data, judged by
the gate (issue 13, item 3).

The default data (`data.synthetic`) comes from a hidden model, so the truth about any two models is known:
this benchmark rebuilds the generator's world (`World`, checked row for row against `synthetic.generate`),
and scores every model on a large fresh sample of that world that the gate never sees, with each row's
true click probability in place of its sampled label (expected AUC and log loss: no label noise), so that
every pair's true per-domain and overall AUC, WAUC and log-loss differences are known. Three kinds of pairs:

- better: production trained on a share of the training rows (`--better-row-share`), the candidate on all
  of them. Not fewer steps: at this data size the shorter run is the better calibrated one (lower true log
  loss), so "more steps" is not truly better;
- equivalent: the same recipe, another seed (the production models in a ring: model i+1 against model i);
- worse: the candidate's training rows of one domain corrupted (an informative feature shuffled within the
  domain, or a share of its labels replaced by coin flips at the domain's click rate), in a large domain
  (home_feed) and small ones (coupon, new_user), against a production model of the full recipe.

Each kind is checked against the truth before it counts towards the goal: better needs a true WAUC gain of
at least `MATERIAL` and no true overall log-loss increase; worse needs the corrupted domain's true AUC to
drop by at least `MATERIAL`; equivalent pairs are the same recipe by construction (their true differences
are reported). A pair whose truth does not confirm its kind is listed as unconfirmed, outside the goal.

The gate judges every pair as the pipeline's PromotionGate does: `components.promotion_gate.evaluate` and
`decide` on the test split (which no model trains or selects on) with the pipeline's rules
(`PipelineConfig().gate_rules()`). Goal: no truly worse candidate promoted, at least 90% of the truly
better ones promoted. A worse pair counts when the test split can show its drop (`resolvable`); the others
are reported on a row of their own.

In-process, without the pipeline: `synthetic.generate(rows, seed)` split 60/20/20 (train/eval/test, as the
pipeline's 3:1:1 hash split), the project's `preprocessing_fn` analyzed on the clean train split by
tf.Transform (Beam in memory: the Transform component's graph) and applied to every split and to the
corrupted rows; the models are the pretrain stage's (`models.model.build_model`, the pipeline's backbone
and layer sizes, the Trainer's `input_fn`, Adam, the best validation-AUC epoch on the eval split as
`BestValidationWeights` keeps it), with `--steps` steps. One production model per seed serves a better, an
equivalent and a worse pair.

    .venv/bin/python benchmarks/gate_quality.py --output-dir outputs/gate-quality \
        --results docs/results/gate_quality.json [--what-if logloss_tolerance=0.01 ...]

Prints a progress line per model and pair; appends one JSON line per judged pair to OUTPUT_DIR/pairs.jsonl
and keeps every model's predictions in OUTPUT_DIR/predictions, so an interrupted run resumes where it
stopped; then prints the table (`format_markdown`) and writes the results (settings, wall time, every pair's
truth and decision; no predictions) to OUTPUT_DIR/gate_quality.json and to `--results`, the file that
`tfx_runner.py docs` renders into README.md's `gate gate_quality` block. `--what-if KEY=VALUE` also decides
every pair with other GateRules tolerances or floors on the same evaluations (a second table; the gate's own
rules do not change).
"""
import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from data import synthetic  # noqa: E402

SPEC = synthetic.FEATURE_SPEC
DOMAINS = list(synthetic.DOMAIN_SHARES)
SPLIT_SHARES = (('train', 0.6), ('eval', 0.2), ('test', 0.2))
KINDS = ('better', 'equivalent', 'worse')
MATERIAL = 0.01  # a true AUC / WAUC change that confirms a pair's kind: twice the gate's auc_tolerance
EPS = 1e-7  # prediction clipping of the log loss, as models.significance


# --- The generator's world ------------------------------------------------------------------------------

@dataclasses.dataclass
class World:
  """The hidden parameters of `synthetic.generate(num_rows, seed)`, drawn in the generator's order, and the
  random state right after them: `rows` then draws that call's rows, or any number of fresh rows of the
  same world (`synthetic.generate` with another seed is another world)."""
  user_taste: np.ndarray
  user_cvr: np.ndarray
  user_activity: np.ndarray
  item_category: np.ndarray
  item_taste: np.ndarray
  item_cvr: np.ndarray
  item_bias: np.ndarray
  item_price: np.ndarray
  domain_bias: np.ndarray
  domain_context: np.ndarray
  domain_price: np.ndarray
  domain_twist: np.ndarray
  domain_category: np.ndarray
  rng: np.random.Generator

  @classmethod
  def of(cls, num_rows: int, seed: int) -> 'World':
    s = synthetic
    rng = np.random.default_rng(seed)
    users, items, domains, dim = (max(500, num_rows // s.ROWS_PER_USER), max(300, num_rows // s.ROWS_PER_ITEM),
                                  len(DOMAINS), s.LATENT_DIM)
    user_taste = rng.normal(size=(users, dim)) / np.sqrt(dim)
    user_cvr = rng.normal(size=(users, dim)) / np.sqrt(dim)
    user_activity = rng.gamma(2.0, 1.0, size=users)
    item_category = rng.integers(0, s.NUM_CATEGORIES, size=items)
    category_taste = rng.normal(size=(s.NUM_CATEGORIES, dim))
    item_taste = (category_taste[item_category] + rng.normal(size=(items, dim))) / np.sqrt(2 * dim)
    item_cvr = rng.normal(size=(items, dim)) / np.sqrt(dim)
    item_bias = rng.normal(0.0, 0.4, size=items)
    item_price = np.round(rng.lognormal(3.0, 0.8, size=items), 2)
    domain_bias = rng.normal(0.0, 0.5, size=domains)
    domain_context = rng.normal(0.0, 0.5, size=(domains, len(s.CONTEXTS)))
    domain_price = rng.normal(0.0, 0.5, size=domains)
    domain_twist = rng.normal(size=(domains, dim, dim)) / np.sqrt(dim)
    domain_category = rng.normal(0.0, 0.5, size=(domains, s.NUM_CATEGORIES))
    return cls(user_taste, user_cvr, user_activity, item_category, item_taste, item_cvr, item_bias, item_price,
               domain_bias, domain_context, domain_price, domain_twist, domain_category, rng)

  def rows(self, num_rows: int, rng: Optional[np.random.Generator] = None,
           per_domain: Optional[int] = None) -> Tuple[pd.DataFrame, np.ndarray]:
    """(rows, true click probability of each): `num_rows` rows with the generator's domain mix drawn from
    `rng` (default: the world's own state, which continues `synthetic.generate`'s draws), or with
    `per_domain` rows of every domain."""
    s = synthetic
    rng = rng or self.rng
    shares = np.array(list(s.DOMAIN_SHARES.values()))
    specificity = 1.0 + s.SPECIFICITY_SLOPE * np.log(shares.max() / shares)
    if per_domain:
      domain = np.repeat(np.arange(len(DOMAINS)), per_domain)
      num_rows = domain.size
    else:
      domain = rng.choice(len(DOMAINS), size=num_rows, p=shares / shares.sum())
      domain[:len(DOMAINS)] = np.arange(len(DOMAINS))
    user = s._zipf_choice(rng, len(self.user_taste), num_rows, exponent=0.8)  # pylint: disable=protected-access
    item = s._zipf_choice(rng, len(self.item_taste), num_rows)  # pylint: disable=protected-access
    context = rng.integers(0, len(s.CONTEXTS), size=num_rows)
    log_price = (np.log(self.item_price[item]) - 3.0) / 0.8
    category = self.item_category[item]
    shared = np.einsum('nk,nk->n', self.user_taste[user], self.item_taste[item])
    twisted_items = np.einsum('nkj,nj->nk', self.domain_twist[domain], self.item_taste[item])
    specific = np.einsum('nk,nk->n', self.user_taste[user], twisted_items)
    root = np.sqrt(s.LATENT_DIM)
    domain_specific = (self.domain_context[domain, context] + self.domain_price[domain] * log_price
                       + self.domain_category[domain, category] + s.DOMAIN_WEIGHT * specific * root)
    logit = (-2.0 + self.item_bias[item] + self.domain_bias[domain] + s.SHARED_WEIGHT * shared * root
             + specificity[domain] * domain_specific)
    probability = 1.0 / (1.0 + np.exp(-logit))
    click = rng.random(num_rows) < probability
    cvr_logit = -1.0 + 2.0 * np.einsum('nk,nk->n', self.user_cvr[user], self.item_cvr[item]) * root
    conversion = click & (rng.random(num_rows) < 1.0 / (1.0 + np.exp(-cvr_logit)))
    frame = pd.DataFrame({
        'domain': np.array(DOMAINS)[domain], 'user_id': user + 1, 'item_id': item + 1, 'category': category + 1,
        'context': np.array(s.CONTEXTS)[context], 'price': self.item_price[item],
        'user_activity': np.round(self.user_activity[user], 3), 'click': click.astype(np.int64),
        'conversion': conversion.astype(np.int64)})
    return frame, probability


def default_data(num_rows: int, seed: int) -> Tuple[pd.DataFrame, np.ndarray, World]:
  """`synthetic.generate(num_rows, seed)` with each row's true click probability, and its world; raises
  when the replica no longer draws what the generator does."""
  world = World.of(num_rows, seed)
  frame, probability = world.rows(num_rows)
  expected = synthetic.generate(num_rows, seed)
  if not frame.equals(expected):
    raise RuntimeError('benchmarks/gate_quality.py World no longer reproduces data/synthetic.py generate(): '
                       'update the replica')
  return frame, probability, world


def split(frame: pd.DataFrame, probability: np.ndarray, seed: int) -> Dict[str, Tuple[pd.DataFrame, np.ndarray]]:
  """{split: (rows, true click probabilities)}: a seeded 60/20/20 permutation split."""
  order = np.random.default_rng(seed).permutation(len(frame))
  bounds = np.cumsum([0] + [int(round(share * len(frame))) for _, share in SPLIT_SHARES])
  bounds[-1] = len(frame)
  return {name: (frame.iloc[order[bounds[i]:bounds[i + 1]]].reset_index(drop=True),
                 probability[order[bounds[i]:bounds[i + 1]]]) for i, (name, _) in enumerate(SPLIT_SHARES)}


# --- Transform ------------------------------------------------------------------------------------------

def transformed(frame: pd.DataFrame, tf_transform_output) -> Dict[str, np.ndarray]:
  """The rows as Transform's transformed examples (serialized as CsvExampleGen writes them, then parsed)."""
  from benchmarks import in_process  # pylint: disable=g-import-not-at-top
  return in_process.transform(in_process.serialize(frame), tf_transform_output)


def take(columns: Dict[str, np.ndarray], rows: np.ndarray) -> Dict[str, np.ndarray]:
  return {k: v[rows] for k, v in columns.items()}


# --- Models ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Recipe:
  """How one model is trained: the pretrain stage's recipe on `row_share` of the training rows (a prefix of
  a seeded permutation) for `step_share` of the steps, with `corruption` (`Corruption.key`) applied to the
  training rows, from `seed`."""
  seed: int
  row_share: float = 1.0
  step_share: float = 1.0
  corruption: Optional[str] = None

  @property
  def key(self) -> str:
    parts = [f's{self.seed}']
    if self.row_share != 1.0:
      parts.append(f'rows{self.row_share:g}')
    if self.step_share != 1.0:
      parts.append(f'steps{self.step_share:g}')
    if self.corruption:
      parts.append(self.corruption)
    return '-'.join(parts)


@dataclasses.dataclass(frozen=True)
class Corruption:
  """A corruption of one domain's training rows: `shuffle:COLUMN` permutes that raw column among the domain's
  rows (the feature carries no information there any more), `labels:SHARE` replaces that share of the
  domain's labels by coin flips at the domain's click rate (the base rate stays; the signal fades)."""
  domain: str
  how: str

  @property
  def key(self) -> str:
    return f'{self.domain}:{self.how}'

  @classmethod
  def parse(cls, key: str) -> 'Corruption':
    domain, how = key.split(':', 1)
    return cls(domain, how)

  def apply(self, frame: pd.DataFrame, seed: int) -> Tuple[np.ndarray, pd.DataFrame]:
    """(positions of the domain's rows in `frame`, those rows corrupted)."""
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(frame[SPEC.domain].to_numpy() == self.domain)
    kind, _, argument = self.how.partition(':')
    corrupted = frame.iloc[rows].copy()
    if kind == 'shuffle':
      corrupted[argument] = corrupted[argument].to_numpy()[rng.permutation(len(rows))]
    elif kind == 'labels':
      labels = corrupted[SPEC.label].to_numpy().copy()
      flip = rng.random(len(rows)) < float(argument)
      labels[flip] = rng.random(int(flip.sum())) < labels.mean()
      corrupted[SPEC.label] = labels.astype(np.int64)
    else:
      raise ValueError(f'unknown corruption {self.how!r}: shuffle:COLUMN or labels:SHARE')
    return rows, corrupted


@dataclasses.dataclass
class Data:
  """Everything the models train and are judged on: the transform, the clean training rows (raw, to corrupt,
  and transformed), the eval split's transformed columns (epoch selection), the test split the gate judges
  on and the fresh rows of the truth (transformed, with labels, domains and true click probabilities)."""
  tf_transform_output: object
  train_frame: pd.DataFrame
  train: Dict[str, np.ndarray]
  eval: Dict[str, np.ndarray]
  test: Dict[str, np.ndarray]
  test_labels: np.ndarray
  test_domains: np.ndarray
  test_probability: np.ndarray
  fresh: Dict[str, np.ndarray]
  fresh_domains: np.ndarray
  fresh_probability: np.ndarray

  @classmethod
  def build(cls, rows: int, seed: int, fresh_per_domain: int, work_dir: str, transform_config: dict,
            log=print) -> 'Data':
    from benchmarks import in_process  # pylint: disable=g-import-not-at-top
    frame, probability, world = default_data(rows, seed)
    splits = split(frame, probability, seed)
    start = time.time()
    tf_transform_output = in_process.analyze(in_process.serialize(splits['train'][0]), transform_config,
                                  os.path.join(work_dir, f'transform-rows{rows}-seed{seed}'))
    log(f'transform graph analyzed on {len(splits["train"][0])} training rows ({time.time() - start:.0f} s)')
    # The truth: the same world, rows the gate never sees, as many of every domain (from another stream).
    fresh, fresh_probability = world.rows(0, np.random.default_rng([seed, 2024]), per_domain=fresh_per_domain)
    start = time.time()
    columns = {name: transformed(part, tf_transform_output) for name, (part, _) in splits.items()}
    fresh_columns = transformed(fresh, tf_transform_output)
    log(f'transformed {len(frame)} rows and {len(fresh)} fresh rows ({time.time() - start:.0f} s)')
    test, test_probability = splits['test']
    return cls(tf_transform_output, splits['train'][0], columns['train'], columns['eval'], columns['test'],
               test[SPEC.label].to_numpy(), test[SPEC.domain].to_numpy(), test_probability, fresh_columns,
               fresh[SPEC.domain].to_numpy(), fresh_probability)

  def training_columns(self, recipe: Recipe) -> Dict[str, np.ndarray]:
    """The recipe's training rows: the corrupted domain's rows replaced by their corruption put through the
    transform graph, then the recipe's share of the rows."""
    columns = self.train
    if recipe.corruption:
      rows, corrupted = Corruption.parse(recipe.corruption).apply(self.train_frame, seed=recipe.seed)
      replaced = transformed(corrupted, self.tf_transform_output)
      columns = {k: v.copy() for k, v in columns.items()}
      for k, v in replaced.items():
        columns[k][rows] = v
    if recipe.row_share < 1.0:
      kept = np.random.default_rng([recipe.seed, 7]).permutation(len(self.train_frame))
      columns = take(columns, np.sort(kept[:max(1, int(round(recipe.row_share * len(kept))))]))
    return columns


@dataclasses.dataclass(frozen=True)
class Training:
  """The benchmark's training settings; the rest is the pipeline's pretrain recipe (PipelineConfig defaults:
  batch, learning rate, eval steps, embedding L2, domain dropout, ...)."""
  steps: int = 1000
  hidden_units: Tuple[int, ...] = (256, 128, 64)
  embedding_dim: int = 16

  def pipeline_config(self, seed: int, steps: int):
    from pipeline.config import PipelineConfig  # pylint: disable=g-import-not-at-top
    return PipelineConfig('', '', '', SPEC, hidden_units=tuple(self.hidden_units), embedding_dim=self.embedding_dim,
                          pretrain_steps=steps, seed=seed)


def train_model(data: Data, training: Training, recipe: Recipe):
  """(Keras model, {best_epoch, validation_auc, steps, rows}): the pretrain stage's model of `recipe`, as
  models/trainer.py `pretrain_run_fn` trains it (its input_fn, loss, optimizer, epochs, best validation AUC,
  calibration)."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  from benchmarks import in_process  # pylint: disable=g-import-not-at-top
  from models import model as model_lib  # pylint: disable=g-import-not-at-top
  from models import trainer  # pylint: disable=g-import-not-at-top

  steps = max(1, int(round(training.steps * recipe.step_share)))
  pipeline_config = training.pipeline_config(recipe.seed, steps)
  config = pipeline_config.trainer_config('pretrain')
  columns = data.training_columns(recipe)
  tf_keras.utils.set_random_seed(recipe.seed)
  model = trainer.build_stage_model(config, SPEC, data.tf_transform_output, freeze_backbone=False)
  names = list(model.input.keys())
  accessor = in_process.InMemoryAccessor({'train': columns, 'eval': data.eval})
  batch = config['batch_size']
  train = trainer.input_fn('train', accessor, data.tf_transform_output, SPEC, batch, recipe.seed, names)
  validation = trainer.input_fn('eval', accessor, data.tf_transform_output, SPEC, batch, recipe.seed, names,
                                validation_steps=pipeline_config.eval_steps)
  model.compile(optimizer=tf_keras.optimizers.Adam(config['learning_rate']),
                loss=tf_keras.losses.BinaryCrossentropy(), metrics=[tf_keras.metrics.AUC(name='auc')])
  epochs, per_epoch = trainer.epoch_plan(steps)
  best = trainer.BestValidationWeights(validation)
  model.fit(train, epochs=epochs, steps_per_epoch=per_epoch, validation_data=validation, callbacks=[best], verbose=0)
  calibration = model_lib.calibration_layer(model)
  if calibration is not None:  # the Trainer's last step: per-domain Platt scaling on the validation batches
    trainer.fit_calibration(model, calibration, validation, SPEC)
  return model, {'best_epoch': best.best_epoch, 'validation_auc': float(best.best), 'steps': steps,
                 'rows': int(len(columns[SPEC.label]))}


def predict(model, columns: Dict[str, np.ndarray]) -> np.ndarray:
  names = list(model.input.keys())
  return model.predict({k: columns[k] for k in names}, batch_size=8192, verbose=0).reshape(-1).astype(np.float64)


# --- The truth ------------------------------------------------------------------------------------------

def expected_auc(probability: np.ndarray, scores: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
  """The AUC of `scores` expected over the labels, each row a positive with weight w p and a negative with
  weight w (1 - p) (p its true click probability): sum over ordered pairs of rows, ties 1/2, a row never
  paired with itself. No label noise: the rows alone vary."""
  w = np.ones_like(probability) if weights is None else weights
  order = np.argsort(scores, kind='stable')
  s, positive, negative = scores[order], (w * probability)[order], (w * (1 - probability))[order]
  starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
  pos, neg = np.add.reduceat(positive, starts), np.add.reduceat(negative, starts)
  below = np.cumsum(neg) - neg
  self_pairs = float(np.sum(w * w * probability * (1 - probability)))
  numerator = float(np.dot(pos, below + 0.5 * neg)) - 0.5 * self_pairs
  return numerator / (positive.sum() * negative.sum() - self_pairs)


def expected_logloss(probability: np.ndarray, scores: np.ndarray) -> float:
  """The log loss of `scores` expected over the labels: mean of -(p log q + (1 - p) log(1 - q))."""
  q = np.clip(scores, EPS, 1 - EPS)
  return float(np.mean(-(probability * np.log(q) + (1 - probability) * np.log1p(-q))))


def truth(data: Data, scores: np.ndarray) -> dict:
  """One model's expected figures on the fresh rows: per domain AUC and log loss; overall WAUC and log loss
  with the population's domain shares (`DOMAIN_SHARES`) as weights, and the pooled AUC of rows so weighted."""
  shares = np.array(list(synthetic.DOMAIN_SHARES.values()))
  shares = shares / shares.sum()
  result = {'domains': {}}
  row_weights = np.zeros_like(scores)
  for d, share in zip(DOMAINS, shares):
    rows = data.fresh_domains == d
    p = data.fresh_probability[rows]
    result['domains'][d] = {'auc': expected_auc(p, scores[rows]), 'logloss': expected_logloss(p, scores[rows])}
    row_weights[rows] = share / rows.sum()
  result['wauc'] = float(sum(share * result['domains'][d]['auc'] for d, share in zip(DOMAINS, shares)))
  result['logloss'] = float(sum(share * result['domains'][d]['logloss'] for d, share in zip(DOMAINS, shares)))
  result['auc'] = expected_auc(data.fresh_probability, scores, row_weights * len(scores))
  return result


def true_difference(candidate: dict, production: dict) -> dict:
  """Candidate - production of every figure of `truth`."""
  return {'domains': {d: {k: candidate['domains'][d][k] - production['domains'][d][k] for k in ('auc', 'logloss')}
                      for d in DOMAINS},
          **{k: candidate[k] - production[k] for k in ('wauc', 'logloss', 'auc')}}


# --- Pairs ----------------------------------------------------------------------------------------------

DEFAULT_CORRUPTIONS = (
    'home_feed:labels:1', 'home_feed:labels:0.5', 'home_feed:shuffle:user_id', 'home_feed:shuffle:item_id',
    'coupon:labels:1', 'coupon:labels:0.5', 'coupon:shuffle:item_id', 'coupon:shuffle:category',
    'new_user:labels:1', 'new_user:labels:0.5', 'new_user:shuffle:item_id', 'new_user:shuffle:category',
    'coupon:labels:0.75', 'new_user:labels:0.75')


@dataclasses.dataclass(frozen=True)
class Pair:
  """A candidate judged against a production model; `kind` is what its construction intends."""
  kind: str
  candidate: Recipe
  production: Recipe

  @property
  def key(self) -> str:
    return f'{self.kind}:{self.candidate.key}>{self.production.key}'

  @property
  def corrupted_domain(self) -> Optional[str]:
    return Corruption.parse(self.candidate.corruption).domain if self.candidate.corruption else None


def plan_pairs(productions: int, better: int, corruptions: Sequence[str], better_row_share: float) -> List[Pair]:
  """`better` better pairs, `productions` equivalent pairs (a ring over the production models) and a worse
  pair per corruption; production model i is `Recipe(i)`, the other models have seeds of their own."""
  if productions < 2 or better > productions:
    raise ValueError(f'needs 2 <= better <= productions, got {productions} productions, {better} better')
  full = [Recipe(i) for i in range(productions)]
  pairs = [Pair('better', full[i], Recipe(100 + i, row_share=better_row_share)) for i in range(better)]
  pairs += [Pair('equivalent', full[(i + 1) % productions], full[i]) for i in range(productions)]
  pairs += [Pair('worse', Recipe(200 + i, corruption=c), full[i % productions]) for i, c in enumerate(corruptions)]
  return pairs


def confirmed(kind: str, difference: dict, corrupted_domain: Optional[str], logloss_tolerance: float) -> bool:
  """Whether the true candidate - production `difference` (`true_difference`) confirms the intended kind."""
  if kind == 'better':
    return difference['wauc'] >= MATERIAL and difference['logloss'] <= logloss_tolerance
  if kind == 'worse':
    return difference['domains'][corrupted_domain]['auc'] <= -MATERIAL
  return True


def judge_pair(pair: Pair, data: Data, scores: Dict[str, Dict[str, np.ndarray]], truths: Dict[str, dict],
               rules, what_if: Sequence[str] = ()) -> dict:
  """One results row: the gate's decision on the test split (the real `evaluate` and `decide`), the checks
  that blocked, its overall and corrupted-domain figures, and the truth; with `what_if` (`parse_rules`
  texts), the decision under those rules too (tolerances and floors only: the intervals stay)."""
  from components import promotion_gate as gate  # pylint: disable=g-import-not-at-top
  candidate, production = pair.candidate.key, pair.production.key
  evaluation = gate.evaluate(data.test_labels, data.test_domains,
                             {'production': scores[production]['test'], 'candidate': scores[candidate]['test']},
                             baseline='production', candidate='candidate', rules=rules)
  decision = gate.decide(evaluation, rules)
  difference = true_difference(truths[candidate], truths[production])
  domain = pair.corrupted_domain
  row = {'key': pair.key, 'kind': pair.kind, 'candidate': candidate, 'production': production,
         'corruption': pair.candidate.corruption, 'domain': domain,
         'promoted': bool(decision.blessed), 'rule': decision.rule,
         'confirmed': bool(confirmed(pair.kind, difference, domain, rules.logloss_tolerance)),
         'blocks': [reason for reason in decision.reasons if ' is significantly ' in reason],
         'gate_dwauc': _estimate(evaluation.overall.difference.wauc),
         'true_dwauc': round(difference['wauc'], 5), 'true_dlogloss': round(difference['logloss'], 5),
         'true_domains': {d: {k: round(v, 5) for k, v in figures.items()}
                          for d, figures in difference['domains'].items()},
         'what_if': {text: _verdict(gate.decide(evaluation, parse_rules(text, rules))) for text in what_if}}
  if domain:
    s = evaluation.domains[domain]
    row.update(domain_test_examples=s.count, domain_test_positives=s.positives, domain_deciding=s.deciding,
               gate_domain_dauc=_estimate(s.difference.auc),
               true_domain_dauc=round(difference['domains'][domain]['auc'], 5))
  return row


def parse_rules(text: str, rules):
  """`rules` with the changes of "KEY=VALUE,KEY=VALUE" (GateRules fields)."""
  changes = dict(item.split('=', 1) for item in text.split(','))
  fields = {f.name: f.type for f in dataclasses.fields(rules)}
  unknown = sorted(set(changes) - set(fields))
  if unknown:
    raise ValueError(f'unknown GateRules fields {unknown}; expected some of {sorted(fields)}')
  return dataclasses.replace(rules, **{k: (v.lower() == 'true' if fields[k] in (bool, 'bool') else
                                           type(getattr(rules, k))(v)) for k, v in changes.items()})


def _verdict(decision) -> dict:
  return {'promoted': bool(decision.blessed), 'rule': decision.rule}


def _estimate(estimate) -> List[float]:
  """[value, lower, upper], rounded."""
  return [round(float(v), 5) for v in (estimate.value, estimate.lower, estimate.upper)]


# --- The table ------------------------------------------------------------------------------------------

def block_is_true(row: dict, rules: dict) -> Optional[bool]:
  """Whether the truth confirms a check that blocked the pair (None when none blocked): the blocking slice's
  true change lies beyond the gate's threshold (a domain's AUC below -auc_tolerance, a log loss above
  logloss_tolerance, the WAUC below 0)."""
  if not row['blocks']:
    return None
  truths = []
  for reason in row['blocks']:  # "NAME: FIGURE ... is significantly ..." (components/promotion_gate.py)
    name, text = reason.split(': ', 1)
    figure = 'logloss' if text.startswith('log loss') else 'auc'
    if name == 'overall':
      truths.append(row['true_dlogloss'] > rules['logloss_tolerance'] if figure == 'logloss'
                    else row['true_dwauc'] < 0)
    elif figure == 'logloss':
      truths.append(row['true_domains'][name]['logloss'] > rules['logloss_tolerance'])
    else:
      truths.append(row['true_domains'][name]['auc'] < -rules['auc_tolerance'])
  return any(truths)


def resolvable(row: dict) -> bool:
  """Whether the test split can show a worse pair's drop: its domain decides and the true drop is at least
  the half-width of the gate's interval of that domain's AUC difference. A drop that size is blocked about
  half the time; a smaller one less often than that by any test at the gate's confidence."""
  lower, upper = row['gate_domain_dauc'][1:]
  return bool(row['domain_deciding']) and -row['true_domain_dauc'] >= (upper - lower) / 2


def summarize(rows: Sequence[dict], rules: dict) -> List[dict]:
  """Table lines: per kind (worse: per corrupted domain, then all), the confirmed pairs, how many were
  promoted, blocked and blocked by a check the truth confirms (`block_is_true` under the gate's `rules`), and
  the rules that decided; worse pairs below the test split's resolution (`resolvable`) and unconfirmed pairs
  on lines of their own."""
  def line(label, group):
    deciding = {}
    for r in group:
      deciding[r['rule']] = deciding.get(r['rule'], 0) + 1
    promoted = sum(r['promoted'] for r in group)
    # The truth the kind rests on: the corrupted domain's AUC for a worse pair, else the WAUC.
    changes = [r['true_domain_dauc'] if r['kind'] == 'worse' else r['true_dwauc'] for r in group]
    test_examples = {r['domain']: r['domain_test_examples'] for r in group if r['domain']}
    blocks = [block_is_true(r, rules) for r in group]
    return {'kind': label, 'pairs': len(group), 'promoted': promoted, 'rate': promoted / len(group),
            'blocked': sum(b is not None for b in blocks), 'truly_blocked': sum(b is True for b in blocks),
            'test_examples': dict(sorted(test_examples.items(), key=lambda item: DOMAINS.index(item[0]))),
            'true_figure': 'domain AUC' if group[0]['kind'] == 'worse' else 'WAUC',
            'true_change': [min(changes), max(changes)],
            'rules': dict(sorted(deciding.items(), key=lambda item: (-item[1], item[0])))}

  lines = []
  for kind in KINDS:
    group = [r for r in rows if r['kind'] == kind and r['confirmed']]
    if kind == 'worse':
      unresolved = [r for r in group if not resolvable(r)]
      group = [r for r in group if resolvable(r)]
      domains = sorted({r['domain'] for r in group}, key=DOMAINS.index)
      lines += [line(kind, [r for r in group if r['domain'] == d]) for d in domains]
      if len(domains) > 1:
        lines.append(line('worse, all domains', group))
      if unresolved:
        lines.append(line('worse, below the test split\'s resolution', unresolved))
    elif group:
      lines.append(line(kind, group))
  # Unconfirmed pairs, listed apart: their truth does not say which way the gate should go.
  for kind in KINDS:
    group = [r for r in rows if r['kind'] == kind and not r['confirmed']]
    if group:
      lines.append(line(f'{kind}, not confirmed by the truth', group))
  return lines


def goal(rows: Sequence[dict]) -> dict:
  """The issue's goal on the confirmed pairs: no worse candidate promoted among those the test split resolves
  (the others are counted apart), >= 90% of the better ones promoted."""
  confirmed_worse = [r for r in rows if r['kind'] == 'worse' and r['confirmed']]
  worse = [r for r in confirmed_worse if resolvable(r)]
  unresolved = [r for r in confirmed_worse if not resolvable(r)]
  better = [r for r in rows if r['kind'] == 'better' and r['confirmed']]
  worse_promoted = sum(r['promoted'] for r in worse)
  better_rate = sum(r['promoted'] for r in better) / len(better) if better else None
  return {'worse_promoted': worse_promoted, 'worse': len(worse), 'better_rate': better_rate,
          'below_resolution': len(unresolved), 'below_resolution_promoted': sum(r['promoted'] for r in unresolved),
          'met': bool(worse and better and worse_promoted == 0 and better_rate >= 0.9)}


def format_markdown(results: dict) -> str:
  """The gate-quality table of a results file (`run`'s output): promotion rate per kind, with the corrupted
  domain and its test-split size for the worse kind, and the rules that decided."""
  rows, settings = results['pairs'], results['settings']
  header = ['| kind | domain (test examples) | true change | pairs | promoted | rate | blocked (truly) '
            '| deciding rule (pairs) |', '|---|---|---|---:|---:|---:|---:|---|']
  body = []
  for line in summarize(rows, settings['rules']):
    domain = ', '.join(f'{d} ({n})' for d, n in line['test_examples'].items())
    low, high = line['true_change']
    change = f"{line['true_figure']} {low:+.3f}" + (f' to {high:+.3f}' if high != low else '')
    rules = ', '.join(f'{rule} ({count})' for rule, count in line['rules'].items())
    body.append(f"| {line['kind']} | {domain} | {change} | {line['pairs']} | {line['promoted']} | "
                f"{100 * line['rate']:.0f}% | {line['blocked']} ({line['truly_blocked']}) | {rules} |")
  outcome = goal(rows)
  better = ('no confirmed better pair' if outcome['better_rate'] is None
            else f"{100 * outcome['better_rate']:.0f}% of the truly better promoted")
  rules = ', '.join(f'{k}={v}' for k, v in settings['rules'].items() if k != 'calibrated')
  worse = outcome['worse_promoted']
  unresolved = (f" (below the test split's resolution: {outcome['below_resolution_promoted']} of "
                f"{outcome['below_resolution']} promoted)" if outcome['below_resolution'] else '')
  note = (f"Goal {'met' if outcome['met'] else 'not met'}: {worse} of {outcome['worse']} truly worse candidate"
          f"{'' if outcome['worse'] == 1 else 's'} promoted{unresolved}, {better}. A worse pair is below the "
          f"resolution when its true drop is smaller than the half-width of the gate's interval for its domain "
          f"(any test at the gate's confidence blocks it less than half the time). "
          f"{len(rows)} pairs on `synthetic.generate({settings['rows']}, "
          f"seed={settings['seed']})` (test split {settings['test_examples']} examples), {settings['steps']} "
          f"training steps; the pipeline's gate rules ({rules}). Blocked: by a significant check; (truly): the "
          f"truth confirms a blocking check (the slice's true change is beyond the gate's threshold).")
  return '\n'.join(header + body) + '\n\n' + note + what_if_markdown(rows, settings.get('what_if', ()))


def what_if_markdown(rows: Sequence[dict], what_if: Sequence[str]) -> str:
  """The promotion rate of every confirmed kind (worse: the pairs the test split resolves) under the gate's
  rules and under each `--what-if` rules."""
  if not what_if:
    return ''
  verdicts = {'the gate\'s rules': lambda r: r['promoted'], **{
      text: (lambda r, text=text: r['what_if'][text]['promoted']) for text in what_if}}
  counted = [r for r in rows if r['confirmed'] and (r['kind'] != 'worse' or resolvable(r))]
  kinds = [kind for kind in KINDS if any(r['kind'] == kind for r in counted)]
  lines = ['| rules | ' + ' | '.join(f'{kind} promoted' for kind in kinds) + ' |',
           '|---|' + '---:|' * len(kinds)]
  for label, promoted in verdicts.items():
    cells = []
    for kind in kinds:
      group = [r for r in counted if r['kind'] == kind]
      cells.append(f'{sum(promoted(r) for r in group)}/{len(group)}')
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  return '\n\nWhat if (the same evaluations, decided with other tolerances):\n\n' + '\n'.join(lines)


# --- The run --------------------------------------------------------------------------------------------

def read_rows(path: str) -> List[dict]:
  """The judged pairs of pairs.jsonl, [] when it does not exist yet."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def model_scores(recipe: Recipe, data: Data, training: Training, cache_dir: str, log) -> Dict[str, np.ndarray]:
  """{'test', 'fresh'}: the recipe's model's predictions, trained once and kept in `cache_dir`."""
  path = os.path.join(cache_dir, f'{recipe.key}.npz')
  if os.path.exists(path):
    with np.load(path) as cached:
      return {'test': cached['test'], 'fresh': cached['fresh']}
  start = time.time()
  model, info = train_model(data, training, recipe)
  scores = {'test': predict(model, data.test), 'fresh': predict(model, data.fresh)}
  np.savez(path + '.tmp.npz', **scores)
  os.replace(path + '.tmp.npz', path)  # a model's predictions are there whole or not at all
  log(f'  trained {recipe.key}: {info["rows"]} rows, {info["steps"]} steps, best epoch {info["best_epoch"]}, '
      f'validation AUC {info["validation_auc"]:.4f} ({time.time() - start:.0f} s)')
  return scores


def run(args, log=print) -> dict:
  """Judges every planned pair not yet in OUTPUT_DIR/pairs.jsonl, appending each; returns the results."""
  from pipeline.config import PipelineConfig  # pylint: disable=g-import-not-at-top
  start = time.time()
  rules = PipelineConfig('', '', '', SPEC).gate_rules()
  training = Training(args.steps, tuple(args.hidden_units))
  settings = {'rows': args.rows, 'seed': args.seed, 'steps': training.steps,
              'hidden_units': list(training.hidden_units), 'fresh_rows_per_domain': args.fresh_rows_per_domain,
              'better_row_share': args.better_row_share, 'rules': dataclasses.asdict(rules),
              'what_if': list(args.what_if)}
  pairs = plan_pairs(args.productions, args.better, args.corruptions, args.better_row_share)
  os.makedirs(os.path.join(args.output_dir, 'predictions'), exist_ok=True)
  jsonl = os.path.join(args.output_dir, 'pairs.jsonl')
  rows = read_rows(jsonl)
  if any(r['settings'] != settings for r in rows):
    raise SystemExit(f'{jsonl} holds pairs of other settings: use another --output-dir')
  finished = {r['key'] for r in rows}
  data = Data.build(args.rows, args.seed, args.fresh_rows_per_domain, args.output_dir,
                    PipelineConfig('', '', '', SPEC).transform_config(), log)
  scores, truths = {}, {}
  for index, pair in enumerate(pairs, 1):
    progress = f'[{index}/{len(pairs)}] {pair.key}'
    if pair.key in finished:
      log(f'{progress}: judged earlier, skipped')
      continue
    log(f'{progress} ...')
    for recipe in (pair.candidate, pair.production):
      if recipe.key not in scores:
        scores[recipe.key] = model_scores(recipe, data, training, os.path.join(args.output_dir, 'predictions'),
                                          log)
        truths[recipe.key] = truth(data, scores[recipe.key]['fresh'])
    row = judge_pair(pair, data, scores, truths, rules, args.what_if)
    row['settings'] = settings
    with open(jsonl, 'a') as f:
      f.write(json.dumps(row) + '\n')
    rows.append(row)
    log(f'{progress}: {"PROMOTED" if row["promoted"] else "not promoted"} ({row["rule"]}); true dWAUC '
        f'{row["true_dwauc"]:+.4f}, dLogLoss {row["true_dlogloss"]:+.4f}'
        + (f', {pair.corrupted_domain} dAUC {row["true_domain_dauc"]:+.4f}' if pair.corrupted_domain else '')
        + ('' if row['confirmed'] else f'; NOT a confirmed {pair.kind} pair'))
  planned = {pair.key for pair in pairs}
  return {'settings': {**settings, 'test_examples': int(data.test_labels.size)},
          'command': ' '.join(['.venv/bin/python', 'benchmarks/gate_quality.py'] + sys.argv[1:]),
          'wall_s': round(time.time() - start), 'goal': goal(rows),
          'pairs': [{k: v for k, v in r.items() if k != 'settings'} for r in rows if r['key'] in planned]}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0] + ' Trains the models, judges every pair with the PromotionGate\'s '
      'evaluate/decide and prints the promotion rate per kind.', formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='The published run (README.md, docs/results/gate_quality.json), about 25 minutes on 2 CPU cores:\n\n'
             '  .venv/bin/python benchmarks/gate_quality.py --output-dir outputs/gate-quality \\\n'
             '      --results docs/results/gate_quality.json --what-if logloss_tolerance=0.005 \\\n'
             '      --what-if logloss_tolerance=0.01 --what-if logloss_tolerance=0.02 --what-if auc_tolerance=0 \\\n'
             '      --what-if auc_tolerance=0,logloss_tolerance=0.01')
  parser.add_argument('--output-dir', default='outputs/gate-quality',
                      help='pairs.jsonl, predictions/ (resume from them) and gate_quality.json')
  parser.add_argument('--results', help='also write the results here (docs/results/gate_quality.json: the file '
                                         '`tfx_runner.py docs` renders)')
  parser.add_argument('--rows', type=int, default=200_000, help='rows of synthetic.generate (default %(default)s)')
  parser.add_argument('--seed', type=int, default=0, help='data seed (default %(default)s)')
  parser.add_argument('--steps', type=int, default=Training.steps, help='training steps (default %(default)s)')
  parser.add_argument('--hidden-units', type=lambda v: [int(u) for u in v.split('-')],
                      default=list(Training.hidden_units), help='e.g. 256-128-64 (default: the pipeline\'s)')
  parser.add_argument('--productions', type=int, default=10,
                      help='production models of the full recipe = equivalent pairs (default %(default)s)')
  parser.add_argument('--better', type=int, default=10, help='better pairs (default %(default)s)')
  parser.add_argument('--better-row-share', type=float, default=0.5,
                      help='share of the training rows of a better pair\'s production model (default %(default)s)')
  parser.add_argument('--corruptions', type=lambda v: v.split(','), default=list(DEFAULT_CORRUPTIONS),
                      help='worse pairs, one per DOMAIN:labels:SHARE or DOMAIN:shuffle:COLUMN, comma-separated '
                           f'(default: {",".join(DEFAULT_CORRUPTIONS)})')
  parser.add_argument('--fresh-rows-per-domain', type=int, default=20_000,
                      help='rows of every domain on which the truth is computed (default %(default)s)')
  parser.add_argument('--what-if', action='append', default=[], metavar='KEY=VALUE[,KEY=VALUE]',
                      help='also decide every pair with these GateRules tolerances or floors (repeatable): '
                           'a what-if table beside the gate\'s own; the gate\'s defaults do not change')
  args = parser.parse_args(argv)
  logging.getLogger('tensorflow').setLevel(logging.ERROR)

  def log(message):
    print(f'{time.strftime("%H:%M:%S")} {message}', flush=True)

  results = run(args, log)
  text = format_markdown(results)
  print(text, flush=True)
  for path in [os.path.join(args.output_dir, 'gate_quality.json')] + ([args.results] if args.results else []):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
      json.dump(results, f, indent=1)
      f.write('\n')
  log(f'wrote {args.output_dir}/gate_quality.json' + (f' and {args.results}' if args.results else '')
      + f' ({results["wall_s"]} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
