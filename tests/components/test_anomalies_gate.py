from tensorflow_metadata.proto.v0 import anomalies_pb2

from components.anomalies_gate import describe_anomalies


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
