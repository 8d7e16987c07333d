"""The data and the model of tests/test_multi_io.py, in a module of their own: the test's JAX subprocess imports them
without importing TensorFlow (test_multi_io itself needs it)."""

import keras
import numpy as np


def data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    left = rng.normal(size=(n, 4)).astype("float32")
    right = rng.normal(size=(n, 3)).astype("float32")
    classes = (left[:, 0] + right[:, 0] > 0).astype("int64") + (left[:, 1] > 1).astype("int64")  # 3 classes
    value = (left[:, 2] - 0.5 * right[:, 1]).astype("float32")[:, None]  # a regression target
    return left, right, classes, value


def two_in_two_out(regression_first=False, seed=0):
    """Inputs `left` (4) and `right` (3); a softmax head `cls` over 3 classes and a linear head `reg`."""
    keras.utils.set_random_seed(seed)
    left = keras.Input((4,), name="left")
    right = keras.Input((3,), name="right")
    joined = keras.layers.Concatenate(name="joined")([left, right])
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(joined)
    cls = keras.layers.Dense(3, activation="softmax", name="cls")(hidden)
    reg = keras.layers.Dense(1, name="reg")(hidden)
    outputs = [reg, cls] if regression_first else [cls, reg]
    model = keras.Model([left, right], outputs)
    losses = {"cls": "sparse_categorical_crossentropy", "reg": "mse"}
    model.compile("adam", [losses[name] for name in model.output_names])
    return model
