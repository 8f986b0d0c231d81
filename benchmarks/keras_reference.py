"""A plain, well-regularized Keras MLP trained directly on a `prepare` output folder: the independent
reference the pipeline's base model must match or beat on the same split (issue 14, item 0).

Every vocabulary column, and the domain, is an embedding over the train split's tokens; tokens seen fewer than
`--min-count` times there share one OOV row, which so trains. Hashed columns are hashed into their buckets as
the pipeline's Transform hashes them, multivalent ('|'-separated) columns are mean-pooled embeddings and
numeric columns are z-scored with the train split's mean and std. The concatenation feeds a ReLU MLP with
dropout after each layer and a sigmoid output, trained with Adam (lr 1e-3, batch 1024) and stopped early on the
eval split's AUC (patience 2, the best epoch's weights restored). The default tower, 200-80 (DIN's), is
smaller than the pipeline's 256-128-64: a few 8-d embeddings make an input of well under 100 values, and on
tens of thousands of rows a smaller tower overfits less. Choose settings by the eval WAUC, never the test's: on
ML-100K (gender) and Ciao, seeds 0 and 1, dropout 0.3, 16-d embeddings and min-count 1 or 5 each moved the eval
WAUC by at most 0.0025 from these defaults' (less than the seeds' spread), and none gained on both.

    nice -n 19 .venv/bin/python benchmarks/keras_reference.py --data DIR [--seeds 0,1,2] [--embedding-dim 8] \
        [--hidden 200,80] [--dropout 0.5] [--min-count 2] [--epochs 20] [--json FILE]

Prints per seed the test WAUC, AUC and log loss, the eval WAUC, the best epoch (1-based) and the training
examples/s (eval passes included), then the mean ± 95% interval over seeds and each domain's test AUC.
"""
import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Dict, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from models import metrics  # noqa: E402
from models.features import FeatureSpec  # noqa: E402
from models.preprocessing import MULTIVALUE_SEPARATOR  # noqa: E402
from pipeline.bench import mean_std  # noqa: E402

OOV = 0  # the id of every token outside a vocabulary; a multivalent column's ids are one higher, 0 pads
LEARNING_RATE, BATCH_SIZE, PATIENCE, SCORING_BATCH = 1e-3, 1024, 2, 8192


@dataclasses.dataclass(frozen=True)
class Settings:
  embedding_dim: int = 8
  hidden: Tuple[int, ...] = (200, 80)
  dropout: float = 0.5
  min_count: int = 2
  epochs: int = 20


@dataclasses.dataclass
class Encoder:
  """What the train split teaches: each vocabulary ({token: id from 1}) and each numeric column's mean, std."""
  spec: FeatureSpec
  vocabularies: Dict[str, Dict[str, int]]
  moments: Dict[str, Tuple[float, float]]


def read_split(data_dir: str, split: str) -> pd.DataFrame:
  return pd.read_csv(os.path.join(data_dir, split, 'data.csv'), dtype=str, keep_default_na=False)


def vocabulary(tokens: pd.Series, min_count: int) -> Dict[str, int]:
  """{token: id} of the tokens seen at least `min_count` times, in sorted order from 1; every other is OOV."""
  counts = tokens.value_counts()
  return {token: i + 1 for i, token in enumerate(sorted(counts[counts >= min_count].index))}


def fit_encoder(train: pd.DataFrame, spec: FeatureSpec, min_count: int) -> Encoder:
  vocabularies = {c: vocabulary(train[c], min_count) for c in [spec.domain] + spec.vocab}
  vocabularies.update({c: vocabulary(train[c].str.split(MULTIVALUE_SEPARATOR).explode(), min_count)
                       for c in spec.multivalent})
  moments = {c: (float(x.mean()), float(x.std()) or 1.0) for c in spec.numeric for x in [train[c].astype(float)]}
  return Encoder(spec, vocabularies, moments)


