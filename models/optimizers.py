"""The fine-tune stage's optimizer when its embedding tables take their own learning rate."""
import os
from typing import Sequence

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402


@tf_keras.utils.register_keras_serializable(package='mdctr')
class LayerRateAdam(tf_keras.optimizers.Adam):
  """Adam whose step on the weights of `layer_names` is `layer_rate` where every other weight's is
  `learning_rate`.

  Adam's step is proportional to its learning rate, so the step on those weights is Adam's own, scaled by
  `layer_rate / learning_rate` (the moments are the same): MLoRA's adapters can learn fast while the
  embedding tables, trained for many steps in pretraining, move slowly.
  """

  def __init__(self, learning_rate: float = 1e-3, layer_rate: float = 1e-4, layer_names: Sequence[str] = (),
               **kwargs):
    super().__init__(learning_rate, **kwargs)
    self.layer_rate = layer_rate
    self.layer_names = list(layer_names)

  def update_step(self, gradient, variable):
    if variable.name.split('/')[0] not in self.layer_names:
      return super().update_step(gradient, variable)
    before = tf.identity(variable)
    super().update_step(gradient, variable)
    scale = tf.cast(self.layer_rate, variable.dtype) / tf.cast(self.learning_rate, variable.dtype)
    variable.assign(before + scale * (variable - before))

  def get_config(self):
    return {**super().get_config(), 'layer_rate': self.layer_rate, 'layer_names': self.layer_names}
