"""Load and latency of the gRPC model server, against the in-process SavedModel call as the floor.

    .venv/bin/python benchmarks/serving_load.py --model-base OUTPUT_DIR/serving/ctr --input OUTPUT_DIR/data/data.csv

Copies the highest version under --model-base into a scratch base directory, serves it with
`tfx_runner.py serve` in a subprocess on 127.0.0.1 (a free port), and for every number of concurrent
clients (--clients) and request size (--candidates) has each client send --requests Predict requests (and
stop after --max-seconds at the latest): p50/p95/p99 latency, candidates/second and errors. The same cells
run on the SavedModel called in this process, with no gRPC, on the same candidate lists, as the floor; the
goal is p99 <= 2x in-process at 4 clients x 100 candidates. Last, clients send requests while a new version
is published (by rename) and then removed again (a rollback): neither switch may drop a request. The load
average is printed before and after: the figures mean something on an otherwise idle machine only.
"""
import argparse
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from serving import signatures  # noqa: E402
from serving.client import PredictionClient  # noqa: E402
from serving.examples import read_csv_examples, signature_column_types  # noqa: E402
from serving.model import ServedModel, Signature  # noqa: E402
from serving.repository import copy_version, ready_versions  # noqa: E402

WARMUP_CALLS = 3  # untimed calls per client before a cell starts


@dataclasses.dataclass
class Cell:
  """One measurement: `clients` concurrent clients sending requests of `candidates` examples."""
  target: str  # 'grpc' or 'in-process'
  clients: int
  candidates: int
  latencies_ms: List[float] = dataclasses.field(default_factory=list)
  errors: int = 0
  seconds: float = 0.0

  def summary(self) -> dict:
    done = len(self.latencies_ms)
    return {'target': self.target, 'clients': self.clients, 'candidates': self.candidates, 'requests': done,
            'errors': self.errors,
            'p50_ms': float(np.percentile(self.latencies_ms, 50)) if done else None,
            'p95_ms': float(np.percentile(self.latencies_ms, 95)) if done else None,
            'p99_ms': float(np.percentile(self.latencies_ms, 99)) if done else None,
            'candidates_per_s': done * self.candidates / self.seconds if self.seconds else None}


def run_clients(cell: Cell, make_call: Callable[[int], Callable[[], None]], requests: int, max_seconds: float,
                stop: threading.Event = None) -> Cell:
  """Runs `cell.clients` threads, client i repeating `make_call(i)()` up to `requests` times, for at most
  `max_seconds` (or until `stop` is set); fills the cell's latencies, errors and wall time."""
  start_line = threading.Barrier(cell.clients + 1, timeout=300)
  lock = threading.Lock()

  def attempt(call, timed: bool) -> None:
    begin = time.perf_counter()
    try:
      call()
    except grpc.RpcError:  # counted, warm-up calls included: the figures must show 0
      with lock:
        cell.errors += 1
      return
    if timed:
      with lock:
        cell.latencies_ms.append((time.perf_counter() - begin) * 1e3)

  def client(index):
    call = make_call(index)
    for _ in range(WARMUP_CALLS):
      attempt(call, timed=False)
    start_line.wait()
    deadline = time.perf_counter() + max_seconds
    for _ in range(requests):
      attempt(call, timed=True)
      if time.perf_counter() > deadline or (stop is not None and stop.is_set()):
        return

  threads = [threading.Thread(target=client, args=(i,)) for i in range(cell.clients)]
  for thread in threads:
    thread.start()
  start_line.wait()
  began = time.perf_counter()
  for thread in threads:
    thread.join()
  cell.seconds = time.perf_counter() - began
  return cell


def candidate_lists(examples: List[bytes], size: int, clients: int) -> List[List[bytes]]:
  """One request's candidates per client: `size` examples drawn from the input, different per client."""
  rng = random.Random(size * 1000 + clients)
  return [rng.sample(examples, min(size, len(examples))) for _ in range(clients)]


