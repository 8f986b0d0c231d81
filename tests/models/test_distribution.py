"""tf.distribute for the Trainers (models/distribution.py): the strategy names and their errors, and the real
run_fn on local clusters of processes (tests/models/cluster.py) on tiny transformed data: MLoRA fine-tuned by
two MultiWorkerMirrored workers against the same stage in one process, and the backbone trained with its
embedding tables partitioned across two parameter servers."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from benchmarks import calibration
from models import distribution
from models.features import transformed_name
from models.trainer import keras_model_path
from tests.models import cluster

# Two workers each take half of every global batch: the same gradients as one process up to the order of float
# sums, so the exported scores agree far below any difference that matters to a CTR model.
SCORE_TOLERANCE = 1e-4


def test_an_unknown_strategy_is_refused_with_the_choices():
  with pytest.raises(ValueError, match='none, mirrored, multi_worker, parameter_server'):
    distribution.check('horovod')


def test_multi_worker_without_tf_config_says_what_to_set(monkeypatch):
  monkeypatch.delenv('TF_CONFIG', raising=False)
  with pytest.raises(ValueError, match='TF_CONFIG'):
    distribution.make_strategy(distribution.MULTI_WORKER)


def test_none_is_tensorflows_default_strategy_and_its_only_process_writes():
  strategy = distribution.make_strategy(distribution.NONE)
  assert strategy is tf.distribute.get_strategy() and distribution.is_chief(strategy)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  """(work folder with the tiny transformed data, the test split's serialized examples, the pretrained
  Model artifact's Format-Serving folder)."""
  work = str(tmp_path_factory.mktemp('cluster'))
  examples = cluster.examples()
  cluster.transformed(work, examples)
  pretrained = cluster.run_stage('pretrain', work, os.path.join(work, 'pretrain'), None, {})
  return work, examples['test'], pretrained


@pytest.mark.slow
def test_two_multi_worker_replicas_train_what_one_process_trains(data):
  work, test_examples, pretrained = data
  single = cluster.run_stage('finetune', work, os.path.join(work, 'single'), pretrained, {})
  model_dir = os.path.join(work, 'multi')
  logs = os.path.join(work, 'multi-logs')
  os.makedirs(logs)
  with cluster.started(cluster.cluster_spec(worker=2), ['finetune', work, model_dir, pretrained,
                                                        distribution.MULTI_WORKER], logs) as processes:
    cluster.finish(processes, logs)

  replicas = [np.load(cluster.weights_file(model_dir, f'worker-{i}')) for i in range(2)]
  assert sorted(replicas[0].files) == sorted(replicas[1].files)
  difference = max(float(np.max(np.abs(replicas[0][k] - replicas[1][k]))) for k in replicas[0].files)
  print(f'weights, max |worker 0 - worker 1|: {difference:.3g}')
  assert difference == 0.0  # all-reduced: the replicas hold the same weights, bit for bit

  serving_dir = os.path.join(model_dir, 'Format-Serving')
  trained = tf_keras.models.load_model(keras_model_path(serving_dir))  # the chief's export
  adapters = [w for w in trained.weights if 'lora_b' in w.name]
  assert adapters and any(np.any(w.numpy() != 0) for w in adapters)  # B starts at 0: the adapters trained
  scores = calibration.served_predictions(serving_dir, test_examples)
  expected = calibration.served_predictions(single, test_examples)
  gap = float(np.max(np.abs(scores - expected)))
  print(f'exported scores, max |2 workers - 1 process| on {len(scores)} test rows: {gap:.3g}')
  assert gap < SCORE_TOLERANCE


@pytest.mark.slow
def test_parameter_servers_hold_the_embedding_tables_in_shards_and_the_export_serves(data):
  work, test_examples, _ = data
  model_dir = os.path.join(work, 'ps')
  serving_dir = os.path.join(model_dir, 'Format-Serving')
  logs = os.path.join(work, 'ps-logs')
  os.makedirs(logs)
  spec = cluster.cluster_spec(chief=1, worker=1, ps=2)
  with cluster.started(spec, ['pretrain', work, model_dir, '', distribution.PARAMETER_SERVER], logs) as processes:
    cluster.finish({task: p for task, p in processes.items() if task[0] == 'chief'}, logs)

  names = np.load(cluster.weights_file(model_dir, 'chief-0')).files
  user_table = f'embedding_{transformed_name("user_id")}/embeddings'
  # 50,000 x 4 floats: one shard per parameter server; the small tables stay whole.
  assert sorted(n for n in names if n.startswith(user_table)) == [f'{user_table}/part_0:0', f'{user_table}/part_1:0']
  assert f'embedding_{transformed_name("item_id")}/embeddings:0' in names
  scores = calibration.served_predictions(serving_dir, test_examples)  # a fresh load, no strategy
  assert np.all((scores > 0) & (scores < 1)) and np.std(scores) > 1e-3
  with open(os.path.join(os.path.dirname(keras_model_path(serving_dir)), 'training_stats.json')) as f:
    assert json.load(f)['validation_auc'] > 0.6  # it learned on the workers
