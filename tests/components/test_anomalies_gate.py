from tensorflow_metadata.proto.v0 import anomalies_pb2

from components.anomalies_gate import describe_anomalies, validation_error


def test_each_anomalous_field_is_named_with_its_reason():
  anomalies = anomalies_pb2.Anomalies()
  info = anomalies.anomaly_info['price']
  info.reason.add(short_description='Unexpected data type', description='Expected FLOAT but got STRING')
  anomalies.anomaly_info['domain'].reason.add(short_description='Unexpected string values',
                                              description='mystery_tab (~2%)')
  lines = describe_anomalies('train', anomalies)
  assert lines == [
      "  [train] field 'domain': Unexpected string values: mystery_tab (~2%)",
      "  [train] field 'price': Unexpected data type: Expected FLOAT but got STRING",
  ]


def test_no_anomalies_no_lines():
  assert describe_anomalies('eval', anomalies_pb2.Anomalies()) == []


def test_a_byte_order_mark_is_named_with_its_fix():
  anomalies = anomalies_pb2.Anomalies()
  anomalies.anomaly_info['\ufeffdomain'].reason.add(short_description='New column')
  anomalies.anomaly_info['domain'].reason.add(short_description='Column dropped')
  text = '\n'.join(describe_anomalies('train', anomalies))
  assert 'byte-order mark' in text and "first column name 'domain'" in text and 'without a BOM' in text


def test_a_single_class_label_alone_does_not_blame_the_schema():
  label_problem = "  [train] label 'click' has one class only (every value is 0): ..."
  message = str(validation_error([], 'schema.pbtxt', [label_problem]))
  assert label_problem in message and 'update the schema' not in message