class ServerProcess:
  """`tfx_runner.py serve` on a base directory, in a subprocess on 127.0.0.1 and a free port."""

  def __init__(self, model_base: str, poll_seconds: float, batching_parameters: Optional[str] = None):
    self.model_name = os.path.basename(model_base)
    self.process = subprocess.Popen(
        [sys.executable, os.path.join(REPO_ROOT, 'tfx_runner.py'), 'serve', '--model-base', model_base, '--port', '0',
         '--poll-seconds', str(poll_seconds)] + (['--batching-parameters', batching_parameters]
                                                 if batching_parameters else []),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT)
    line = self.process.stdout.readline()
    if ' on 127.0.0.1:' not in line:
      self.stop()
      raise RuntimeError(f'the server did not start: {line!r}')
    self.target = '127.0.0.1:' + line.split(' on 127.0.0.1:')[1].split()[0]

  def stop(self) -> None:
    self.process.terminate()
    self.process.wait(60)


def grpc_call(target: str, model_name: str, candidates: List[bytes], answers: list = None) -> Callable[[], None]:
  """A client with its own channel sending one Predict request of `candidates`; (time, version) of each
  answer is appended to `answers` if given."""
  client = PredictionClient(target, model_name)

  def call():
    _, version = client.predict(candidates)
    if answers is not None:
      answers.append((time.perf_counter(), version))
  return call


def in_process_call(signature: Signature, candidates: List[bytes]) -> Callable[[], None]:
  inputs = {signatures.EXAMPLES_INPUT: np.array(candidates, dtype=object)}
  return lambda: signature(inputs)


def version_switch(server: ServerProcess, base: str, version_dir: str, examples: List[bytes], clients: int,
                   candidates: int, max_seconds: float) -> dict:
  """Clients send requests while a new version is published (copy_version: a copy renamed into place), then
  while it is removed again (a rollback to the version left); returns the cell's figures, the answers per
  version and the seconds from each change to the first answer by the version switched to."""
  old_version = max(ready_versions(base))
  new_version = old_version + 1
  answers: List[tuple] = []
  stop, changed_at = threading.Event(), {}

  def wait_for_answers_from(version) -> None:
    deadline = time.perf_counter() + max_seconds
    while all(v != version for _, v in answers[-clients:]) and time.perf_counter() < deadline:
      time.sleep(0.05)

  def push_then_roll_back():
    time.sleep(1.0)  # load on the old version first
    changed_at['push'] = time.perf_counter()
    copy_version(version_dir, base, new_version)
    wait_for_answers_from(new_version)
    time.sleep(1.0)  # a second on the new one
    changed_at['rollback'] = time.perf_counter()
    shutil.rmtree(os.path.join(base, str(new_version)))
    wait_for_answers_from(old_version)
    time.sleep(1.0)  # and a second on the old one again
    stop.set()

  changer = threading.Thread(target=push_then_roll_back)
  changer.start()
  lists = candidate_lists(examples, candidates, clients)
  cell = run_clients(Cell('grpc, version switch + rollback', clients, candidates),
                     lambda i: grpc_call(server.target, server.model_name, lists[i], answers),
                     requests=10 ** 6, max_seconds=3 * max_seconds + 5, stop=stop)
  changer.join()

  def seconds_to(version, change):
    first = next((t for t, v in answers if v == version and t > changed_at.get(change, float('inf'))), None)
    return None if first is None else round(first - changed_at[change], 2)

  versions = [v for _, v in answers]
  return {**cell.summary(), 'answers_per_version': {str(v): versions.count(v) for v in sorted(set(versions))},
          'seconds_to_new_version': seconds_to(new_version, 'push'),
          'seconds_to_rollback': seconds_to(old_version, 'rollback')}


def format_table(cells: List[dict]) -> str:
  def number(value, spec):
    return '-' if value is None else format(value, spec)

  header = '| target | clients | candidates | requests | errors | p50 ms | p95 ms | p99 ms | candidates/s |'
  lines = [header, '|' + '---|' * 9]
  for c in cells:
    figures = [number(c['p50_ms'], '.2f'), number(c['p95_ms'], '.2f'), number(c['p99_ms'], '.2f'),
               number(c['candidates_per_s'], '.0f')]
    lines.append(f'| {c["target"]} | {c["clients"]} | {c["candidates"]} | {c["requests"]} | {c["errors"]} | '
                 + ' | '.join(figures) + ' |')
  return '\n'.join(lines)


