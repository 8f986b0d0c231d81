"""The serving contract: the names of the exported model's signatures and inputs, which the Trainer exports
(`models.trainer.serving_signatures`) and clients, warm-up requests and tests call."""
import tensorflow as tf

DEFAULT = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY  # serialized tf.Example -> one output per task
RAW = 'serving_raw'  # one tensor per raw column, named and typed as the column -> the same outputs
CLASSIFY = 'classify'  # TF Serving's Classify API: serialized tf.Example -> classes and scores
TRANSFORM = 'transform_features'  # serialized tf.Example -> transformed features (the Evaluator's)
EXAMPLES_INPUT = 'examples'  # the serialized tf.Example input of DEFAULT and TRANSFORM
CLASSES = ['0', '1']  # the click label's values, in the order of the classify signature's scores
