"""What one snapshot moves from the device to the host, against what it stores, and what it costs, with the reductions
on the host (`Recorder(reduce="host")`: the probe pass returns every recorded layer's output, weights and gradients,
and the numpy analysis reduces them) and on the device (`reduce="device"`: `core/capture/device_pass.py`), side by side
in one run (issue 22).

Models: a small MLP, a small CNN, an 83-layer residual CNN (every layer recorded) and keras.applications MobileNetV2
(weights=None, 96x96x3, 10 classes; the Recorder's default layer selection: its block outputs), on random data with
labels. For each model and setting:

- moved: the bytes of every array the probe pass hands to the host (a RawCapture's outputs, predictions, weights and
  gradients; a ReducedCapture's arrays), the transfer a GPU pays for;
- stored: the bytes of the snapshot's arrays plus its JSON header, as `SnapshotBuilder.build` makes them;
- snapshot: seconds from the weights' values to the snapshot record (probe pass, transfer and reductions, the
  handover to the recording process, then the host's remaining analysis), the median of `--repeats` after one
  untimed run (compilation);
- their parts: the probe pass with its conversion to numpy; the handover, timed as pickling the capture and reading
  it back (what `Recorder(analysis="process")`, the default, does through its pipe, less the pipe itself); and the
  analysis on the host.

It imports only the capture path (Keras, the backend's probe pass, `core.capture.snapshot`), never the dashboard, and on
JAX never TensorFlow, so it runs where only JAX is installed:

    KERAS_BACKEND=jax python bench/bench_capture_bytes.py [--models mlp,cnn,residual80,mobilenetv2] [--repeats 3]
        [--probe mlp=1000,cnn=500,mobilenetv2=256]
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time

import keras  # noqa: E402
import numpy as np  # noqa: E402

from core.capture.graph import recorded_layers, select_layers  # noqa: E402
from core.capture.probe_pass import backend_passes, model_variables  # noqa: E402
from core.capture.recorder import _roles, reducing_pass, run_capture_pass  # noqa: E402
from core.capture.snapshot import RawCapture, SnapshotBuilder  # noqa: E402

PROBE = {"mlp": 1000, "cnn": 500, "residual80": 500, "mobilenetv2": 256}


def build(name: str) -> tuple[keras.Model, tuple]:
    """The model, compiled, and the shape of one input."""
    # Not keras.utils.set_random_seed: it imports TensorFlow when installed. Weights are random, numbers unaffected.
    if name == "mlp":
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(32, activation="tanh"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
    elif name == "cnn":
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Conv2D(16, 3, activation="relu"),
                keras.layers.MaxPooling2D(2),
                keras.layers.Conv2D(32, 3, activation="relu"),
                keras.layers.MaxPooling2D(2),
                keras.layers.Flatten(),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
    elif name == "residual80":  # 83 layers, every one recorded: 20 blocks whose layers share shapes
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
        for _ in range(20):
            y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
            y = keras.layers.Conv2D(8, 3, padding="same")(y)
            x = keras.layers.Activation("relu")(keras.layers.Add()([x, y]))
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    else:
        model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), classes=10)
    model.compile("adam", "sparse_categorical_crossentropy")
    return model, tuple(model.input_shape[1:])


def raw_bytes(raw: RawCapture) -> int:
    arrays = [*raw.outputs, raw.predictions]
    arrays += [w for layer in raw.weights for w in layer.values()]
    arrays += [g for layer in raw.weight_grads for g in layer.values()]
    arrays += [*(raw.plane_outputs or []), *([] if raw.plane_predictions is None else [raw.plane_predictions])]
    return int(sum(np.asarray(a).nbytes for a in arrays))


def graph_ops(capture) -> int | None:
    """Operations in the compiled reductions' graph (TensorFlow only; the first trace): what tracing costs, and
    about the kernels a GPU launches for them."""
    if keras.backend.backend() != "tensorflow":
        return None
    functions = capture._reduce._list_all_concrete_functions()
    return len(functions[0].graph.get_operations()) if functions else None


def stored_bytes(meta: dict, arrays: dict) -> int:
    return int(sum(a.nbytes for a in arrays.values()) + len(json.dumps(meta)))


def measure(name: str, probe: int, repeats: int) -> dict:
    model, shape = build(name)
    layers = select_layers(recorded_layers(model), "all" if name == "residual80" else None)
    variables = model_variables(model)
    passes = backend_passes()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((probe, *shape)).astype(np.float32)
    y = rng.integers(0, 10, probe).astype(np.int64)
    settings = {
        "activations": [layer.activation for layer in layers],
        "labels": y,
        "components": 10,
        "seed": 0,
        "kernel_layer": next((i for i, l in enumerate(layers) if "kernel" in _roles(l)), None),
    }
    inputs = tuple(passes.constants([x, y, None]))
    results = {"layers": len(layers), "probe": probe}
    for reduce in ("host", "device"):
        capture = passes.ProbePass(model, layers, variables, True, False)
        if reduce == "device":
            capture = reducing_pass(capture, layers, settings, probe)
        builder = SnapshotBuilder(**settings)
        times, pass_times, handover_times, analysis_times = [], [], [], []
        for repeat in range(repeats + 1):
            state = passes.read_state(model, variables)
            start = time.perf_counter()
            raw = run_capture_pass(
                capture, inputs, layers, state, kind="epoch", epoch=repeat, step=0, batch=None, logs={}
            )
            passed = time.perf_counter()
            raw = pickle.loads(pickle.dumps(raw, protocol=pickle.HIGHEST_PROTOCOL))
            handed = time.perf_counter()
            meta, arrays = builder.build(raw)
            done = time.perf_counter()
            if repeat:  # the first run compiles
                times.append(done - start)
                pass_times.append(passed - start)
                handover_times.append(handed - passed)
                analysis_times.append(done - handed)
        moved = raw_bytes(raw) if isinstance(raw, RawCapture) else raw.nbytes()
        results[reduce] = {
            "moved": moved,
            "stored": stored_bytes(meta, arrays),
            "snapshot_s": statistics.median(times),
            "pass_s": statistics.median(pass_times),
            "handover_s": statistics.median(handover_times),
            "host_analysis_s": statistics.median(analysis_times),
            "graph_ops": graph_ops(capture) if reduce == "device" else None,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn,residual80,mobilenetv2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe", default="", help="probe samples per model, e.g. mlp=1000,mobilenetv2=512")
    args = parser.parse_args(argv)
    probes = dict(PROBE)
    for item in filter(None, args.probe.split(",")):
        key, value = item.split("=")
        probes[key] = int(value)
    print(f"backend {keras.backend.backend()}, keras {keras.__version__}; median of {args.repeats} snapshots each")
    header = (
        f"{'model':<12} {'layers':>6} {'probe':>5} {'reduce':<6} {'moved MB':>9} {'stored MB':>9} {'moved/stored':>12} "
    )
    print(header + f"{'snapshot s':>10} {'pass s':>8} {'handover s':>10} {'host analysis s':>15} {'graph ops':>9}")
    for name in args.models.split(","):
        result = measure(name, probes[name], args.repeats)
        for reduce in ("host", "device"):
            r = result[reduce]
            print(
                f"{name:<12} {result['layers']:>6} {result['probe']:>5} {reduce:<6} {r['moved'] / 1e6:>9.2f} "
                f"{r['stored'] / 1e6:>9.2f} {r['moved'] / r['stored']:>12.2f} {r['snapshot_s']:>10.3f} "
                f"{r['pass_s']:>8.3f} {r['handover_s']:>10.3f} {r['host_analysis_s']:>15.3f} "
                f"{'' if r['graph_ops'] is None else r['graph_ops']:>9}",
                flush=True,
            )
    print(f"tensorflow imported: {'tensorflow' in sys.modules}; dashboard imported: {'dashboard' in sys.modules}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
