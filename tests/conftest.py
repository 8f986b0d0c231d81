"""Session fixtures: the shared real pipeline run (tests/runs.py), its pushed model and a server on it."""
import os

import pytest
import tensorflow as tf

from serving.server import ModelServer
from tests import runs

# The longest modules of `make test`: the one that continues the shared run with a run of its own (the shared run
# is built by the worker that first needs it: the first module's), and the Airflow DAG load, which needs no run.
# Started first, they run beside the many short modules instead of after them (pytest-xdist's loadscope would order
# modules by their number of tests, which puts these few-test modules last: one worker idle while the other
# finishes them).
LONGEST_FIRST = ('tests/pipeline/test_spans.py', 'tests/pipeline/test_orchestrators.py')


def pytest_collection_modifyitems(items):
  """Runs LONGEST_FIRST's modules first, in that order (with `--no-loadscope-reorder`: the Makefile's)."""
  def rank(item):
    module = item.nodeid.split('::')[0]
    return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
  items.sort(key=rank)


def _shared_temp(tmp_path_factory) -> str:
  """A folder all pytest-xdist workers of this session share (the session's own without xdist)."""
  base = tmp_path_factory.getbasetemp()
  return str(base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base)


@pytest.fixture(scope='session')
def shared_run(tmp_path_factory) -> runs.SharedRun:
  """The session's one shared pipeline run (read only)."""
  return runs.SharedRun(runs.built_once(os.path.join(_shared_temp(tmp_path_factory), 'shared_run'),
                                        runs.build_shared_run))


@pytest.fixture(scope='session')
def pushed(shared_run) -> runs.SharedRun:
  """The shared run, as the serving tests know it: its pushed version and the raw rows to send."""
  return shared_run


@pytest.fixture(scope='session')
def saved_model(pushed):
  """The pushed version loaded in this process: what every served answer is compared with."""
  return tf.saved_model.load(pushed.version_dir)


@pytest.fixture(scope='session')
def server(pushed):
  """A server on the pushed model base (never written to by the tests), on 127.0.0.1 and a free port."""
  model_server = ModelServer(pushed.model_base).start()
  yield model_server
  model_server.stop()
