"""Local tf.distribute clusters for the distribution tests: tiny transformed data, a Trainer stage run by its
real run_fn (as `benchmarks/calibration.py` runs it, on the project's Transform graph), and the processes of
a cluster on free 127.0.0.1 ports, each with its TF_CONFIG, always ended.

`python -m tests.models.cluster STAGE WORK_DIR MODEL_DIR BASE_MODEL DISTRIBUTION` is one task of a cluster:
it runs the stage's run_fn into the Model artifact folder MODEL_DIR (a `ps` or `worker` task of a
parameter-server cluster serves instead) and writes the trained weights it exports to
MODEL_DIR/weights-<task>.npz, from every replica (only the chief's export stays)."""
import contextlib
import faulthandler
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Dict, List, Optional

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np  # noqa: E402

from benchmarks import calibration  # noqa: E402
from benchmarks import in_process  # noqa: E402
from data import synthetic  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
import schemas  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROWS = 4000
JOIN_SECONDS = 600  # a task that has not ended by then is killed and the test fails


def config(work_dir: str, distribution: str = 'none', **settings) -> PipelineConfig:
  """Tiny shapes (embedding 4, hidden 8-4), no domain dropout: its mask is drawn per replica, so with it the
  replicas together would not train what one process trains."""
  defaults = dict(hidden_units=(8, 4), embedding_dim=4, batch_size=64, pretrain_steps=200, finetune_steps=20,
                  eval_steps=4, domain_dropout=0.0, finetune_domain_dropout=0.0)
  return PipelineConfig(data_path=work_dir, schema_path=schemas.DEFAULT_SCHEMA_PATH, output_dir=work_dir,
                        feature_spec=synthetic.FEATURE_SPEC, distribution=distribution, **{**defaults, **settings})


def examples() -> Dict[str, list]:
  """{split: serialized examples} of ROWS synthetic rows, split 60/20/20."""
  return {name: in_process.serialize(frame) for name, frame in
          calibration.split(synthetic.generate(ROWS, seed=0)).items()}


def transformed(work_dir: str, data: Optional[dict] = None):
  """(Transform graph directory, accessor over the transformed train and eval splits), made once in work_dir."""
  return calibration.cached_transform('cluster', config(work_dir).transform_config(), data or examples(), work_dir)


def run_stage(stage: str, work_dir: str, model_dir: str, base_model: Optional[str], settings: dict) -> str:
  """The stage's run_fn on the tiny data into the Model artifact folder `model_dir`; its Format-Serving folder."""
  transform_dir, accessor = transformed(work_dir)
  return calibration.train_stage(stage, config(work_dir, **settings), accessor, transform_dir, model_dir,
                                 base_model=base_model)


def free_ports(count: int) -> List[int]:
  """`count` distinct ports free on 127.0.0.1 now (held open together, so none is handed out twice)."""
  with contextlib.ExitStack() as stack:
    sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
    for s in sockets:
      s.bind(('127.0.0.1', 0))
    return [s.getsockname()[1] for s in sockets]


def cluster_spec(**tasks: int) -> dict:
  """{job: [127.0.0.1:port, ...]} with `tasks[job]` tasks per job, each on a free port."""
  ports = iter(free_ports(sum(tasks.values())))
  return {job: [f'127.0.0.1:{next(ports)}' for _ in range(count)] for job, count in tasks.items()}


@contextlib.contextmanager
def started(spec: dict, argv: List[str], log_dir: str):
  """Starts one `python -m tests.models.cluster ARGV` process per task of `spec`, each with its TF_CONFIG and
  its log in `log_dir`; yields {(job, index): process}. Every process still running when the block ends is
  killed."""
  processes = {}
  try:
    for job, addresses in spec.items():
      for index in range(len(addresses)):
        env = dict(os.environ, TF_CONFIG=json.dumps({'cluster': spec, 'task': {'type': job, 'index': index}}),
                   TF_USE_LEGACY_KERAS='1', PYTHONPATH=REPO_ROOT, GRPC_FAIL_FAST='use_caller')
        log = open(os.path.join(log_dir, f'{job}-{index}.log'), 'w')  # pylint: disable=consider-using-with
        processes[job, index] = subprocess.Popen([sys.executable, '-m', 'tests.models.cluster', *argv], env=env,
                                                 cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
    yield processes
  finally:
    for process in processes.values():
      if process.poll() is None:
        process.kill()
      process.wait(timeout=60)


def finish(processes: dict, log_dir: str) -> None:
  """Waits for each process (JOIN_SECONDS at most); AssertionError with the log of one that failed."""
  for (job, index), process in processes.items():
    try:
      code = process.wait(timeout=JOIN_SECONDS)
    except subprocess.TimeoutExpired:
      code = 'timeout'
    if code != 0:
      with open(os.path.join(log_dir, f'{job}-{index}.log')) as f:
        raise AssertionError(f'{job} {index} ended with {code}:\n{f.read()[-6000:]}')


def weights_file(model_dir: str, task: str) -> str:
  return os.path.join(model_dir, f'weights-{task}.npz')


def _main(stage: str, work_dir: str, model_dir: str, base_model: str, distribution: str) -> None:
  logging.basicConfig(level=logging.INFO, force=True)  # the Trainer's progress in the task's log (absl's drops it)
  faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` writes where a stuck task is to its log
  from models import distribution as distribution_lib  # pylint: disable=g-import-not-at-top
  from models import trainer  # pylint: disable=g-import-not-at-top
  export = trainer.export_serving_model
  task = '-'.join(map(str, distribution_lib.cluster_task()))

  def export_and_record(model, *args):  # what each replica trained, before only the chief's export stays
    np.savez(weights_file(model_dir, task), **{w.name: np.asarray(w.numpy()) for w in model.weights})
    export(model, *args)

  trainer.export_serving_model = export_and_record
  run_stage(stage, work_dir, model_dir, base_model or None, {'distribution': distribution})


if __name__ == '__main__':
  _main(*sys.argv[1:])
