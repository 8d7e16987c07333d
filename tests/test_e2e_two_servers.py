"""Scaling out: two dashboard servers (two `streamlit run dashboard/app.py` processes) serve one store folder while a
third process trains a run into it. Both list the new run and both follow it live, without a reload, to its last
epoch: the store is the only state they share (README: "Several servers on one store").

The training process holds after its second epoch until the test lets it go (a file appears), so the pages are
surely opened while the run is still training; every wait has a timeout."""

import os
import re
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from conftest import python_process
from test_e2e_browser import CHROMIUM, browser, start_server  # noqa: F401  (browser is a fixture)

from core.store import RunNotFound, RunStore

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Chromium at {CHROMIUM}"),
]

REPO = Path(__file__).resolve().parents[1]
RUN_ID, NAME, EPOCHS, HOLD_AFTER = "shared-live", "shared store live", 5, 1
WAIT = 60_000  # ms: a page, or a poll of the store by a page (every 2 s) on a loaded machine

TRAIN = textwrap.dedent(
    """
    import os, sys, time
    import keras, numpy as np
    from core import Recorder

    root, gate = sys.argv[1], sys.argv[2]

    class Hold(keras.callbacks.Callback):
        # After epoch {hold}, wait for the test to create `gate` (at most 240 s), so pages open while it trains.
        def on_epoch_end(self, epoch, logs=None):
            deadline = time.monotonic() + 240
            while epoch == {hold} and not os.path.exists(gate):
                if time.monotonic() > deadline:
                    sys.exit("the test never let training go on")
                time.sleep(0.05)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype("float32"); y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    recorder = Recorder(root, probe=(x, y), run_id="{run_id}", name="{name}", budget=None)
    model.fit(x, y, epochs={epochs}, batch_size=32, callbacks=[recorder, Hold()], verbose=0)
    recorder.wait()
    """
).format(hold=HOLD_AFTER, run_id=RUN_ID, name=NAME, epochs=EPOCHS)


def wait_for_run(root: str, process: subprocess.Popen, seconds: float = 180) -> None:
    """Until the training process has created its run in the store (it imports Keras first)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if RunStore(root).run(RUN_ID).status == "running":
                return
        except RunNotFound:
            pass
        assert process.poll() is None, f"training exited early: {process.stderr.read() if process.stderr else ''}"
        assert time.monotonic() < deadline, f"the run did not appear in the store within {seconds:g} s"
        time.sleep(0.2)


def test_two_servers_on_one_store_both_follow_a_training_run_to_its_end(browser, tmp_path):  # noqa: F811
    root = tmp_path / "runs"
    root.mkdir()
    gate = tmp_path / "go-on"
    servers = [start_server(str(root)) for _ in range(2)]
    trainer = python_process(TRAIN, str(root), str(gate), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    contexts = []
    try:
        wait_for_run(str(root), trainer)
        pages = []
        for _, base in servers:
            context = browser.new_context(viewport={"width": 1400, "height": 1200})
            contexts.append(context)
            page = context.new_page()
            page.goto(f"{base}/")  # no run in the link: the page opens the newest run of its server's run list
            pages.append(page)
        for page, (_, base) in zip(pages, servers):
            status = page.get_by_test_id("stSidebar").get_by_text(re.compile(f"{NAME} · running"))
            status.wait_for(timeout=WAIT)
            page.wait_for_url(re.compile(f"run={RUN_ID}"), timeout=WAIT)
            assert page.url.startswith(base)

        gate.touch()  # training goes on; the pages are not reloaded from here on
        for page in pages:
            sidebar = page.get_by_test_id("stSidebar")
            sidebar.get_by_text(re.compile(f"{NAME} · finished .*epoch {EPOCHS}/{EPOCHS}")).wait_for(timeout=WAIT)
            page.get_by_test_id("stMain").get_by_text("Every layer at epoch").wait_for(timeout=WAIT)
            assert page.get_by_test_id("stException").count() == 0
        assert trainer.wait(120) == 0, trainer.stderr.read() if trainer.stderr else ""
        assert RunStore(str(root)).run(RUN_ID).epochs()[-1] == EPOCHS
    finally:
        gate.touch()
        for context in contexts:
            context.close()
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait(10)
        for process, _ in servers:
            process.terminate()
            process.wait(10)
