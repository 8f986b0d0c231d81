"""Trainer input pipeline vs plain Keras fed from memory, on the same model and the same examples.

Reads the transformed training examples of a finished pipeline run, trains the backbone through the
Trainer's own `input_fn` (TFXIO over Transform's output) and then through batches already held in memory,
and prints examples/second for each and their ratio.

    .venv/bin/python benchmarks/trainer_throughput.py --output-dir outputs/local [--batch-size 1024] \
        [--op-determinism]

With `--op-determinism` every figure is taken with TensorFlow's deterministic kernels, as the Trainer runs
(`models/trainer.py`): run it with and without to see what determinism costs.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

from data import synthetic  # noqa: E402
from models import model as model_lib  # noqa: E402
from models.preprocessing import vocabulary_sizes  # noqa: E402
from models.trainer import MAX_IN_MEMORY_EXAMPLES, ThroughputLogger, input_fn  # noqa: E402


def _latest(path):
  return os.path.join(path, max(os.listdir(path), key=int))


class TFRecordAccessor:
  """The piece of TFX's DataAccessor that `input_fn` uses."""

  @staticmethod
  def tf_dataset_factory(file_pattern, options, schema):
    return tfxio.TFExampleRecord(file_pattern, schema=schema).TensorFlowDataset(options)


def measure(dataset, tf_transform_output, batch_size, steps, epochs=4):
  tf_keras.utils.set_random_seed(0)
  model = model_lib.build_model(synthetic.FEATURE_SPEC, vocabulary_sizes(synthetic.FEATURE_SPEC, tf_transform_output))
  model.compile(tf_keras.optimizers.Adam(1e-3), tf_keras.losses.BinaryCrossentropy())
  logger = ThroughputLogger(batch_size, steps)
  model.fit(dataset, epochs=epochs, steps_per_epoch=steps, callbacks=[logger], verbose=0)
  return sum(logger.rates[1:]) / len(logger.rates[1:])  # the first epoch pays for tracing


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output-dir', required=True, help='output folder of a `tfx_runner.py run`')
  parser.add_argument('--batch-size', type=int, default=1024)
  parser.add_argument('--steps', type=int, default=100, help='steps per measured epoch')
  parser.add_argument('--op-determinism', action='store_true', help='deterministic kernels, as the Trainer runs')
  args = parser.parse_args()
  if args.op_determinism:
    tf.config.experimental.enable_op_determinism()

  root = os.path.join(args.output_dir, 'pipeline_root', 'Transform')
  tf_transform_output = tft.TFTransformOutput(_latest(os.path.join(root, 'transform_graph')))
  files = os.path.join(_latest(os.path.join(root, 'transformed_examples')), 'Split-train', '*')
  feature_names = list(model_lib.model_inputs(synthetic.FEATURE_SPEC))

  def trainer_input(max_in_memory_examples):
    return input_fn(files, TFRecordAccessor, tf_transform_output, synthetic.FEATURE_SPEC, args.batch_size, 0,
                    feature_names, max_in_memory_examples)

  streamed = trainer_input(max_in_memory_examples=0)
  in_memory = tf.data.Dataset.from_tensor_slices(
      tuple(tf.nest.map_structure(lambda *t: tf.stack(t), *list(streamed.take(args.steps))))).repeat()
  inputs = [('Trainer input_fn (parsed once, held in memory)', trainer_input(MAX_IN_MEMORY_EXAMPLES)),
            ('Trainer input_fn streaming (TFXIO, gzip TFRecords)', streamed),
            ('plain Keras, fixed batches in memory', in_memory)]
  rows = [(name, measure(dataset, tf_transform_output, args.batch_size, args.steps)) for name, dataset in inputs]
  print(f'\nbatch {args.batch_size}, {args.steps} steps per epoch, {os.cpu_count()} CPUs, '
        f'op determinism {"on" if args.op_determinism else "off"}')
  print(f'{"input":<52}{"examples/s":>12}{"of plain Keras":>16}')
  for name, rate in rows:
    print(f'{name:<52}{rate:>12.0f}{rate / rows[-1][1]:>16.0%}')


if __name__ == '__main__':
  main()
