"""CTR backbones by name. Each maps the shared `EmbeddedFeatures`, the hidden sizes and a
`DomainAdaptation` (models/adaptation) to one logit [batch, 1]. Every dense layer comes from the
adaptation's `dense` and every DNN hidden output goes through its `hidden`, so every backbone gets MLoRA,
STAR, AdaSparse or PEPNet without knowing which."""
from models.backbones.deepfm import deepfm_logit
from models.backbones.mlp import mlp_logit

BACKBONES = {'mlp': mlp_logit, 'deepfm': deepfm_logit}
