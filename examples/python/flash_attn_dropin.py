"""flash-attn code running on the CPU through cflash: a causal GQA prefill with flash_attn_func,
then token-by-token decoding with flash_attn_with_kvcache (new keys/values appended to the cache in
place), each checked against a NumPy fp64 reference.

    PYTHONPATH=python python examples/python/flash_attn_dropin.py   (from the repository root, or
                                                                     with cflash installed)

`import flash_attn` is served by cflash's guarded shim (installed at start-up by cflash_shim.pth
in a pip install, or by cflash._shim.install() here); where a real flash-attn is installed, or
CFLASH_SHIM=off, the script uses cflash.flash_attn explicitly. Exits non-zero on any mismatch.
"""

import sys

import numpy as np
import torch

import cflash._shim

cflash._shim.install()  # no-op if already installed, or with CFLASH_SHIM=off
try:
    import flash_attn
except ModuleNotFoundError:
    flash_attn = None
if flash_attn is None or not flash_attn.__version__.endswith("+cflash"):
    import cflash.flash_attn as flash_attn  # a real (CUDA) flash-attn won, or the shim is off

B, HQ, HK, D = 2, 8, 2, 64           # GQA 4:1, the flash-attn layout [B, L, H, D]
PROMPT, STEPS, LMAX = 256, 16, 512
REL_TOL = 1e-5                       # SPEC.md section 1, fp32


def reference(q, k, v):
    """Causal (bottom-right) attention of one sequence in fp64: q [Lq, HQ, D], k, v [Lk, HK, D]."""
    Lq, Lk = q.shape[0], k.shape[0]
    k, v = np.repeat(k, HQ // HK, axis=1), np.repeat(v, HQ // HK, axis=1)
    s = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(D)
    s[:, np.arange(Lq)[:, None] + Lk - Lq < np.arange(Lk)[None, :]] = -np.inf
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return np.einsum("hij,jhd->ihd", p / p.sum(axis=-1, keepdims=True), v)


def f64(t):
    return t.double().numpy()


def rel_err(out, ref):
    return np.linalg.norm(f64(out) - ref) / np.linalg.norm(ref)


torch.manual_seed(0)
q = torch.randn(B, PROMPT, HQ, D)
k_cache, v_cache = torch.zeros(B, LMAX, HK, D), torch.zeros(B, LMAX, HK, D)
k_cache[:, :PROMPT], v_cache[:, :PROMPT] = torch.randn(B, PROMPT, HK, D), torch.randn(B, PROMPT, HK, D)

out = flash_attn.flash_attn_func(q, k_cache[:, :PROMPT], v_cache[:, :PROMPT], causal=True)
err = max(rel_err(out[b], reference(f64(q[b]), f64(k_cache[b, :PROMPT]), f64(v_cache[b, :PROMPT])))
          for b in range(B))

cache_seqlens = torch.full((B,), PROMPT, dtype=torch.int32)
for _ in range(STEPS):
    q1, k1, v1 = torch.randn(B, 1, HQ, D), torch.randn(B, 1, HK, D), torch.randn(B, 1, HK, D)
    out = flash_attn.flash_attn_with_kvcache(q1, k_cache, v_cache, k1, v1, cache_seqlens=cache_seqlens, causal=True)
    cache_seqlens += 1
    n = int(cache_seqlens[0])
    err = max([err] + [rel_err(out[b], reference(f64(q1[b]), f64(k_cache[b, :n]), f64(v_cache[b, :n])))
                       for b in range(B)])
    appended = torch.equal(k_cache[:, n - 1:n], k1) and torch.equal(v_cache[:, n - 1:n], v1)
    if not appended:
        break

ok = err <= REL_TOL and appended
print(f"flash_attn_dropin: {'ok' if ok else 'FAILED'}: flash_attn {flash_attn.__version__} "
      f"({flash_attn.__name__}), prefill {PROMPT} + {STEPS} decode steps, max rel err vs fp64 {err:.1e}")
sys.exit(0 if ok else 1)
