"""msa.Store end to end: create, append, commit, reopen, attend against a
dense float64 reference; documents, prefetch, stats, arrays in and out."""
import os

import numpy as np
import pytest

import msa
from msa import _lib
from reference import dense_attention, float32_tolerance, fp16

LAYERS, KV_HEADS, HEAD_DIM, BLOCK = 2, 2, 16, 8
Q_HEADS = 4  # GQA: two query heads per KV head
DOC_TOKENS = (37, 20)  # not multiples of the block size, on purpose


def make_doc(rng, tokens, dtype=np.float32):
    shape = (LAYERS, KV_HEADS, tokens, HEAD_DIM)
    return rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)


@pytest.fixture
def corpus(tmp_path):
    """A committed, closed store of two documents; returns its path, the
    documents' K/V (float32, as appended) and their ids."""
    rng = np.random.default_rng(8)
    docs = [make_doc(rng, t) for t in DOC_TOKENS]
    path = tmp_path / "store"
    with msa.Store.create(path, layers=LAYERS, kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                          block_tokens=BLOCK) as store:
        ids = [store.append_document(f"doc{i}", k, v) for i, (k, v) in enumerate(docs)]
        store.commit()
    return path, docs, ids


def queries(seed, n=5):
    return np.random.default_rng(seed).standard_normal((n, Q_HEADS, HEAD_DIM)).astype(np.float32)


def check_against_dense(out, lse, q, keys, values):
    """out/lse of msa over fp16-stored keys/values (given as float32 input):
    - against dense attention over the fp16-rounded K/V (what the store
      holds) within float32 arithmetic's error;
    - against dense attention over the unrounded input within twice the
      error that fp16 rounding alone causes (FlashAttention's test idea),
      plus that float32 slack."""
    tokens = keys.shape[1]
    ref16_out, ref16_lse = dense_attention(q, fp16(keys), fp16(values))
    ref_out, ref_lse = dense_attention(q, keys, values)
    scores = np.abs(np.asarray(q, np.float64)).sum(-1).max() * np.abs(keys).max() / np.sqrt(HEAD_DIM)
    tol_out = float32_tolerance(tokens, HEAD_DIM, np.abs(values).max())
    tol_lse = float32_tolerance(tokens, HEAD_DIM, scores)
    np.testing.assert_allclose(out, ref16_out, rtol=0, atol=tol_out)
    np.testing.assert_allclose(lse, ref16_lse, rtol=0, atol=tol_lse)
    fp16_err_out = np.abs(ref16_out - ref_out).max()
    fp16_err_lse = np.abs(ref16_lse - ref_lse).max()
    assert np.abs(out - ref_out).max() <= 2 * fp16_err_out + tol_out
    assert np.abs(lse - ref_lse).max() <= 2 * fp16_err_lse + tol_lse


def layer_kv(docs, layer, which=None):
    """keys, values [kv_heads, tokens, d] of one layer over the documents (all,
    or those at indices `which`), in append order."""
    chosen = docs if which is None else [docs[i] for i in which]
    keys = np.concatenate([k[layer] for k, _ in chosen], axis=1)
    values = np.concatenate([v[layer] for _, v in chosen], axis=1)
    return keys, values


def test_round_trip_exact_matches_dense(corpus):
    path, docs, ids = corpus
    with msa.Store.open(path, read_only=True) as store:
        assert store.geometry.layers == LAYERS and store.geometry.block_tokens == BLOCK
        assert store.geometry.codec == "f16" and store.geometry.summary == "hybrid"
        for layer in range(LAYERS):
            q = queries(layer)
            out, lse = store.attend(layer, q, exact=True)
            assert out.shape == (5, Q_HEADS, HEAD_DIM) and out.dtype == np.float32
            assert lse.shape == (5, Q_HEADS) and lse.dtype == np.float32
            check_against_dense(out, lse, q, *layer_kv(docs, layer))