def goal(cells: List[dict], clients: int = 4, candidates: int = 100, ratio: float = 2.0) -> Optional[str]:
  """The goal's verdict: gRPC p99 <= `ratio` x in-process p99 at `clients` x `candidates` (None if not run)."""
  found = {c['target']: c for c in cells if (c['clients'], c['candidates']) == (clients, candidates)}
  if 'grpc' not in found or 'in-process' not in found or not found['in-process']['p99_ms']:
    return None
  grpc_p99, floor_p99 = found['grpc']['p99_ms'], found['in-process']['p99_ms']
  return (f'goal p99 <= {ratio:g}x in-process at {clients} clients x {candidates} candidates: gRPC {grpc_p99:.2f} ms / '
          f'in-process {floor_p99:.2f} ms = {grpc_p99 / floor_p99:.2f}x '
          f'({"met" if grpc_p99 <= ratio * floor_p99 else "NOT met"})')


def load_average() -> str:
  return ' '.join(f'{v:.2f}' for v in os.getloadavg()) + f' (1/5/15 min, {os.cpu_count()} CPUs)'


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model-base', required=True, help='the model\'s base path (OUTPUT_DIR/serving/ctr)')
  parser.add_argument('--input', required=True, help='raw CSV rows to draw candidates from (OUTPUT_DIR/data/data.csv)')
  parser.add_argument('--clients', default='1,4,16', help='comma-separated concurrent clients (default 1,4,16)')
  parser.add_argument('--candidates', default='1,100', help='comma-separated examples per request (default 1,100)')
  parser.add_argument('--requests', type=int, default=200, help='requests per client and cell (default 200)')
  parser.add_argument('--max-seconds', type=float, default=20.0, help='time limit per cell (default 20)')
  parser.add_argument('--batching-parameters', metavar='FILE',
                      help='the server\'s TF Serving batching parameters file (default: the built-in values, which '
                           '`tfx_runner.py run` writes to OUTPUT_DIR/serving/batching_parameters.txt)')
  parser.add_argument('--output', help='also write the figures to this JSON file')
  args = parser.parse_args()
  clients = [int(n) for n in args.clients.split(',')]
  sizes = [int(n) for n in args.candidates.split(',')]

  model_base = os.path.abspath(args.model_base)
  version = ready_versions(model_base)[-1]
  version_dir = os.path.join(model_base, str(version))
  served = ServedModel(os.path.basename(model_base), version, version_dir)  # the floor, and the column types
  examples = read_csv_examples(args.input, signature_column_types(served.signature_defs[signatures.RAW]))
  floor = served.signature(signatures.DEFAULT)

  results: Dict[str, Any] = {'cells': [], 'load_average_before': load_average()}
  print('load average before:', results['load_average_before'], flush=True)
  with tempfile.TemporaryDirectory(prefix='serving_load_') as scratch:
    base = os.path.join(scratch, served.name)
    copy_version(version_dir, base, version)
    server = ServerProcess(base, poll_seconds=0.5, batching_parameters=args.batching_parameters)
    try:
      for size in sizes:
        for n in clients:
          lists = candidate_lists(examples, size, n)
          for target, make in (('grpc', lambda i: grpc_call(server.target, served.name, lists[i])),
                               ('in-process', lambda i: in_process_call(floor, lists[i]))):
            cell = run_clients(Cell(target, n, size), make, args.requests, args.max_seconds).summary()
            results['cells'].append(cell)
            print(json.dumps(cell), flush=True)
      results['version_switch'] = version_switch(server, base, version_dir, examples, clients=max(clients),
                                                 candidates=max(sizes), max_seconds=args.max_seconds)
    finally:
      server.stop()
  results['load_average_after'] = load_average()
  results['goal'] = goal(results['cells'])
  print('\n' + format_table(results['cells']))
  print('\nversion switch and rollback under load:', json.dumps(results['version_switch']))
  if results['goal']:
    print(results['goal'])
  print('load average before:', results['load_average_before'], '| after:', results['load_average_after'])
  switch = results['version_switch']
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(results, f, indent=2)
  failed = switch['errors'] or switch['seconds_to_new_version'] is None or switch['seconds_to_rollback'] is None or \
      any(c['errors'] for c in results['cells'])
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
