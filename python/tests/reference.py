"""The fp64 NumPy reference of the Python tests (SPEC.md section 1), independent of the C
library's oracle: scores materialized per sequence, softmax over the visible keys.

`attend` computes one sequence; the dense, varlen, range and cache references below only
decide, per sequence, which keys a row sees (and from which diagonal ALiBi measures), then
call it. `rnd` rounds scores, probabilities and outputs to a low precision to get the error
of a naive same-precision implementation (the fp16/bf16 rule of SPEC.md section 1).
"""

import numpy as np


def _identity(x):
    return x


def visibility(Lq, Lk, causal=False, align="bottom_right", window=(-1, -1)):
    """[Lq, Lk] visible keys of one sequence (SPEC.md section 3) and the ALiBi distances."""
    i = np.arange(Lq)[:, None]
    j = np.arange(Lk)[None, :]
    c = i + (Lk - Lq) if align == "bottom_right" else i
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    vis = np.ones((Lq, Lk), bool)
    if left >= 0:
        vis &= j >= c - left
    if right >= 0:
        vis &= j <= c + right
    dist = np.abs(i + (Lk - Lq) - j).astype(np.float64)  # ALiBi: always bottom-right
    return vis, dist


def attend(q, k, v, *, scale=None, softcap=0.0, visible=None, dist=None, alibi=None, sinks=None,
           mask=None, bias=None, rnd=_identity):
    """One sequence. q [Lq, Hq, D], k [Lk, Hk, D], v [Lk, Hk, Dv]; visible / dist [Lq, Lk];
    alibi, sinks [Hq]; mask, bias broadcastable to [Hq, Lq, Lk]. Returns out [Lq, Hq, Dv] and
    lse [Hq, Lq] (fp64)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    Lq, Hq, D = q.shape
    Lk, Hk, Dv = v.shape[0], v.shape[1], v.shape[2]
    if scale is None or scale == 0:
        scale = 1.0 / np.sqrt(D)
    group = Hq // Hk
    kk = np.repeat(k, group, axis=1)  # query head h reads kv head h // group
    vv = np.repeat(v, group, axis=1)
    s = np.einsum("ihd,jhd->hij", q, kk) * scale
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    if bias is not None:
        s = s + np.asarray(bias, np.float64)
    if alibi is not None:
        s = s - np.asarray(alibi, np.float64)[:, None, None] * dist[None]
    s = rnd(s)
    vis = np.broadcast_to(np.ones((Lq, Lk), bool) if visible is None else visible, (Hq, Lq, Lk))
    if mask is not None:
        vis = vis & np.broadcast_to(np.asarray(mask) != 0, (Hq, Lq, Lk))
    s = np.where(vis, s, -np.inf)
    sink = None if sinks is None else np.broadcast_to(np.asarray(sinks, np.float64)[:, None], (Hq, Lq))
    m = s.max(axis=-1, initial=-np.inf)
    if sink is not None:
        m = np.maximum(m, sink)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m[..., None])
    total = e.sum(axis=-1) + (0.0 if sink is None else np.exp(sink - m))
    with np.errstate(divide="ignore"):
        lse = np.where(total > 0, m + np.log(np.where(total > 0, total, 1.0)), -np.inf)
    p = rnd(e / np.where(total > 0, total, 1.0)[..., None])
    out = rnd(np.einsum("hij,jhd->ihd", p, vv))
    return out, lse


def head_variants(x, Hq):
    """[Hv, ...] -> [Hq, ...]: query head h reads variant h // (Hq // Hv) (SPEC.md section 5)."""
    x = np.asarray(x)
    return np.repeat(x, Hq // x.shape[0], axis=0)


def dense(q, k, v, *, causal=False, align="bottom_right", window=(-1, -1), alibi=None,
          mask=None, bias=None, **kw):
    """q [B, Lq, Hq, D], k [B, Lk, Hk, D], v [B, Lk, Hk, Dv] (None: V := K); alibi [Hq] or
    [B, Hq]; mask / bias dense layout [B|1, Hv, Lq|1, Lk|1]. Returns out [B, Lq, Hq, Dv],
    lse [B, Hq, Lq]."""
    v = k if v is None else v
    B, Lq, Hq = q.shape[:3]
    Lk = k.shape[1]
    vis, dist = visibility(Lq, Lk, causal, align, window)
    outs, lses = [], []
    for b in range(B):
        sel = lambda x: None if x is None else head_variants(np.asarray(x)[b if x.shape[0] > 1 else 0], Hq)
        al = None if alibi is None else (np.asarray(alibi)[b] if np.ndim(alibi) == 2 else alibi)
        o, l = attend(q[b], k[b], v[b], visible=vis, dist=dist, alibi=al, mask=sel(mask),
                      bias=sel(bias), **kw)
        outs.append(o)
        lses.append(l)
    Dv = v.shape[3]
    return (np.stack(outs) if B else np.zeros((0, Lq, Hq, Dv)),
            np.stack(lses) if B else np.zeros((0, Hq, Lq)))


def packed_source(x, layout, b, cq, ck, Hq):
    """The [Hq, Lq|1, Lk|1] slice of a mask/bias in a packed layout for sequence b."""
    if x is None:
        return None
    x = np.asarray(x)
    q0, q1, k0, k1 = cq[b], cq[b + 1], ck[b], ck[b + 1]
    if layout == "key_side":  # [Tk, Hv]
        return head_variants(x[k0:k1].T[:, None, :], Hq)
    if layout == "query_side":  # [Tq, Hv, max_seqlen_k]
        return head_variants(x[q0:q1, :, : k1 - k0].transpose(1, 0, 2), Hq)
    xb = x[b if x.shape[0] > 1 else 0]  # dense [B|1, Hv, Lq|1, Lk|1], local coordinates
    return head_variants(xb[:, : (q1 - q0) if xb.shape[1] > 1 else 1, : (k1 - k0) if xb.shape[2] > 1 else 1], Hq)


def varlen(q, k, v, cu_q, cu_k, *, causal=False, align="bottom_right", window=(-1, -1),
           alibi=None, mask=None, mask_layout="dense", bias=None, bias_layout="dense", **kw):
    """q [Tq, Hq, D], k [Tk, Hk, D], v [Tk, Hk, Dv] (None: V := K), cu_* [B + 1]. Returns
    out [Tq, Hq, Dv] and lse [Hq, Tq]; rows of no sequence stay 0 / -inf."""
    v = k if v is None else v
    Tq, Hq = q.shape[:2]
    out = np.zeros((Tq, Hq, v.shape[2]))
    lse = np.full((Hq, Tq), -np.inf)
    cq, ck = [int(c) for c in cu_q], [int(c) for c in cu_k]
    for b in range(len(cq) - 1):
        Lq, Lk = cq[b + 1] - cq[b], ck[b + 1] - ck[b]
        vis, dist = visibility(Lq, Lk, causal, align, window)
        al = None if alibi is None else (np.asarray(alibi)[b] if np.ndim(alibi) == 2 else alibi)
        o, l = attend(q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]], visible=vis,
                      dist=dist, alibi=al, mask=packed_source(mask, mask_layout, b, cq, ck, Hq),
                      bias=packed_source(bias, bias_layout, b, cq, ck, Hq), **kw)
        out[cq[b]:cq[b + 1]] = o
        lse[:, cq[b]:cq[b + 1]] = l
    return out, lse


