"""`Recorder`: the Keras callback that records what every layer learns into a Strata run store."""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from core.capture.device_pass import REDUCE_CHOICES, ReducingPass, default_reduce
from core.capture.graph import RecordedLayer, check_selection, recorded_layers, select_layers
from core.capture.keras_internals import graph_struct, producing_layer
from core.capture.probe_pass import (
    GRAD_PROBE_SIZE,
    backend_passes,
    build_compiled_loss,
    check_backend,
    gradient_rows,  # noqa: F401  (where the recorder's tests and tools have read it)
    model_variables,
    sample_count,
)
from core.capture.reduced import ReducedCapture
from core.capture.snapshot import RawCapture
from core.capture.worker import TRAINING, start_worker
from core.settings import RECORDER_DEFAULTS
from core.store import RunWriter, StoreError, is_valid_run_id, new_run_id, run_exists
from core.store.journal import Journal
from core.training.datasets import stratified_subset

MAX_STORED_INPUT_BYTES = 64 * 2**20  # probe inputs above this size are not copied into the store
PLANE_RESOLUTION = 25  # grid points per side for 2-D inputs: unit response maps and the bent input plane
DEFAULT_BUDGET = RECORDER_DEFAULTS[
    "budget"
]  # share of training's wall time; why it differs from the CLI's: core/settings.py


