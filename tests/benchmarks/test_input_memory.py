"""The input-memory benchmark's split and table (benchmarks/input_memory.py). No model is trained."""
import os

import pytest

from benchmarks import input_memory


def test_a_split_is_hard_links_to_the_shard(tmp_path):
  (tmp_path / 'shard.gz').write_bytes(b'records')
  pattern = input_memory.split_pattern(str(tmp_path), 3 * input_memory.SHARD_ROWS)
  parts = sorted((tmp_path / f'split-{3 * input_memory.SHARD_ROWS}').iterdir())
  assert pattern.endswith('*.gz') and [p.name for p in parts] == ['part-00000.gz', 'part-00001.gz', 'part-00002.gz']
  assert all(os.stat(p).st_ino == os.stat(tmp_path / 'shard.gz').st_ino for p in parts)
  assert input_memory.split_pattern(str(tmp_path), 3 * input_memory.SHARD_ROWS) == pattern  # made once
  with pytest.raises(ValueError, match='multiple of'):
    input_memory.split_pattern(str(tmp_path), input_memory.SHARD_ROWS + 1)


def test_the_table_gives_the_streamed_share_of_the_in_memory_rate():
  def row(rows, mode, in_memory, rate, rss):
    return {'rows': rows, 'mode': mode, 'in_memory': in_memory, 'examples_per_second': rate, 'input_ready_s': 1.0,
            'peak_rss_mb': rss}
  results = {'command': 'benchmarks/input_memory.py', 'steps': 200, 'cpus': 2, 'measurements': [
      row(1_000_000, 'trainer', True, 80_000, 1400), row(1_000_000, 'streamed', False, 76_000, 1000),
      row(10_000_000, 'trainer', False, 75_000, 1500), row(10_000_000, 'streamed', False, 74_000, 1000)]}
  lines = input_memory.format_markdown(results).splitlines()
  assert lines[3] == '| 1000000 | streamed | streamed | 76000 | 95% | 1.0 | 1000 |'
  assert lines[4] == '| 10000000 | trainer | streamed | 75000 |  | 1.0 | 1500 |'  # nothing held to compare
  assert 'Batch 1024, 200 steps a measured epoch, 2 CPUs' in lines[-1]