RANGE_TYPES = {"full": 0, "causal": 1, "inv_causal": 2, "band": 3}


def range_plan(q, k, v, q_ranges, k_ranges, types=None, *, alibi=None, **kw):
    """Attention under a range plan (SPEC.md section 4): the union of the slices' cells, one
    softmax per row; ALiBi from each slice's own bottom-right diagonal."""
    v = k if v is None else v
    Tq, Tk = q.shape[0], k.shape[0]
    vis = np.zeros((Tq, Tk), bool)
    dist = np.zeros((Tq, Tk))
    for n, ((qs, qe), (ks, ke)) in enumerate(zip(q_ranges, k_ranges)):
        t = 0 if types is None else types[n]
        t = RANGE_TYPES.get(t, t)
        Lq, Lk = qe - qs, ke - ks
        i = np.arange(Lq)[:, None]
        j = np.arange(Lk)[None, :]
        cell = np.ones((Lq, Lk), bool)
        if t in (1, 3):
            cell &= j <= i + (Lk - Lq)
        if t in (2, 3):
            cell &= j >= i
        assert not (vis[qs:qe, ks:ke] & cell).any(), "overlapping slices in a test plan"
        vis[qs:qe, ks:ke] |= cell
        dist[qs:qe, ks:ke] = np.where(cell, np.abs(i + (Lk - Lq) - j), dist[qs:qe, ks:ke])
    return attend(q, k, v, visible=vis, dist=dist, alibi=alibi, **kw)


