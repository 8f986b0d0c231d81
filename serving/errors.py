"""The error a request gets, as a gRPC status."""
import grpc
import tensorflow as tf

# Lines of a TensorFlow runtime error that locate the failing op rather than say what is wrong.
_LOCATION_PREFIXES = ('Graph execution error', 'Detected at node', '<stack traces', '[[{{node')


class RequestError(Exception):
  """A request the server refuses: `code` is the gRPC status it answers with, the message says why."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code

  @classmethod
  def from_tf_error(cls, error: tf.errors.InvalidArgumentError) -> 'RequestError':
    """INVALID_ARGUMENT with what TensorFlow said about the input (a feature missing from an example, a
    malformed example, a wrong type), without the op location and stack lines around it."""
    lines = [line.strip() for line in error.message.splitlines()]
    reason = [line for line in lines if line and not line.startswith(_LOCATION_PREFIXES)]
    return cls(grpc.StatusCode.INVALID_ARGUMENT, ' '.join(reason) or error.message)
