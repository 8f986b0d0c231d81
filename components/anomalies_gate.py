"""AnomaliesGate: stops the pipeline before Transform and training when the data breaks the schema or cannot
train a model.

ExampleValidator records anomalies but lets the run go on; this component turns any anomaly, an empty split
or a label column with one class in a split (nothing to learn, no AUC to judge by) into a failed run with a
message naming each field, what was wrong and how to fix it.
"""
import os
from typing import Sequence

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.types import artifact_utils

ANOMALIES_FILE = 'SchemaDiff.pb'
BYTE_ORDER_MARK = '\ufeff'


class DataValidationError(ValueError):
  """The input data does not match the schema or cannot train a model; nothing downstream ran."""


def describe_anomalies(split: str, anomalies: anomalies_pb2.Anomalies) -> list:
  """One readable line per anomalous field of `split`."""
  lines = []
  for field, info in sorted(anomalies.anomaly_info.items()):
    reasons = '; '.join(f'{r.short_description}: {r.description}' for r in info.reason) or info.description
    lines.append(f'  [{split}] field {field!r}: {reasons}')
    if field.startswith(BYTE_ORDER_MARK):  # the schema diff alone reads as a renamed column
      lines.append(f'  [{split}] the CSV files start with a UTF-8 byte-order mark (BOM), read as part of the first '
                   f'column name {field.lstrip(BYTE_ORDER_MARK)!r}: save them as UTF-8 without a BOM (for example '
                   "`sed -i '1s/^\\xEF\\xBB\\xBF//' FILE.csv`)")
  if anomalies.HasField('dataset_anomaly_info'):
    reasons = '; '.join(r.description for r in anomalies.dataset_anomaly_info.reason)
    lines.append(f'  [{split}] whole dataset: {reasons}')
  return lines


def find_problems(split: str, statistics, anomalies: anomalies_pb2.Anomalies) -> list:
  """The readable lines of one split's problems: an empty split, else every anomaly of `anomalies` (TFDV's
  `validate_statistics` output for the split's `statistics`, a DatasetFeatureStatisticsList)."""
  if not statistics.datasets or statistics.datasets[0].num_examples == 0:
    return [f'  [{split}] the split has no examples: check the input path and that files are not empty']
  return describe_anomalies(split, anomalies)


def single_class_labels(split: str, statistics, labels: Sequence[str]) -> list:
  """The readable lines of every label column of `labels` whose values in `split` (its `statistics`, a
  DatasetFeatureStatisticsList) are all the same: a model learns nothing from it and no AUC can judge it."""
  if not statistics.datasets:
    return []
  features = {f.path.step[-1] if f.path.step else f.name: f for f in statistics.datasets[0].features}
  lines = []
  for label in labels:
    numbers = features[label].num_stats if label in features else None
    if numbers and numbers.common_stats.num_non_missing and numbers.min == numbers.max:
      lines.append(f'  [{split}] label {label!r} has one class only (every value is {numbers.min:g}): training and '
                   f'AUC need both classes in every split; check the export of the {split} data (a filter or a '
                   'join that dropped the other class)')
  return lines


def validation_error(problems: list, schema_hint: str, label_problems: Sequence[str] = ()) -> DataValidationError:
  """The error that stops a run on `problems` (find_problems' lines) and `label_problems` (single_class_labels'),
  saying how to fix them."""
  lines = ['The input data cannot be trained on, so nothing was trained or pushed:']
  if problems:
    lines += ['It does not match the schema:', *problems,
              f'Fix the input data, or, if the change is intended, update the schema ({schema_hint}).']
  if label_problems:
    lines += ['A label column has a single class:', *label_problems]
  return DataValidationError('\n'.join(lines))


def check_anomalies(anomalies_artifact, statistics_artifact, schema_hint: str, labels: Sequence[str] = ()) -> None:
  """Raises DataValidationError listing every anomaly and every empty split of ExampleValidator's output, and
  every label column of `labels` with one class in a split."""
  problems, label_problems = [], []
  for split in artifact_utils.decode_split_names(statistics_artifact.split_names):
    stats = stats_artifact_utils.load_statistics(statistics_artifact, split).proto()
    path = os.path.join(artifact_utils.get_split_uri([anomalies_artifact], split), ANOMALIES_FILE)
    anomalies = anomalies_pb2.Anomalies()
    if tf.io.gfile.exists(path):  # an empty split may have none
      with tf.io.gfile.GFile(path, 'rb') as f:
        anomalies.ParseFromString(f.read())
    problems.extend(find_problems(split, stats, anomalies))
    label_problems.extend(single_class_labels(split, stats, labels))
  if problems or label_problems:
    raise validation_error(problems, schema_hint, label_problems)


@tfx.dsl.components.component
def AnomaliesGate(  # pylint: disable=invalid-name
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    schema_hint: tfx.dsl.components.Parameter[str] = 'the schema file',
    labels: tfx.dsl.components.Parameter[str] = '',
) -> None:
  """Fails the run on any schema anomaly, empty split or single-class label column (`labels`, comma-separated),
  naming the fields."""
  check_anomalies(anomalies, statistics, schema_hint, [label for label in labels.split(',') if label])
