"""Tests of the crforge command line with injected fake stage modules."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crforge import __version__, cli, config


@dataclass
class FakeSub:
    level: int = 1


@dataclass
class FakeConfig:
    name: str = "fake"
    rate: float = 1.0
    out: Path = Path("out")
    sub: FakeSub = field(default_factory=FakeSub)


@pytest.fixture
def fake_stage(monkeypatch):
    """Install a fake stage module ``fake_stage`` and return it."""
    mod = types.ModuleType("fake_stage", "A fake stage for tests.\n\nMore text.")
    mod.calls = []
    mod.behaviour = None

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", default="in.fits")
        parser.add_argument("--status", type=int, default=0)

    def run(args: argparse.Namespace) -> int | None:
        cfg = config.load(FakeConfig, args.config, args.set)
        mod.calls.append((args, cfg))
        logging.getLogger("fake_stage").info("running on %s", args.input)
        logging.getLogger("fake_stage").debug("debug detail")
        if mod.behaviour is not None:
            raise mod.behaviour
        return None if args.status == 99 else args.status

    mod.add_arguments = add_arguments
    mod.run = run
    monkeypatch.setitem(sys.modules, "fake_stage", mod)
    return mod


@pytest.fixture
def stages():
    return {"fake": ("fake_stage", "do fake things")}


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_success_returns_zero_and_passes_args(fake_stage, stages, capsys):
    rc = cli.main(["fake", "--input", "x.fits"], stages=stages)
    assert rc == 0
    args, cfg = fake_stage.calls[-1]
    assert args.command == "fake" and args.input == "x.fits"
    assert args.config is None and args.set == [] and args.verbose == 0
    assert cfg == FakeConfig()
    assert capsys.readouterr().err == ""


def test_none_status_is_zero_and_stage_status_passes_through(fake_stage, stages):
    assert cli.main(["fake", "--status", "99"], stages=stages) == 0
    assert cli.main(["fake", "--status", "3"], stages=stages) == 3


def test_config_and_set_reach_the_stage(fake_stage, stages, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "from-file"\nrate = 2\n[sub]\nlevel = 5\n')
    rc = cli.main(
        ["fake", "--config", str(path), "--set", "rate=3", "--set", "sub.level=7",
         "--set", "out=o/p"],
        stages=stages,
    )
    assert rc == 0
    _, cfg = fake_stage.calls[-1]
    assert cfg == FakeConfig(name="from-file", rate=3.0, out=Path("o/p"), sub=FakeSub(7))


def test_unknown_config_key_is_exit_2_with_message(fake_stage, stages, capsys):
    rc = cli.main(["fake", "--set", "sub.levle=2"], stages=stages)
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("crforge fake: error: ")
    assert "'sub.levle'" in err and "did you mean 'sub.level'" in err


def test_type_error_is_exit_2(fake_stage, stages, capsys):
    assert cli.main(["fake", "--set", "rate=fast"], stages=stages) == 2
    err = capsys.readouterr().err
    assert "crforge fake: error:" in err and "'rate'" in err and "float" in err


def test_missing_config_file_is_exit_2(fake_stage, stages, capsys):
    assert cli.main(["fake", "--config", "missing.toml"], stages=stages) == 2
    err = capsys.readouterr().err
    assert err == "crforge fake: error: config file not found: missing.toml\n"


def test_oserror_style_file_not_found(fake_stage, stages, capsys):
    fake_stage.behaviour = FileNotFoundError(2, "No such file or directory", "a.fits")
    assert cli.main(["fake"], stages=stages) == 2
    assert capsys.readouterr().err == (
        "crforge fake: error: No such file or directory: a.fits\n"
    )


@pytest.mark.parametrize("exc", [ValueError("bad value"), TypeError("bad type")])
def test_value_and_type_errors_are_exit_2(fake_stage, stages, capsys, exc):
    fake_stage.behaviour = exc
    assert cli.main(["fake"], stages=stages) == 2
    assert capsys.readouterr().err == f"crforge fake: error: {exc}\n"


def test_keyboard_interrupt_is_130(fake_stage, stages, capsys):
    fake_stage.behaviour = KeyboardInterrupt()
    assert cli.main(["fake"], stages=stages) == 130
    assert "interrupted" in capsys.readouterr().err


def test_other_exceptions_propagate(fake_stage, stages):
    fake_stage.behaviour = RuntimeError("bug")
    with pytest.raises(RuntimeError, match="bug"):
        cli.main(["fake"], stages=stages)


def test_usage_errors_are_exit_2(fake_stage, stages, capsys):
    assert cli.main(["fake", "--no-such-option"], stages=stages) == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
    assert cli.main(["nonsense"], stages=stages) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["fake", "--status", "x"], stages=stages) == 2


def test_no_command_prints_help_and_exits_2(stages, capsys):
    assert cli.main([], stages=stages) == 2
    err = capsys.readouterr().err
    assert "usage: crforge" in err and "fake" in err


def test_help_and_version_exit_0(fake_stage, stages, capsys):
    assert cli.main(["--help"], stages=stages, pending=PENDING_FAKE) == 0
    out = capsys.readouterr().out
    assert "fake" in out and "do fake things" in out and "someday" in out
    assert cli.main(["--version"], stages=stages) == 0
    assert capsys.readouterr().out.strip() == f"crforge {__version__}"
    assert cli.main(["fake", "--help"], stages=stages) == 0
    out = capsys.readouterr().out
    assert "--input" in out and "--config" in out and "--set" in out and "--verbose" in out


#: a stage announced but not built (the real table may have none left)
PENDING_FAKE = {"someday": ("a stage to come", "someday is not built yet")}


def test_pending_stages_exit_2_with_message(stages, capsys):
    rc = cli.main(["someday", "--data", "work/x.h5", "--whatever", "1"], stages=stages,
                  pending=PENDING_FAKE)
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("crforge someday: ")
    assert "not built yet" in err


def test_default_stage_table():
    assert cli.STAGES["simulate"][0] == "crforge.pipeline.simulate"
    assert cli.STAGES["label"][0] == "crforge.pipeline.drizzle"
    assert cli.STAGES["dataset"][0] == "crforge.pipeline.dataset"
    assert cli.STAGES["inspect"][0] == "crforge.pipeline.inspect"
    assert cli.STAGES["train"][0] == "crforge.training.train"
    assert cli.STAGES["evaluate"][0] == "crforge.training.evaluate"
    assert not {"dataset", "inspect", "train", "evaluate"} & set(cli.PENDING)


def test_only_the_chosen_stage_is_imported(fake_stage, monkeypatch, capsys):
    stages = {"fake": "fake_stage", "other": ("no_such_module_xyz", "never imported")}
    assert cli.main(["fake"], stages=stages) == 0
    assert cli.main(["--help"], stages=stages) == 0
    assert "never imported" in capsys.readouterr().out


def test_broken_stage_reports_import_error(stages, capsys):
    stages = {"broken": ("no_such_module_xyz", "a broken stage")}
    rc = cli.main(["broken", "--anything"], stages=stages)
    assert rc == 1
    err = capsys.readouterr().err
    assert "crforge broken: error: cannot import no_such_module_xyz" in err


def test_stage_without_run_is_reported(monkeypatch, capsys):
    mod = types.ModuleType("runless_stage")
    monkeypatch.setitem(sys.modules, "runless_stage", mod)
    assert cli.main(["x"], stages={"x": "runless_stage"}) == 1
    assert "has no run(args)" in capsys.readouterr().err


def test_build_parser_imports_all_and_calls_add_arguments(fake_stage, stages):
    parser = cli.build_parser(stages=stages)
    args = parser.parse_args(["fake", "--input", "a", "--set", "x=1", "--set", "y=2", "-vv"])
    assert args.input == "a" and args.set == ["x=1", "y=2"] and args.verbose == 2
    assert args._run is fake_stage.run


def test_verbose_logging_to_stderr(fake_stage, stages, capsys):
    assert cli.main(["fake"], stages=stages) == 0
    assert "running on" not in capsys.readouterr().err
    assert cli.main(["fake", "-v"], stages=stages) == 0
    err = capsys.readouterr().err
    assert "I fake_stage: running on in.fits" in err and "debug detail" not in err
    assert cli.main(["fake", "-vv"], stages=stages) == 0
    assert "D fake_stage: debug detail" in capsys.readouterr().err
    # repeated calls do not stack handlers
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, cli._StderrHandler)]
    assert len(handlers) == 1


def test_console_script_entry_point():
    from importlib import metadata

    eps = metadata.entry_points(group="console_scripts", name="crforge")
    assert [ep.value for ep in eps] == ["crforge.cli:main"]


def test_module_runs_as_program():
    proc = subprocess.run(
        [sys.executable, "-m", "crforge.cli", "evaluate", "--data", "x.h5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "the following arguments are required: --run" in proc.stderr
