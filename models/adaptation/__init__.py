"""Domain-adaptation methods by name (`PipelineConfig.adaptation` and `pretrain_adaptation`)."""
from models.adaptation.adasparse import AdaSparse
from models.adaptation.base import DomainAdaptation
from models.adaptation.baselines import NoDomain, Separate
from models.adaptation.mlora import MLoRA
from models.adaptation.pepnet import PEPNet
from models.adaptation.star import Star

ADAPTATIONS = {cls.name: cls for cls in (DomainAdaptation, MLoRA, Star, AdaSparse, PEPNet, NoDomain, Separate)}
ADAPTATION_OPTIONS = sorted({name for cls in ADAPTATIONS.values() for name in cls.option_names})