class Recorder(keras.callbacks.Callback):
    """Records each layer's outputs, activation and gradient statistics and the predictions on a fixed probe set.

    A snapshot is taken before training (epoch 0) and then every `every` epochs (and, optionally, every
    `batch_every` batches). Each snapshot holds, per layer: the layer's output on the probe set reduced to its
    top principal components (PC1 first; signs matched to the previous snapshot so axes never mirror-flip),
    explained variance, activation percentiles and histogram, dead and saturated units, gradient statistics for
    every weight and for the layer's output, the update-to-weight ratio, linear-probe accuracy, class separation
    and CKA. Outputs and predictions are taken in inference mode; gradients the way training takes them: a model
    with batch normalization, dropout or noise layers gets its gradients from a training-mode pass on the probe
    (batch statistics, dropout on) that leaves its moving statistics and weights untouched.

    At a capture the training thread only reads the weights. The compiled probe pass on those values runs on
    a background thread, and the numpy analysis and all writing happen in a separate process. While training
    runs, that work (the recording process's start-up included) takes at most `budget` of its wall time;
    snapshots beyond it keep only their weights and are analysed once `fit` returns, in the background. The
    run is listed as "running" from the start of `fit` until its last snapshot is written; once the recording
    process runs, the loss of each epoch is written as it comes. `wait()` waits for the snapshots, and so
    does the process when it exits. Held-back weights are also journaled in the run folder, so if the process
    is killed first, `python -m core recover RUN` writes them. A failure anywhere warns and never stops `fit`.

    It records on Keras's TensorFlow and JAX backends, each with its own compiled passes (`core.capture.probe_tf`,
    `core.capture.probe_jax`); on any other backend it is refused at construction with a RuntimeError.

    Args:
        log_dir: the run store root: a folder (default `runs`) or an fsspec URL such as `memory://runs`.
        probe: `(x, y)` or `x`, as `fit` takes them. The inputs the layers are observed on, and optionally their
            targets (integer or one-hot labels, or regression values). For several inputs `x` is a list of arrays
            (in the order of `model.inputs`) or a dict keyed by input name, and `y` likewise for several outputs.
            Without targets, views colour points by prediction and no gradients are recorded.
        every: take a snapshot every this many epochs (the last epoch is always captured).
        name: a display name for the run; the run id is derived from it.
        batch_every: also take a snapshot every this many training batches (None: epochs only).
        grad_every: also measure each layer's gradient norm every this many training batches, on a fixed
            subset of at most 256 probe samples (None: off). One small compiled pass, no snapshot; needs labels.
        probe_size: at most this many probe samples, picked stratified by label (default 2,000).
        components: principal components kept per layer (default 10).
        seed: seeds the probe subsample and the randomized parts of the analysis.
        image_shape: the shape of one input image when `x` holds flattened images (e.g. `(8, 8)`).
        class_names, feature_names: labels for the dashboard.
        dataset: a dict describing the data set, stored in the run metadata.
        config: any JSON-serialisable dict (hyper-parameters); stored so a run can be reproduced.
        run_id: use this id instead of a generated one. It must be new under `log_dir`, and it names one fit:
            without it, each `fit` this recorder is passed to becomes a run of its own, and `run_id` then
            names the latest.
        plane: record unit responses over the input plane; "auto" turns it on for 2-D inputs.
        analysis: where the numpy analysis and the writes run: "process" (a child process, so they never
            compete with training for the GIL), "thread", or "auto" (a process, except for `memory://` roots).
        budget: the share of training's wall time the recording may use beside it (default 0.03). Each
            snapshot costs about the same whatever the epoch length, so with long epochs every snapshot is
            analysed live, and with short ones most wait until `fit` returns. None analyses each snapshot as it
            is taken, for watching a short fit live, and costs a short fit 1.2x on a 2-core machine.
        layers: which layers to record. "auto" (None): every layer of a model with at most 32 recordable layers;
            of a deeper one, its block outputs (each layer that joins branches, such as a residual `Add`), the
            last layer at each spatial size and the head, at most 32. "all": every layer. Or a name, a pattern
            (`"conv4_*_out"`), a layer class (`keras.layers.Conv2D`, or `"Conv2D"`), or a list of them; the
            model's last layer is always recorded. An item that matches no layer fails at the start of `fit`,
            listing the model's layers.
        primary_output: of a model with several outputs, the one (by name or position) whose classes the linear
            probes, class separation, probe accuracy and diagnosis are of. None: the first output whose targets are
            classes. One whose targets are not classes fails at the start of `fit`.
        reduce: where each snapshot is reduced. "host": the probe pass hands every recorded layer's output,
            weights and gradients to the recording process, which reduces them in numpy. "device": the reductions
            run inside the compiled probe pass (`core.capture.device_pass`), and only what the snapshot stores crosses
            to the host. "auto" (default): "device" when Keras computes on a GPU or TPU, else "host" (measured faster on
            CPU: bench/README.md).

    Example:

    ```python
    import keras, numpy as np
    from core import Recorder

    x = np.random.rand(200, 2).astype("float32"); y = (x[:, 0] > x[:, 1]).astype("int64")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    recorder = Recorder("runs", probe=(x, y), name="demo")
    model.fit(x, y, epochs=5, callbacks=[recorder], verbose=0)
    recorder.wait()  # the snapshots held back while training ran are written
    print(recorder.run_id)  # open it with: streamlit run dashboard/app.py
    ```
    """

    def __init__(
        self,
        log_dir: str = "runs",
        probe: Any = None,
        every: int = RECORDER_DEFAULTS["every"],
        name: str | None = None,
        *,
        batch_every: int | None = RECORDER_DEFAULTS["batch_every"],
        grad_every: int | None = RECORDER_DEFAULTS["grad_every"],
        probe_size: int = RECORDER_DEFAULTS["probe_size"],
        components: int = RECORDER_DEFAULTS["components"],
        seed: int = RECORDER_DEFAULTS["seed"],
        image_shape: tuple[int, ...] | None = None,
        class_names: list[str] | None = None,
        feature_names: list[str] | None = None,
        dataset: dict | None = None,
        config: dict | None = None,
        run_id: str | None = None,
        plane: str | bool = "auto",
        analysis: str = "auto",
        budget: float | None = DEFAULT_BUDGET,
        layers: str | list | None = RECORDER_DEFAULTS["layers"],
        primary_output: str | int | None = None,
        reduce: str = "auto",
    ):
        super().__init__()
        check_backend()  # Keras's backend is fixed at its import: an unsupported one is refused before any fit
        check_selection(layers)
        if primary_output is not None and (
            isinstance(primary_output, bool) or not isinstance(primary_output, (str, int, np.integer))
        ):
            raise ValueError(
                "primary_output must name a model output or give its position. "
                f"Received: primary_output={primary_output!r}"
            )
        self.primary_output = primary_output
        _require_int("every", every, minimum=1)
        _require_int("probe_size", probe_size, minimum=10)
        _require_int("components", components, minimum=1)
        if batch_every is not None:
            _require_int("batch_every", batch_every, minimum=1)
        if grad_every is not None:
            _require_int("grad_every", grad_every, minimum=1)
        if analysis not in ("auto", "process", "thread"):
            raise ValueError(f"analysis must be 'auto', 'process' or 'thread'. Received: analysis={analysis!r}")
        if budget is not None and not (_is_number(budget) and 0 < budget <= 1):
            raise ValueError(
                f"budget must be a share of training's time in (0, 1], or None to analyse every snapshot "
                f"at once. Received: budget={budget!r}"
            )
        if reduce not in REDUCE_CHOICES:
            raise ValueError(f"reduce must be one of {REDUCE_CHOICES}. Received: reduce={reduce!r}")
        if plane not in ("auto", True, False):
            raise ValueError(f"plane must be 'auto', True or False. Received: plane={plane!r}")
        self.log_dir = str(log_dir)
        self.analysis = analysis
        self.reduce = reduce
        self.budget = budget
        self.every = every
        self.batch_every = batch_every
        self.grad_every = grad_every
        self.components = components
        self.seed = seed
        self.layer_selection = layers
        self.name = name
        if name is not None and not isinstance(name, str):
            raise ValueError(f"`name` must be a string, the run's display name. Received: name={name!r}")
        if run_id is not None and not is_valid_run_id(run_id):
            raise ValueError(
                f"run_id must use letters, digits, '.', '_' and '-' only (at most 128). Received: run_id={run_id!r}"
            )
        self._run_id_given = run_id is not None
        self.run_id = run_id or new_run_id(name)
        self._recorded_fits = 0
        self._run_name = name  # the display name of the current run: a later fit's says which fit it is
        x, y_for_loss, class_ids = _split_probe(probe)
        # Stratified by the first target that holds classes; every input and target keeps the same rows.
        labels = next((ids for ids in class_ids if ids is not None), None)
        rows = _probe_rows(sample_count(x), labels, probe_size, seed)
        self._x = _take(x, rows)  # one array, or a list or dict of arrays (several inputs), as `fit` takes them
        self._y_for_loss = _take(y_for_loss, rows)
        self.labels = None if labels is None else labels[rows]
        self.probe_indices = rows
        first = keras.tree.flatten(x)[0]  # the input the dashboard shows (thumbnails, feature values)
        self.image_shape = (
            tuple(image_shape) if image_shape else (tuple(first.shape[1:]) if first.ndim in (3, 4) else None)
        )
        several_inputs = len(keras.tree.flatten(x)) > 1
        if plane is True and several_inputs:
            raise ValueError(
                "plane=True records unit responses over a 2-D input plane: it needs a model with one input of 2 "
                "features. Received: plane=True and a probe of several inputs"
            )
        self._plane = plane is True or (
            plane == "auto" and not several_inputs and first.ndim == 2 and first.shape[1] == 2
        )
        self._outputs: list[dict] = []  # per model output: name, kind of target, shape (set at the start of fit)
        self._targets: dict[int, np.ndarray] = {}  # per output with targets, (n,) the truth the views colour by
        self._primary = 0  # the output whose classes the linear probes, accuracy and diagnosis use
        self._class_ids: list[np.ndarray | None] = []  # per output, (n,) class ids, None for targets of another kind
        self._extra_meta = {
            "dataset": {
                "kind": "image" if self.image_shape else ("plane" if self._plane else "tabular"),
                "class_names": list(class_names) if class_names is not None else None,
                "feature_names": list(feature_names) if feature_names is not None else None,
                "image_shape": list(self.image_shape) if self.image_shape else None,
                **(dataset or {}),
            },
            "config": config or {},
        }
        self._worker: Any = None  # started at the beginning of fit: ProcessWorker or ThreadWorker
        self._active = False  # recording: between a successful start and end()
        self._cell_hook: Callable[[], None] | None = (
            None  # under IPython: removes the end-of-cell check this fit registered
        )
        self._counts_batches = batch_every is not None or grad_every is not None
        if self._counts_batches:
            self.on_train_batch_end = self._on_train_batch_end
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        """What one run (one `fit`) accumulates."""
        self._history: dict[str, list] = {"epoch": []}
        self._seq = 0
        self._epoch = 0
        self._steps = 0  # optimizer steps taken: read when the fit starts, then counted by the batch hook if on
        self._epoch_start_steps = 0
        self._grad_norm_fn = None
        self._batch_gradients: list[tuple[int, np.ndarray]] = []  # (step, (layers,) norms) measured this epoch
        self._last_captured_epoch = -1
        self._start_captured = True  # set False by on_train_begin until the first epoch begins
        self._nan_epoch: int | None = None
        self._capture_failed = False  # warned once that the probe pass failed

    # ------------------------------------------------------------------------------------------------------
    # Keras hooks: each hands the work to a helper.

    def on_train_begin(self, logs=None):
        if self._active:  # the last fit this recorder followed raised, and Keras skips on_train_end when it does
            self.end("interrupted")
        if not backend_passes().writes_the_run(self.model):
            return  # a non-chief worker of a multi-worker job: the chief records the run, this one stays inactive
        self._start()
        self._start_captured = False  # the first snapshot waits for on_epoch_begin, which names the epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if not self._start_captured:
            # Before this fit trains: epoch 0, or the epoch a resumed fit starts from (`fit(initial_epoch=N)`).
            self._start_captured = True
            self._steps = self._optimizer_steps(epoch)  # then counted batch by batch, if the batch hook is on
            self._capture("epoch", epoch=epoch)
        self._epoch_start_steps = self._steps

    def _on_train_batch_end(self, batch, logs=None):
        # Installed as `on_train_batch_end` only when batch captures or gradient norms are asked for: any batch
        # hook makes Keras give up dispatching callbacks asynchronously, which slows every step of training.
        # `batch` is the index of the epoch's last batch trained: with steps_per_execution, one call covers several.
        self._steps = step = self._epoch_start_steps + batch + 1
        if self._grad_norm_fn is not None and step % self.grad_every == 0 and self._active:
            self._measure_gradient_norms(step)
        if self.batch_every and step % self.batch_every == 0 and self._active:
            self._capture("batch", epoch=self._epoch, batch=batch + 1, logs=logs)

    def on_epoch_end(self, epoch, logs=None):
        if not self._active:
            return
        # An epoch after which training stops early is the last one: captured now, before a callback such as
        # EarlyStopping(restore_best_weights=True) puts back the weights of another epoch at the end of fit.
        captures = (
            (epoch + 1) % self.every == 0
            or epoch + 1 == self.params.get("epochs")
            or bool(getattr(self.model, "stop_training", False))
        )
        # Read the weights before any message wakes the worker's thread, which would contend for the GIL.
        state = _read_state(self.model, self._variables) if captures else None
        self._log_epoch(epoch + 1, logs or {})
        self._send_batch_gradients(epoch + 1)
        if captures:
            self._capture("epoch", epoch=epoch + 1, logs=logs, state=state)

    def on_train_end(self, logs=None):
        if not self._active:
            return
        epochs = self._history["epoch"]
        if not self._start_captured:  # no epoch ran (initial_epoch >= epochs): the untouched model
            self._capture("epoch", epoch=self._epoch)
        elif epochs and self._last_captured_epoch != epochs[-1]:
            self._capture("epoch", epoch=epochs[-1], logs=logs)
        self.end("finished")

    # ------------------------------------------------------------------------------------------------------

    def _start(self) -> None:
        # The last fit's held-back snapshots first: their passes read this recorder's state for that run.
        self.wait()
        self._claim_run_id()
        model = self.model
        every_layer = recorded_layers(model)  # raises ValueError naming the fix for unusable models
        layers = select_layers(every_layer, self.layer_selection)
        self._layers_total = len(every_layer)
        self._x, self._y_for_loss, _ = _check_model_io(model, self._x, self._y_for_loss)
        self._layers = layers
        self._fit_probe_to_memory(layers)
        self._describe_outputs(model)
        build_compiled_loss(model, self._x, self._y_for_loss)
        self._variables = model_variables(model)
        self._state_bytes = sum(math.prod(v.shape) * backend_passes().dtype_size(v.dtype) for v in self._variables)
        self._capture_fn = _capture_function(
            model, layers, self._variables, with_loss=self._y_for_loss is not None, plane=self._plane
        )
        self._grid = self._plane_grid() if self._plane else None
        self._inputs = _probe_tensors(self._x, self._y_for_loss, self._grid)
        if self.grad_every and self._y_for_loss is not None:
            rows = _probe_rows(sample_count(self._x), self.labels, GRAD_PROBE_SIZE, self.seed)
            self._grad_norm_fn = _gradient_norm_function(model, layers, self._variables)
            self._grad_inputs = _probe_tensors(_take(self._x, rows), _take(self._y_for_loss, rows), None)[:2]
        if not self._create_run(layers):
            return
        self._worker = start_worker(self.log_dir, self.analysis, self.budget, self._open_journal())
        self._active = True
        TRAINING.began()
        self._recorded_fits += 1
        builder = {
            "activations": [layer.activation for layer in layers],
            "labels": self.labels,
            "components": self.components,
            "seed": self.seed,
            "kernel_layer": next((i for i, l in enumerate(layers) if "kernel" in _roles(l)), None),
            "logits": layers[-1].activation is None and _loss_takes_logits(model),
            # Several outputs: how to read each one's predictions, and which one `labels` are of.
            "heads": [output["head"] for output in self._outputs] if len(self._outputs) > 1 else None,
            "primary": self._primary,
            # Several outputs: each one's class ids (None: not classes), for a linear probe per output of classes.
            "output_labels": self._class_ids
            if len(self._outputs) > 1 and any(i is not None for i in self._class_ids)
            else None,
        }
        if (default_reduce() if self.reduce == "auto" else self.reduce) == "device":
            self._capture_fn = reducing_pass(self._capture_fn, layers, builder, sample_count(self._x))
        if self._worker.journal is not None:  # first: what a recovery needs to run the probe pass again
            self._worker.submit(lambda: None, spill=lambda: ("setup", self._recovery_setup(builder)))
        self._send("attach", root=self.log_dir, run_id=self.run_id, builder=builder)
        probe = {
            "arrays": self._probe_arrays(),
            "x": _input_matrix(self._x),
            "components": self.components,
            "seed": self.seed,
        }
        # Analysed within the budget, like a snapshot.
        self._worker.submit(lambda: ("probe", probe), spill=lambda: ("probe", probe))
        atexit.register(self._end_at_exit)
        self._end_with_the_notebook_cell()

    def _describe_outputs(self, model: keras.Model) -> None:
        """Per model output: its name, what its targets are (`classes`, `values` for regression, `multilabel`, or
        None without targets), its shape, and how to read its predictions; the truth the views colour it by; and
        the primary output, the first that holds classes, whose labels the linear probes and diagnosis use. Whole
        numbers that a regression loss (MSE, Huber...) compares are values, not classes."""
        targets = [] if self._y_for_loss is None else keras.tree.flatten(self._y_for_loss)
        self._outputs, self._targets, class_ids = [], {}, []
        for index, (name, tensor) in enumerate(zip(_output_names(model), model.outputs)):
            loss = _output_loss(model, index, name)
            target = np.asarray(targets[index]) if index < len(targets) else None
            ids = (
                None if target is None else _class_ids(target.astype(np.int64) if target.dtype == np.bool_ else target)
            )
            if ids is not None and (regression := _regression_loss_name(model, loss)):
                warnings.warn(
                    f"The model's loss ({regression}) compares values, not classes, so Strata takes the whole-number "
                    "probe targets for regression targets: it records gradients against them, colours points by "
                    "the target's value, and trains no linear probes on them.",
                    UserWarning,
                    stacklevel=4,
                )
                ids = None
            kind = None if target is None else "classes" if ids is not None else _target_kind(target)
            producer = producing_layer(tensor)
            activation = getattr(getattr(producer, "activation", None), "__name__", None)
            recorded = next((layer.path for layer in self._layers if layer.layer is producer), None)
            self._outputs.append(
                {
                    "name": name,
                    "kind": kind,
                    "shape": [None if d is None else int(d) for d in tensor.shape[1:]],
                    **({"layer": recorded} if recorded is not None else {}),  # the recorded layer that gives it
                    "head": {
                        "logits": activation in (None, "linear") and _loss_takes_logits(model, loss),
                        "sigmoid": activation == "sigmoid",
                    },
                }
            )
            class_ids.append(ids)
            if target is not None:
                self._targets[index] = _stored_target(target, ids)
        self._primary = self._chosen_output(model, class_ids)
        self.labels = class_ids[self._primary] if class_ids else None
        self._class_ids = [None if ids is None else ids.astype(np.int64) for ids in class_ids]

    def _chosen_output(self, model: keras.Model, class_ids: list) -> int:
        """The primary output: `primary_output` when given (a ValueError, naming the outputs, for one that does
        not exist or whose targets are not classes), else the first output of classes, else the first."""
        choice = self.primary_output
        if choice is None:
            return next((i for i, ids in enumerate(class_ids) if ids is not None), 0)
        names = [output["name"] for output in self._outputs]
        index = names.index(choice) if choice in names else int(choice) if not isinstance(choice, str) else -1
        described = ", ".join(
            f"{name} ({output['kind'] or 'no targets'})" for name, output in zip(names, self._outputs)
        )
        if not 0 <= index < len(names):
            raise ValueError(
                f"primary_output={choice!r} is not an output of model `{model.name}`: its outputs are {described}."
            )
        if class_ids[index] is None:
            raise ValueError(
                f"primary_output={choice!r} has no class targets, so no linear probe can decode it: model "
                f"`{model.name}`'s outputs are {described}. Name an output of classes, or leave primary_output out."
            )
        return index

    def _open_journal(self) -> Journal | None:
        """The run's recovery journal (`core.store.journal`) when snapshots may be held back in this process's memory:
        with a budget, on a store another process can read. None when it cannot be written: that warns only."""
        if self.budget is None or self.log_dir.startswith("memory://"):
            return None
        try:
            return Journal(self.log_dir, self.run_id)
        except OSError as error:
            warnings.warn(
                f"Strata cannot write the recovery journal of this run ({error}): it is recorded, but a kill of "
                "this process would lose the snapshots not written yet.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    def _recovery_setup(self, builder: dict) -> dict:
        """On the worker's thread: what `python -m core recover` needs to rebuild the model and run the probe pass."""
        setup = {
            "x": self._x,
            "y": self._y_for_loss,
            "grid": self._grid,
            "builder": builder,
            "variables": [[v.path, list(v.shape)] for v in self._variables],
            "layers": len(self._layers),
            "layer_paths": [layer.path for layer in self._layers],
            "reduce": "device" if isinstance(self._capture_fn, ReducingPass) else "host",
        }
        try:
            setup["model"] = self.model.to_json()
            setup["compile"] = json.loads(json.dumps(self.model.get_compile_config() or {}))
        except Exception as error:  # a subclassed model without get_config, a loss that is a lambda...
            setup["error"] = f"{type(error).__name__}: {error}"
        return setup

    def _fit_probe_to_memory(self, layers: list[RecordedLayer]) -> None:
        """Keep at most `PROBE_OUTPUT_BYTES` of recorded outputs per snapshot: a stratified subset of the probe, with a
        warning that says why and what to do, when the recorded layers are too wide for all of it."""
        shapes = [layer.shape for layer in layers]
        if any(shape is None or not all(isinstance(d, int) for d in shape) for shape in shapes):
            return
        per_sample = 4 * sum(math.prod(shape or ()) for shape in shapes)
        keep = max(MIN_PROBE, PROBE_OUTPUT_BYTES // max(per_sample, 1))
        count = sample_count(self._x)
        if count <= keep:
            return
        rows = _probe_rows(count, self.labels, keep, self.seed)
        warnings.warn(
            f"The {len(layers)} recorded layers' outputs take {per_sample / 2**20:.1f} MB a probe sample, so Strata "
            f"observes them on {len(rows)} of the {count} probe samples (at most {PROBE_OUTPUT_BYTES // 2**20} MB "
            "a snapshot). Record fewer or narrower layers (`layers=`) to keep more.",
            UserWarning,
            stacklevel=4,
        )
        self._x, self.probe_indices = _take(self._x, rows), self.probe_indices[rows]
        self._y_for_loss = _take(self._y_for_loss, rows)
        self.labels = None if self.labels is None else self.labels[rows]

    def _claim_run_id(self) -> None:
        """Give this fit a run id no run holds yet; raises ValueError, naming the fix, for a given id that is taken."""
        if self._recorded_fits:  # this recorder already recorded an earlier fit: this one is a run of its own
            if self._run_id_given:
                raise ValueError(
                    f"run_id={self.run_id!r} names the run this Recorder recorded in an earlier fit. Pass a "
                    "new Recorder (or a new run_id) for each fit, or leave run_id out to get one run per fit."
                )
            self._run_name = f"{self.name or 'run'} (fit {self._recorded_fits + 1})"
            self.run_id = new_run_id(self._run_name)
            self._reset_run_state()
        elif self._run_id_given and run_exists(self.log_dir, self.run_id):
            raise ValueError(
                f"A run with id {self.run_id!r} already exists under {self.log_dir!r}. Pass a new run_id, "
                "or leave it out to get a generated one."
            )

    def _create_run(self, layers: list[RecordedLayer]) -> bool:
        """Write the new run's metadata here, so the run is listed (as running) from the start of `fit`, before
        the recording process that takes it over has started. Whether that worked: when the store is not
        writable it warns (never raises), and the fit goes unrecorded."""
        try:
            if "://" not in self.log_dir:
                os.makedirs(self.log_dir, exist_ok=True)
                if not os.access(self.log_dir, os.W_OK):
                    raise PermissionError(f"no write permission on {self.log_dir!r}")
            RunWriter(self.log_dir, self.run_id, self._run_meta(layers))
        except (OSError, StoreError) as error:
            warnings.warn(
                f"Strata cannot write to {self.log_dir!r} ({error}); this run is not recorded.",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        return True

    def _send(self, kind: str, **payload) -> None:
        self._worker.submit((kind, payload))

    def _run_meta(self, layers: list[RecordedLayer]) -> dict:
        params = self.params or {}
        return {
            "name": self._run_name or self.run_id,
            **self._extra_meta,
            "layers": [layer.describe(i) for i, layer in enumerate(layers)],
            "layer_selection": {
                "asked": _selection_text(self.layer_selection),
                "recorded": len(layers),
                "recordable": self._layers_total,
            },
            "model": {"name": self.model.name, "params": int(self.model.count_params())},
            "outputs": [{key: value for key, value in o.items() if key != "head"} for o in self._outputs],
            "probe": {
                "size": sample_count(self._x),
                "has_labels": self.labels is not None,
                "input_shape": list(keras.tree.flatten(self._x)[0].shape[1:]),
                "inputs": [
                    {"name": name, "shape": list(array.shape[1:])}
                    for name, array in zip(_input_names(self.model), keras.tree.flatten(self._x))
                ],
                "primary_output": self._primary,
                "plane": self._plane,
            },
            "every": self.every,
            "batch_every": self.batch_every,
            "grad_every": self.grad_every if self._grad_norm_fn is not None else None,
            "components": self.components,
            "seed": self.seed,
            "epochs_planned": params.get("epochs"),
            "steps_per_epoch": params.get("steps"),
            "epochs_done": 0,
            "snapshots": 0,
        }

    def _plane_grid(self) -> np.ndarray:
        low, high = self._x.min(axis=0), self._x.max(axis=0)
        pad = 0.1 * (high - low)
        xs = np.linspace(low[0] - pad[0], high[0] + pad[0], PLANE_RESOLUTION)
        ys = np.linspace(low[1] - pad[1], high[1] + pad[1], PLANE_RESOLUTION)
        grid_x, grid_y = np.meshgrid(xs, ys)  # row = y, column = x
        self._plane_axes = (xs, ys)
        return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(self._x.dtype)  # (G*G, 2)

    def _probe_arrays(self) -> dict:
        arrays: dict[str, np.ndarray] = {"indices": self.probe_indices.astype(np.int64)}
        if self.labels is not None:
            arrays["y"] = self.labels.astype(np.int64)
        for index, target in self._targets.items():
            arrays[f"targets/{index}"] = target
        first, *others = keras.tree.flatten(self._x)  # in the order of `model.inputs`
        stored = 0
        if first.nbytes <= MAX_STORED_INPUT_BYTES:
            arrays["x"] = first.astype(np.float32)
            stored = arrays["x"].nbytes
        for index, array in enumerate(others, start=1):  # the other inputs, as long as they fit beside it
            if stored + 4 * array.size <= MAX_STORED_INPUT_BYTES:
                arrays[f"inputs/{index}"] = array.astype(np.float32)
                stored += 4 * array.size
        if self._plane:
            arrays["plane/xs"], arrays["plane/ys"] = (a.astype(np.float32) for a in self._plane_axes)
        return arrays

    def _capture(self, kind: str, epoch: int, batch: int | None = None, logs=None, state: list | None = None) -> None:
        """Queue a probe pass on `state`, the weights as they are now (read here unless given). The pass runs on
        the worker's thread while training goes on: the read keeps this moment's values (TensorFlow copies a
        variable on its next update while a read of it is alive; on JAX the read is a copy)."""
        if not self._active:
            return
        if state is None:
            state = _read_state(self.model, self._variables)
        if kind == "epoch":
            self._last_captured_epoch = epoch
        step = self._steps if self._counts_batches else self._optimizer_steps(epoch)
        logs = {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}
        spill = {"kind": kind, "epoch": epoch, "step": step, "batch": batch, "logs": logs}
        self._worker.submit(
            lambda: self._snapshot_message(kind, epoch, step, batch, logs, state),
            self._state_bytes,
            spill=lambda: ("capture", {**spill, "state": [np.asarray(t) for t in state]}),
        )

    def _snapshot_message(
        self, kind: str, epoch: int, step: int, batch: int | None, logs: dict, state: list
    ) -> tuple | None:
        """On the worker's thread, in capture order: the probe pass on `state`, as a message for the sink."""
        try:
            raw = self._run_capture_pass(kind, epoch, step, batch, logs, state)
        except Exception as error:  # a recording problem must never end the user's training
            if not self._capture_failed:
                self._capture_failed = True
                warnings.warn(
                    f"Strata could not run its probe pass ({type(error).__name__}: {error}); training "
                    "continues, and snapshots already written stay intact.",
                    RuntimeWarning,
                    stacklevel=1,
                )
            return None
        seq = self._seq
        self._seq += 1
        return ("snapshot", {"seq": seq, "raw": raw})

    def _run_capture_pass(
        self, kind: str, epoch: int, step: int, batch: int | None, logs: dict, state: list
    ) -> RawCapture | ReducedCapture:
        return run_capture_pass(
            self._capture_fn,
            self._inputs,
            self._layers,
            state,
            kind=kind,
            epoch=epoch,
            step=step,
            batch=batch,
            logs=logs,
        )

    def _optimizer_steps(self, epoch: int) -> int:
        """Optimizer steps taken so far (epoch: the number of completed epochs). The optimizer's own count stays
        right when Keras does not know the epoch's length (a generator) and when a fit resumes; without one,
        whole epochs of `steps` each."""
        try:
            return int(self.model.optimizer.iterations.numpy())
        except (AttributeError, TypeError, ValueError):
            return epoch * ((self.params or {}).get("steps") or 0)

    def _measure_gradient_norms(self, step: int) -> None:
        """Queue a gradient-norm pass on the weights as they are now; like the probe pass, it runs on the worker's
        thread, so the training thread only reads the weights."""
        state = _read_state(self.model, self._variables)
        self._worker.submit(lambda: self._gradient_norms_on(step, state), self._state_bytes)

    def _gradient_norms_on(self, step: int, state: list) -> None:
        """On the worker's thread: measure, and keep the norms for the epoch's message. Sends nothing itself."""
        if self._grad_norm_fn is None:
            return None
        try:
            self._batch_gradients.append((step, np.asarray(self._grad_norm_fn(*self._grad_inputs, state))))
        except Exception as error:  # an optional extra: stop measuring, never stop training
            self._grad_norm_fn = None
            warnings.warn(
                f"Strata stopped measuring per-batch gradient norms ({type(error).__name__}: {error}); "
                "training and snapshots continue.",
                RuntimeWarning,
                stacklevel=1,
            )
        return None

    def _send_batch_gradients(self, epoch: int) -> None:
        """Queue the message with this epoch's norms, behind the measurements still waiting to run."""
        if self._grad_norm_fn is not None or self._batch_gradients:
            self._worker.submit(lambda: self._batch_gradients_message(epoch))

    def _batch_gradients_message(self, epoch: int) -> tuple | None:
        measured, self._batch_gradients = self._batch_gradients, []
        if not measured:
            return None
        steps = np.asarray([step for step, _ in measured], np.int64)
        norms = np.stack([norms for _, norms in measured])  # (measurements, layers)
        return ("batch_gradients", {"epoch": epoch, "steps": steps, "norms": norms})

    def _log_epoch(self, epoch: int, logs: dict) -> None:
        self._history["epoch"].append(epoch)
        for key, value in logs.items():
            if _is_number(value):
                self._history.setdefault(key, [None] * (len(self._history["epoch"]) - 1)).append(float(value))
        for values in self._history.values():
            values.extend([None] * (len(self._history["epoch"]) - len(values)))
        loss = logs.get("loss")
        if self._nan_epoch is None and loss is not None and _is_number(loss) and not math.isfinite(float(loss)):
            self._nan_epoch = epoch
        history = {k: list(v) for k, v in self._history.items()}
        self._send("epoch", epoch=epoch, history=history, nan_epoch=self._nan_epoch)

    def end(self, status: str, **fields) -> None:
        """Mark the run `status` ("finished", "failed" or "interrupted") once every queued snapshot is written.
        Returns at once; `wait()` waits for the writing.

        `fit` calls this itself when it completes; call it when `fit` raised, so the run is not left "running".
        """
        if not self._active:
            return
        self._send_batch_gradients(self._epoch + 1)  # an epoch cut short keeps what it measured
        self._active = False
        TRAINING.ended()
        self._worker.finish(("end", {"status": status, "fields": fields}))
        atexit.unregister(self._end_at_exit)
        if self._cell_hook is not None:  # a sweep of fits in one cell must not keep every recorder alive to its end
            self._cell_hook()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the last fit's run is completely written (snapshots held back for the budget are written
        after `fit` returns), or `timeout` seconds. Whether it is: False at once while the run still records
        (during `fit`, or after a `fit` that raised until `end()` is called)."""
        if self._active:
            return False
        return self._worker is None or self._worker.wait(timeout)

    def _end_with_the_notebook_cell(self) -> None:
        """Under IPython (Jupyter, Colab), end the run when the cell that ran `fit` finishes without ending it.

        Keras skips `on_train_end` when `fit` raises, and the stop button raises KeyboardInterrupt inside `fit`
        without ending the kernel, so `atexit` does not come either: the run would read "running" for as long
        as the kernel lives. A `fit` running on a thread of its own is left alone.
        """
        ipython = sys.modules.get("IPython")  # never imported here: only a shell that is already running counts
        shell = ipython.get_ipython() if ipython is not None else None
        if shell is None:
            return
        training_thread = threading.get_ident()

        def after_cell(result) -> None:
            remove()
            if not self._active or threading.get_ident() != training_thread:
                return
            error = getattr(result, "error_in_exec", None)
            if error is None or isinstance(error, KeyboardInterrupt):
                self.end("interrupted")
            else:
                self.end("failed", error=f"{type(error).__name__}: {error}")

        def remove() -> None:
            self._cell_hook = None
            if after_cell in shell.events.callbacks.get("post_run_cell", []):
                shell.events.unregister("post_run_cell", after_cell)

        shell.events.register("post_run_cell", after_cell)
        self._cell_hook = remove

    def _end_at_exit(self) -> None:
        # fit() ended by an exception or Ctrl-C never calls on_train_end; say so instead of "running" forever.
        self.end("interrupted")


# ----------------------------------------------------------------------------------------------------------
# The compiled probe pass


def _selection_text(selection) -> str:
    """`Recorder(layers=...)` as text for run.json: "auto", "all", or the items (classes by name)."""
    if selection is None or isinstance(selection, str):
        return selection or "auto"
    return ", ".join(item.__name__ if isinstance(item, type) else str(item) for item in selection)


# The recorded layers' outputs on the whole probe cross to the analysis at each snapshot: a deep image model's can
# take megabytes a sample (MobileNetV2's 18 default layers at 96x96: 1.7 MB), so the probe keeps at most as many
# samples as fit in this, and never fewer than MIN_PROBE.
PROBE_OUTPUT_BYTES = 512 * 2**20
MIN_PROBE = 100

# The backend's own pieces (`core.capture.probe_tf` or `core.capture.probe_jax`), through these: `core.capture.recover`
# runs the same pass.


def _capture_function(model: keras.Model, layers: list[RecordedLayer], variables: list, with_loss: bool, plane: bool):
    """The probe pass of `model` (`core.capture.probe_pass.ProbePass`) on the current backend, called as
    `capture(x, y, grid, state)`."""
    return backend_passes().ProbePass(model, layers, variables, with_loss, plane)


def _gradient_norm_function(model: keras.Model, layers: list[RecordedLayer], variables: list):
    """A compiled function `(x, y, state) -> (layers,)` norms of each layer's loss gradient over all its weights
    (NaN for a layer without weights), on the current backend."""
    return backend_passes().gradient_norm_function(model, layers, variables)


def _read_state(model: keras.Model | None, variables: list) -> list:
    """The current value of every variable, as tensors that keep that value while training goes on."""
    return backend_passes().read_state(model, variables)


def _probe_tensors(x: Any, y: Any, grid: np.ndarray | None) -> tuple:
    """The probe's inputs, targets (each one array, or a list or dict of arrays) and plane grid as tensors."""
    return tuple(backend_passes().constants([x, y, grid]))


def reducing_pass(capture_fn, layers: list[RecordedLayer], builder: dict, probe_count: int) -> ReducingPass:
    """`capture_fn` followed by the reductions on the device, with the `SnapshotBuilder` settings `builder`."""
    return ReducingPass(
        capture_fn,
        layers,
        [_roles(layer) for layer in layers],
        builder["activations"],
        builder["components"],
        builder["seed"],
        builder["kernel_layer"],
        probe_count,
    )


def run_capture_pass(
    capture_fn, inputs: tuple, layers: list[RecordedLayer], state: list, **fields
) -> RawCapture | ReducedCapture:
    """The probe pass of `_capture_function` on `state`, as a RawCapture (`fields`: kind, epoch, step, batch, logs),
    or as a ReducedCapture when the pass reduces on the device (`reducing_pass`)."""
    if isinstance(capture_fn, ReducingPass):
        return capture_fn.capture(inputs, state, **fields)
    result = capture_fn(*inputs, state, on_host=True)
    result = {key: _to_numpy(value) for key, value in result.items()}
    roles = [_roles(layer) for layer in layers]
    measured = result["loss"] is not None
    return RawCapture(
        **fields,
        outputs=result["outputs"],
        predictions=result["predictions"],
        loss=None if result["loss"] is None else float(result["loss"]),
        weights=layer_weights(layers, result["weights"]),
        weight_grads=[dict(zip(r, g)) for r, g in zip(roles, result["weight_grads"])] if measured else [],
        output_grad_norms=[float(n) for n in result["output_grad_norms"]] if measured else [None] * len(layers),
        plane_outputs=result.get("plane_outputs"),
        plane_predictions=result.get("plane_predictions"),
    )


def layer_weights(layers: list[RecordedLayer], values: list[list]) -> list[dict]:
    """Per layer {role: value}, from each layer's trainable weights' values in order."""
    return [dict(zip(_roles(layer), group)) for layer, group in zip(layers, values)]


def _to_numpy(value):
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_to_numpy(v) for v in value]
    return np.asarray(value)


def _loss_takes_logits(model: keras.Model, loss: Any = None) -> bool:
    """Whether the compiled loss (or `loss`, one output's) reads the output as logits (`from_logits=True`), as many
    tutorials set it up."""
    loss = getattr(model, "loss", None) if loss is None else loss
    try:
        return bool(loss.get_config().get("from_logits", False))
    except (AttributeError, TypeError):  # a loss given by name or as a plain function: probabilities
        return False


REGRESSION_LOSSES = {
    "mean_squared_error",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error",
    "huber",
    "log_cosh",
    "poisson",
    "cosine_similarity",
}


def _regression_loss_name(model: keras.Model, loss: Any = None) -> str | None:
    """The name of the compiled loss (or `loss`, one output's) when it compares values (MSE, MAE, Huber, Poisson...)
    rather than classes, given by name, as a function or as a Loss object; None otherwise, custom losses included."""
    loss = getattr(model, "loss", None) if loss is None else loss
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except ValueError:
            return None
    name = getattr(getattr(loss, "fn", loss), "__name__", None)
    return name if name in REGRESSION_LOSSES else None


def _output_loss(model: keras.Model, index: int, name: str) -> Any:
    """The loss compiled for output `index` (named `name`): an entry of a list or dict of losses, or the one loss."""
    loss: Any = getattr(model, "loss", None)
    if isinstance(loss, (list, tuple)):
        return loss[index] if index < len(loss) else None
    if hasattr(loss, "keys") and hasattr(loss, "get"):
        return loss.get(name)
    return loss


def _target_kind(target: np.ndarray) -> str:
    """`multilabel` for rows of several 0/1 labels (not one-hot), else `values` (regression)."""
    values = target.reshape(len(target), -1)
    if values.shape[1] > 1 and np.all((values == 0) | (values == 1)):
        return "multilabel"
    return "values"


def _stored_target(target: np.ndarray, class_ids: np.ndarray | None) -> np.ndarray:
    """The truth the views colour an output by: (n,) class ids; (n,) the number of labels of a multi-label row; a
    regression's values, (n,) for one column and (n, c) for several (a target of more axes flattened to columns)."""
    if class_ids is not None:
        return class_ids.astype(np.int64)
    values = target.reshape(len(target), -1).astype(np.float32)
    if _target_kind(target) == "multilabel":
        return values.sum(axis=1)
    return values if values.shape[1] > 1 else values[:, 0]


def _input_matrix(x: Any) -> np.ndarray:
    """(n, d) float32: every probe input flattened, side by side (the raw input the baseline PCA is of)."""
    inputs = keras.tree.flatten(x)
    return np.hstack([a.reshape(len(a), -1) for a in inputs]).astype(np.float32)


def _roles(layer: RecordedLayer) -> list[str]:
    return [v.path.rsplit("/", 1)[-1] for v in layer.layer.trainable_weights]


# ----------------------------------------------------------------------------------------------------------
# Validation


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) or (
        hasattr(value, "shape") and getattr(value, "shape", None) == () and hasattr(value, "dtype")
    )


