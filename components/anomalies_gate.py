"""AnomaliesGate: stops the pipeline before Transform and training when the data breaks the schema.

ExampleValidator records anomalies but lets the run go on; this component turns any anomaly (or an
empty split) into a failed run with a message naming each field, what was wrong and how to fix it.
"""
import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.types import artifact_utils

ANOMALIES_FILE = 'SchemaDiff.pb'


class DataValidationError(ValueError):
  """The input data does not match the schema; nothing downstream ran."""


def describe_anomalies(split: str, anomalies: anomalies_pb2.Anomalies) -> list:
  """One readable line per anomalous field of `split`."""
  lines = []
  for field, info in sorted(anomalies.anomaly_info.items()):
    reasons = '; '.join(f'{r.short_description}: {r.description}' for r in info.reason) or info.description
    lines.append(f'  [{split}] field {field!r}: {reasons}')
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


def validation_error(problems: list, schema_hint: str) -> DataValidationError:
  """The error that stops a run on `problems` (find_problems' lines), saying how to fix it."""
  return DataValidationError(
      'The input data does not match the schema, so nothing was trained or pushed:\n' + '\n'.join(problems)
      + f'\nFix the input data, or, if the change is intended, update the schema ({schema_hint}).')


def check_anomalies(anomalies_artifact, statistics_artifact, schema_hint: str) -> None:
  """Raises DataValidationError listing every anomaly and every empty split of ExampleValidator's output."""
  problems = []
  for split in artifact_utils.decode_split_names(statistics_artifact.split_names):
    stats = stats_artifact_utils.load_statistics(statistics_artifact, split).proto()
    path = os.path.join(artifact_utils.get_split_uri([anomalies_artifact], split), ANOMALIES_FILE)
    anomalies = anomalies_pb2.Anomalies()
    if tf.io.gfile.exists(path):  # an empty split may have none
      with tf.io.gfile.GFile(path, 'rb') as f:
        anomalies.ParseFromString(f.read())
    problems.extend(find_problems(split, stats, anomalies))
  if problems:
    raise validation_error(problems, schema_hint)


@tfx.dsl.components.component
def AnomaliesGate(  # pylint: disable=invalid-name
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    schema_hint: tfx.dsl.components.Parameter[str] = 'the schema file',
) -> None:
  """Fails the run on any schema anomaly or empty split, naming the fields."""
  check_anomalies(anomalies, statistics, schema_hint)
