"""The tests import msa from this checkout (python/), whatever is installed,
and load the library MSA_LIBRARY names (ctest sets it to the one it built)
or, failing that, build/libmsa.so."""
import shutil
import sys
from pathlib import Path

import pytest

PYTHON_DIR = Path(__file__).resolve().parent.parent
REPO = PYTHON_DIR.parent
sys.path.insert(0, str(PYTHON_DIR))


@pytest.fixture(autouse=True)
def remove_tmp_path_after_test(tmp_path):
    """A store opened for writing preallocates its segment file (64 MiB of
    disk, however small the store), and pytest keeps the temporary folders of
    its last runs: remove each test's folder as soon as the test is done."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)
