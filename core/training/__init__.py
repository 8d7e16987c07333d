"""Training from the command line and the dashboard: the built-in data sets, models and the trainer that fits one
with a Recorder. `datasets` is numpy-only; `models` and `trainer` import Keras."""
