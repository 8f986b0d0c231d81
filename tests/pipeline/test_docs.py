"""The published tables come from results files (pipeline/docs.py): rendering, and the repository's own
README and docs checked against their results files."""
import json

import pytest

from pipeline import docs
from tests.pipeline.test_bench import BASE_WAUC, MLORA_WAUC, MOVIELENS_GENDER, _record
from pipeline import bench


@pytest.fixture
def results(tmp_path, monkeypatch):
  """A bench grid and a simulate summary as results files, in a docs folder of their own."""
  monkeypatch.setattr(docs, 'BENCHMARKS', str(tmp_path / 'benchmarks'))
  monkeypatch.setattr(docs, 'RESULTS', str(tmp_path / 'results'))
  (tmp_path / 'benchmarks' / 'grid').mkdir(parents=True)
  cells = bench.build_grid([MOVIELENS_GENDER], ['mlp'], [0, 1, 2])
  for cell, base, mlora in zip(cells, BASE_WAUC, MLORA_WAUC):
    bench.append_record(str(tmp_path / 'benchmarks' / 'grid' / bench.RESULTS_JSONL), _record(cell, base, mlora))
  (tmp_path / 'results').mkdir()
  summary = {'span': 1, 'rows': 100, 'wall_s': 60.0, 'warm_start': None, 'stopped': None, 'blessed': True,
             'rule': 'first_run', 'pushed': '/s/1', 'domains': ['a'], 'auc': {'overall': {'candidate': 0.7}}}
  (tmp_path / 'results' / 'days.json').write_text(json.dumps({'summaries': [summary]}))
  return tmp_path


def test_generated_blocks_are_rendered_from_their_results_files(results):
  text = ('# Title\n\nby hand\n<!-- generated: bench grid -->\nstale table\n<!-- end generated -->\nmore\n'
          '<!-- generated: simulate days -->\n<!-- end generated -->\n')
  rendered = docs.render(text)
  assert rendered.startswith('# Title\n\nby hand\n<!-- generated: bench grid -->\nmovielens:gender, test split')
  assert '| mlp | 0.7133 | 0.7367 (+0.0233 ± 0.0143) |' in rendered and 'stale table' not in rendered
  assert '<!-- end generated -->\nmore\n' in rendered
  assert '   1     100      60    no    0.7000' in rendered  # the simulate summary's line
  assert docs.render(rendered) == rendered  # stable: a second pass changes nothing


def test_an_unknown_kind_is_refused(results):
  with pytest.raises(ValueError, match='Unknown generated block kind'):
    docs.render('<!-- generated: typed table -->\n<!-- end generated -->\n')


def test_a_block_without_its_results_file_is_an_error(results):
  with pytest.raises(FileNotFoundError, match='missing-grid'):
    docs.render('<!-- generated: bench missing-grid -->\n<!-- end generated -->\n')


def test_the_published_tables_are_current():
  """README.md and docs/*.md hold exactly what their results files give (`python tfx_runner.py docs`)."""
  assert docs.generate(check=True) == []
