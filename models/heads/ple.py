"""PLE (Tang et al., RecSys'20): Customized Gate Control levels of shared and task-specific experts,
stacked progressively."""
from models.heads.common import dnn_input, experts, mixture, task_tower, tower_units
from models.heads.shared_bottom import TASKS

PLE_LEVELS = 2
SHARED_EXPERTS = 2
TASK_EXPERTS = 1


def customized_gate_control(task_inputs: dict, shared_input, level: int, last: bool, hidden_units, adapt,
                            options):
  """One CGC level. Task t mixes its own experts and the shared ones with its gate:

      h_t = sum_e g_t,e(x_t) f_e(x_t),  e over experts_t and shared experts

  and, below the last level, the shared path mixes every expert of the level with its own gate. Returns
  ({task: h_t}, shared output or None at the last level). Names: `ple{level}_{task}_expert_{e}_{i}`,
  `ple{level}_shared_expert_{e}_{i}`, gates `ple{level}_{task}_gate`, `ple{level}_shared_gate`."""
  prefix = f'ple{level}'
  shared = experts(shared_input, f'{prefix}_shared_expert', int(options.get('shared_experts', SHARED_EXPERTS)),
                   hidden_units, adapt)
  own = {task: experts(x, f'{prefix}_{task}_expert', int(options.get('task_experts', TASK_EXPERTS)), hidden_units,
                       adapt) for task, x in task_inputs.items()}
  outputs = {task: mixture(task_inputs[task], own[task] + shared, f'{prefix}_{task}', adapt, options)
             for task in task_inputs}
  if last:
    return outputs, None
  every_expert = [f for task in task_inputs for f in own[task]] + shared
  return outputs, mixture(shared_input, every_expert, f'{prefix}_shared', adapt, options)


def ple(features, hidden_units, adapt, options):
  """`ple_levels` (default 2) CGC levels: level 1 reads the DNN input for every path, level l + 1 reads
  level l's output of the same path (each task's, and the shared one). Per level `shared_experts` (default
  2) shared and `task_experts` (default 1) task-specific expert MLPs `hidden_units`, gate dropout
  `gate_dropout` (default 0.1); a tower per task on its last-level output."""
  levels = int(options.get('ple_levels', PLE_LEVELS))
  if levels < 1:
    raise ValueError(f'ple_levels must be at least 1, got {levels}.')
  x = dnn_input(features)
  task_inputs, shared = {task: x for task in TASKS}, x
  for level in range(levels):
    task_inputs, shared = customized_gate_control(task_inputs, shared, level, level == levels - 1, hidden_units,
                                                  adapt, options)
  units = tower_units(hidden_units, options)
  return {task: task_tower(h, task, units, adapt, features) for task, h in task_inputs.items()}
