"""Session fixtures: the shared real pipeline run (tests/runs.py), its pushed model and a server on it."""
import os

import pytest
import tensorflow as tf

from serving.server import ModelServer
from tests import runs


def _shared_temp(tmp_path_factory) -> str:
  """A folder all pytest-xdist workers of this session share (the session's own without xdist)."""
  base = tmp_path_factory.getbasetemp()
  return str(base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base)


@pytest.fixture(scope='session')
def shared_run(tmp_path_factory) -> runs.SharedRun:
  """The session's one shared pipeline run (read only)."""
  return runs.SharedRun(runs.built_once(os.path.join(_shared_temp(tmp_path_factory), 'shared_run'),
                                        runs.build_shared_run))


@pytest.fixture(scope='session', autouse=True)
def _shared_run_first(request):
  """Under pytest-xdist, the first worker builds the shared run before its first test, while the other works
  through the tests that need no pipeline; without xdist it is built when a test first asks for it."""
  if os.environ.get('PYTEST_XDIST_WORKER') == 'gw0' and any(
      'shared_run' in item.fixturenames for item in request.session.items):
    request.getfixturevalue('shared_run')


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
