"""The zoo's fast subsets: a covering set holds every row and every column of its matrix, and the default."""
import pytest

from models.heads import HEADS
from tests.models import zoo


@pytest.mark.parametrize('rows,columns,anchor', [
    (zoo.BACKBONE_NAMES, zoo.ADAPTATION_NAMES, ('mlp', 'mlora')),  # tests/serving/test_model_zoo_export.py
    (tuple(sorted(HEADS)), tuple(a for a in zoo.ADAPTATION_NAMES if a != 'none'), ('mmoe', 'mlora')),  # heads
])
def test_covering_pairs_hold_every_row_every_column_and_the_anchor(rows, columns, anchor):
  pairs = zoo.covering_pairs(rows, columns, anchor)
  assert {r for r, _ in pairs} == set(rows) and {c for _, c in pairs} == set(columns)
  assert anchor in pairs and len(pairs) == len(set(pairs)) == max(len(rows), len(columns))


def test_matrix_marks_the_cells_outside_the_fast_ones_slow():
  params = zoo.matrix([('mlp', 'mlora'), ('dcn', 'star')], fast=[('mlp', 'mlora')])
  assert [p.values for p in params] == [('mlp', 'mlora'), ('dcn', 'star')]
  assert [[m.name for m in p.marks] for p in params] == [[], ['slow']]
  assert [p.id for p in params] == ['mlp-mlora', 'dcn-star']