def multivalent_ids(texts: pd.Series, tokens: Dict[str, int], max_values: int) -> np.ndarray:
  """[rows, max_values]: the ids + 1 of each row's first `max_values` tokens (1: OOV), 0 padding the rest."""
  ids = np.zeros((len(texts), max_values), np.int64)
  for row, text in enumerate(texts):
    values = text.split(MULTIVALUE_SEPARATOR)[:max_values]
    ids[row, :len(values)] = [tokens.get(value, OOV) + 1 for value in values]
  return ids


def encode(frame: pd.DataFrame, encoder: Encoder) -> Dict[str, np.ndarray]:
  """The model's input, one array per feature column and the domain: ids, or z-scores for numeric columns."""
  spec = encoder.spec
  features = {c: frame[c].map(encoder.vocabularies[c]).fillna(OOV).to_numpy(np.int64)
              for c in [spec.domain] + spec.vocab}
  features.update({c: tf.strings.to_hash_bucket_fast(frame[c].to_numpy(), buckets).numpy()
                   for c, buckets in spec.hashed.items()})
  features.update({c: multivalent_ids(frame[c], encoder.vocabularies[c], n) for c, n in spec.multivalent.items()})
  features.update({c: ((frame[c].astype(float).to_numpy() - mean) / std).astype(np.float32)
                   for c, (mean, std) in encoder.moments.items()})
  return features


def build_model(encoder: Encoder, settings: Settings) -> tf_keras.Model:
  spec, layers, dim = encoder.spec, tf_keras.layers, settings.embedding_dim
  inputs, parts = {}, []
  for column in [spec.domain] + spec.vocab + list(spec.hashed):
    rows = spec.hashed.get(column) or len(encoder.vocabularies[column]) + 1
    inputs[column] = tf_keras.Input((), dtype='int64', name=column)
    parts.append(layers.Embedding(rows, dim)(inputs[column]))
  for column, max_values in spec.multivalent.items():
    inputs[column] = tf_keras.Input((max_values,), dtype='int64', name=column)
    embedded = layers.Embedding(len(encoder.vocabularies[column]) + 2, dim, mask_zero=True)(inputs[column])
    parts.append(layers.GlobalAveragePooling1D()(embedded))
  for column in spec.numeric:
    inputs[column] = tf_keras.Input((), dtype='float32', name=column)
    parts.append(layers.Reshape((1,))(inputs[column]))
  x = layers.Concatenate()(parts)
  for units in settings.hidden:
    x = layers.Dropout(settings.dropout)(layers.Dense(units, activation='relu')(x))
  return tf_keras.Model(inputs, layers.Dense(1, activation='sigmoid')(x))


def train(encoder: Encoder, train_set, eval_set, settings: Settings, seed: int):
  """(model with the best eval AUC epoch's weights, best epoch from 1, epochs run, training examples/s);
  each set is (features, labels)."""
  tf_keras.utils.set_random_seed(seed)
  model = build_model(encoder, settings)
  model.compile(tf_keras.optimizers.Adam(LEARNING_RATE), 'binary_crossentropy',
                metrics=[tf_keras.metrics.AUC(name='auc')])
  stop = tf_keras.callbacks.EarlyStopping('val_auc', mode='max', patience=PATIENCE, restore_best_weights=True)
  start = time.time()
  history = model.fit(*train_set, batch_size=BATCH_SIZE, epochs=settings.epochs, validation_data=eval_set,
                      validation_batch_size=SCORING_BATCH, callbacks=[stop], verbose=0)
  epochs = len(history.history['loss'])
  return model, stop.best_epoch + 1, epochs, len(train_set[1]) * epochs / (time.time() - start)


def score(model: tf_keras.Model, features, frame: pd.DataFrame, spec: FeatureSpec) -> dict:
  """models/metrics.py's `domain_report` (GAUC with a user column) of the model's scores of `frame`."""
  predictions = model.predict(features, batch_size=SCORING_BATCH, verbose=0).reshape(-1)
  return metrics.domain_report(frame[spec.label].astype(int).to_numpy(), predictions, frame[spec.domain].to_numpy(),
                               frame[spec.user].to_numpy() if spec.user else None)


