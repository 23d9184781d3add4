"""Test helpers shared by the packages' test suites (pytest is a dev dependency; nothing at run time imports this).

A package's ``tests/conftest.py`` opts in to one intra-op thread per test with::

    from shared.testing import single_torch_thread  # noqa: F401  (autouse fixture)

The packages' test models are tiny: with several OpenMP threads on a shared 2-core machine the threads spin-wait on
each other and the same test runs 5-20x slower than with one (measured: 11-14 s vs 0.6-0.8 s for a 3-step RetinaNet
run). The previous thread count is restored after each test, so other packages' tests are unaffected.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

__all__ = [
    "assert_resume_refused",
    "assert_run_refused",
    "assert_same_tensors",
    "free_port",
    "on_gloo_ranks",
    "random_state_dict",
    "run_module",
    "run_torchrun",
    "single_torch_thread",
    "synthetic_root",
    "torch_threads",
    "write_tiny_imagefolder",
]

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Autouse fixture: every test of the importing conftest's folder runs on one intra-op thread."""
    with torch_threads(1):
        yield


def assert_same_tensors(a: Any, b: Any, where: str = "") -> None:
    """Assert that two nested states (dicts, lists, tensors, numbers) are equal to the bit; names the first
    difference (e.g. ``.model.head.weight``)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"tensor differs at {where}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"keys differ at {where}"
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"length differs at {where}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{a!r} != {b!r} at {where}"


def assert_run_refused(run: Callable[[], Any], run_dir: str | Path, match: str) -> None:
    """``run()`` must be refused with a ``shared.logger.RunDirError`` matching ``match``, and every file of
    ``run_dir`` (``RUN.json``, ``config.yaml``, logs, checkpoints) must stay byte for byte as it was."""
    from shared.logger import RunDirError

    run_dir = Path(run_dir)
    before = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    assert before, f"{run_dir} holds no files"
    with pytest.raises(RunDirError, match=match):
        run()
    after = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    assert after.keys() == before.keys() and all(after[p] == before[p] for p in before), f"{run_dir} changed"


def assert_resume_refused(run: Callable[[], Any], run_dir: str | Path, changed_key: str) -> None:
    """``run()`` (a ``--resume`` of a checkpoint in ``run_dir`` with ``changed_key`` set otherwise than the
    checkpoint's config) must be refused naming the key, with ``run_dir`` left as it was
    (:func:`assert_run_refused`)."""
    assert_run_refused(run, run_dir, r"trained with other settings \(.*" + changed_key.replace(".", r"\."))


def random_state_dict(shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the given keys and shapes, as a released checkpoint holds them: BatchNorm counters as
    int64 scalars (``1000 + seed``), running variances positive, every other tensor N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(1000 + seed, dtype=torch.long)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=gen) * 0.1
    return sd


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Synthetic sets of a test module go to a temporary folder (``SYNTHETIC_DATA_ROOT``), not the repository's
    data/. A package's ``tests/conftest.py`` opts in by importing it."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("synthetic")
        mp.setenv("SYNTHETIC_DATA_ROOT", str(root))
        yield root


def write_tiny_imagefolder(
    root: Path, train_per_class: int = 16, val_per_class: int = 4, size: int = 24, seed: int = 0
) -> Path:
    """Two colour classes (reddish, bluish) in the ImageFolder layout ``root/{train,val}/class{0,1}/*.png``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c, colour in enumerate(((200, 40, 40), (40, 40, 200))):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3)) + np.array(colour) * rng.uniform(0.6, 1.0)
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def run_module(
    module: str,
    args: Sequence[str] = (),
    *,
    python_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python [python_args] -m module args`` in a fresh process from the repository root, its output captured as
    text; the caller checks the exit status."""
    cmd = [sys.executable, *python_args, "-m", module, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_rank(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, results: Any) -> None:
    import torch.distributed as dist

    from shared.distributed import DistContext

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results[rank] = fn(DistContext(rank, world_size, rank, torch.device("cpu")), *args)
    finally:
        dist.destroy_process_group()


def on_gloo_ranks(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """``fn(ctx, *args)`` in ``world_size`` spawned processes joined by a gloo process group (``ctx``: the rank's CPU
    :class:`shared.distributed.DistContext`); returns each rank's (picklable) result, in rank order. ``fn`` must be
    a module-level function (spawn pickles it)."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gloo_rank, args=(world_size, free_port(), fn, args, results), nprocs=world_size, join=True)
        return [results[rank] for rank in range(world_size)]


def run_torchrun(module: str, args: Sequence[str], nproc: int = 2, timeout: float = 600) -> str:
    """Run ``torchrun --standalone --nproc_per_node=nproc -m module args`` on CPU (gloo, one thread per process)
    from the repository root; fail the test with the tail of its output unless it exits 0. Returns stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun_args = ["--standalone", f"--nproc_per_node={nproc}", "-m", module, *args]
    proc = run_module("torch.distributed.run", torchrun_args, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout
