"""The published figures, generated from results files: `tfx_runner.py docs` rewrites them, `--check` fails
when a published table differs from what its results file gives (a table typed by hand, or not regenerated).

Results files live under docs/ (copied there from the run that made them, with the command in the
document beside the table):
  docs/benchmarks/NAME/results.jsonl   a `bench` grid's records: results.md, results.json and the plots
                                       are written beside it
  docs/results/NAME.json               any other result: a run's report.json (`report`), a `simulate`
                                       summary (`simulate`), benchmarks/gate_quality.py's output (`gate`),
                                       benchmarks/calibration.py's --json outputs merged (`calibration`),
                                       benchmarks/ranking_loss.py's (`ranking`), benchmarks/multitask.py's
                                       (`multitask`), benchmarks/constrained_objective.py's (`constraint`),
                                       benchmarks/reconstructed_objective.py's (`revenue`),
                                       benchmarks/mlora_recipes.py's (`mlora`),
                                       benchmarks/fallback_real_data.py's (`fallback`),
                                       benchmarks/input_memory.py's (`input`),
                                       benchmarks/pipeline_scaling.py's runs (`scaling`)

In README.md and docs/*.md, each block between `<!-- generated: KIND NAME -->` and `<!-- end generated -->`
is the rendering of that results file: `bench NAME` the WAUC tables of docs/benchmarks/NAME, `report NAME`,
`simulate NAME` and each benchmark kind (`gate`, `calibration`, `ranking`, `multitask`, `constraint`,
`revenue`, `mlora`, `fallback`, `input`, `scaling`) the tables of
docs/results/NAME.json; `mlora-methods NAME` the method rows of an `mlora` file alone.
"""
import importlib
import json
import os
import re
from typing import Callable, Dict, List

from pipeline import bench
from pipeline import report as report_lib
from pipeline import simulate

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO_ROOT, 'docs')
BENCHMARKS, RESULTS = os.path.join(DOCS, 'benchmarks'), os.path.join(DOCS, 'results')
_BLOCK = re.compile(r'(<!-- generated: (\w[\w-]*) ([\w.-]+) -->\n)(.*?)(<!-- end generated -->)', re.DOTALL)


def _json(name: str) -> dict:
  with open(os.path.join(RESULTS, f'{name}.json')) as f:
    return json.load(f)


def _bench_tables(name: str) -> str:
  path = os.path.join(BENCHMARKS, name, bench.RESULTS_JSONL)
  if not os.path.exists(path):  # a grid's absence is an error, not an empty table
    raise FileNotFoundError(f'No results file {path} for the generated block "bench {name}".')
  summary = bench.summarize(bench.read_records(path))
  sections = []
  for dataset, table in summary['datasets'].items():
    seeds = sorted({seed for row in table['rows'] for seed in row['seeds']})
    sections.append(f'{dataset}, test split, WAUC mean over seeds {seeds} (change against base, paired by seed, '
                    f'± its 95% interval):\n\n' + '\n'.join(bench.wauc_table(table)))
  return '\n\n'.join(sections)


def _benchmark_tables(module: str) -> Callable[[str], str]:
  """The renderer of a benchmarks/ script's results file: its `format_markdown` of docs/results/NAME.json
  (imported when used: the benchmarks import TensorFlow)."""
  return lambda name: importlib.import_module(f'benchmarks.{module}').format_markdown(_json(name))


RENDERERS: Dict[str, Callable[[str], str]] = {
    'bench': _bench_tables,
    'report': lambda name: '```\n' + report_lib.format_table(_json(name)) + '\n```',
    'simulate': lambda name: '```\n' + simulate.format_summary(_json(name)['summaries']) + '\n```',
    # kind: the benchmarks/ script whose --json output docs/results/NAME.json is
    **{kind: _benchmark_tables(module) for kind, module in (
        ('gate', 'gate_quality'), ('calibration', 'calibration'), ('ranking', 'ranking_loss'),
        ('multitask', 'multitask'), ('constraint', 'constrained_objective'), ('revenue', 'reconstructed_objective'),
        ('mlora', 'mlora_recipes'), ('fallback', 'fallback_real_data'), ('input', 'input_memory'),
        ('scaling', 'pipeline_scaling'))},
    'mlora-methods': lambda name: importlib.import_module('benchmarks.mlora_recipes').format_markdown(
        _json(name), domains=False),
}


def render(text: str) -> str:
  """`text` with every generated block replaced by its rendering."""
  def replace(match):
    kind, name = match.group(2), match.group(3)
    if kind not in RENDERERS:
      raise ValueError(f'Unknown generated block kind {kind!r}; expected one of {sorted(RENDERERS)}.')
    return f'{match.group(1)}{RENDERERS[kind](name)}\n{match.group(5)}'
  return _BLOCK.sub(replace, text)


def documents() -> List[str]:
  """README.md and every Markdown file directly under docs/."""
  names = sorted(n for n in os.listdir(DOCS) if n.endswith('.md')) if os.path.isdir(DOCS) else []
  return [os.path.join(REPO_ROOT, 'README.md')] + [os.path.join(DOCS, n) for n in names]


def generate(check: bool = False) -> List[str]:
  """Rewrites the bench grids' results.md, results.json and plots and every generated block; with `check`,
  writes nothing and returns the documents whose generated blocks are stale (else the files written)."""
  written, stale = [], []
  if not check and os.path.isdir(BENCHMARKS):
    for name in sorted(os.listdir(BENCHMARKS)):
      folder = os.path.join(BENCHMARKS, name)
      records = bench.read_records(os.path.join(folder, bench.RESULTS_JSONL))
      if records:
        written += bench.write_summary(bench.summarize(records), folder)
  for path in documents():
    with open(path) as f:
      text = f.read()
    rendered = render(text)
    if rendered != text:
      stale.append(path)
      if not check:
        with open(path, 'w') as f:
          f.write(rendered)
        written.append(path)
  return stale if check else written
