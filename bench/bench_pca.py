"""Benchmark `core.analysis.measures.pca`: wall time and extra peak memory on layer-sized activation matrices.

Run from the repository root: `python bench/bench_pca.py` (add `--quick` to skip the 10,000 x 16,384 case).
The goal is the largest case under 1 s with a few hundred MB of extra memory on a 2-core machine.
"""

import argparse
import os
import threading
import time
import tracemalloc

import numpy as np
import psutil

from core.analysis.measures import pca  # noqa: E402

SHAPES = [(2000, 512), (1000, 4096), (2000, 16384), (10000, 16384)]
REPEATS = 5


def planted_activations(n, d, rank=20, seed=0):
    """(n, d) float32: a decaying rank-`rank` signal plus unit noise plus a per-feature offset."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    scales = np.geomspace(8.0, 1.0, rank).astype(np.float32)
    signal = rng.standard_normal((n, rank), dtype=np.float32) * scales  # (n, rank)
    x += signal @ rng.standard_normal((rank, d), dtype=np.float32)
    x += rng.random(d, dtype=np.float32)
    return x


def best_seconds(x, k):
    """Fastest of REPEATS runs, and the method used."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = pca(x, k)
        times.append(time.perf_counter() - start)
    return min(times), result.method


def traced_peak_mb(x, k):
    """Peak of numpy/Python allocations during one run, above what was allocated before it."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    pca(x, k)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak - before) / 2**20


def rss_peak_growth_mb(x, k):
    """Peak resident-set growth during one run, sampled every millisecond by a watcher thread."""
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    pca(x, k)
    done.set()
    watcher.join()
    return (peak[0] - baseline) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="skip the 10,000 x 16,384 case")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    for n, d in SHAPES[:-1] if args.quick else SHAPES:
        x = planted_activations(n, d)
        pca(x, args.k)  # warm-up: BLAS threads, page faults of x
        seconds, method = best_seconds(x, args.k)
        traced = traced_peak_mb(x, args.k)
        rss = rss_peak_growth_mb(x, args.k)
        print(
            f"pca {n}x{d} k={args.k}: {seconds:.2f} s, extra peak {traced:.0f} MB traced "
            f"({rss:.0f} MB RSS), input {x.nbytes / 2**20:.0f} MB, method={method}, "
            f"load average {os.getloadavg()[0]:.1f}",  # other processes on 2 cores distort timings
            flush=True,
        )
        del x


if __name__ == "__main__":
    main()