def _split_probe(probe: Any) -> tuple[Any, Any, list[np.ndarray | None]]:
    """(x, y as given for the loss, class ids per target) from `probe=(x, y)` or `probe=x`, read as `fit` reads them:
    x is one array, or a list or dict of arrays (several inputs, in order or by input name); y likewise for several
    outputs. Class ids are None for a target that is not classes (regression values, several labels a sample)."""
    if probe is None:
        raise ValueError(
            "Recorder needs a probe set: pass `probe=(x_val, y_val)` (or `probe=x_val` without labels), "
            "a fixed sample of inputs the layers are observed on."
        )
    # As `fit` and `validation_data` read them: a tuple is (x, y); a list or a dict is x (several inputs, or inputs
    # by name).
    x, y = (probe[0], probe[1] if len(probe) > 1 else None) if isinstance(probe, tuple) and probe else (probe, None)
    x = keras.tree.map_structure(_probe_input, _single_array(x, "inputs"))
    inputs = keras.tree.flatten(x)
    count = len(inputs[0])
    if any(len(array) != count for array in inputs):
        counts = ", ".join(str(len(array)) for array in inputs)
        raise ValueError(
            f"Every probe input must have one row per sample, the same number for each input. Received: "
            f"{_form(x, 'inputs')} with {counts} samples."
        )
    if y is None:
        return x, None, []
    y = keras.tree.map_structure(np.asarray, _single_array(y, "targets"))
    targets = keras.tree.flatten(y)
    if any(len(target) != count for target in targets):
        raise ValueError(
            f"The probe labels must have one entry per input. Received: {count} inputs and "
            f"{', '.join(str(len(t)) for t in targets)} labels ({_form(y, 'targets')})."
        )
    for target in targets:
        if not np.issubdtype(target.dtype, np.number) and target.dtype != np.bool_ or not np.all(np.isfinite(target)):
            raise ValueError(
                f"The probe labels must be integer class ids or one-hot rows. Received dtype {target.dtype}."
            )
    ids = [_class_ids(t.astype(np.int64) if t.dtype == np.bool_ else t) for t in targets]
    if all(i is None for i in ids):
        first = targets[0]
        warnings.warn(
            f"The probe targets are not class ids or one-hot rows (shape {first.shape}, values such as "
            f"{np.ravel(first)[0]:.4g}), as for regression or multi-label targets: Strata records gradients against "
            "them and colours points by the true target, but trains no linear probes.",
            UserWarning,
            stacklevel=3,
        )
    return x, y, ids


