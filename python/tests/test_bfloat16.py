"""bfloat16 keys and values: passed to msa_append_document as their bits
with MSA_BFLOAT16, without a copy to float32 (torch bfloat16 tensors through
an int16 view). The dtype mapping runs without torch; the torch test skips
without it."""
import numpy as np
import pytest

import msa
from msa import store as msa_store

LAYERS, KV_HEADS, HEAD_DIM, BLOCK, TOKENS = 1, 2, 16, 8, 29
Q_HEADS = 4


def bfloat16_bits(x):
    """float32 -> bfloat16 bits (uint16), rounded to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def make_doc(seed):
    rng = np.random.default_rng(seed)
    shape = (LAYERS, KV_HEADS, TOKENS, HEAD_DIM)
    return rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)


def queries():
    return np.random.default_rng(3).standard_normal((5, Q_HEADS, HEAD_DIM)).astype(np.float32)


def attend_after_append(path, keys, values, codec="bf16"):
    with msa.Store.create(path, layers=LAYERS, kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                          block_tokens=BLOCK, codec=codec) as store:
        store.append_document("doc", keys, values)
        store.commit()
        return store.attend(0, queries(), exact=True)


def test_bfloat16_bits_widen_to_float32_exactly():
    bits = np.array([0x3F80, 0xC000, 0x3F00, 0x0000, 0x8000, 0x7F80, 0x4049], dtype=np.uint16)
    widened = msa_store._bfloat16_bits_to_float32(bits)
    assert widened.dtype == np.float32
    np.testing.assert_array_equal(widened[:6], [1.0, -2.0, 0.5, 0.0, -0.0, np.inf])
    assert widened[6] == np.float32(3.140625)
    x = make_doc(1)[0]
    np.testing.assert_array_equal(bfloat16_bits(msa_store._bfloat16_bits_to_float32(bfloat16_bits(x))),
                                  bfloat16_bits(x))


def test_dtype_codes_of_document_inputs():
    k16 = np.zeros((1, 2, 3, 4), np.float16)
    a, code = msa_store._document_input(k16, "keys")
    assert code == 1 and np.shares_memory(a, k16)  # MSA_FLOAT16, no copy
    k32 = np.zeros((1, 2, 3, 4), np.float32)
    a, code = msa_store._document_input(k32, "keys")
    assert code == 0 and np.shares_memory(a, k32)  # MSA_FLOAT32, no copy
    a, code = msa_store._document_input(np.zeros((1, 2, 3, 4)), "keys")
    assert code == 0 and a.dtype == np.float32  # float64 converted
    # uint16 is no bfloat16 to numpy: integers, converted to float32 values.
    a, code = msa_store._document_input(np.full((1, 2), 0x3F80, np.uint16), "keys")
    assert code == 0 and a[0, 0] == 0x3F80


def test_keys_and_values_of_different_dtypes_widen_to_float32():
    bits = bfloat16_bits(np.array([1.5, -3.0], np.float32))
    half = np.array([0.25, 2.0], np.float16)
    k, v, code = msa_store._same_dtype(bits, msa_store._BFLOAT16, half, 1)
    assert code == 0 and k.dtype == v.dtype == np.float32
    np.testing.assert_array_equal(k, [1.5, -3.0])
    np.testing.assert_array_equal(v, [0.25, 2.0])
    k, v, code = msa_store._same_dtype(bits, msa_store._BFLOAT16, bits, msa_store._BFLOAT16)
    assert code == msa_store._BFLOAT16 and k is bits and v is bits  # agreeing: untouched


@pytest.mark.parametrize("codec", ["bf16", "f16"])
def test_bfloat16_bits_reach_the_c_api_as_bfloat16(tmp_path, monkeypatch, codec):
    """append_document passes bfloat16 bits with MSA_BFLOAT16: the store
    answers as for the same values given as float32. numpy has no bfloat16,
    so uint16 arrays stand in for one here (the torch test runs the real
    dtype)."""
    keys, values = make_doc(2)
    kb, vb = bfloat16_bits(keys), bfloat16_bits(values)
    expected = attend_after_append(tmp_path / "f32", msa_store._bfloat16_bits_to_float32(kb),
                                   msa_store._bfloat16_bits_to_float32(vb), codec)
    monkeypatch.setattr(msa_store, "_is_bfloat16", lambda x: isinstance(x, np.ndarray) and x.dtype == np.uint16)
    got = attend_after_append(tmp_path / "bf16", kb, vb, codec)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    # The bits read as float16 would give another answer: the code matters.
    monkeypatch.setattr(msa_store, "_BFLOAT16", 1)
    wrong = attend_after_append(tmp_path / "as-f16", kb, vb, codec)
    assert not np.array_equal(wrong[0], expected[0])


def test_torch_bfloat16_tensors_pass_without_a_copy(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed for this interpreter")
    keys, values = make_doc(4)
    kt, vt = torch.from_numpy(keys).bfloat16(), torch.from_numpy(values).bfloat16()
    a, code = msa_store._document_input(kt, "keys")
    assert code == msa_store._BFLOAT16 and a.dtype == np.uint16 and a.shape == tuple(kt.shape)
    assert a.ctypes.data == kt.data_ptr()  # the tensor's own memory
    expected = attend_after_append(tmp_path / "f32", kt.float().numpy(), vt.float().numpy())
    got = attend_after_append(tmp_path / "bf16", kt, vt)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    # A non-contiguous tensor is made contiguous, still bfloat16, and agrees.
    wide = torch.zeros((LAYERS, KV_HEADS, TOKENS, 2 * HEAD_DIM), dtype=torch.bfloat16)
    wide[..., ::2] = kt
    strided = wide[..., ::2]
    assert not strided.is_contiguous()
    a, code = msa_store._document_input(strided, "keys")
    assert code == msa_store._BFLOAT16 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, kt.view(torch.int16).numpy().view(np.uint16))
    got = attend_after_append(tmp_path / "strided", strided, vt)
    np.testing.assert_array_equal(got[0], expected[0])
