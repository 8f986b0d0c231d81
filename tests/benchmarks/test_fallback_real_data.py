"""The real-data fallback check (benchmarks/fallback_real_data.py): the table from hand-made results and the
check's figures on a domain list of the data's own. No model is trained."""
import numpy as np

from benchmarks import calibration
from benchmarks import fallback_real_data as fallback


def _run(dataset, seed, auc_known, auc_unknown, calibration_unknown=1.0):
  check = {'auc_known': auc_known, 'auc_unknown': auc_unknown, 'wauc_known': auc_known - 0.01,
           'wauc_unknown': auc_unknown - 0.01, 'calibration_known': 1.0, 'calibration_unknown': calibration_unknown}
  return {'dataset': dataset, 'backbone': 'mlp', 'seed': seed, 'test_rows': 1000, 'domains': 3, 'fallback': check}


def test_the_table_says_whether_the_gap_and_the_calibration_meet_the_bound():
  results = {'command': 'benchmarks/fallback_real_data.py --seeds 0,1,2',
             'results': [_run('ciao', s, 0.71, 0.705 - 0.001 * s) for s in range(3)]
             + [_run('movielens:gender', s, 0.78, 0.75) for s in range(3)]
             + [_run('movielens:age', s, 0.78, 0.779, calibration_unknown=1.0 + 0.06 * s) for s in range(3)]}
  rows = {line.split(' | ')[0][2:]: line for line in fallback.format_markdown(results).splitlines()
          if line.startswith('| ') and ' | mlp | ' in line}
  assert list(rows) == ['ciao', 'movielens:gender', 'movielens:age']
  assert '| 0.0060 ± 0.0025 |' in rows['ciao'] and rows['ciao'].endswith('| yes |')
  assert rows['movielens:gender'].endswith('| no |')  # a 0.03 gap
  assert rows['movielens:age'].endswith('| no |')  # one seed's calibration ratio 1.12


def test_the_check_takes_the_domains_the_data_has():
  labels = np.array([0, 1, 0, 1, 0, 1])
  domains = np.array(['books', 'books', 'books', 'games', 'games', 'games'])
  known = np.array([0.2, 0.8, 0.3, 0.4, 0.1, 0.6])
  check = calibration.fallback_check(labels, known, np.full(6, 0.5), domains)
  assert check['auc_known'] == 1.0 and check['auc_unknown'] == 0.5
  assert check['books/auc_unknown'] == 0.5 and check['games/calibration_unknown'] == 0.5 / (2 / 3)
