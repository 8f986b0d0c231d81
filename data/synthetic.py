"""Seeded generator of realistic multi-domain click logs: the project's embedded default data.

Seven domains with skewed traffic (home feed about 40% of rows, new-user about 2%) share users, items,
categories and contexts. A hidden model decides clicks:

    logit = b + b_item + b_d
          + s * <u, v>                                                   (shared by every domain)
          + k_d * (c_{d,ctx} + p_d * price + g_{d,cat} + t * <u, M_d v>)  (domain-specific)

so one shared model gets part of the signal and per-domain adaptation the rest. Niche scenarios depart
most from the main feed: the weight of the domain-specific part, k_d = 1 + 0.5 ln(share_max / share_d),
grows from 1 (home feed) to 2.5 (new user). A shared model, whose loss the large domains dominate, fits
the small domains worst, which is where per-domain adaptation has the most to gain. A conversion can only
follow a click: P(conversion | click) = sigmoid(b_cvr + <u, w>), P(conversion | no click) = 0.

`click_rates` sets a domain's expected click rate instead, by shifting its logits (e.g. below 1%, where
log loss teaches little: `models/ranking.py`).

`revenue=True` adds a per-exposure `revenue` column (ads, `data/revenue.py` builds a label from it): an
item's click fee (its cost per click) on a click, plus its conversion fee (a commission on its price) on a
conversion. A share of items is negative-revenue stock (`LOSS_MAKING_SHARE`: subsidized placements whose
clicks cost the platform their fee, and whose conversions are refunded at a cost): every click and
conversion of theirs loses money. Not a feature: the default data and its schema are unchanged without it.
"""
import os
from typing import Dict, Optional

import numpy as np
import pandas as pd

from models.features import FeatureSpec

DOMAIN_SHARES = {
    'home_feed': 0.40,
    'search': 0.22,
    'banner': 0.14,
    'after_purchase': 0.10,
    'live': 0.07,
    'coupon': 0.05,
    'new_user': 0.02,
}
CONTEXTS = [f'{device}_{daypart}' for device in ('app', 'web', 'pad') for daypart in ('morning', 'day', 'night')]
NUM_CATEGORIES = 40
LATENT_DIM = 8
SHARED_WEIGHT, DOMAIN_WEIGHT = 1.6, 1.6
SPECIFICITY_SLOPE = 0.5  # k_d's growth per e-fold of traffic below the largest domain
DEFAULT_ROWS = 200_000
ROWS_PER_USER, ROWS_PER_ITEM = 100, 200  # mean activity: how much each id's taste can be learned
REVENUE_COLUMN = 'revenue'
COMMISSION = 0.1  # the conversion fee: this share of the item's price
LOSS_MAKING_SHARE = 0.05  # negative-revenue stock: items whose clicks and conversions lose money