def test_top_k_covering_every_block_is_exact(corpus):
    path, docs, _ = corpus
    with msa.Store.open(path) as store:
        q = queries(3)
        blocks = store.stats()["blocks_per_stream"]
        out, lse = store.attend(1, q, top_k=blocks)
        check_against_dense(out, lse, q, *layer_kv(docs, 1))


def test_sparse_attends_over_a_subset(corpus):
    """top_k 1 of 8 blocks: fewer keys, so the softmax denominator (lse) can
    only shrink, and each output row stays inside the values' range."""
    path, docs, _ = corpus
    with msa.Store.open(path, read_only=True) as store:
        q = queries(4)
        exact_out, exact_lse = store.attend(0, q, exact=True)
        out, lse = store.attend(0, q, top_k=1, gqa_combine="sum")
        assert np.all(lse <= exact_lse + 1e-5)
        assert np.all(np.isfinite(out))
        _, values = layer_kv(docs, 0)
        assert out.max() <= fp16(values).max() + 1e-5 and out.min() >= fp16(values).min() - 1e-5


def test_float16_input_is_stored_bit_exact(tmp_path):
    rng = np.random.default_rng(16)
    keys, values = make_doc(rng, 29, np.float16)
    with msa.Store.create(tmp_path / "s", layers=LAYERS, kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                          block_tokens=BLOCK, summary="bound") as store:
        store.append_document("half", keys, values)
        store.commit()
        q = queries(5)
        out, lse = store.attend(1, q, exact=True)
    ref_out, ref_lse = dense_attention(q, keys[1].astype(np.float64), values[1].astype(np.float64))
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=float32_tolerance(29, HEAD_DIM, 4))
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=float32_tolerance(29, HEAD_DIM, 20))


def test_documents_restriction(corpus):
    path, docs, ids = corpus
    with msa.Store.open(path, read_only=True) as store:
        q = queries(6)
        out, lse = store.attend(0, q, exact=True, documents=[ids[1]])
        check_against_dense(out, lse, q, *layer_kv(docs, 0, which=[1]))
        # A numpy array of ids works too, and both documents are all of them.
        out_both, _ = store.attend(0, q, exact=True, documents=np.array(ids, np.uint64))
        out_all, _ = store.attend(0, q, exact=True)
        np.testing.assert_array_equal(out_both, out_all)
        with pytest.raises(msa.NotFound, match=f"document id {ids[1] + 100}"):
            store.attend(0, q, documents=[ids[1] + 100])


def test_document_sinks(tmp_path):
    """document_sinks=True attends over every document's first block besides
    the routed ones. Four documents of two 8-token blocks (blocks 0..7); block
    3 (document 1's second) is a needle aligned with the query, so top_k=1
    routes it: with document sinks the selection is blocks {0, 2, 3, 4, 6, 7}
    (first blocks, needle, recent), without them at most {0, routed, 7}."""
    rng = np.random.default_rng(21)
    q = rng.standard_normal((1, 2, HEAD_DIM)).astype(np.float32)
    docs = []
    for i in range(4):
        k = rng.standard_normal((1, 1, 2 * BLOCK, HEAD_DIM)).astype(np.float32)
        v = rng.standard_normal((1, 1, 2 * BLOCK, HEAD_DIM)).astype(np.float32)
        k[0, 0, 0] = 2.0 * q[0, 0]  # each document's first token: a sink
        if i == 1:
            k[0, 0, BLOCK:] = 3.0 * q[0, 0]
        docs.append((k, v))
    with msa.Store.create(tmp_path / "s", layers=1, kv_heads=1, head_dim=HEAD_DIM, block_tokens=BLOCK) as store:
        for i, (k, v) in enumerate(docs):
            store.append_document(f"d{i}", k, v)
        store.commit()
        keys = np.concatenate([k[0] for k, _ in docs], axis=1)  # [1, 64, d]
        values = np.concatenate([v[0] for _, v in docs], axis=1)
        blocks = [0, 2, 3, 4, 6, 7]
        tokens = np.concatenate([np.arange(b * BLOCK, (b + 1) * BLOCK) for b in blocks])
        out, lse = store.attend(0, q, top_k=1, gpu="off", document_sinks=True)
        check_against_dense(out, lse, q, keys[:, tokens], values[:, tokens])
        # Without them the first blocks of documents 1 and 2 are not read, so
        # the result must differ from the one above.
        out0, lse0 = store.attend(0, q, top_k=1, gpu="off")
        assert np.abs(lse0 - lse).max() > 1e-3
        # Prefetch takes the option too.
        with store.prefetch(0, q, top_k=1, gpu="off", document_sinks=True) as pf:
            pf.wait()


