"""The feature contract shared by the data, Transform and Trainer stages.

A `FeatureSpec` names the raw columns of a domain-tagged click log and how each is encoded. It travels
as a plain dict through TFX `custom_config`, so Transform and both Trainers read the same contract, and
as `features.json` next to prepared data so a dataset carries its own description.
"""
import dataclasses
import json
import os
from typing import Dict, List, Optional

FEATURE_SPEC_FILE = 'features.json'


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """Columns of the raw input and their encoding.

  Attributes:
    domain: Column holding the domain (scenario) name, a string.
    domains: The known domain names in adapter order; domain `i` gets adapter `i`.
    label: Column holding the 0/1 click label the models predict.
    vocab: Categorical columns encoded by a vocabulary learned in Transform (with OOV buckets).
    hashed: Very high-cardinality categorical columns hashed into `{column: buckets}`.
    numeric: Float columns, z-score normalized in Transform.
    multivalent: Columns holding `|`-separated categorical values, `{column: max values kept}`.
    extra_labels: Further 0/1 label columns (for example `conversion`), kept out of the model input.
    user: Column identifying the user, for per-user metrics (GAUC); may also be a feature column.
  """
  domain: str
  domains: List[str]
  label: str
  vocab: List[str] = dataclasses.field(default_factory=list)
  hashed: Dict[str, int] = dataclasses.field(default_factory=dict)
  numeric: List[str] = dataclasses.field(default_factory=list)
  multivalent: Dict[str, int] = dataclasses.field(default_factory=dict)
  extra_labels: List[str] = dataclasses.field(default_factory=list)
  user: Optional[str] = None

  @property
  def num_domains(self) -> int:
    return len(self.domains)

  @property
  def categorical(self) -> List[str]:
    """Every single-valued categorical column, in a fixed order."""
    return list(self.vocab) + list(self.hashed)

  @property
  def label_columns(self) -> List[str]:
    return [self.label] + list(self.extra_labels)

  @property
  def raw_columns(self) -> List[str]:
    """Every column of the raw input, labels included."""
    feature_columns = ([self.domain] + self.categorical + list(self.numeric) + list(self.multivalent))
    return feature_columns + self.label_columns

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, value: dict) -> 'FeatureSpec':
    return cls(**value)

  def save(self, directory: str) -> str:
    path = os.path.join(directory, FEATURE_SPEC_FILE)
    with open(path, 'w') as f:
      json.dump(self.to_dict(), f, indent=2)
    return path

  @classmethod
  def load(cls, directory: str) -> 'FeatureSpec':
    with open(os.path.join(directory, FEATURE_SPEC_FILE)) as f:
      return cls.from_dict(json.load(f))


# Names of the transformed features the models consume.
DOMAIN_INDEX = 'domain_index'


def transformed_name(column: str) -> str:
  return f'{column}_xf'
