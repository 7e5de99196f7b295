"""Where the evaluation runs: threads, progress bars, the machine and package versions."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Executor
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = ["thread_count", "progress_bar", "mapped", "package_version", "machine"]


def thread_count(threads: int) -> int:
    """Threads to use for a setting of ``threads`` (0 = every core)."""
    return threads or os.cpu_count() or 1


def progress_bar(total: int, desc: str, progress: bool | None):
    """A tqdm bar counting stamps; ``progress=None`` shows it only on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="stamp", disable=None if progress is None else not progress,
                leave=False)


def mapped(pool: Executor, fn: Callable[[int], Any], n: int, desc: str, progress: bool | None) -> list:
    """``pool.map(fn, range(n))`` in order, with a progress bar."""
    out = []
    with progress_bar(n, desc, progress) as bar:
        for r in pool.map(fn, range(n)):
            out.append(r)
            bar.update(1)
    return out


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict:
    """Cores, torch threads, platform and the versions the runtimes depend on."""
    import platform

    import torch

    return {"cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "platform": platform.platform(), "torch": torch.__version__,
            "astroscrappy": package_version("astroscrappy"), "scikit-image": package_version("scikit-image")}
