"""Where work runs and with what randomness: one answer for every stage.

``prefer_passive_openmp_wait`` sets the OpenMP default every command starts with; ``resolve_device`` turns ``device="auto"`` into a concrete device (the process's own GPU under a launcher);
``slide_seed`` gives each slide a random stream that depends on the run's seed and the slide only, so that a
slide's augmentations (extract) and views (embed) do not change with the order, the batch or the process
that handles it.
"""

from __future__ import annotations

import hashlib
import os


def prefer_passive_openmp_wait() -> None:
    """Make idle OpenMP threads sleep rather than spin, unless ``OMP_WAIT_POLICY`` is already set.

    Spinning threads burn the cores that busy ones need on a machine with other work (data-loader workers,
    other jobs), and each of a step's hundreds of parallel ops then waits for a descheduled thread: a SimCLR
    step at 5 tiles beside another job ran 2.6x slower (``benchmarks/bench_ssl_step.py --contended``). libgomp
    reads the variable once, when torch loads it: the commands call this before importing torch. The library
    leaves the environment alone; ``OMP_WAIT_POLICY=ACTIVE`` restores spinning.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def resolve_device(device: str) -> str:
    """``"auto"``: ``cuda:LOCAL_RANK`` in a process started by a launcher (torchrun, accelerate launch) on a CUDA
    machine, ``cuda`` in a single process with a GPU, else ``cpu``; any other name is returned as given."""
    if device != "auto":
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return "cuda"


def slide_seed(seed: int, slide_id: str) -> int:
    """Seed of one slide's random draws: a 63-bit hash of the run's seed and the slide id."""
    digest = hashlib.sha256(f"{seed}:{slide_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
