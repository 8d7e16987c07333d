"""What recording costs on real deep models (issue 16): keras.applications MobileNetV2 and ResNet50 (weights=None,
96x96x3 inputs, 10 classes) trained on generated images, plain `fit` against `fit` with the default `Recorder` and
against Keras's `TensorBoard(histogram_freq=1)`, side by side in one run.

Every (model, variant, round) trains in a fresh process, so each peak RSS is its own: the parent samples the resident
memory of that process and all its children (the Recorder's recording process included) every 50 ms. The wall time
runs from the start of `fit` until the run is completely written (`recorder.wait()`), so held-back snapshots count.
Variants are interleaved round by round, in forward then reverse order, so the machine's drift hits them alike;
ratios are medians over rounds of each round's value over that round's plain `fit`. Also printed: the largest
snapshot file, the layers recorded, and with --pages the first chart of each dashboard page on the last recorded
run, painted in headless Chromium (page clock).

    python bench/bench_real_models.py [--models mobilenetv2,resnet50] [--rounds 3] [--samples 512] [--epochs 3]
                                      [--variants plain,recorder,recorder-device,tensorboard] [--pages]

`recorder-device` is the same Recorder with `reduce="device"`: every reduction inside the compiled probe pass.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {"mobilenetv2": "MobileNetV2", "resnet50": "ResNet50"}
SIZE, CLASSES = 96, 10


def images(samples: int, seed: int = 0):
    """(x, y): gratings whose orientation and frequency encode the class, under noise, so the task is learnable."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, samples)
    grid = np.linspace(-1, 1, SIZE, dtype=np.float32)
    xs, ys = np.meshgrid(grid, grid)
    angle = np.pi * y / CLASSES
    frequency = 3 + (y % 3) * 2
    phase = rng.uniform(0, 2 * np.pi, samples)
    wave = np.sin(
        frequency[:, None, None] * (np.cos(angle)[:, None, None] * xs + np.sin(angle)[:, None, None] * ys) * np.pi
        + phase[:, None, None]
    )
    x = wave[..., None] * np.array([1.0, 0.6, 0.3], np.float32) + rng.normal(0, 0.5, (samples, SIZE, SIZE, 3))
    return x.astype("float32"), y.astype("int64")


def child(args) -> None:
    """One timed fit, in this process; prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from core import Recorder
    from core.store import RunStore

    keras.utils.set_random_seed(args.round)
    x, y = images(args.samples, seed=args.round)
    model = getattr(keras.applications, MODELS[args.model])(weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks, recorder = [], None
    if args.variant in ("recorder", "recorder-device"):
        reduce = "device" if args.variant == "recorder-device" else "auto"  # auto: the host, on a CPU-only machine
        recorder = Recorder(args.runs, probe=(x, y), name=f"{args.model} round {args.round}", reduce=reduce)
        callbacks.append(recorder)
    elif args.variant == "tensorboard":
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(args.runs, "tb", str(args.round)), histogram_freq=1))
    start = time.perf_counter()
    model.fit(x, y, epochs=args.epochs, batch_size=32, callbacks=callbacks, verbose=0)
    fitted = time.perf_counter() - start
    result = {"fit": fitted}
    if recorder is not None:
        recorder.wait()
        result["written"] = time.perf_counter() - start - fitted
        run = RunStore(args.runs).run(recorder.run_id)
        folder = Path(args.runs) / recorder.run_id / "snapshots"
        result.update(
            run_id=recorder.run_id,
            layers=len(run.layers),
            recordable=run.meta["layer_selection"]["recordable"],
            snapshots=len(run.snapshots()),
            snapshot_mb=max(f.stat().st_size for f in folder.iterdir()) / 2**20,
        )
    result["total"] = time.perf_counter() - start
    print(json.dumps(result), flush=True)


def peak_rss(process) -> int:
    """Largest resident memory of `process` and all its descendants together, sampled every 50 ms until it exits."""
    import psutil

    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            members = [root, *root.children(recursive=True)]
            peak = max(peak, sum(m.memory_info().rss for m in members if m.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    return peak


def measure(model: str, variant: str, round_number: int, args, runs: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--model",
        model,
        "--variant",
        variant,
        "--round",
        str(round_number),
        "--samples",
        str(args.samples),
        "--epochs",
        str(args.epochs),
        "--runs",
        runs,
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak: dict = {}
    sampler = threading.Thread(target=lambda: peak.setdefault("rss", peak_rss(process)))
    sampler.start()
    out, err = process.communicate(timeout=3600)
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"{model} {variant} failed:\n{err[-3000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "rss_mb": peak["rss"] / 2**20}


def first_charts(runs: str, run_id: str) -> dict[str, float]:
    """Seconds to the first chart painted on each page of `run_id`, after one unmeasured load of the server."""
    from bench_dashboard import CHROMIUM, CHROMIUM_ARGS, open_and_time, start_server
    from playwright.sync_api import sync_playwright

    server, base = start_server("dashboard/app.py", runs)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            open_and_time(browser, f"{base}/?run={run_id}")
            times = {
                page: open_and_time(browser, f"{base}/{page}?run={run_id}", {"width": 1400, "height": 1600})[0]
                for page in ("embeddings", "gradients", "layers")
            }
            browser.close()
    finally:
        server.terminate()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mobilenetv2,resnet50")
    parser.add_argument("--variants", default="plain,recorder,tensorboard")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pages", action="store_true", help="also time the first chart of each page (Chromium)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--runs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    runs = tempfile.mkdtemp(prefix="strata-real-")
    variants = args.variants.split(",")
    print(
        f"{args.samples} samples of {SIZE}x{SIZE}x3, {args.epochs} epochs, batch 32; {args.rounds} interleaved rounds; "
        f"store {runs}",
        flush=True,
    )
    for model in args.models.split(","):
        results: dict[str, list[dict]] = {v: [] for v in variants}
        for round_number in range(args.rounds):
            order = variants if round_number % 2 == 0 else variants[::-1]
            for variant in order:
                results[variant].append(measure(model, variant, round_number, args, runs))
            print(
                f"{model} round {round_number + 1}: "
                + "  ".join(f"{v} {results[v][-1]['total']:.1f}s {results[v][-1]['rss_mb']:.0f}MB" for v in variants),
                flush=True,
            )
        print(f"\n{model}: median over {args.rounds} rounds, ratios to plain fit in the same round")
        for variant in variants:
            rows = results[variant]
            wall = statistics.median(r["total"] / p["total"] for r, p in zip(rows, results["plain"]))
            rss = statistics.median(r["rss_mb"] / p["rss_mb"] for r, p in zip(rows, results["plain"]))
            line = (
                f"  {variant:15s} wall {statistics.median(r['total'] for r in rows):6.1f} s ({wall:.2f}x)  "
                f"peak RSS {statistics.median(r['rss_mb'] for r in rows):6.0f} MB ({rss:.2f}x)"
            )
            if variant.startswith("recorder"):
                line += (
                    f"  written {statistics.median(r['written'] for r in rows):.1f} s after fit  largest snapshot "
                    f"{max(r['snapshot_mb'] for r in rows):.1f} MB  layers {rows[-1]['layers']} of "
                    f"{rows[-1]['recordable']}"
                )
            print(line, flush=True)
        if args.pages and "recorder" in results:
            times = first_charts(runs, results["recorder"][-1]["run_id"])
            print("  first chart painted: " + "  ".join(f"{page} {t:.2f} s" for page, t in times.items()), flush=True)


if __name__ == "__main__":
    main()
