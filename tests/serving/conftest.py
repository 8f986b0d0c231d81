"""One small pipeline run per test session: the pushed model every serving test serves and calls."""
import os
import shutil

import pytest
import tensorflow as tf

import tfx_runner
from serving.repository import ready_versions
from serving.server import ModelServer

# Few steps and no AUC floor: the tests need a real pushed model with the pipeline's signatures, not a good one.
SMALL_RUN = ['--rows', '3000', '--pretrain-steps', '40', '--finetune-steps', '20', '--eval-steps', '3',
             '--batch-size', '128', '--hidden-units', '16-8', '--min-domain-auc', '0']


class PushedModel:
  """Paths of the session's pipeline run: its output folder, raw CSV, model base and pushed version."""

  def __init__(self, output_dir):
    self.output_dir = str(output_dir)
    self.data_csv = os.path.join(self.output_dir, 'data', 'data.csv')
    self.serving_root = os.path.join(self.output_dir, 'serving')
    self.model_base = os.path.join(self.serving_root, 'ctr')
    self.version = ready_versions(self.model_base)[-1]
    self.version_dir = os.path.join(self.model_base, str(self.version))

  def copy_base(self, destination) -> str:
    """A writable copy of the model base (to add versions to), in TF Serving's layout."""
    base = os.path.join(str(destination), 'ctr')
    shutil.copytree(self.version_dir, os.path.join(base, str(self.version)))
    return base


@pytest.fixture(scope='session')
def pushed(tmp_path_factory) -> PushedModel:
  output_dir = tmp_path_factory.mktemp('serving_run')
  assert tfx_runner.main(['run', '--output-dir', str(output_dir)] + SMALL_RUN) == 0
  return PushedModel(output_dir)


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
