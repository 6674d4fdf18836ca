"""Errors: one exception class per status code, carrying the library's
message (msa_last_error) or, for checks made before the call, one that names
the argument."""
import os
import subprocess
import sys

import numpy as np
import pytest

import msa
from conftest import PYTHON_DIR

GEOMETRY = dict(layers=1, kv_heads=2, head_dim=8, block_tokens=4)


@pytest.fixture
def store(tmp_path):
    with msa.Store.create(tmp_path / "s", **GEOMETRY) as s:
        k = np.ones((1, 2, 6, 8), np.float32)
        s.append_document("doc", k, k)
        s.commit()
        yield s


def test_class_per_status_code():
    classes = [msa.InvalidArgument, msa.NotFound, msa.Corruption, msa.IOError, msa.NotSupported,
               msa.AlreadyExists, msa.Internal]
    assert [c.status for c in classes] == list(range(1, 8))  # msa_status_t's numbers
    for cls in classes:
        assert issubclass(cls, msa.Error)
    assert issubclass(msa.InvalidArgument, ValueError)
    assert issubclass(msa.NotFound, LookupError)
    assert issubclass(msa.IOError, OSError)
    assert str(msa.IOError("read /x: EIO")) == "read /x: EIO"
    assert msa.NotFound.__module__ == "msa"


def test_open_missing_store_is_not_found(tmp_path):
    with pytest.raises(msa.NotFound) as info:
        msa.Store.open(tmp_path / "nothing-here")
    assert "nothing-here" in str(info.value)
    assert info.value.status == 2


def test_create_over_a_store_already_exists(store):
    with pytest.raises(msa.AlreadyExists):
        msa.Store.create(store.path, **GEOMETRY)


def test_bad_geometry(tmp_path):
    with pytest.raises(msa.InvalidArgument, match="head_dim"):
        msa.Store.create(tmp_path / "s", layers=1, kv_heads=1, head_dim=0)
    with pytest.raises(msa.InvalidArgument, match="codec 'zip' is unknown"):
        msa.Store.create(tmp_path / "s", layers=1, kv_heads=1, head_dim=8, codec="zip")
    with pytest.raises(msa.InvalidArgument, match="summary"):
        msa.Store.create(tmp_path / "s", layers=1, kv_heads=1, head_dim=8, summary="median")


def test_bad_shapes_name_the_argument(store):
    good = np.zeros((1, 2, 3, 8), np.float32)
    with pytest.raises(msa.InvalidArgument, match=r"keys: expected shape \[layers=1, kv_heads=2, "
                                                  r"tokens, head_dim=8\], got \(1, 3, 3, 8\)"):
        store.append_document("x", np.zeros((1, 3, 3, 8), np.float32), good)
    with pytest.raises(msa.InvalidArgument, match="values: expected shape"):
        store.append_document("x", good, np.zeros((2, 2, 3, 8), np.float32))
    with pytest.raises(msa.InvalidArgument, match="values: shape"):
        store.append_document("x", good, np.zeros((1, 2, 4, 8), np.float32))
    with pytest.raises(msa.InvalidArgument, match=r"q: expected shape \[n, q_heads"):
        store.attend(0, np.zeros((1, 3, 8), np.float32))  # 3 heads over 2 KV heads
    with pytest.raises(msa.InvalidArgument, match="q: expected shape"):
        store.attend(0, np.zeros((2, 8), np.float32))
    with pytest.raises(msa.InvalidArgument, match="keys must be a real-valued array"):
        store.append_document("x", good.astype(np.complex64), good)


def test_library_errors_carry_its_message(store):
    q = np.zeros((1, 2, 8), np.float32)
    with pytest.raises(msa.InvalidArgument, match="layer 5") as info:
        store.attend(5, q)
    assert info.value.status == 1 and "layer 5" in info.value.message
    with pytest.raises(msa.AlreadyExists, match="doc"):
        store.append_document("doc", np.ones((1, 2, 2, 8), np.float32),
                              np.ones((1, 2, 2, 8), np.float32))
    with pytest.raises(msa.InvalidArgument, match="gqa_combine"):
        store.attend(0, q, gqa_combine="mean")


def test_read_only_refuses_appends(store):
    with msa.Store.open(store.path, read_only=True) as ro:
        with pytest.raises(msa.InvalidArgument, match="read-only"):
            ro.append_document("y", np.ones((1, 2, 2, 8), np.float32),
                               np.ones((1, 2, 2, 8), np.float32))


def test_closed_store(tmp_path):
    s = msa.Store.create(tmp_path / "s", **GEOMETRY)
    s.close()
    s.close()  # idempotent
    assert s.closed and "closed" in repr(s)
    with pytest.raises(msa.InvalidArgument, match="closed"):
        s.attend(0, np.zeros((1, 2, 8), np.float32))
    with pytest.raises(msa.InvalidArgument, match="closed"):
        s.commit()


def test_cuda_tensors_are_refused_clearly_where_not_taken(store):
    """attend() takes CUDA float32 queries (test_store.test_cuda_tensors);
    elsewhere a CUDA tensor is refused saying so."""
    torch = pytest.importorskip("torch", reason="torch is not installed for this interpreter")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device for torch")
    k = torch.ones((1, 2, 6, 8), device="cuda")
    with pytest.raises(msa.NotSupported, match="only attend"):
        store.append_document("cuda", k, k)
    with pytest.raises(msa.NotSupported, match="only attend"):
        store.prefetch(0, torch.zeros((1, 2, 8), device="cuda"))
    with pytest.raises(msa.InvalidArgument, match="float32"):
        store.attend(0, torch.zeros((1, 2, 8), device="cuda", dtype=torch.float16))


def run_python(code, log_level=None):
    """Runs code in a fresh interpreter (the log level is set when the library
    loads) with this checkout's msa and MSA_LOG_LEVEL as given."""
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR))
    env.pop("MSA_LOG_LEVEL", None)
    if log_level is not None:
        env["MSA_LOG_LEVEL"] = log_level
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)


QUIET_SCRIPT = """
import sys, numpy as np, msa
path = {path!r}
with msa.Store.create(path, layers=1, kv_heads=1, head_dim=8) as s:
    k = np.ones((1, 1, 5, 8), np.float32)
    s.append_document('d', k, k)
    s.commit()
with msa.Store.open(path) as s:
    s.attend(0, np.ones((1, 1, 8), np.float32))
"""


def test_happy_path_prints_nothing(tmp_path):
    result = run_python(QUIET_SCRIPT.format(path=str(tmp_path / "quiet")))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    # Warnings (a fallback taken on this machine) may appear; info lines may not.
    assert "[info]" not in result.stderr, result.stderr


def test_log_level_from_environment_goes_to_stderr(tmp_path):
    result = run_python(QUIET_SCRIPT.format(path=str(tmp_path / "loud")), log_level="info")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "[info]" in result.stderr and "opened" in result.stderr


def test_set_log_level():
    msa.set_log_level("warn")
    msa.set_log_level(3)
    with pytest.raises(msa.InvalidArgument, match="log level 'loud' is unknown"):
        msa.set_log_level("loud")
    with pytest.raises(msa.InvalidArgument, match="level 5"):
        msa.set_log_level(5)
