"""Raw captures made by hand, for tests of the analysis that need layer outputs and nothing else."""

import numpy as np

from core.capture.snapshot import RawCapture


def outputs_capture(outputs: list[np.ndarray], epoch: int = 0, loss: float | None = None) -> RawCapture:
    """An end-of-epoch capture of `outputs` (one array per layer): predictions of 0.5 for two classes, and no
    weights or gradients."""
    n = len(outputs[0])
    return RawCapture(
        kind="epoch",
        epoch=epoch,
        step=epoch,
        batch=None,
        logs={},
        outputs=list(outputs),
        predictions=np.full((n, 2), 0.5, np.float32),
        loss=loss,
        weights=[{} for _ in outputs],
        weight_grads=[],
        output_grad_norms=[None] * len(outputs),
    )
