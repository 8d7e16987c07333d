"""Capture: the Recorder callback, the compiled probe pass on each backend, the recording process that reduces each
capture to a snapshot, and recovery of a killed run. Imports Keras (only `core.capture.snapshot` and `sink` are
numpy-only)."""
