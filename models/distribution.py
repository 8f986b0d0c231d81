"""tf.distribute for the Trainers: the strategy a stage trains under (`custom_config['distribution']`).

- `none`: TensorFlow's default strategy, one process, one device (the behaviour before distribution).
- `mirrored`: MirroredStrategy, synchronous data parallelism over this machine's GPUs.
- `multi_worker`: MultiWorkerMirroredStrategy, the same over several machines; every replica runs the Trainer,
  each holds every weight, and the global batch is split between them.
- `parameter_server`: ParameterServerStrategy, for embedding tables that outgrow one machine: the variables
  live on the `ps` tasks, each table larger than `MIN_SHARD_BYTES` cut into up to one shard per parameter
  server; `worker` tasks run the training steps asynchronously, the `chief` (coordinator) runs the Trainer.

The cluster comes from `TF_CONFIG` in the environment, as TensorFlow reads it (Vertex AI and Kubeflow's
TFJob set it on every replica).
"""
import contextlib
import json
import os
import shutil
import tempfile

import tensorflow as tf

NONE, MIRRORED, MULTI_WORKER, PARAMETER_SERVER = 'none', 'mirrored', 'multi_worker', 'parameter_server'
STRATEGIES = (NONE, MIRRORED, MULTI_WORKER, PARAMETER_SERVER)
CONFIG_KEY = 'distribution'  # in a Trainer's custom_config; absent means NONE
# MinSizePartitioner's own default: a table is cut only where each shard keeps at least this much.
MIN_SHARD_BYTES = 256 << 10
SERVER_TASKS = ('ps', 'worker')  # under ParameterServerStrategy they serve; the chief runs the Trainer


def check(name: str) -> str:
  """`name` when it is one of STRATEGIES; else a ValueError naming the field and the choices."""
  if name not in STRATEGIES:
    raise ValueError(f'distribution {name!r} is unknown: choose one of {", ".join(STRATEGIES)}.')
  return name


def cluster_task():
  """(task type, index) of this process in TF_CONFIG; (None, None) without one."""
  task = json.loads(os.environ.get('TF_CONFIG') or '{}').get('task', {})
  return task.get('type'), task.get('index')


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The strategy `name` stands for. Create it before any other TensorFlow op runs: MultiWorkerMirroredStrategy
  configures the collective ops of the process. Under `parameter_server`, a `ps` or `worker` task never
  returns: it serves the chief until the job ends (`serve_forever`)."""
  check(name)
  if name == MIRRORED:
    return tf.distribute.MirroredStrategy()
  if name == MULTI_WORKER:
    if not os.environ.get('TF_CONFIG'):
      raise ValueError('distribution multi_worker reads the cluster from the TF_CONFIG environment variable, which '
                       'is not set: set it on every replica, or use distribution none or mirrored on one machine.')
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING))
  if name == PARAMETER_SERVER:
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if 'ps' not in resolver.cluster_spec().as_dict():
      raise ValueError('distribution parameter_server needs a TF_CONFIG whose cluster has chief, worker and ps '
                       'tasks; TF_CONFIG is ' + repr(os.environ.get('TF_CONFIG')))
    if resolver.task_type in SERVER_TASKS:
      serve_forever(resolver)
    shards = len(resolver.cluster_spec().as_dict()['ps'])
    return tf.distribute.experimental.ParameterServerStrategy(
        resolver, variable_partitioner=tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=MIN_SHARD_BYTES, max_shards=shards))
  return tf.distribute.get_strategy()


def serve_forever(resolver=None) -> None:
  """Runs this `ps` or `worker` task's server for the chief's ParameterServerStrategy; never returns."""
  resolver = resolver or tf.distribute.cluster_resolver.TFConfigClusterResolver()
  tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type, task_index=resolver.task_id,
                       protocol=resolver.rpc_layer or 'grpc', start=True).join()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this replica writes the stage's outputs: the only one without a cluster, else the `chief` task,
  or worker 0 of a cluster without one (TensorFlow's rule)."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type == 'chief' or (task_type == 'worker' and task_id == 0
                                  and 'chief' not in resolver.cluster_spec().as_dict())


@contextlib.contextmanager
def writer_path(path: str, strategy: tf.distribute.Strategy):
  """`path` on the chief; elsewhere a temporary folder, removed after the block. Every MultiWorkerMirrored
  replica must save (a save can run collective ops) but only one may write where the next stage reads."""
  if is_chief(strategy):
    yield path
    return
  scratch = tempfile.mkdtemp(prefix='replica-')
  try:
    yield os.path.join(scratch, os.path.basename(path))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def wait_for_every_replica(strategy: tf.distribute.Strategy) -> None:
  """Returns once every synchronous replica got here. TFX checks on each replica that the model folder exists
  when run_fn returns, so a replica must not return before the chief has written it."""
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)
