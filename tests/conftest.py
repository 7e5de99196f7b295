"""Shared pytest fixtures: tests are offline, seeded and write only into tmp dirs."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_test(tmp_path, monkeypatch):
    """Run every test in its own temporary directory, with a headless matplotlib.

    Relative paths a test (or the code it calls) writes land under ``tmp_path``, never
    in the checkout.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield


@pytest.fixture
def torch_one_thread():
    """torch on one thread for the test (other jobs share this machine's cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _private_zoo_and_data_dirs(tmp_path_factory, monkeypatch):
    """Never publish into the user's home: a fresh user zoo and data directory per test."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("CRFORGE_ZOO", str(home / "zoo"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "share"))


@pytest.fixture(scope="session")
def real_frames_cache(tmp_path_factory):
    """Where the real HST frames are: ``$CRFORGE_REAL_FRAMES`` (``make test`` fetches them
    there first), else a temporary cache this session fetches them into."""
    import os
    from pathlib import Path

    return Path(os.environ.get("CRFORGE_REAL_FRAMES") or tmp_path_factory.mktemp("real-frames"))


@pytest.fixture(scope="session")
def frames(real_frames_cache):
    """The real frames' paths (fetched, pinned, sha256-checked)."""
    from crforge.pipeline import realframes

    return realframes.fetch(cache=real_frames_cache)