def _probe_input(value: Any) -> np.ndarray:
    """One probe input as an array of at least 2 samples, floats (whole numbers become float32)."""
    x = np.asarray(value)
    if x.ndim < 2 or len(x) < 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(
            f"The probe inputs must be a numeric array of shape (samples, features...) with at least 2 samples. "
            f"Received: x with shape {x.shape} and dtype {x.dtype}"
        )
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)


def _single_array(value: Any, what: str) -> Any:
    """`value` as a structure `fit` reads: one array, or a list or dict of several (several inputs or outputs); a
    one-entry list or dict is its only array. A list of plain numbers is one array."""
    if isinstance(value, dict):
        if not value:
            raise ValueError(f"The probe's {what} are an empty dict. Received: {value!r}")
        return next(iter(value.values())) if len(value) == 1 else dict(value)
    if (
        isinstance(value, (list, tuple))
        and value
        and all(hasattr(item, "shape") and hasattr(item, "dtype") for item in value)
    ):
        return value[0] if len(value) == 1 else list(value)
    return value


def _form(value: Any, what: str) -> str:
    """How a probe's inputs or targets came, for messages: 'one array of shape (64, 4)', 'a list of 2 arrays ((64, 4),
    (64, 2))', 'a dict of 2 inputs (left, right)'."""
    if isinstance(value, dict):
        shapes = ", ".join(f"{key}: {tuple(np.shape(v))}" for key, v in value.items())
        return f"a dict of {len(value)} {what} ({shapes})"
    if isinstance(value, list):
        return f"a list of {len(value)} arrays ({', '.join(str(tuple(np.shape(v))) for v in value)})"
    return f"one array of shape {tuple(np.shape(value))}"