def test_list_documents_and_stats(corpus):
    path, docs, ids = corpus
    with msa.Store.open(path, read_only=True) as store:
        listed = store.documents()
        assert [d.id for d in listed] == ids
        assert [d.name for d in listed] == ["doc0", "doc1"]
        assert [d.tokens for d in listed] == list(DOC_TOKENS)
        assert [d.blocks for d in listed] == [-(-t // BLOCK) for t in DOC_TOKENS]
        assert listed[1].first_block == listed[0].blocks
        stats = store.stats()
        assert stats["documents"] == 2 and stats["tokens"] == sum(DOC_TOKENS)
        assert stats["blocks_per_stream"] == sum(d.blocks for d in listed)
        assert stats["raw_bytes"] == 2 * 2 * LAYERS * KV_HEADS * sum(DOC_TOKENS) * HEAD_DIM
        fetch = store.fetch_stats()
        assert fetch["reader"] in ("io_uring", "pread")
        assert fetch["cache_hits"] == 0 and fetch["disk_blocks_read"] == 0
        # The host path: on a GPU machine "auto" would keep blocks in the GPU pool.
        store.attend(0, queries(2), gpu="off")
        store.attend(0, queries(2), gpu="off")
        fetch = store.fetch_stats()
        assert fetch["disk_blocks_read"] > 0 and fetch["disk_bytes_read"] >= 4096 * fetch["disk_blocks_read"]
        assert fetch["cache_hits"] == fetch["cache_misses"] == fetch["disk_blocks_read"]
        assert 0 < fetch["cache_resident_bytes"] <= fetch["cache_capacity_bytes"]


def test_uncommitted_documents_are_invisible_then_discarded(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "s"
    with msa.Store.create(path, layers=LAYERS, kv_heads=KV_HEADS, head_dim=HEAD_DIM) as store:
        store.append_document("staged", *make_doc(rng, 10))
        assert store.documents() == [] and store.stats()["documents"] == 0
        out, lse = store.attend(0, queries(7))  # an empty store: zeros, -inf
        assert np.all(out == 0) and np.all(np.isneginf(lse))
    with msa.Store.open(path) as store:
        assert store.documents() == []


def test_prefetch_then_attend_from_cache(corpus):
    path, _, _ = corpus
    q = queries(8)
    with msa.Store.open(path, read_only=True) as cold:
        expected = cold.attend(1, q, top_k=2, gpu="off")
    # gpu="off": this is the host cache's prefetch (a GPU call's fills the GPU pool).
    with msa.Store.open(path, read_only=True) as store:
        with store.prefetch(1, q, top_k=2, gpu="off") as pending:
            pending.wait()
            pending.wait()  # waiting again returns the same status
        before = store.stats()
        assert before["cache_misses"] > 0 and before["cache_hits"] == 0
        out, lse = store.attend(1, q, top_k=2, gpu="off")
        after = store.stats()
        assert after["cache_hits"] > 0 and after["cache_misses"] == before["cache_misses"]
        np.testing.assert_array_equal(out, expected[0])
        np.testing.assert_array_equal(lse, expected[1])


def test_prefetch_layers_then_attend_every_layer_from_cache(corpus):
    path, _, _ = corpus
    q = queries(8)
    with msa.Store.open(path, read_only=True) as cold:
        layers = cold.geometry.layers
        expected = [cold.attend(layer, q, top_k=2, gpu="off") for layer in range(layers)]
    with msa.Store.open(path, read_only=True) as store:
        with store.prefetch_layers({layer: q for layer in range(layers)}, top_k=2) as pending:
            pending.wait()
        misses = store.stats()["cache_misses"]
        for layer in range(layers):
            out, lse = store.attend(layer, q, top_k=2, gpu="off")
            np.testing.assert_array_equal(out, expected[layer][0])
            np.testing.assert_array_equal(lse, expected[layer][1])
        assert store.stats()["cache_misses"] == misses and store.stats()["cache_hits"] > 0
        with pytest.raises(msa.InvalidArgument, match="layer 9"):
            store.prefetch_layers([(0, q), (9, q)]).wait()


def test_open_with_a_cache_size(corpus):
    path, _, _ = corpus
    with msa.Store.open(path, read_only=True, cache_bytes=1 << 20) as store:
        assert store.stats()["cache_capacity_bytes"] == 1 << 20
    with msa.Store.open(path, read_only=True, cache_bytes=0) as store:
        store.attend(0, queries(3), top_k=2, gpu="off")
        store.attend(0, queries(3), top_k=2, gpu="off")
        assert store.stats()["cache_hits"] == 0
    with pytest.raises(msa.InvalidArgument, match="queue_depth"):
        msa.Store.open(path, read_only=True, queue_depth=0)


def test_query_threads_change_no_answer(corpus):
    path, _, _ = corpus
    q = queries(3)
    with msa.Store.open(path, read_only=True, query_threads=1) as store:
        one = store.attend(0, q, top_k=2, gpu="off")
    with msa.Store.open(path, read_only=True, query_threads=4) as store:
        many = store.attend(0, q, top_k=2, gpu="off")
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])
    with pytest.raises(msa.InvalidArgument, match="query_threads"):
        msa.Store.open(path, read_only=True, query_threads=257)


def test_prefetch_errors_arrive_at_wait(corpus):
    path, _, _ = corpus
    with msa.Store.open(path, read_only=True) as store:
        pending = store.prefetch(9, queries(9))
        with pytest.raises(msa.InvalidArgument, match="layer 9"):
            pending.wait()
        pending.close()
        pending.close()  # idempotent


def test_outputs_written_in_place(corpus):
    path, _, _ = corpus
    q = queries(10)
    with msa.Store.open(path, read_only=True) as store:
        expected_out, expected_lse = store.attend(0, q, exact=True)
        out = np.full((5, Q_HEADS, HEAD_DIM), np.nan, np.float32)
        lse = np.full((5, Q_HEADS), np.nan, np.float32)
        got_out, got_lse = store.attend(0, q, exact=True, out=out, lse=lse)
        assert got_out is out and got_lse is lse
        np.testing.assert_array_equal(out, expected_out)
        np.testing.assert_array_equal(lse, expected_lse)
        with pytest.raises(msa.InvalidArgument, match="out must be"):
            store.attend(0, q, out=np.empty((5, Q_HEADS, HEAD_DIM), np.float64))
        with pytest.raises(msa.InvalidArgument, match="lse must be"):
            store.attend(0, q, lse=np.empty((5, Q_HEADS + 1), np.float32))


def test_inputs_are_not_copied_when_the_layout_fits():
    from msa.store import _input
    f32 = (np.dtype(np.float32), np.dtype(np.float16))
    a = np.zeros((2, 3, 4), np.float32)
    assert _input(a, "q", f32) is a
    h = np.zeros((2, 3, 4), np.float16)
    assert _input(h, "keys", f32) is h
    view = np.zeros((4, 3, 4), np.float32)[1:3]  # a C-contiguous view: still no copy
    assert np.shares_memory(_input(view, "q", f32), view)
    fortran = np.asfortranarray(a)
    converted = _input(fortran, "q", f32)
    assert converted.flags.c_contiguous and not np.shares_memory(converted, fortran)
    widened = _input(a.astype(np.float64), "q", f32)
    assert widened.dtype == np.float32


def test_non_contiguous_and_float64_inputs_give_the_same_answer(corpus):
    path, _, _ = corpus
    q = queries(11)
    with msa.Store.open(path, read_only=True) as store:
        expected, _ = store.attend(0, q, exact=True)
        strided = np.zeros((5, Q_HEADS, 2 * HEAD_DIM), np.float32)
        strided[:, :, ::2] = q
        got, _ = store.attend(0, strided[:, :, ::2], exact=True)
        np.testing.assert_array_equal(got, expected)
        got64, _ = store.attend(0, q.astype(np.float64), exact=True)
        np.testing.assert_array_equal(got64, expected)


def test_gpu_mode_names(corpus):
    path, _, _ = corpus
    q = queries(13)
    with msa.Store.open(path, read_only=True) as store:
        expected, _ = store.attend(0, q, top_k=1, gpu="off")
        out, _ = store.attend(0, q, top_k=1)  # auto: the GPU where there is one
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
        with pytest.raises(msa.InvalidArgument, match="gpu"):
            store.attend(0, q, gpu="sometimes")
        usable, why = msa.gpu_available()
        assert isinstance(why, str) and (usable or why)
        if not usable:
            with pytest.raises(msa.NotSupported):
                store.attend(0, q, gpu="require")


def test_torch_cpu_tensors(corpus):
    torch = pytest.importorskip("torch", reason="torch is not installed for this interpreter")
    path, _, _ = corpus
    q = queries(12)
    with msa.Store.open(path, read_only=True) as store:
        expected, expected_lse = store.attend(0, q, exact=True)
        out, lse = store.attend(0, torch.from_numpy(q), exact=True)
        assert isinstance(out, torch.Tensor) and isinstance(lse, torch.Tensor)
        np.testing.assert_array_equal(out.numpy(), expected)
        np.testing.assert_array_equal(lse.numpy(), expected_lse)


def test_cuda_tensors(corpus):
    """A CUDA q runs through msa_attend_device: CUDA results on q's device,
    equal to the CPU path's within float32 error, and over every block to
    dense attention; outputs in place; wrong dtypes and devices refused."""
    torch = pytest.importorskip("torch", reason="torch is not installed for this interpreter")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    usable, why = msa.gpu_available()
    if not usable:
        pytest.skip(f"msa has no usable GPU: {why}")
    path, docs, _ = corpus
    q = queries(21)
    qd = torch.from_numpy(q).cuda()
    keys, values = layer_kv(docs, 0)
    tol = float32_tolerance(keys.shape[1], HEAD_DIM, np.abs(values).max())
    with msa.Store.open(path, read_only=True) as store:
        for top_k in (1, 1000):  # a sparse selection; every block
            cpu_out, cpu_lse = store.attend(0, q, top_k=top_k, gpu="off")
            out, lse = store.attend(0, qd, top_k=top_k)
            assert out.is_cuda and lse.is_cuda and out.device == qd.device
            assert tuple(out.shape) == q.shape and tuple(lse.shape) == q.shape[:2]
            torch.cuda.current_stream().synchronize()
            np.testing.assert_allclose(out.cpu().numpy(), cpu_out, rtol=0, atol=tol)
            np.testing.assert_allclose(lse.cpu().numpy(), cpu_lse, rtol=0, atol=tol)
        check_against_dense(out.cpu().numpy(), lse.cpu().numpy(), q, keys, values)
        # The host entry point on the GPU gives the same as the device one.
        host_gpu, _ = store.attend(0, q, top_k=1000, gpu="require")
        np.testing.assert_allclose(host_gpu, out.cpu().numpy(), rtol=0, atol=tol)
        o, s = torch.empty_like(qd), torch.empty(q.shape[:2], device=qd.device)
        ro, rs = store.attend(0, qd, top_k=1000, out=o, lse=s)
        assert ro is o and rs is s
        torch.cuda.current_stream().synchronize()
        np.testing.assert_array_equal(o.cpu().numpy(), out.cpu().numpy())
        with pytest.raises(msa.InvalidArgument, match="float32"):
            store.attend(0, qd.half())
        with pytest.raises(msa.InvalidArgument, match="out must be"):
            store.attend(0, qd, out=torch.empty(q.shape))  # a host tensor for a CUDA q


def test_version_and_library():
    major, minor, _ = msa.version()
    assert (major, minor) >= (_lib.HEADER_MAJOR, _lib.HEADER_MINOR)
    assert msa.__version__.startswith(f"{major}.{minor}.")
    assert os.path.exists(msa.library_path()) and ".so" in os.path.basename(msa.library_path())


def test_queries_from_several_threads(corpus):
    """ctypes releases the GIL during each call: queries of one store run in
    parallel threads, and each gets the answer it gets alone."""
    from concurrent.futures import ThreadPoolExecutor
    path, _, _ = corpus
    qs = [queries(20 + i) for i in range(8)]
    with msa.Store.open(path, read_only=True) as store:
        alone = [store.attend(i % LAYERS, q, top_k=2) for i, q in enumerate(qs)]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda iq: store.attend(iq[0] % LAYERS, iq[1], top_k=2),
                                     enumerate(qs)))
    for (out, lse), (out2, lse2) in zip(alone, together):
        np.testing.assert_array_equal(out, out2)
        np.testing.assert_array_equal(lse, lse2)


