"""Domain-adaptation methods by name (`PipelineConfig.adaptation` and `pretrain_adaptation`)."""
from models.adaptation.base import DomainAdaptation
from models.adaptation.mlora import MLoRA

ADAPTATIONS = {cls.name: cls for cls in (DomainAdaptation, MLoRA)}
