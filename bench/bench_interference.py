"""What any work beside training costs on this machine: plain `fit` alone against plain `fit` while another
process spins on the CPU part of the time, at nice 10 like Strata's recording process. Nothing of Strata's
runs here; this is the reference against which to read `bench_overhead.py`'s Recorder ratio.

The spinner does no memory traffic and no I/O: it only burns CPU in bursts (`busy` ms out of every `period`
ms), so whatever it costs training comes from sharing the machine's cores, not from the work itself.
Conditions are interleaved round by round, in a shuffled order each round.

    python bench/bench_interference.py [--rounds 10] [--epochs 30] [--duties 0,20,45,100]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench_overhead import fit_seconds, ratio_columns  # noqa: E402

from core.training.datasets import load_dataset, stratified_subset  # noqa: E402

PERIOD = 0.140  # seconds: about one epoch of the issue-2 workload, as the recording process's rhythm

SPINNER = f"""
import os, sys, time
os.nice(10)
busy = float(sys.argv[1]) * {PERIOD}
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < busy:
        pass
    if busy < {PERIOD}:
        time.sleep({PERIOD} - busy)
"""


def measured_fit(duty: int, data, probe, epochs: int, root: str) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one plain `fit` beside a spinner busy `duty`% of the time."""
    spinner = None
    if duty:
        spinner = subprocess.Popen([sys.executable, "-c", SPINNER, str(duty / 100)])
        time.sleep(0.3)  # let it start spinning before training does
    try:
        before = os.times()
        wall, _, _ = fit_seconds("plain", data, probe, epochs, root, None)
        after = os.times()
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return wall, (after.user - before.user) + (after.system - before.system)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--duties", default="0,20,45,100", help="percent of the time the spinner is busy; 0 = alone")
    args = parser.parse_args()
    duties = [int(d) for d in args.duties.split(",")]
    if 0 not in duties:
        duties.insert(0, 0)
    data = load_dataset("digits")
    rows = stratified_subset(data.y, 1000, seed=0)
    probe = (data.x[rows], data.y[rows])
    results: dict[int, list[tuple[float, float]]] = {d: [] for d in duties}
    with tempfile.TemporaryDirectory() as root:
        fit_seconds("plain", data, probe, 1, root, None)  # warm-up
        for round_index in range(args.rounds):
            order = random.sample(duties, len(duties))
            for duty in order:
                results[duty].append(measured_fit(duty, data, probe, args.epochs, root))
            print(
                f"round {round_index + 1}: " + "  ".join(f"{d}% {results[d][-1][0]:.2f}s" for d in duties), flush=True
            )
    print(
        f"\nplain fit of the issue-2 workload ({args.epochs} epochs) beside a process spinning at nice 10, "
        f"in {PERIOD * 1000:.0f} ms cycles"
    )
    print(
        f"{'spinner busy':<13} {'median fit':>10} {'wall ratio':>10} {'(IQR)':>13} {'mean (95% CI)':>19} "
        f"{'fastest':>8} {'own CPU':>8}"
    )
    alone = results[0]
    for duty in duties:
        rows = results[duty]
        ratios = [w / a for (w, _), (a, _) in zip(rows, alone)]
        fastest = min(w for w, _ in rows) / min(a for a, _ in alone)
        cpu = statistics.median(c / a for (_, c), (_, a) in zip(rows, alone))
        label = "alone" if duty == 0 else f"{duty}%"
        print(
            f"{label:<13} {statistics.median(w for w, _ in rows):>9.2f}s {ratio_columns(ratios)} {fastest:>7.2f}x "
            f"{cpu:>7.2f}x"
        )


if __name__ == "__main__":
    main()
