"""ESMM (Ma et al., SIGIR'18): CVR modelled over the entire space of exposures."""
import tf_keras

from models.heads.common import dnn_input, task_tower


def esmm(features, hidden_units, adapt, options):
  """pCTCVR = pCTR x pCVR. The embeddings are shared; CTR and CVR each get their own MLP `hidden_units`
  (layers `ctr_tower_{i}`, `cvr_tower_{i}`). Trained on CTR (click) and CTCVR (click and conversion) over
  every exposure, the CVR tower learns P(conversion | click) without the sample-selection bias of a
  model fitted on clicks alone, and without a loss of its own."""
  x = dnn_input(features)
  ctr = task_tower(x, 'ctr', hidden_units, adapt, features)
  cvr = task_tower(x, 'cvr', hidden_units, adapt, features)
  return {'ctr': ctr, 'cvr': cvr, 'ctcvr': tf_keras.layers.Multiply(name='ctcvr')([ctr, cvr])}