FEATURE_SPEC = FeatureSpec(
    domain='domain',
    domains=list(DOMAIN_SHARES),
    label='click',
    vocab=['item_id', 'category', 'context'],
    hashed={'user_id': 50_000},
    numeric=['price', 'user_activity'],
    extra_labels=['conversion'],
    user='user_id',
)
COLUMN_TYPES: Dict[str, str] = {
    'domain': 'BYTES', 'user_id': 'INT', 'item_id': 'INT', 'category': 'INT', 'context': 'BYTES',
    'price': 'FLOAT', 'user_activity': 'FLOAT', 'click': 'INT', 'conversion': 'INT',
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def _zipf_choice(rng: np.random.Generator, n: int, size: int, exponent: float = 1.05) -> np.ndarray:
  """Indices in [0, n) with a long-tailed popularity, as in real traffic."""
  weights = 1.0 / np.arange(1, n + 1) ** exponent
  return rng.choice(n, size=size, p=weights / weights.sum())


def shift_to_rate(logits: np.ndarray, rate: float, iterations: int = 100) -> float:
  """The shift c with mean(sigmoid(logits + c)) = `rate` (bisection: the mean rises with c)."""
  low, high = -50.0, 50.0
  for _ in range(iterations):
    middle = (low + high) / 2
    low, high = (middle, high) if _sigmoid(logits + middle).mean() < rate else (low, middle)
  return (low + high) / 2


def generate(num_rows: int = DEFAULT_ROWS, seed: int = 0,
             click_rates: Optional[Dict[str, float]] = None, revenue: bool = False) -> pd.DataFrame:
  """Returns `num_rows` click-log rows with the columns of `FEATURE_SPEC`, identical for equal seeds.
  `click_rates` ({domain: rate}) shifts each named domain's hidden logit by the constant that makes its
  expected click rate `rate` (`shift_to_rate`), e.g. {'coupon': 0.005}; every other row is as without it.
  `revenue` adds the `revenue` column (the module's docstring); every other column is as without it."""
  if num_rows < len(DOMAIN_SHARES):
    raise ValueError(f'num_rows must be at least {len(DOMAIN_SHARES)} (one per domain), got {num_rows}.')
  click_rates = dict(click_rates or {})
  unknown = sorted(set(click_rates) - set(DOMAIN_SHARES))
  if unknown:
    raise ValueError(f'click_rates names unknown domains {unknown}: expected some of {list(DOMAIN_SHARES)}.')
  bad = {d: r for d, r in click_rates.items() if not 0 < r < 1}
  if bad:
    raise ValueError(f'click_rates {bad}: a click rate lies strictly between 0 and 1, like 0.005 for 0.5%.')
  rng = np.random.default_rng(seed)
  num_users = max(500, num_rows // ROWS_PER_USER)
  num_items = max(300, num_rows // ROWS_PER_ITEM)
  num_domains = len(DOMAIN_SHARES)

  # The hidden world: latent tastes shared across domains, and each domain's own twist on them.
  user_taste = rng.normal(size=(num_users, LATENT_DIM)) / np.sqrt(LATENT_DIM)
  user_cvr = rng.normal(size=(num_users, LATENT_DIM)) / np.sqrt(LATENT_DIM)
  user_activity = rng.gamma(2.0, 1.0, size=num_users)
  item_category = rng.integers(0, NUM_CATEGORIES, size=num_items)
  category_taste = rng.normal(size=(NUM_CATEGORIES, LATENT_DIM))
  item_taste = (category_taste[item_category] + rng.normal(size=(num_items, LATENT_DIM))) / np.sqrt(2 * LATENT_DIM)
  item_cvr = rng.normal(size=(num_items, LATENT_DIM)) / np.sqrt(LATENT_DIM)
  item_bias = rng.normal(0.0, 0.4, size=num_items)
  item_price = np.round(rng.lognormal(3.0, 0.8, size=num_items), 2)
  domain_bias = rng.normal(0.0, 0.5, size=num_domains)
  domain_context = rng.normal(0.0, 0.5, size=(num_domains, len(CONTEXTS)))
  domain_price = rng.normal(0.0, 0.5, size=num_domains)
  domain_twist = rng.normal(size=(num_domains, LATENT_DIM, LATENT_DIM)) / np.sqrt(LATENT_DIM)
  domain_category = rng.normal(0.0, 0.5, size=(num_domains, NUM_CATEGORIES))

  shares = np.array(list(DOMAIN_SHARES.values()))
  specificity = 1.0 + SPECIFICITY_SLOPE * np.log(shares.max() / shares)
  domain = rng.choice(num_domains, size=num_rows, p=shares / shares.sum())
  domain[:num_domains] = np.arange(num_domains)  # every domain appears, even in tiny samples
  user = _zipf_choice(rng, num_users, num_rows, exponent=0.8)
  item = _zipf_choice(rng, num_items, num_rows)
  context = rng.integers(0, len(CONTEXTS), size=num_rows)

  log_price = (np.log(item_price[item]) - 3.0) / 0.8
  shared = np.einsum('nk,nk->n', user_taste[user], item_taste[item])
  twisted_items = np.einsum('nkj,nj->nk', domain_twist[domain], item_taste[item])
  specific = np.einsum('nk,nk->n', user_taste[user], twisted_items)
  domain_specific = (domain_context[domain, context] + domain_price[domain] * log_price
                     + domain_category[domain, item_category[item]] + DOMAIN_WEIGHT * specific * np.sqrt(LATENT_DIM))
  logit = (-2.0 + item_bias[item] + domain_bias[domain] + SHARED_WEIGHT * shared * np.sqrt(LATENT_DIM)
           + specificity[domain] * domain_specific)
  for name, rate in click_rates.items():
    rows = domain == list(DOMAIN_SHARES).index(name)
    logit[rows] += shift_to_rate(logit[rows], rate)
  click = rng.random(num_rows) < _sigmoid(logit)
  cvr_logit = -1.0 + 2.0 * np.einsum('nk,nk->n', user_cvr[user], item_cvr[item]) * np.sqrt(LATENT_DIM)
  conversion = click & (rng.random(num_rows) < _sigmoid(cvr_logit))

  domain_names = np.array(list(DOMAIN_SHARES))
  frame = pd.DataFrame({
      'domain': domain_names[domain],
      'user_id': user + 1,
      'item_id': item + 1,
      'category': item_category[item] + 1,
      'context': np.array(CONTEXTS)[context],
      'price': item_price[item],
      'user_activity': np.round(user_activity[user], 3),
      'click': click.astype(np.int64),
      'conversion': conversion.astype(np.int64),
  })
  if revenue:  # drawn after every other column, so those stay as without it
    click_fee = np.round(rng.lognormal(-1.0, 0.5, size=num_items), 2)
    sign = np.where(rng.random(num_items) < LOSS_MAKING_SHARE, -1.0, 1.0)
    earned = click * click_fee[item] + conversion * COMMISSION * item_price[item]
    frame[REVENUE_COLUMN] = np.round(sign[item] * earned, 4)
  return frame


def write_csv(frame: pd.DataFrame, directory: str, filename: str = 'data.csv') -> str:
  """Writes `frame` as a CSV with a header, floats always with a decimal point so types stay stable."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, filename)
  frame.to_csv(path + '.tmp', index=False, float_format='%.4f')
  os.replace(path + '.tmp', path)  # never leave a half-written input behind
  return path
