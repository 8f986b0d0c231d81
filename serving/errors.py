"""The error a request gets, as a gRPC status."""
import grpc
import tensorflow as tf

# Lines of a TensorFlow runtime error that locate the failing op rather than say what is wrong.
_LOCATION_PREFIXES = ('Graph execution error', 'Detected at node', '<stack traces', '[[{{node', '[[{{function_node')
_FUNCTION_PREFIX = '{{function_node '
_MAX_MESSAGE_CHARS = 2000  # what TensorFlow echoes of a bad input (a whole serialized example) is cut here
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _reason(message: str) -> str:
  """What a TensorFlow error message says about the input, without the op location and stack lines."""
  lines = [line.strip() for line in message.splitlines()]
  reason = ' '.join(line for line in lines if line and not line.startswith(_LOCATION_PREFIXES))
  if reason.startswith(_FUNCTION_PREFIX) and '}} ' in reason:
    reason = reason.split('}} ', 1)[1]
  if ' [Op:' in reason:
    reason = reason.rsplit(' [Op:', 1)[0]
  reason = reason or message
  return reason if len(reason) <= _MAX_MESSAGE_CHARS else reason[:_MAX_MESSAGE_CHARS] + '...'


class RequestError(Exception):
  """A request the server refuses: `code` is the gRPC status it answers with, the message says why."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code

  @classmethod
  def from_tf_error(cls, error: tf.errors.OpError) -> 'RequestError':
    """TensorFlow's status as the request's, as TF Serving answers (TensorFlow's error codes are gRPC's):
    INVALID_ARGUMENT with what TensorFlow said about the input (a feature missing from an example, a
    malformed example, a wrong type), without the op location and stack lines around it."""
    return cls(_CODES.get(error.error_code, grpc.StatusCode.UNKNOWN), _reason(error.message))

  @classmethod
  def from_undecodable_tf_error(cls, error: UnicodeDecodeError) -> 'RequestError':
    """INVALID_ARGUMENT for a TensorFlow error whose message Python could not decode.

    TensorFlow's runtime errors quote the input they refuse (`Could not parse example input, value: '...'`);
    when that input is not UTF-8 (random bytes, a truncated proto, a 0xff byte), the Python binding fails to
    decode the message and raises UnicodeDecodeError instead of the error, losing its code. Only request data
    puts such bytes into a message, so the request is refused as TF Serving refuses it (INVALID_ARGUMENT),
    with the message recovered from the error (undecodable bytes escaped)."""
    raw = error.object if isinstance(error.object, (bytes, bytearray)) else b''
    message = bytes(raw).decode('utf-8', 'backslashreplace') if raw else str(error)
    return cls(grpc.StatusCode.INVALID_ARGUMENT, _reason(message))
