"""CTR backbones by name. Each maps the shared `EmbeddedFeatures`, the hidden sizes and a
`DomainAdaptation` (models/adaptation) to one logit [batch, 1]. Every dense layer comes from the
adaptation's `dense` and every DNN hidden output goes through its `hidden`, so every backbone gets MLoRA,
STAR, AdaSparse or PEPNet without knowing which."""
from models.backbones.autoint import autoint_logit
from models.backbones.dcn import dcn_logit
from models.backbones.deepfm import deepfm_logit
from models.backbones.fibinet import fibinet_logit
from models.backbones.mlp import mlp_logit
from models.backbones.nfm import nfm_logit
from models.backbones.pnn import pnn_logit
from models.backbones.star import star_logit
from models.backbones.wdl import wdl_logit
from models.backbones.xdeepfm import xdeepfm_logit

BACKBONES = {'mlp': mlp_logit, 'deepfm': deepfm_logit,
             'wdl': wdl_logit, 'dcn': dcn_logit, 'autoint': autoint_logit, 'fibinet': fibinet_logit,
             'nfm': nfm_logit, 'pnn': pnn_logit, 'xdeepfm': xdeepfm_logit, 'star': star_logit}