def run(data_dir: str, settings: Settings, seeds: Sequence[int]) -> list:
  """One record per seed: best epoch, epochs run, examples/s and the eval and test `domain_report`s."""
  spec = FeatureSpec.load(data_dir)
  frames = {split: read_split(data_dir, split) for split in ('train', 'eval', 'test')}
  encoder = fit_encoder(frames['train'], spec, settings.min_count)
  sets = {split: (encode(frame, encoder), frame[spec.label].astype(np.float32).to_numpy())
          for split, frame in frames.items()}
  records = []
  for seed in seeds:
    model, best_epoch, epochs, speed = train(encoder, sets['train'], sets['eval'], settings, seed)
    records.append({'seed': seed, 'best_epoch': best_epoch, 'epochs': epochs, 'examples_per_second': speed,
                    **{split: score(model, sets[split][0], frames[split], spec) for split in ('eval', 'test')}})
  return records


def table(records: Sequence[dict]) -> str:
  """Per seed and mean ± 95% interval: test WAUC, AUC, log loss, eval WAUC; then each domain's test AUC."""
  figures = {'test WAUC': lambda r: r['test']['wauc'], 'test AUC': lambda r: r['test']['auc'],
             'test log loss': lambda r: r['test']['logloss'], 'eval WAUC': lambda r: r['eval']['wauc']}
  lines = ['| seed | ' + ' | '.join(figures) + ' | best epoch | examples/s |', '|---' * (len(figures) + 3) + '|']
  lines += [f"| {r['seed']} | " + ' | '.join(f'{f(r):.4f}' for f in figures.values())
            + f" | {r['best_epoch']}/{r['epochs']} | {r['examples_per_second']:,.0f} |" for r in records]
  lines.append('| mean ± 95% | ' + ' | '.join(_plus_minus([f(r) for r in records]) for f in figures.values()) + ' | | |')
  domains = records[0]['test']['domains']
  lines += ['', '| domain | test rows | test AUC |', '|---|---|---|']
  lines += [f"| {d} | {domains[d]['count']} | {_plus_minus([r['test']['domains'][d]['auc'] for r in records])} |"
            for d in sorted(domains, key=lambda d: (-domains[d]['count'], d))]
  return '\n'.join(lines)


def _plus_minus(values: Sequence[float]) -> str:
  figure = mean_std(values)
  return f"{figure['mean']:.4f}" + ('' if figure['half_width'] is None else f" ± {figure['half_width']:.4f}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', required=True, help='a `tfx_runner.py prepare` output folder')
  parser.add_argument('--seeds', type=lambda t: [int(s) for s in t.split(',')], default=[0, 1, 2])
  parser.add_argument('--embedding-dim', type=int, default=Settings.embedding_dim)
  parser.add_argument('--hidden', type=lambda t: tuple(int(u) for u in t.split(',')), default=Settings.hidden)
  parser.add_argument('--dropout', type=float, default=Settings.dropout)
  parser.add_argument('--min-count', type=int, default=Settings.min_count)
  parser.add_argument('--epochs', type=int, default=Settings.epochs)
  parser.add_argument('--json', help='also write the settings and every figure to this file')
  args = parser.parse_args(argv)
  settings = Settings(args.embedding_dim, args.hidden, args.dropout, args.min_count, args.epochs)
  tf.config.experimental.enable_op_determinism()
  start = time.time()
  records = run(args.data, settings, args.seeds)
  print(f'{args.data}, {dataclasses.asdict(settings)}, {time.time() - start:.0f} s\n\n{table(records)}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'data': os.path.abspath(args.data), 'settings': dataclasses.asdict(settings), 'records': records},
                f, indent=2)


if __name__ == '__main__':
  main()