def _class_ids(y: np.ndarray) -> np.ndarray | None:
    """(n,) int class ids from integer labels (any numeric dtype holding whole numbers) or from one-hot or
    probability rows; None for other targets, such as regression values."""
    if y.ndim == 2 and y.shape[1] > 1:
        distributions = np.all((y >= 0) & (y <= 1)) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3)
        return y.argmax(axis=1).astype(np.int64) if distributions else None
    values = y.reshape(len(y), -1)
    if values.shape[1] != 1 or not np.all(values == np.round(values)):
        return None
    return values[:, 0].astype(np.int64)


def _probe_rows(count: int, labels: np.ndarray | None, size: int, seed: int) -> np.ndarray:
    if count <= size:
        return np.arange(count)
    if labels is None:
        return np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))
    return stratified_subset(labels, size, seed=seed)


def _take(value: Any, rows: np.ndarray) -> Any:
    """The same `rows` of every array in `value` (one array, or a list or dict of them); None stays None."""
    return None if value is None else keras.tree.map_structure(lambda a: np.ascontiguousarray(a[rows]), value)


def _input_names(model: keras.Model) -> list[str]:
    """The name by which `fit` takes each input, in the order of `model.inputs`: its key in a model built on a dict
    of inputs, else the `keras.Input`'s name."""
    struct = graph_struct(model, "inputs")
    if isinstance(struct, dict):
        return sorted(struct)  # Keras flattens a dict by sorted keys: the order of `model.inputs`
    return [tensor.name for tensor in model.inputs]