def rotary(x, cos, sin, pos, interleaved):
    """Rotate the first 2 * cos.shape[1] dims of x [..., D] at position pos (GPT-NeoX halves,
    or GPT-J pairs with interleaved)."""
    x = np.array(x, np.float64)
    half = cos.shape[1]
    c, s = np.asarray(cos[pos], np.float64), np.asarray(sin[pos], np.float64)
    i1 = np.arange(half) * 2 if interleaved else np.arange(half)
    i2 = i1 + 1 if interleaved else np.arange(half) + half
    a, b = x[..., i1].copy(), x[..., i2].copy()
    x[..., i1] = a * c - b * s
    x[..., i2] = a * s + b * c
    return x


def kvcache(q, k_cache, v_cache, seqlens, k_new=None, v_new=None, *, batch_idx=None,
            block_table=None, rotary_cos=None, rotary_sin=None, interleaved=False, causal=False,
            window=(-1, -1), alibi=None, mask=None, bias=None, **kw):
    """flash_attn_with_kvcache semantics (SPEC.md section 6) on copies of the caches. Returns
    out [B, Lq, Hq, Dv], lse [B, Hq, Lq] and the caches after the append."""
    k_cache, v_cache = np.array(k_cache, np.float64), None if v_cache is None else np.array(v_cache, np.float64)
    B, Lq, Hq = q.shape[:3]
    Lnew = 0 if k_new is None else k_new.shape[1]
    page = k_cache.shape[1]

    def rows(b, n):  # (cache row / page, offset) of logical keys [0, n) of batch entry b
        if block_table is None:
            r = b if batch_idx is None else int(batch_idx[b])
            return [(r, t) for t in range(n)]
        return [(int(block_table[b][t // page]), t % page) for t in range(n)]

    outs, lses = [], []
    for b in range(B):
        s0 = int(seqlens[b])
        for t in range(Lnew):
            (r, o), kn = rows(b, s0 + t + 1)[-1], np.asarray(k_new[b, t], np.float64)
            if rotary_cos is not None:
                kn = rotary(kn, rotary_cos, rotary_sin, s0 + t, interleaved)
            k_cache[r, o] = kn
            if v_cache is not None and v_new is not None:
                v_cache[r, o] = v_new[b, t]
        idx = rows(b, s0 + Lnew)
        kk = np.stack([k_cache[r, o] for r, o in idx]) if idx else np.zeros((0,) + k_cache.shape[2:])
        vsrc = k_cache if v_cache is None else v_cache
        vv = np.stack([vsrc[r, o] for r, o in idx]) if idx else np.zeros((0,) + vsrc.shape[2:])
        qb = np.asarray(q[b], np.float64)
        if rotary_cos is not None:
            per_row = causal or window != (-1, -1)
            qb = np.stack([rotary(qb[i], rotary_cos, rotary_sin, s0 + (i if per_row else 0), interleaved)
                           for i in range(Lq)]) if Lq else qb
        vis, dist = visibility(Lq, len(idx), causal, "bottom_right", window)
        al = None if alibi is None else (np.asarray(alibi)[b] if np.ndim(alibi) == 2 else alibi)
        src = [None if x is None else packed_source(x[b if x.shape[0] > 1 else 0][None], "dense", 0,
                                                    [0, Lq], [0, len(idx)], Hq) for x in (mask, bias)]
        o, l = attend(qb, kk, vv, visible=vis, dist=dist, alibi=al, mask=src[0], bias=src[1], **kw)
        outs.append(o)
        lses.append(l)
    return np.stack(outs), np.stack(lses), k_cache, v_cache


def merge(o1, lse1, o2, lse2):
    """SPEC.md section 7 on lse-aligned arrays: o [..., Dv] rows matching lse [...]."""
    m = np.maximum(lse1, lse2)
    m = np.where(np.isfinite(m), m, 0.0)
    w1, w2 = np.exp(lse1 - m), np.exp(lse2 - m)
    tot = w1 + w2
    with np.errstate(divide="ignore", invalid="ignore"):
        o = (w1[..., None] * o1 + w2[..., None] * o2) / np.where(tot > 0, tot, 1.0)[..., None]
        lse = np.where(tot > 0, m + np.log(np.where(tot > 0, tot, 1.0)), -np.inf)
    return np.where(tot[..., None] > 0, o, 0.0), lse


def mlm(q, k, v, contexts=(), *, cu_q=None, cu_k=None, ctx_idx=None, cumulative=False, **kw):
    """flash-mlm attention (SPEC.md section 6): sequence b's rows see, with no mask, context
    ctx(b) and its new keys (with `cumulative`, packed only: the new keys of sequences 0..b).
    contexts: a list of (k_c [Lc, Hk, D], v_c [Lc, Hk, Dv]) (empty: no context, a miss);
    ctx(b) = ctx_idx[b], else 0 with one context, b with B. Dense q [B, Lq, Hq, D], k / v
    [B, Lk, Hk, .]; packed q [Tq, Hq, D] with cu_q, k / v [Tk, Hk, .] with cu_k (None: cu_q).
    v None: V := K. Returns out and lse in the call's layout (dense [B, Lq, Hq, Dv] /
    [B, Hq, Lq]; packed [Tq, Hq, Dv] / [Hq, Tq])."""
    v = k if v is None else v
    packed = cu_q is not None
    if packed:
        cq = [int(c) for c in cu_q]
        ck = cq if cu_k is None else [int(c) for c in cu_k]
        B = len(cq) - 1
        rows = lambda x, b, cu: x[cu[b]:cu[b + 1]]
    else:
        B = q.shape[0]
    outs, lses = [], []
    for b in range(B):
        if packed:
            qb = rows(q, b, cq)
            k0 = ck[0] if cumulative else ck[b]
            kb, vb = k[k0:ck[b + 1]], v[k0:ck[b + 1]]
        else:
            qb, kb, vb = q[b], k[b], v[b]
        if len(contexts):
            c = int(ctx_idx[b]) if ctx_idx is not None else (0 if len(contexts) == 1 else b)
            kc, vc = contexts[c]
            kb = np.concatenate([np.asarray(kc, np.float64), np.asarray(kb, np.float64)])
            vb = np.concatenate([np.asarray(vc, np.float64), np.asarray(vb, np.float64)])
        o, l = attend(qb, kb, vb, **kw)
        outs.append(o)
        lses.append(l)
    Hq, Dv = q.shape[-2], v.shape[-1]
    if packed:
        return (np.concatenate(outs) if B else np.zeros((0, Hq, Dv)),
                np.concatenate(lses, axis=1) if B else np.zeros((Hq, 0)))
    return np.stack(outs) if B else np.zeros((0,) + q.shape[1:3] + (Dv,)), np.stack(lses) if B else np.zeros((0, Hq, q.shape[1]))
