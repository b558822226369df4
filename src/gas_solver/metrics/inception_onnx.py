"""The FID Inception run by ONNX Runtime on the CPU: the same network, faster.

The TorchScript detector (``default_1.pt``, see :mod:`.inception`) is exported once to ONNX
(opset 17, the legacy TorchScript exporter, a dynamic batch axis) and cached as
``$GAS_SOLVER_CACHE/inception/<detector sha1>-torch<version>.onnx``: tied to the detector's
checksum and to the torch that exported it. Before a session is used, it must reproduce the
TorchScript network's features on a fixed probe batch to ``1e-4`` relative (max abs difference
over max abs feature); a copy that does not is deleted and the TorchScript network is used, with a
warning. Without ``onnxruntime`` and ``onnx`` (``pip install 'gas-solver[fast-fid]'``) nothing
changes.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..outputs import atomic_write, cache_dir

logger = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = 1e-4
"""Largest accepted max|ONNX − TorchScript| / max|TorchScript| on the probe batch."""


def onnx_path(detector_sha1: str) -> Path:
    """Where the ONNX copy of the detector with this sha1 is cached."""
    version = torch.__version__.split("+")[0]
    return cache_dir() / "inception" / f"{detector_sha1}-torch{version}.onnx"


def probe_batch() -> Tensor:
    """Four fixed 299×299 network inputs in [−1, 1) (seeded, independent of any data set)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 3, 299, 299), generator=generator).float().sub(128) / 128


def export_onnx(net: nn.Module, path: Path) -> Path:
    """Export the TorchScript detector to ``path`` (atomically)."""
    logger.info("exporting the FID Inception to ONNX once: %s", path)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated, still the one
            warnings.simplefilter("ignore")  # that takes a ScriptModule
            torch.onnx.export(
                net, (probe_batch()[:1],), str(tmp), input_names=["images"],
                output_names=["features"], dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                opset_version=OPSET, dynamo=False,
            )  # fmt: skip

    return atomic_write(path, write)


class OnnxInception:
    """``(B, 3, 299, 299)`` float32 → ``(B, 2048)`` features through an ONNX Runtime session."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = max(threads, 1)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"images": array})[0])


def load_onnx_inception(net: nn.Module, detector_sha1: str) -> OnnxInception | None:
    """The checked ONNX Runtime copy of ``net``, or ``None`` (no onnxruntime, or a mismatch)."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    path = onnx_path(detector_sha1)
    try:
        if not path.is_file():
            export_onnx(net, path)
        runner = OnnxInception(path, torch.get_num_threads())
    except Exception as err:  # noqa: BLE001  (any failure of the faster path: the reference one)
        warnings.warn(f"{path}: no ONNX Inception ({err}); using TorchScript", stacklevel=2)
        return None
    probe = probe_batch()
    with torch.inference_mode():
        expected = net(probe)
    error = float((runner(probe) - expected).abs().max() / expected.abs().max())
    if not error <= TOLERANCE:
        warnings.warn(
            f"{path}: the ONNX Inception differs from the TorchScript one by {error:.2e} "
            f"(> {TOLERANCE:g}); deleted, using TorchScript",
            stacklevel=2,
        )
        path.unlink(missing_ok=True)
        return None
    logger.debug("FID Inception on ONNX Runtime (probe error %.1e)", error)
    return runner


__all__ = ["OnnxInception", "load_onnx_inception", "onnx_path", "probe_batch"]