def _output_names(model: keras.Model) -> list[str]:
    """The name by which `fit` takes each output's targets, in the order of `model.outputs`."""
    struct = graph_struct(model, "outputs")
    if isinstance(struct, dict):
        return sorted(struct)
    names = getattr(model, "output_names", None)
    if names and len(names) == len(model.outputs):
        return [str(name) for name in names]
    return [producing_layer(tensor).name for tensor in model.outputs]


def _arrange(model: keras.Model, value: Any, names: list[str], what: str, struct: Any) -> tuple[Any, list]:
    """`value` (probe inputs or targets) arranged as the model's graph takes them (one array, or its list or dict of
    them), and its arrays in the order of `names`. A ValueError, naming what the model takes and what was received,
    when they do not fit."""
    count = len(names)
    noun = what if count != 1 else what[:-1]  # "2 inputs", "1 input"
    if isinstance(value, dict):
        missing = [name for name in names if name not in value]
        if missing or (count == 1 and len(value) != 1):
            raise ValueError(
                f"The probe's {what} do not fit the model: model `{model.name}` takes {count} {noun} named "
                f"{', '.join(names)}, the probe has {_form(value, what)}. Key a dict by those names, or pass a list "
                "in that order, as to `fit`."
            )
        arrays = [value[name] for name in names]
    elif isinstance(value, list):
        if len(value) != count:
            raise ValueError(
                f"The probe's {what} do not fit the model: model `{model.name}` takes {count} {noun} "
                f"({', '.join(names)}), the probe has {_form(value, what)}. Pass one array per {what[:-1]}, in that "
                "order, or a dict keyed by those names, as to `fit`."
            )
        arrays = list(value)
    else:
        if count != 1:
            raise ValueError(
                f"The probe's {what} do not fit the model: model `{model.name}` takes {count} {noun} "
                f"({', '.join(names)}), the probe has {_form(value, what)}. Pass a list of {count} arrays in that "
                "order, or a dict keyed by those names, as to `fit`: `probe=([x1, x2], y)` or "
                "`probe=({'a': x1, 'b': x2}, y)`."
            )
        arrays = [value]
    if count == 1:
        return arrays[0], arrays
    arranged = keras.tree.pack_sequence_as(struct, arrays) if isinstance(struct, (list, dict)) else arrays
    return arranged, arrays


