"""Shared-bottom multi-task head (Caruana, 1997): one MLP for every task, a tower per task."""
from models.backbones.mlp import dnn_hidden
from models.heads.common import dnn_input, task_tower, tower_units

TASKS = ('ctr', 'cvr')


def shared_bottom(features, hidden_units, adapt, options):
  """p_t = sigmoid(tower_t(h)), h = MLP(x) shared by the tasks (layers `bottom_{i}`)."""
  bottom = dnn_hidden(dnn_input(features), hidden_units, adapt, prefix='bottom')
  return {task: task_tower(bottom, task, tower_units(hidden_units, options), adapt, features) for task in TASKS}
