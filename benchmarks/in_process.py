"""The pipeline's data path in one process, for benchmarks that train many models: rows serialized as
CsvExampleGen writes them, the project's `preprocessing_fn` analyzed by tf.Transform on Beam in memory (the
Transform component's graph), rows through that graph (its transformed examples), and a DataAccessor over
transformed columns held in memory that the Trainer's own `input_fn` reads."""
import argparse
import json
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tensorflow_transform.beam as tft_beam  # noqa: E402
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io  # noqa: E402
from tfx_bsl.coders import example_coder  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

from models import preprocessing  # noqa: E402
from pipeline.config import LOCAL_BEAM_ARGS  # noqa: E402
import schemas  # noqa: E402


def serialize(frame: pd.DataFrame) -> List[bytes]:
  """The rows as serialized tf.Examples, one value per feature, as CsvExampleGen writes them."""
  arrays = []
  for column in frame.columns:
    values = frame[column].to_numpy()
    values = values.astype(bytes) if values.dtype == object else (
        values.astype(np.float32) if values.dtype.kind == 'f' else values.astype(np.int64))
    arrays.append(pa.ListArray.from_arrays(np.arange(len(values) + 1, dtype=np.int32), pa.array(values)))
  return example_coder.RecordBatchToExamplesEncoder().encode(pa.RecordBatch.from_arrays(arrays, list(frame.columns)))


def analyze(train_examples: Sequence[bytes], transform_config: dict, output_dir: str, schema=None):
  """The Transform component's graph: `preprocessing_fn` with `transform_config` (its custom_config, as
  `PipelineConfig.transform_config()` gives it) analyzed on the train split's serialized examples, read with
  `schema` (the default data's when None), written to `output_dir` (reused when a finished one is there); its
  TFTransformOutput."""
  done = os.path.join(output_dir, 'DONE')
  if not os.path.exists(done):
    schema = schema or schemas.load_schema(schemas.DEFAULT_SCHEMA_PATH)
    source = tfxio.TFExampleBeamRecord(physical_format='inmem', telemetry_descriptors=['benchmark'], schema=schema)

    def preprocessing_fn(inputs):
      return preprocessing.preprocessing_fn(inputs, transform_config)

    with beam.Pipeline(argv=list(LOCAL_BEAM_ARGS)) as pipeline, tft_beam.Context(
        temp_dir=os.path.join(output_dir, 'tmp')):
      raw = pipeline | beam.Create(list(train_examples), reshuffle=False) | source.BeamSource()
      transform_fn = (raw, source.TensorAdapterConfig()) | tft_beam.AnalyzeDataset(preprocessing_fn)
      _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema),
                               os.path.join(output_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    open(done, 'w').close()
  return tft.TFTransformOutput(output_dir)


def transform(examples: Sequence[bytes], tf_transform_output, batch_size: int = 8192) -> Dict[str, np.ndarray]:
  """Serialized examples through the transform graph (parsed as the Trainer and the serving path parse them),
  as numpy columns: Transform's transformed examples."""
  layer = tf_transform_output.transform_features_layer()
  raw_spec = tf_transform_output.raw_feature_spec()
  apply = tf.function(lambda serialized: layer(tf.io.parse_example(serialized, raw_spec)))
  parts = [apply(tf.constant(examples[i:i + batch_size])) for i in range(0, len(examples), batch_size)]
  return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}


class InMemoryAccessor:
  """The piece of TFX's DataAccessor that the Trainer's `input_fn` uses, over transformed columns held in
  memory: `files` maps a split's "file pattern" to its columns."""

  def __init__(self, files: Dict[str, Dict[str, np.ndarray]]):
    self.files = files

  def tf_dataset_factory(self, file_pattern, options, schema):
    del schema
    dataset = tf.data.Dataset.from_tensor_slices(self.files[file_pattern])
    if options.shuffle:
      dataset = dataset.shuffle(100_000, seed=options.shuffle_seed)
    return dataset.repeat(options.num_epochs).batch(options.batch_size)


def parse_setting(text: str):
  """'KEY=VALUE' -> (KEY, VALUE read as JSON when it parses, else the text)."""
  key, _, value = text.partition('=')
  try:
    return key, json.loads(value)
  except json.JSONDecodeError:
    return key, value


def add_run_options(parser: argparse.ArgumentParser, work_dir: str, seeds: Sequence[int] = (0, 1, 2),
                    seeds_note: str = '') -> None:
  """The options every in-process benchmark takes: --seeds (training seeds; `seeds_note` says what they leave
  fixed), --set KEY=VALUE (a PipelineConfig field for every model), --work-dir (transform graphs, reused by
  later runs, and models) and --json (a file for every figure)."""
  default = ','.join(map(str, seeds))
  parser.add_argument('--seeds', type=lambda t: [int(s) for s in t.split(',')], default=list(seeds),
                      help=f'training seeds{seeds_note}; default {default}')
  parser.add_argument('--set', type=parse_setting, action='append', default=[], metavar='KEY=VALUE',
                      help='a PipelineConfig field for every model (VALUE read as JSON when it parses)')
  parser.add_argument('--work-dir', default=work_dir,
                      help='transform graphs (reused by later runs) and models (default %(default)s)')
  parser.add_argument('--json', help='also write every figure to this file')


def write_json(path: Optional[str], results: dict) -> None:
  """A benchmark's `--json`: `results` (every figure, with the command) written to `path`, when one is given."""
  if path:
    with open(path, 'w') as f:
      json.dump(results, f, indent=2)


def publish(script: str, results: list, format_markdown, json_path: Optional[str]) -> dict:
  """A benchmark's ending: its results file ({'command': the script's command line, 'results'}) printed as
  `format_markdown` renders it and written to `json_path` (--json) when one is given."""
  results_file = {'command': ' '.join([script] + sys.argv[1:]), 'results': results}
  print(format_markdown(results_file))
  write_json(json_path, results_file)
  return results_file


def log_trainer_epochs(verbose: bool) -> None:
  """A benchmark's `--verbose`: the Trainer's per-epoch training and validation figures go to stdout; else
  warnings alone."""
  logging.basicConfig(level=logging.WARNING, format='%(message)s')
  if verbose:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter('  %(message)s'))
    logging.getLogger('models.trainer').addHandler(handler)
    logging.getLogger('models.trainer').setLevel(logging.INFO)