def test_a_library_of_another_major_version_is_refused():
    from types import SimpleNamespace
    fake = SimpleNamespace(msa_version=lambda: (1 << 16) | (3 << 8))  # 1.3.0
    with pytest.raises(ImportError, match=f"version 1.3.0; this wrapper needs 0.{_lib.HEADER_MINOR}"):
        _lib._check_version(fake, "libmsa.so.1")
    fake = SimpleNamespace(msa_version=lambda: (_lib.HEADER_MAJOR << 16) | (_lib.HEADER_MINOR + 1) << 8)
    assert _lib._check_version(fake, "libmsa.so")[1] == _lib.HEADER_MINOR + 1  # newer minor: fine


@pytest.mark.parametrize("codec", ["f16", "bf16", "int8", "int4"])
def test_every_codec_by_name(tmp_path, codec):
    rng = np.random.default_rng(5)
    keys, values = make_doc(rng, 40)
    with msa.Store.create(tmp_path / codec, layers=LAYERS, kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                          block_tokens=BLOCK, codec=codec) as store:
        store.append_document("doc", keys, values)
        store.commit()
    with msa.Store.open(tmp_path / codec, read_only=True) as store:
        assert store.geometry.codec == codec
        out, lse = store.attend(0, queries(30), exact=True)
    # Lossy codecs move the result a little; each stays an attention output:
    # finite, and every row inside the values' range.
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(lse))
    assert out.max() <= values[0].max() + 0.05 and out.min() >= values[0].min() - 0.05


def test_delete_and_compact(corpus):
    path, docs, ids = corpus
    q = queries(9)
    with msa.Store.open(path) as store:
        store.delete_document(ids[0])
        # Staged only: both documents still answer.
        assert [d.id for d in store.documents()] == ids
        with pytest.raises(msa.InvalidArgument, match="commit them first"):
            store.compact()
        store.commit()
        assert [d.id for d in store.documents()] == [ids[1]]
        with pytest.raises(msa.NotFound):
            store.delete_document(ids[0])
        out, lse = store.attend(0, q, exact=True)
        check_against_dense(out, lse, q, *layer_kv(docs, 0, which=[1]))
        done = store.compact()
        assert done["segments_removed"] == 1 and done["blocks_dropped"] > 0, done
        out2, _ = store.attend(0, q, exact=True)
        np.testing.assert_array_equal(out, out2)
    with msa.Store.open(path, read_only=True) as store:
        assert [d.name for d in store.documents()] == ["doc1"]
