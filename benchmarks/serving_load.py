"""Load and latency of the gRPC model server, against the in-process SavedModel call as the floor.

    .venv/bin/python benchmarks/serving_load.py --model-base OUTPUT_DIR/serving/ctr --input OUTPUT_DIR/data/data.csv

Copies the highest version under --model-base into a scratch base directory, serves it with
`tfx_runner.py serve` in a subprocess on 127.0.0.1 (a free port), and for every number of concurrent
clients (--clients) and request size (--candidates) has each client send --requests Predict requests (and
stop after --max-seconds at the latest): p50/p99 latency, candidates/second and errors. The same cells run
on the SavedModel called in this process, with no gRPC, as the floor. Last, clients send requests while a
new version is copied in the way Pusher writes one: the switch must drop no request.
"""
import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List

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

  def __init__(self, model_base: str, poll_seconds: float):
    self.model_name = os.path.basename(model_base)
    self.process = subprocess.Popen(
        [sys.executable, os.path.join(REPO_ROOT, 'tfx_runner.py'), 'serve', '--model-base', model_base, '--port', '0',
         '--poll-seconds', str(poll_seconds)],
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
  """Clients send requests while a new version is copied in; returns the cell's figures, the answers per
  version and the seconds from the copy to the first answer by the new version."""
  new_version = max(ready_versions(base)) + 1
  answers: List[tuple] = []
  stop, pushed_at = threading.Event(), []

  def push():
    time.sleep(1.0)  # load on the old version first
    pushed_at.append(time.perf_counter())
    copy_version(version_dir, base, new_version)
    deadline = time.perf_counter() + max_seconds
    while all(v != new_version for _, v in answers[-clients:]) and time.perf_counter() < deadline:
      time.sleep(0.05)
    time.sleep(1.0)  # and a second on the new one
    stop.set()

  pusher = threading.Thread(target=push)
  pusher.start()
  lists = candidate_lists(examples, candidates, clients)
  cell = run_clients(Cell('grpc, version switch', clients, candidates),
                     lambda i: grpc_call(server.target, server.model_name, lists[i], answers),
                     requests=10 ** 6, max_seconds=max_seconds + 5, stop=stop)
  pusher.join()
  first_new = next((t for t, v in answers if v == new_version), None)
  versions = [v for _, v in answers]
  return {**cell.summary(), 'answers_per_version': {str(v): versions.count(v) for v in sorted(set(versions))},
          'seconds_to_new_version': None if first_new is None else round(first_new - pushed_at[0], 2)}


def format_table(cells: List[dict]) -> str:
  def number(value, spec):
    return '-' if value is None else format(value, spec)

  header = '| target | clients | candidates | requests | errors | p50 ms | p99 ms | candidates/s |'
  lines = [header, '|' + '---|' * 8]
  for c in cells:
    figures = [number(c['p50_ms'], '.2f'), number(c['p99_ms'], '.2f'), number(c['candidates_per_s'], '.0f')]
    lines.append(f'| {c["target"]} | {c["clients"]} | {c["candidates"]} | {c["requests"]} | {c["errors"]} | '
                 + ' | '.join(figures) + ' |')
  return '\n'.join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model-base', required=True, help='the model\'s base path (OUTPUT_DIR/serving/ctr)')
  parser.add_argument('--input', required=True, help='raw CSV rows to draw candidates from (OUTPUT_DIR/data/data.csv)')
  parser.add_argument('--clients', default='1,4,16', help='comma-separated concurrent clients (default 1,4,16)')
  parser.add_argument('--candidates', default='1,100', help='comma-separated examples per request (default 1,100)')
  parser.add_argument('--requests', type=int, default=200, help='requests per client and cell (default 200)')
  parser.add_argument('--max-seconds', type=float, default=20.0, help='time limit per cell (default 20)')
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

  results: Dict[str, list] = {'cells': []}
  with tempfile.TemporaryDirectory(prefix='serving_load_') as scratch:
    base = os.path.join(scratch, served.name)
    copy_version(version_dir, base, version)
    server = ServerProcess(base, poll_seconds=0.5)
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
  print('\n' + format_table(results['cells']))
  print('\nversion switch under load:', json.dumps(results['version_switch']))
  switch = results['version_switch']
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(results, f, indent=2)
  failed = switch['errors'] or switch['seconds_to_new_version'] is None or any(c['errors'] for c in results['cells'])
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
