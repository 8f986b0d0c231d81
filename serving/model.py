"""One version of a SavedModel, loaded for serving: its signatures, their SignatureDefs and its warm-up."""
import os
from typing import Dict, Iterable, Mapping

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import input_pb2, prediction_log_pb2

from serving import signatures
from serving.errors import RequestError

CLASSIFY_OUTPUTS = (tf.saved_model.CLASSIFY_OUTPUT_CLASSES, tf.saved_model.CLASSIFY_OUTPUT_SCORES)
_INVALID = grpc.StatusCode.INVALID_ARGUMENT


class Signature:
  """A signature of a loaded model: turns a request's tensors into its inputs, checking them, and runs it."""

  def __init__(self, name: str, function):
    self.name = name
    self._function = function
    self.inputs: Dict[str, tf.TensorSpec] = function.structured_input_signature[1]
    self.outputs: Dict[str, tf.TensorSpec] = function.structured_outputs
    self.batchable = all(spec.shape.rank and spec.shape[0] is None
                         for spec in list(self.inputs.values()) + list(self.outputs.values()))

  @staticmethod
  def rows(inputs: Mapping[str, np.ndarray]) -> int:
    """The batch size of checked inputs."""
    return len(next(iter(inputs.values())))

  def predict_inputs(self, tensors: Mapping[str, tensor_pb2.TensorProto]) -> Dict[str, np.ndarray]:
    """A PredictRequest's `inputs`, checked against the signature: every input present, no other, each of
    its dtype and shape, one batch size across them; else INVALID_ARGUMENT saying which."""
    missing, unknown = sorted(set(self.inputs) - set(tensors)), sorted(set(tensors) - set(self.inputs))
    if missing or unknown:
      problems = ([f'missing input {", ".join(missing)}'] if missing else []) + (
          [f'unknown input {", ".join(unknown)}'] if unknown else [])
      raise RequestError(_INVALID, f'{"; ".join(problems)}: signature {self.name} takes {", ".join(self.inputs)}')
    arrays = {name: self._array(name, tensors[name]) for name in self.inputs}
    if self.batchable and len({len(a) for a in arrays.values()}) > 1:
      sizes = ', '.join(f'{name} {len(a)}' for name, a in arrays.items())
      raise RequestError(_INVALID, f'inputs of signature {self.name} have different batch sizes: {sizes}')
    return arrays

  def _array(self, name: str, tensor: tensor_pb2.TensorProto) -> np.ndarray:
    spec = self.inputs[name]
    if tensor.dtype != spec.dtype.as_datatype_enum:
      raise RequestError(_INVALID, f'input {name} of signature {self.name} must be {spec.dtype.name}, got '
                                   f'{tf.dtypes.as_dtype(tensor.dtype).name if tensor.dtype else "no dtype"}')
    try:
      array = tf.make_ndarray(tensor)
    except (TypeError, ValueError) as error:
      raise RequestError(_INVALID, f'input {name}: malformed tensor ({error})') from error
    if not spec.shape.is_compatible_with(array.shape):
      raise RequestError(_INVALID, f'input {name} of signature {self.name} must have shape {spec.shape}, '
                                   f'got {list(array.shape)}')
    return array

  def classify_inputs(self, request_input: input_pb2.Input) -> Dict[str, np.ndarray]:
    """A ClassificationRequest's tf.Examples (an example list, or one with context features merged into
    each example) as the input of a classification signature: one string input, `classes`/`scores` out."""
    if len(self.inputs) != 1 or next(iter(self.inputs.values())).dtype != tf.string or not (
        set(CLASSIFY_OUTPUTS) & set(self.outputs)):
      raise RequestError(_INVALID, f'signature {self.name} is not a classification signature (one string input '
                                   f'of serialized tf.Example, outputs classes and/or scores)')
    kind = request_input.WhichOneof('kind')
    if kind == 'example_list_with_context':
      context = request_input.example_list_with_context.context
      examples = []
      for example in request_input.example_list_with_context.examples:
        merged = tf.train.Example()
        merged.CopyFrom(context)
        merged.MergeFrom(example)
        examples.append(merged)
    else:
      examples = request_input.example_list.examples if kind else []
    if not examples:
      raise RequestError(_INVALID, 'the request has no examples')
    name = next(iter(self.inputs))
    return {name: np.array([e.SerializeToString() for e in examples], dtype=object)}

  def __call__(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The outputs for checked inputs. What TensorFlow refuses in them (a feature missing from an example,
    a malformed example) raises INVALID_ARGUMENT."""
    try:
      outputs = self._function(**{name: tf.constant(value, self.inputs[name].dtype)
                                  for name, value in inputs.items()})
    except tf.errors.InvalidArgumentError as error:
      raise RequestError.from_tf_error(error) from error
    return {name: value.numpy() for name, value in outputs.items()}


class ServedModel:
  """One version of a model (`<base>/<version>/saved_model.pb`), loaded: its signatures by name and the
  SignatureDefs GetModelMetadata returns."""

  def __init__(self, name: str, version: int, path: str):
    self.name, self.version, self.path = name, version, path
    self._loaded = tf.saved_model.load(path)  # owns the variables and tables the signatures use
    self.signatures = {key: Signature(key, function) for key, function in self._loaded.signatures.items()}
    with tf.io.gfile.GFile(os.path.join(path, tf.saved_model.SAVED_MODEL_FILENAME_PB), 'rb') as f:
      saved_model = saved_model_pb2.SavedModel.FromString(f.read())
    graph = next(g for g in saved_model.meta_graphs if tf.saved_model.SERVING in g.meta_info_def.tags)
    self.signature_defs = graph.signature_def

  def signature(self, name: str) -> Signature:
    """The signature called `name` (serving_default when empty); INVALID_ARGUMENT if there is none."""
    name = name or signatures.DEFAULT
    if name not in self.signatures:
      raise RequestError(_INVALID, f'model {self.name} version {self.version} has no signature {name!r}; it has '
                                   f'{", ".join(sorted(self.signatures))}')
    return self.signatures[name]

  def warm_up(self, logs: Iterable[prediction_log_pb2.PredictionLog]) -> int:
    """Replays warm-up requests (PredictionLogs of Predict or Classify requests, as TF Serving reads from
    assets.extra/tf_serving_warmup_requests) so that real requests do not pay for the first calls; returns
    how many ran. One that fails raises: as in TF Serving, such a version is not served."""
    count = 0
    for count, log in enumerate(logs, start=1):
      kind = log.WhichOneof('log_type')
      if kind == 'predict_log':
        request = log.predict_log.request
        signature = self.signature(request.model_spec.signature_name)
        signature(signature.predict_inputs(request.inputs))
      elif kind == 'classify_log':
        request = log.classify_log.request
        signature = self.signature(request.model_spec.signature_name)
        signature(signature.classify_inputs(request.input))
      else:
        raise ValueError(f'warm-up request {count} is a {kind}; this server replays Predict and Classify only')
    return count
