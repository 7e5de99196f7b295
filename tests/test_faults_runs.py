"""Faults around runs, driven as a user would: the real ``crforge`` command in subprocesses.

Two runs at once on one work directory, one run directory and one zoo; runs
interrupted by SIGINT and SIGKILL and started again; outputs that exist already;
a resume on another data set or by another crforge; a publication with a stale
evaluation; exposures shared by two visits and duplicate stamps.  Every test asserts
the exit status, the message naming the culprit, and that what existed before is
byte-identical afterwards (sha256 of every file).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from crforge import cli
from crforge.lock import LOCK_NAME, hold, holder
from crforge.pipeline.datafile.schema import META_DTYPE
from crforge.pipeline.datafile.validate import validate
from crforge.pipeline.datafile.writer import write_arrays

CRFORGE = [sys.executable, "-m", "crforge.cli"]
S = 64
FIELD_TYPES = ("extragalactic", "globular_cluster", "resolved_galaxy")

MANIFEST = """
name = "tiny"
seed = 7
[defaults]
chip_shape = [256, 256]
exptime = 400.0
[[visit]]
field_type = "extragalactic"
n_exposures = 2
"""

#: A tiny network, quick epochs, on the CPU, one thread (other jobs share the cores).
TINY_TRAIN = [f"--set=train.{kv}" for kv in (
    "model.depth=2", "model.width=4", "batch_size=4", "stamps_per_epoch=8", "val_stamps=4",
    "device='cpu'", "init_mask=''", "threads=1", "num_workers=0")]


def crforge(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the real ``crforge`` command to its end."""
    return subprocess.run(CRFORGE + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def _default_sigint() -> None:
    # A child inherits an ignored or blocked SIGINT (and Python then never raises
    # KeyboardInterrupt); libraries used by earlier tests in the session may leave it so.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def start(*args: str) -> subprocess.Popen:
    """Start the real ``crforge`` command (its own session, so signals reach it alone)."""
    return subprocess.Popen(CRFORGE + [str(a) for a in args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)


def wait_until(pred, what: str, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def holds_lock(directory: Path, proc: subprocess.Popen) -> bool:
    return holder(directory / LOCK_NAME).get("pid") == proc.pid


def waits_for(proc: subprocess.Popen, lock_file: Path) -> bool:
    """Whether ``proc`` has ``lock_file`` open (it then waits on its lock, or holds it)."""
    try:
        fds = list(Path(f"/proc/{proc.pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == str(lock_file):
                return True
        except OSError:
            continue
    return False


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (or of ``root`` itself), by relative path."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def leftovers(root: Path) -> list[Path]:
    """Temporary files or locks left under ``root``."""
    return [p for p in root.rglob("*") if ".tmp" in p.name or p.name.endswith(".lock")]


def tiny_set(path: Path, seed: int, *, edit=None) -> Path:
    """A valid training set of 64x64 stamps with sharp CRs (the real writer)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", 8), ("val", 6), ("test", 6)):
        image = (40.0 + rng.normal(0, 6.0, (n, S, S))).astype(np.float32)
        cr = np.zeros((n, S, S), np.uint8)
        for i in range(n):
            for y, x in rng.integers(2, S - 3, (6, 2)):
                image[i, y, x:x + 2] += rng.uniform(300, 2000)
                cr[i, y, x:x + 2] = 1
        meta = np.zeros(n, META_DTYPE)
        meta["sky"], meta["exptime"] = 40.0, 500.0
        meta["field_type"] = [FIELD_TYPES[i % 3] for i in range(n)]
        splits[split] = {"image": image, "cr": cr, "ignore": np.zeros((n, S, S), np.uint8), "meta": meta}
    if edit is not None:
        edit(splits)
    return write_arrays(path, splits, manifest_name=f"tiny-{seed}")


# --------------------------------------------------------------------------- dataset


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """Three ``crforge dataset`` runs on one work directory at once: A, B (refused), C (--wait)."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "m.toml").write_text(MANIFEST)
    work = root / "work"
    args = ["dataset", "--manifest", root / "m.toml", "--work", work, "--scheduler", "serial"]
    a = start(*args)
    wait_until(lambda: holds_lock(work, a) or a.poll() is not None, "run A to lock the work directory")
    # A is paused while it holds the lock, so that B and C meet it however loaded the machine
    os.kill(a.pid, signal.SIGSTOP)
    try:
        c = start(*args, "--wait")
        wait_until(lambda: waits_for(c, work / LOCK_NAME) or c.poll() is not None, "run C to wait for the lock")
        b = crforge(*args)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    a_out, a_err = a.communicate(timeout=180)
    c_out, c_err = c.communicate(timeout=180)
    return {"root": root, "work": work, "args": args, "a": (a.returncode, a_err, a.pid), "b": b,
            "c": (c.returncode, c_err, c.pid)}


def test_two_dataset_runs_on_one_work_directory(two_datasets):
    work = two_datasets["work"]
    rc_a, err_a, pid_a = two_datasets["a"]
    b = two_datasets["b"]
    assert rc_a == 0, err_a
    # B is refused at once, naming the directory, the lock and the run holding it (A)
    rc_c, err_c, pid_c = two_datasets["c"]
    assert b.returncode == 2
    assert f"{work} is in use by crforge dataset (pid {pid_a} on host" in b.stderr
    assert str(work / LOCK_NAME) in b.stderr and "--wait" in b.stderr
    # C waited for A, then rebuilt the same file from A's visits
    assert rc_c == 0, err_c
    assert "waiting" in err_c
    assert validate(work / "tiny.h5", progress=False) == []
    assert json.loads((work / "tiny.report.json").read_text())["status"] == "ok"
    assert not leftovers(work)


def test_an_existing_output_of_another_data_set_is_refused(two_datasets, tmp_path):
    args = two_datasets["args"]
    other = tiny_set(tmp_path / "other.h5", seed=5)
    notes = tmp_path / "notes.h5"
    notes.write_text("my notes, not a data set\n")
    before = {**digests(other), **digests(notes), **digests(two_datasets["work"])}
    other_before = digests(other)
    r = crforge(*args, "--output", other)
    assert r.returncode == 2
    assert f"{other} exists and was built from another manifest" in r.stderr and "--overwrite" in r.stderr
    r = crforge(*args, "--output", notes)
    assert r.returncode == 2
    assert f"{notes} exists and is not a readable crforge data set" in r.stderr
    assert {**digests(other), **digests(notes), **digests(two_datasets["work"])} == before
    # with --overwrite the file is replaced by the data set (the visits are reused)
    r = crforge(*args, "--output", other, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert validate(other, progress=False) == []
    assert digests(other) != other_before


def test_labels_with_changed_settings_are_refused_not_reused(two_datasets):
    work = two_datasets["work"]
    labels = work / "labels" / "j4e000"
    before = digests(labels)
    r = crforge("label", work / "raw" / "j4e000", "--out", work / "labels", "--set", "label.grow_snr=2.5")
    assert r.returncode == 2
    assert f"{labels} holds labels made with other settings (grow_snr 3.0 -> 2.5)" in r.stderr
    assert "--overwrite" in r.stderr
    r = crforge("label", work / "raw" / "j4e000", "--out", work / "labels", "-v")
    assert r.returncode == 0, r.stderr
    assert "made with the same settings from the same exposures; kept" in r.stderr
    assert digests(labels) == before
    # labels of an earlier labeller (no version recorded) are not taken for this one's
    report = labels / "labels.json"
    text = report.read_text()
    doc = json.loads(text)
    del doc["config"]["labeller"]
    report.write_text(json.dumps(doc))
    try:
        r = crforge("label", work / "raw" / "j4e000", "--out", work / "labels")
        assert r.returncode == 2
        assert f"{labels} holds labels made with other settings (labeller None -> 2)" in r.stderr
    finally:
        report.write_text(text)


def test_simulate_into_a_visit_with_other_settings_is_refused(tmp_path):
    args = ["simulate", "--out", tmp_path / "raw", "--size", "64x128", "--n-exposures", "2"]
    r = crforge(*args, "--seed", "1")
    assert r.returncode == 0, r.stderr
    visit = Path(r.stdout.strip())
    before = digests(visit)
    r = crforge(*args, "--seed", "2")
    assert r.returncode == 2
    assert f"{visit} was simulated with other settings (seed 1 -> 2)" in r.stderr and "--overwrite" in r.stderr
    assert digests(visit) == before
    r = crforge(*args, "--seed", "1", "-v")
    assert r.returncode == 0 and "already simulated with the same settings, kept" in r.stderr
    assert digests(visit) == before and not leftovers(tmp_path / "raw")


def test_an_interrupted_dataset_run_reruns_to_a_valid_file(tmp_path):
    # two visits, so that the run is still labelling when the signal lands
    (tmp_path / "m.toml").write_text(MANIFEST + MANIFEST[MANIFEST.index("[[visit]]"):])
    work = tmp_path / "work"
    args = ["dataset", "--manifest", tmp_path / "m.toml", "--work", work, "--scheduler", "serial"]
    proc = start(*args)
    # interrupted while labelling: AstroDrizzle's scratch directory is there
    wait_until(lambda: any((work / "labels").glob("*/.scratch*")) or proc.poll() is not None,
               "the run to start labelling")
    # Ctrl-C, pressed again after a second if the run goes on (astropy defers a SIGINT
    # that lands in a FITS write; a library's bare except could then swallow it)
    while proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            continue
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "crforge dataset: interrupted" in err, err[-3000:]
    assert not (work / "tiny.h5").exists() and not (work / "labels" / "j4e000" / "labels.json").exists()
    assert not leftovers(work)  # scratch and temporary files removed, lock released
    r = crforge(*args)
    assert r.returncode == 0, r.stderr
    assert validate(work / "tiny.h5", progress=False) == []


def test_an_exposure_in_two_visits_is_refused(tmp_path):
    rows = MANIFEST + textwrap.dedent("""
    obset_id = "ab"
    name = "first"
    [[visit]]
    field_type = "globular_cluster"
    n_exposures = 2
    obset_id = "ab"
    name = "second"
    """)
    (tmp_path / "m.toml").write_text(rows)
    r = crforge("dataset", "--manifest", tmp_path / "m.toml", "--work", tmp_path / "w", "--scheduler", "serial")
    assert r.returncode == 2
    assert "visits 'first' and 'second' share the exposure 'j4e0ab01q'" in r.stderr
    assert not (tmp_path / "w").exists()  # refused before anything was written
    (tmp_path / "real.csv").write_text(
        "instrument,filter,proposal_id,obset_id,field_type,exposures\n"
        "ACS/WFC,F606W,10775,ab,globular_cluster,j9l9abq1q j9l9abq2q\n"
        "ACS/WFC,F814W,10775,ab,globular_cluster,j9l9abq3q j9l9abq2q\n")
    r = crforge("dataset", "--manifest", tmp_path / "real.csv", "--work", tmp_path / "w")
    assert r.returncode == 2
    assert "visits '10775_ab_f606w' and '10775_ab_f814w' share the exposure 'j9l9abq2q'" in r.stderr
    assert not (tmp_path / "w").exists()


def test_inspect_reports_duplicate_stamps(tmp_path):
    def duplicate(splits):
        splits["train"]["image"][3] = splits["train"]["image"][0]
        splits["test"]["image"][1] = splits["train"]["image"][5]

    path = tiny_set(tmp_path / "dup.h5", seed=0, edit=duplicate)
    before = digests(path)
    r = crforge("inspect", path)
    assert r.returncode == 2  # an invalid data set is bad input
    assert "/train/image: 1 duplicate stamp(s), identical to an earlier one (3 = 0)" in r.stderr
    assert "/test/image: 1 stamp(s) identical to stamps of another split (/train/image 5 = /test/image 1)" in r.stderr
    assert "INVALID (2 problem(s))" in r.stderr
    assert digests(path) == before
    assert crforge("inspect", tiny_set(tmp_path / "ok.h5", seed=0)).returncode == 0


# --------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def data_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return tiny_set(root / "a.h5", seed=0), tiny_set(root / "b.h5", seed=1)


def _epochs(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _complete(run: Path) -> None:
    """Every file with a final name in ``run`` is whole: checkpoints load, metrics parse."""
    from crforge.training import checkpoint

    # (pathlib's glob also matches hidden names: a killed run's half-written temporary
    # files, which are not final names and which the next run removes)
    for pt in run.glob("*.pt"):
        if not pt.name.startswith("."):
            checkpoint.read(pt, expect="train")
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def _endless_training(data: Path, runs: Path, name: str, epochs: int) -> tuple[list, Path, subprocess.Popen]:
    """A mask training that would run for ever, once it has ``epochs`` epochs: its arguments, run dir, process."""
    args = ["train", "--data", data, "--runs", runs, "--name", name, "--kind", "mask", *TINY_TRAIN]
    run = runs / name / "mask"
    proc = start(*args, "--set=train.epochs=100000")
    wait_until(lambda: _epochs(run) >= epochs or proc.poll() is not None, f"{epochs} epoch(s) of {name}")
    return args, run, proc


def test_two_trainings_into_one_run_directory_then_sigint(data_sets, tmp_path):
    args, run, a = _endless_training(data_sets[0], tmp_path / "runs", "r", 1)
    b = crforge(*args, "--set=train.epochs=100000")
    assert b.returncode == 2
    assert f"{run} is in use by crforge train (mask) (pid {a.pid} on host" in b.stderr
    a.send_signal(signal.SIGINT)
    _, err = a.communicate(timeout=120)
    assert a.returncode == 130 and "crforge train: interrupted" in err
    log = (run / "train.log").read_text()
    assert log.count("new mask run") == 1  # B wrote nothing into A's run
    _complete(run)
    assert not leftovers(run)
    done = _epochs(run)
    r = crforge(*args, "--resume", f"--set=train.epochs={done + 1}")
    assert r.returncode == 0, r.stderr
    assert _epochs(run) == done + 1 and f"resumed mask from {run / 'last.pt'}" in (run / "train.log").read_text()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_that_python_drops_still_stops_the_training_and_dataset_loops():
    """A SIGINT whose KeyboardInterrupt is raised inside a weakref callback is dropped by
    Python ("Exception ignored"); the interrupt is remembered and the loop stops anyway."""
    import weakref

    import torch
    from torch.utils.data import DataLoader

    from crforge import interrupts
    from crforge.pipeline.dataset.stage import _Progress, _run_serial
    from crforge.training.models import build_model
    from crforge.training.train import evaluate

    class Obj:
        pass

    loader = DataLoader([{"image": torch.zeros(1, 16, 16), "cr": torch.zeros(1, 16, 16),
                          "weight": torch.ones(1, 16, 16), "index": 0}], batch_size=1)
    with interrupts.catching():
        interrupts.check()  # nothing pending
        obj = Obj()
        ref = weakref.ref(obj, lambda _: interrupts._handler(signal.SIGINT, None))
        del obj  # the handler's exception is raised in the callback and dropped
        assert ref() is None
        with pytest.raises(KeyboardInterrupt):
            evaluate(build_model("mask", 2, 4), loader, "cpu", "mask", fpr=0.005)
        # the data set build's visit loop too: it stops before the next visit (never
        # reached here, so it needs no spec) and records nothing as done or failed
        progress = _Progress(1)
        with pytest.raises(KeyboardInterrupt):
            _run_serial([None], Path("."), None, progress)
        progress.bar.close()
        assert not progress.results and not progress.failures
    interrupts.check()  # forgotten outside: a later command is not interrupted by it
    assert signal.getsignal(signal.SIGINT) is not interrupts._handler


def test_a_killed_training_resumes(data_sets, tmp_path):
    args, run, a = _endless_training(data_sets[0], tmp_path / "runs", "k", 2)
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    assert a.returncode == -signal.SIGKILL
    _complete(run)  # whatever has a final name is whole; the lock died with the process
    from crforge.training import checkpoint

    done = checkpoint.read(run / "last.pt").epoch
    r = crforge(*args, "--resume", f"--set=train.epochs={done + 1}")
    assert r.returncode == 0, r.stderr
    assert checkpoint.read(run / "last.pt").epoch == done + 1
    assert not leftovers(run)  # the killed run's temporary files are gone too


def test_resume_on_another_data_set_or_crforge_is_refused(data_sets, tmp_path):
    from crforge.training import checkpoint

    a_h5, b_h5 = data_sets
    runs = tmp_path / "runs"
    common = ["--runs", runs, "--name", "d", "--kind", "mask", *TINY_TRAIN]
    assert cli.main(["train", "--data", str(a_h5), *map(str, common), "--set=train.epochs=1"]) == 0
    run = runs / "d" / "mask"
    before = digests(run)
    r = crforge("train", "--data", b_h5, *common, "--resume", "--set=train.epochs=2")
    assert r.returncode == 2
    sha_a = hashlib.sha256(a_h5.read_bytes()).hexdigest()
    sha_b = hashlib.sha256(b_h5.read_bytes()).hexdigest()
    assert f"{run / 'last.pt'}: cannot resume on {b_h5} (sha256 {sha_b[:12]}...)" in r.stderr
    assert f"trained on {a_h5} (sha256 {sha_a[:12]}...)" in r.stderr
    assert digests(run) == before
    # a checkpoint another crforge wrote
    ckpt = checkpoint.read(run / "last.pt")
    ckpt.training.versions["crforge"] = "0.0.1"
    checkpoint.write_training(run / "last.pt", ckpt)
    before = digests(run)
    r = crforge("train", "--data", a_h5, *common, "--resume", "--set=train.epochs=2")
    assert r.returncode == 2 and "written by crforge 0.0.1, this is crforge" in r.stderr
    assert digests(run) == before


# --------------------------------------------------------------------------- publish


@pytest.fixture(scope="module")
def evaluated(data_sets, tmp_path_factory):
    """A tiny mask run evaluated by ``crforge evaluate``, and the best.pt of another run."""
    a_h5, _ = data_sets
    root = tmp_path_factory.mktemp("published")
    for name, seed in (("good", 3), ("other", 4)):
        rc = cli.main(["train", "--data", str(a_h5), "--runs", str(root / "runs"), "--name", name,
                       "--kind", "mask", *TINY_TRAIN, "--set=train.epochs=1", f"--set=train.seed={seed}"])
        assert rc == 0
    rc = cli.main(["evaluate", "--run", str(root / "runs" / "good"), "--data", str(a_h5), "--no-baselines",
                   "--set=evaluate.photometry=false", "--set=evaluate.real_frames=false",
                   "--set=evaluate.stamps_per_field_type=2"])
    assert rc == 0
    return {"run": root / "runs" / "good", "other": root / "runs" / "other" / "mask" / "best.pt"}


def test_publish_refuses_an_evaluation_of_other_weights(evaluated, tmp_path):
    run, zoo = tmp_path / "run", tmp_path / "zoo"
    shutil.copytree(evaluated["run"], run)
    assert crforge("publish", run, "--name", "first", "--zoo", zoo).returncode == 0
    before = digests(zoo)
    # the run was trained on after its evaluation: other weights under best.pt
    shutil.copy(evaluated["other"], run / "mask" / "best.pt")
    r = crforge("publish", run, "--name", "second", "--zoo", zoo)
    assert r.returncode == 2
    assert f"{run / 'evaluation.json'} holds the figures of" in r.stderr
    assert f"not of {run / 'mask' / 'best.pt'}" in r.stderr and "re-run `crforge evaluate" in r.stderr
    assert digests(zoo) == before


def test_two_publications_into_one_zoo(evaluated, tmp_path):
    from crforge.deepcr_models import registry

    zoo = tmp_path / "zoo"
    with hold(zoo, what="a test holding the zoo"):
        r = crforge("publish", evaluated["run"], "--name", "a", "--zoo", zoo)
        assert r.returncode == 2
        assert f"{zoo} is in use by a test holding the zoo (pid {os.getpid()} on host" in r.stderr
        assert not (zoo / "registry.json").exists()
        waiting = start("publish", evaluated["run"], "--name", "a", "--zoo", zoo, "--wait")
        wait_until(lambda: waits_for(waiting, zoo / LOCK_NAME) or waiting.poll() is not None,
                   "the second publication to wait for the lock")
        time.sleep(0.3)
        assert waiting.poll() is None  # still waiting for the lock
    _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0 and f"{zoo} is in use by a test holding the zoo" in err and "waiting" in err
    # two at once, both told to wait: both records are in the registry (none lost)
    procs = [start("publish", evaluated["run"], "--name", n, "--zoo", zoo, "--wait") for n in ("b", "c")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    records = registry.read_registry(zoo)
    assert sorted(r.name for r in records) == ["a", "b", "c"]
    for r in records:
        assert hashlib.sha256((zoo / r.weights).read_bytes()).hexdigest() == r.sha256
    assert not leftovers(zoo)