def _check_model_io(model: keras.Model, x: Any, y: Any) -> tuple[Any, Any, list]:
    """(inputs, targets) of the probe arranged as the model takes them, and the targets in the order of
    `model.outputs` (empty without targets). A ValueError naming what does not fit and what to do."""
    names = _input_names(model)
    x, inputs = _arrange(model, x, names, "inputs", graph_struct(model, "inputs"))
    for name, tensor, array in zip(names, model.inputs, inputs):
        expected = tuple(tensor.shape[1:])
        received = tuple(array.shape[1:])
        if len(expected) != len(received) or any(e is not None and e != r for e, r in zip(expected, received)):
            which = f"input `{name}` of " if len(names) > 1 else ""
            raise ValueError(
                f"The probe inputs do not fit the model: {which}model `{model.name}` takes samples of shape "
                f"{expected}, the probe has samples of shape {received}. Pass probe inputs shaped like the training "
                "inputs."
            )
    if y is None:
        return x, None, []
    if getattr(model, "compiled_loss", None) is None and getattr(model, "loss", None) is None:
        raise ValueError("Compile the model with a loss before fit: Recorder measures gradients of that loss.")
    y, targets = _arrange(model, y, _output_names(model), "outputs", graph_struct(model, "outputs"))
    return x, y, targets
