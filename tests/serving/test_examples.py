"""CSV rows in the pipeline's raw format as tf.Examples, typed by the model's raw columns."""
import pytest
import tensorflow as tf

from serving.examples import read_csv_examples, row_example

TYPES = {'domain': tf.string, 'item_id': tf.int64, 'price': tf.float32}


def test_each_column_gets_its_type_and_other_columns_are_dropped():
  example = row_example({'domain': 'search', 'item_id': '12', 'price': '7.5', 'click': '1'}, TYPES)
  features = example.features.feature
  assert set(features) == set(TYPES)
  assert features['domain'].bytes_list.value == [b'search']
  assert features['item_id'].int64_list.value == [12]
  assert features['price'].float_list.value == [7.5]


def test_an_empty_cell_is_left_out():
  assert set(row_example({'domain': 'search', 'item_id': '', 'price': '1.0'}, TYPES).features.feature) == {
      'domain', 'price'}


def test_a_value_of_the_wrong_type_names_line_and_column(tmp_path):
  path = tmp_path / 'rows.csv'
  path.write_text('domain,item_id,price\nsearch,3,1.0\nbanner,4,n/a\n')
  with pytest.raises(ValueError, match=r'line 3: column price: .n/a. is not float32'):
    read_csv_examples(str(path), TYPES)


def test_reads_one_example_per_row(tmp_path):
  path = tmp_path / 'rows.csv'
  path.write_text('domain,item_id,price\nsearch,3,1.0\nbanner,4,2.5\n')
  examples = [tf.train.Example.FromString(s) for s in read_csv_examples(str(path), TYPES)]
  assert [e.features.feature['item_id'].int64_list.value[0] for e in examples] == [3, 4]
