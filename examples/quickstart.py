import numpy as np
import msa

with msa.Store.create("mem", layers=1, kv_heads=2, head_dim=64) as store:
    keys = np.random.randn(1, 2, 1000, 64).astype(np.float16)  # [layers, kv_heads, tokens, head_dim]
    doc = store.append_document("doc", keys, keys)
    store.commit()                                  # durable and visible
    q = np.random.randn(4, 8, 64).astype(np.float32)  # [n, q_heads, head_dim]
    out, lse = store.attend(0, q, top_k=16)         # [4, 8, 64] and [4, 8], float32
    print(store.documents(), store.stats()["tokens"])
