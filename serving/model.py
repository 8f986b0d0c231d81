"""One version of a SavedModel, loaded for serving: its signatures, their SignatureDefs and its warm-up."""
import os
from typing import Dict, Iterable, List, Mapping

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import input_pb2, prediction_log_pb2

from serving import signatures
from serving.errors import RequestError

CLASSIFY_OUTPUTS = (tf.saved_model.CLASSIFY_OUTPUT_CLASSES, tf.saved_model.CLASSIFY_OUTPUT_SCORES)
# The APIs a signature is looked up for: TF Serving answers an unknown signature name with FAILED_PRECONDITION
# for Predict and INVALID_ARGUMENT for Classify and Regress.
PREDICT, CLASSIFY, REGRESS = 'Predict', 'Classify', 'Regress'
# The most elements a request's tensor may declare. A TensorProto can declare a shape larger than the values
# it carries (the last value fills the rest), so a few bytes could otherwise make the server allocate any
# amount of memory; this bounds a request to a few hundred MB of strings, far above any real one.
MAX_TENSOR_ELEMENTS = 1 << 24
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


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
                                   f'{_dtype_name(tensor.dtype)}')
    shape = tensor.tensor_shape
    if shape.unknown_rank or any(dim.size < 0 for dim in shape.dim):
      raise RequestError(_INVALID, f'tensor parsing error: {name} (a request tensor needs a known shape, got '
                                   f'{_shape_text(shape)})')
    if not spec.shape.is_compatible_with([dim.size for dim in shape.dim]):
      raise RequestError(_INVALID, f'input {name} of signature {self.name} must have shape {spec.shape}, '
                                   f'got {_shape_text(shape)}')
    if int(np.prod([dim.size for dim in shape.dim], dtype=np.float64)) > MAX_TENSOR_ELEMENTS:
      raise RequestError(_INVALID, f'tensor parsing error: {name} (shape {_shape_text(shape)} has more than '
                                   f'{MAX_TENSOR_ELEMENTS} elements)')
    try:
      array = tf.make_ndarray(tensor)
    except (TypeError, ValueError, IndexError, MemoryError) as error:
      raise RequestError(_INVALID, f'tensor parsing error: {name} ({error})') from error
    if not spec.shape.is_compatible_with(array.shape):
      raise RequestError(_INVALID, f'input {name} of signature {self.name} must have shape {spec.shape}, '
                                   f'got {list(array.shape)}')
    return array

  def classify_inputs(self, request_input: input_pb2.Input) -> Dict[str, np.ndarray]:
    """A ClassificationRequest's tf.Examples as the input of this signature, which must be a classification
    signature (checked in TF Serving's order and with its status codes: one input, one or two outputs
    (INVALID_ARGUMENT), the input `inputs` and outputs among `classes`/`scores` (FAILED_PRECONDITION))."""
    if len(self.inputs) != 1:
      raise RequestError(_INVALID, f'Expected one input Tensor. (signature {self.name} has {len(self.inputs)})')
    if len(self.outputs) not in (1, 2):
      raise RequestError(_INVALID, f'Expected one or two output Tensors, found {len(self.outputs)} '
                                   f'(signature {self.name})')
    if tf.saved_model.CLASSIFY_INPUTS not in self.inputs:
      raise RequestError(_PRECONDITION, f'No classification inputs found in SignatureDef {self.name}: it takes '
                                        f'{", ".join(self.inputs)}, not {tf.saved_model.CLASSIFY_INPUTS}')
    if not set(CLASSIFY_OUTPUTS) & set(self.outputs):
      raise RequestError(_PRECONDITION, f'Expected classification signature outputs to contain at least one of '
                                        f'{", ".join(CLASSIFY_OUTPUTS)}; signature {self.name} has '
                                        f'{", ".join(self.outputs)}')
    return self._example_inputs(request_input)

  def regress_inputs(self, request_input: input_pb2.Input) -> Dict[str, np.ndarray]:
    """A RegressionRequest's tf.Examples as the input of this signature, which must be a regression
    signature (TF Serving's checks: one input, one output (INVALID_ARGUMENT), named `inputs` and `outputs`
    (FAILED_PRECONDITION))."""
    if len(self.inputs) != 1:
      raise RequestError(_INVALID, f'Expected one input Tensor. (signature {self.name} has {len(self.inputs)})')
    if len(self.outputs) != 1:
      raise RequestError(_INVALID, f'Expected one output Tensor. (signature {self.name} has {len(self.outputs)})')
    if tf.saved_model.REGRESS_INPUTS not in self.inputs:
      raise RequestError(_PRECONDITION, f'No regression inputs found in SignatureDef {self.name}: it takes '
                                        f'{", ".join(self.inputs)}, not {tf.saved_model.REGRESS_INPUTS}')
    if tf.saved_model.REGRESS_OUTPUTS not in self.outputs:
      raise RequestError(_PRECONDITION, f'No regression outputs found in SignatureDef {self.name}: it returns '
                                        f'{", ".join(self.outputs)}, not {tf.saved_model.REGRESS_OUTPUTS}')
    return self._example_inputs(request_input)

  def _example_inputs(self, request_input: input_pb2.Input) -> Dict[str, np.ndarray]:
    """The request's tf.Examples (an example list, or one with context features merged into each example),
    serialized, as the signature's one string input."""
    (name, spec), = self.inputs.items()
    if spec.dtype != tf.string:
      raise RequestError(_PRECONDITION, f'input {name} of signature {self.name} is {spec.dtype.name}, not a '
                                        f'string tensor of serialized tf.Example')
    kind = request_input.WhichOneof('kind')
    examples: List[tf.train.Example]
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
      raise RequestError(_INVALID, 'Input is empty.')
    return {name: np.array([e.SerializeToString() for e in examples], dtype=object)}

  def __call__(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The outputs for checked inputs. What TensorFlow refuses in them (a feature missing from an example,
    a malformed example, one it cannot even quote) raises RequestError with TensorFlow's status."""
    try:
      outputs = self._function(**{name: tf.constant(value, self.inputs[name].dtype)
                                  for name, value in inputs.items()})
    except tf.errors.OpError as error:
      raise RequestError.from_tf_error(error) from error
    except UnicodeDecodeError as error:
      raise RequestError.from_undecodable_tf_error(error) from error
    return {name: value.numpy() for name, value in outputs.items()}


def _dtype_name(dtype_enum: int) -> str:
  try:
    return tf.dtypes.as_dtype(dtype_enum).name if dtype_enum else 'no dtype'
  except TypeError:
    return f'unknown dtype {dtype_enum}'


def _shape_text(shape) -> str:
  return 'unknown rank' if shape.unknown_rank else str([dim.size for dim in shape.dim])


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

  def signature(self, name: str, api: str = PREDICT) -> Signature:
    """The signature called `name` (serving_default when empty). If there is none, the status TF Serving
    answers: FAILED_PRECONDITION for Predict, INVALID_ARGUMENT for Classify and Regress."""
    name = name or signatures.DEFAULT
    if name not in self.signatures:
      known = f'model {self.name} version {self.version} has {", ".join(sorted(self.signatures))}'
      if api == PREDICT:
        raise RequestError(_PRECONDITION, f'Serving signature key "{name}" not found. ({known})')
      raise RequestError(_INVALID, f'No signature was found with the name: {name} ({known})')
    return self.signatures[name]

  def warm_up(self, logs: Iterable[prediction_log_pb2.PredictionLog]) -> int:
    """Replays warm-up requests (PredictionLogs of Predict, Classify or Regress requests, as TF Serving reads
    from assets.extra/tf_serving_warmup_requests) so that real requests do not pay for the first calls;
    returns how many ran. One that fails raises: as in TF Serving, such a version is not served."""
    count = 0
    for count, log in enumerate(logs, start=1):
      kind = log.WhichOneof('log_type')
      if kind == 'predict_log':
        request = log.predict_log.request
        signature = self.signature(request.model_spec.signature_name, PREDICT)
        signature(signature.predict_inputs(request.inputs))
      elif kind == 'classify_log':
        request = log.classify_log.request
        signature = self.signature(request.model_spec.signature_name, CLASSIFY)
        signature(signature.classify_inputs(request.input))
      elif kind == 'regress_log':
        request = log.regress_log.request
        signature = self.signature(request.model_spec.signature_name, REGRESS)
        signature(signature.regress_inputs(request.input))
      else:
        raise ValueError(f'warm-up request {count} is a {kind}; this server replays Predict, Classify and Regress')
    return count
