"""The run store: the on-disk contract between the training core (writer) and the dashboard (reader).

Layout of one run, under a root that is a local folder or any fsspec URL::

    <root>/<run_id>/run.json              metadata: config, architecture, status (rewritten atomically)
    <root>/<run_id>/probe.npz             the probe set: labels, sample indices, inputs when small enough
    <root>/<run_id>/history.json          Keras logs per epoch (rewritten atomically)
    <root>/<run_id>/snapshots/s000000.npz one immutable file per snapshot
    <root>/<run_id>/batch_gradients/e000001.npz  per-batch gradient norms of one epoch (optional, immutable)

Every write goes to a temporary name first and is then renamed into place (with fsync on local disks), so a
reader never sees a partial file and a killed writer loses at most the file in progress. Snapshot files hold
their scalars in a JSON header (`__meta__`) and their arrays as npz members, which numpy loads lazily, so a
series over many snapshots reads only headers. The package is numpy-only: it never imports TensorFlow.

The package's modules, bottom up: `files` (run ids, errors, atomic file access), `run_format` (what every file must
hold), `run_info` (the typed read model of run.json), `writer` (`RunWriter`), `journal` (captures held for a
crashed process), `reader` (`Run`, `Snapshot`), `archive` (zip export and import) and `admin` (`RunStore`). The
names below are the store's public face; the modules import each other directly, never through this one.
"""

from core.store.admin import RunStore, RunSummary
from core.store.files import (
    FORMAT_VERSION,
    STATUSES,
    DamagedRun,
    RunNotFound,
    StoreError,
    is_valid_run_id,
    new_run_id,
    to_json_safe,
)
from core.store.reader import LostSnapshots, Probe, Projection, Run, Snapshot, main_weight, variance_ratios
from core.store.writer import RunWriter, run_exists

__all__ = [
    "FORMAT_VERSION",
    "STATUSES",
    "DamagedRun",
    "LostSnapshots",
    "Probe",
    "Projection",
    "Run",
    "RunNotFound",
    "RunStore",
    "RunSummary",
    "RunWriter",
    "Snapshot",
    "StoreError",
    "is_valid_run_id",
    "main_weight",
    "new_run_id",
    "run_exists",
    "to_json_safe",
    "variance_ratios",
]
