"""`tfx_runner.py predict` and `serve`: raw CSV rows scored over gRPC as the SavedModel scores them in-process."""
import csv
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfx_runner
from serving import signatures
from serving.client import PredictionClient
from serving.examples import read_csv_examples
from tests.serving.helpers import raw_column_types

pytestmark = pytest.mark.e2e
ROWS = 250  # three requests of at most 100 rows


@pytest.fixture(scope='module')
def rows_csv(pushed, tmp_path_factory):
  """The first ROWS rows of the run's raw data, labels included, as the pipeline reads them."""
  path = tmp_path_factory.mktemp('predict') / 'rows.csv'
  with open(pushed.data_csv) as source, open(path, 'w') as target:
    target.writelines(line for line, _ in zip(source, range(ROWS + 1)))
  return str(path)


def test_predict_writes_the_scores_of_the_saved_model_in_process(server, pushed, saved_model, rows_csv, tmp_path,
                                                                 capsys):
  output = tmp_path / 'scores.csv'
  assert tfx_runner.main(['predict', '--server', f'127.0.0.1:{server.port}', '--input', rows_csv,
                          '--output', str(output)]) == 0
  with open(output) as f:
    served = np.array([float(row['ctr']) for row in csv.DictReader(f)])
  assert served.shape == (ROWS,)
  examples = read_csv_examples(rows_csv, raw_column_types(saved_model))
  in_process = saved_model.signatures[signatures.DEFAULT](examples=tf.constant(examples))['ctr'].numpy()
  np.testing.assert_allclose(served, in_process, rtol=0, atol=1e-6)
  assert f'{ROWS} rows scored by model ctr version {pushed.version}' in capsys.readouterr().err


def test_predict_reports_a_refused_request(server, tmp_path, capsys):
  path = tmp_path / 'no_item.csv'
  path.write_text('domain,user_id,category,context,price,user_activity\nsearch,1,2,app_day,1.0,0.5\n')
  assert tfx_runner.main(['predict', '--server', f'127.0.0.1:{server.port}', '--input', str(path)]) == 2
  message = capsys.readouterr().err
  assert 'INVALID_ARGUMENT' in message and 'Feature: item_id' in message


def test_serve_command_listens_on_localhost_and_stops_on_sigterm(pushed, rows_csv):
  process = subprocess.Popen([sys.executable, tfx_runner.__file__, 'serve', '--model-base', pushed.model_base,
                              '--port', '0'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             cwd=os.path.dirname(tfx_runner.__file__))
  try:
    line = process.stdout.readline()
    assert line.startswith('Serving model ctr from ') and ' on 127.0.0.1:' in line
    port = int(line.split(' on 127.0.0.1:')[1].split()[0])
    with PredictionClient(f'127.0.0.1:{port}', 'ctr') as client:
      outputs, version = client.predict_csv(rows_csv)
    assert version == pushed.version and outputs['ctr'].shape == (ROWS,)
  finally:
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
