import os
import subprocess
import sys
import tempfile

from tfx.utils import dependency_utils

import tfx_runner


def test_a_run_leaves_no_temporary_files_behind():
  outside, tmpdir = tempfile.gettempdir(), os.environ.get('TMPDIR')
  with tfx_runner.run_temp_dir() as folder:
    sdist = dependency_utils.build_ephemeral_package()  # what each TFX Beam executor leaves behind
    child = subprocess.run([sys.executable, '-c', 'import tempfile; print(tempfile.gettempdir())'],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert os.path.dirname(folder) == outside and sdist.startswith(folder + os.sep) and child == folder
  assert not os.path.exists(folder) and not os.path.exists(sdist)
  assert tempfile.gettempdir() == outside and os.environ.get('TMPDIR') == tmpdir
