"""The GIL is released while a kernel runs: another Python thread keeps running meanwhile, and
concurrent calls from several threads give the single-threaded results."""

import threading
import time

import numpy as np

import cflash
from helpers import randn


def test_gil_released_during_kernel(rng):
    """A slow call (the fp64 reference kernel) in a thread; the main thread's loop must keep
    ticking during it. With the GIL held the longest gap would be the whole call."""
    q = randn(rng, (1, 640, 4, 64)).astype(np.float32)  # about 0.3 s
    t0 = time.perf_counter()
    cflash.attn_dense(q, q, q, kernel="ref", num_threads=1)
    duration = time.perf_counter() - t0
    done = threading.Event()
    worker = threading.Thread(target=lambda: (cflash.attn_dense(q, q, q, kernel="ref", num_threads=1), done.set()))
    ticks = []
    worker.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    gaps = np.diff(ticks) if len(ticks) > 1 else [duration]
    assert len(ticks) > 5 and max(gaps) < 0.5 * duration, \
        f"main thread stalled {max(gaps):.3f} s during a {duration:.3f} s call"


def test_concurrent_calls_agree(rng):
    qs = [randn(rng, (1, 40, 4, 32)).astype(np.float32) for _ in range(4)]
    expect = [cflash.attn_dense(q, q, q, causal=True) for q in qs]
    results = [None] * 4

    def run(i):
        for _ in range(3):
            results[i] = cflash.attn_dense(qs[i], qs[i], qs[i], causal=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, e) for r, e in zip(results, expect))
