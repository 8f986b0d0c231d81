"""MMoE (Ma et al., KDD'18): shared experts, one softmax gate per task."""
from models.heads.common import dnn_input, experts, mixture, task_tower, tower_units
from models.heads.shared_bottom import TASKS

NUM_EXPERTS = 4


def mmoe(features, hidden_units, adapt, options):
  """p_t = sigmoid(tower_t(sum_e g_t,e(x) f_e(x))): `num_experts` (default 4) expert MLPs `hidden_units`
  (`expert_{e}_{i}`), for each task a gate `{task}_mixture_gate` with dropout `gate_dropout` (default 0.1)
  and a tower."""
  x = dnn_input(features)
  shared = experts(x, 'expert', int(options.get('num_experts', NUM_EXPERTS)), hidden_units, adapt)
  units = tower_units(hidden_units, options)
  return {task: task_tower(mixture(x, shared, f'{task}_mixture', adapt, options), task, units, adapt, features)
          for task in TASKS}
