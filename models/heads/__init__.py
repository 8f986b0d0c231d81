"""Multi-task heads by name (`PipelineConfig.head`). A head maps the shared `EmbeddedFeatures`, the hidden
sizes, a `DomainAdaptation` and its options to {task: probability [batch, 1]}, each output layer named
after its task. Every dense layer (experts, gates' linear maps, towers) comes from the adaptation's
`dense`, so MLoRA adapts all of them and its fine-tune stage freezes all of them.

Labels come in two roles: `click`, on every exposure, and `conversion`, which only follows a click.
`TARGETS` says which outputs each head trains and on what; `EVAL_LABELS` how every output is scored
(over all exposures, the entire space).
"""
import dataclasses
from typing import Dict, Optional

from models.features import FeatureSpec
from models.heads.esmm import esmm
from models.heads.mmoe import mmoe
from models.heads.ple import ple
from models.heads.shared_bottom import shared_bottom

CLICK, CONVERSION = 'click', 'conversion'

HEADS = {'shared_bottom': shared_bottom, 'esmm': esmm, 'mmoe': mmoe, 'ple': ple}


@dataclasses.dataclass(frozen=True)
class Target:
  """A trained output: its loss is binary cross-entropy against the `label` role, averaged over the
  samples where the `mask` role is 1 (every sample when None)."""
  label: str
  mask: Optional[str] = None


# A directly trained CVR only sees clicked samples; ESMM trains CTCVR on every exposure instead.
_DIRECT = {'ctr': Target(CLICK), 'cvr': Target(CONVERSION, mask=CLICK)}
TARGETS: Dict[str, Dict[str, Target]] = {
    'shared_bottom': _DIRECT, 'mmoe': _DIRECT, 'ple': _DIRECT,
    'esmm': {'ctr': Target(CLICK), 'ctcvr': Target(CONVERSION)},
}
OUTPUTS = {head: ('ctr', 'cvr', 'ctcvr') if head == 'esmm' else ('ctr', 'cvr') for head in HEADS}
EVAL_LABELS = {'ctr': CLICK, 'cvr': CONVERSION, 'ctcvr': CONVERSION}


def label_columns(spec: FeatureSpec) -> Dict[str, str]:
  """{label role: column}: the click label, and the first extra label as the conversion."""
  if not spec.extra_labels:
    raise ValueError(f'A multi-task head needs a conversion label: the data has only {spec.label!r}; add the '
                     'conversion column to features.json extra_labels.')
  return {CLICK: spec.label, CONVERSION: spec.extra_labels[0]}
