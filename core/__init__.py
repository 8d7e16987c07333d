"""Strata's capture core: a Keras callback that records what every layer learns, and the run store it writes.

Importing `core` is cheap and never imports TensorFlow: the store reader (`core.store`) and the analysis
(`core.analysis.measures`) are numpy-only. `core.Recorder` pulls in Keras only when first touched.
"""

__all__ = ["Recorder"]


def __getattr__(name):
    if name == "Recorder":
        from core.capture.recorder import Recorder

        return Recorder
    raise AttributeError(f"module 'core' has no attribute {name!r}")
