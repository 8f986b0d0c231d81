"""CTR backbones by name. Each maps the shared `EmbeddedFeatures`, the hidden sizes and a dense-layer
factory to one logit [batch, 1]; the factory decides whether dense layers carry MLoRA adapters, so every
backbone gets MLoRA without knowing about it."""
from models.backbones.deepfm import deepfm_logit
from models.backbones.mlp import mlp_logit

BACKBONES = {'mlp': mlp_logit, 'deepfm': deepfm_logit}
