"""Tests of the crforge command line with injected fake command modules."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crforge import __version__, cli
from crforge.errors import InputError


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

    def run(args: argparse.Namespace, cfg: FakeConfig) -> int | None:
        mod.calls.append((args, cfg))
        logging.getLogger("fake_stage").info("running on %s", args.input)
        logging.getLogger("fake_stage").debug("debug detail")
        if mod.behaviour is not None:
            raise mod.behaviour
        return None if args.status == 99 else args.status

    mod.CONFIG = FakeConfig
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
    rc = cli.main(["fake", "--input", "x.fits"], commands=stages)
    assert rc == 0
    args, cfg = fake_stage.calls[-1]
    assert args.command == "fake" and args.input == "x.fits"
    assert args.config is None and args.set == [] and args.verbose == 0
    assert cfg == FakeConfig()
    assert capsys.readouterr().err == ""


def test_none_status_is_zero_and_stage_status_passes_through(fake_stage, stages):
    assert cli.main(["fake", "--status", "99"], commands=stages) == 0
    assert cli.main(["fake", "--status", "3"], commands=stages) == 3


def test_config_and_set_reach_the_stage(fake_stage, stages, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "from-file"\nrate = 2\n[sub]\nlevel = 5\n')
    rc = cli.main(
        ["fake", "--config", str(path), "--set", "rate=3", "--set", "sub.level=7",
         "--set", "out=o/p"],
        commands=stages,
    )
    assert rc == 0
    _, cfg = fake_stage.calls[-1]
    assert cfg == FakeConfig(name="from-file", rate=3.0, out=Path("o/p"), sub=FakeSub(7))


def test_unknown_config_key_is_exit_2_with_message(fake_stage, stages, capsys):
    rc = cli.main(["fake", "--set", "sub.levle=2"], commands=stages)
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("crforge fake: error: ")
    assert "'sub.levle'" in err and "did you mean 'sub.level'" in err


def test_type_error_is_exit_2(fake_stage, stages, capsys):
    assert cli.main(["fake", "--set", "rate=fast"], commands=stages) == 2
    err = capsys.readouterr().err
    assert "crforge fake: error:" in err and "'rate'" in err and "float" in err


def test_missing_config_file_is_exit_2(fake_stage, stages, capsys):
    assert cli.main(["fake", "--config", "missing.toml"], commands=stages) == 2
    err = capsys.readouterr().err
    assert err == "crforge fake: error: config file not found: missing.toml\n"


def test_oserror_style_file_not_found(fake_stage, stages, capsys):
    fake_stage.behaviour = FileNotFoundError(2, "No such file or directory", "a.fits")
    assert cli.main(["fake"], commands=stages) == 2
    assert capsys.readouterr().err == (
        "crforge fake: error: No such file or directory: a.fits\n"
    )


def test_input_errors_are_exit_2(fake_stage, stages, capsys):
    fake_stage.behaviour = InputError("x.fits[SCI,1]: keyword BUNIT missing")
    assert cli.main(["fake"], commands=stages) == 2
    assert capsys.readouterr().err == "crforge fake: error: x.fits[SCI,1]: keyword BUNIT missing\n"


@pytest.mark.parametrize("exc", [ValueError("bad value"), TypeError("bad type"), RuntimeError("bug")])
def test_unexpected_errors_are_exit_1_with_the_traceback_behind_v(fake_stage, stages, capsys, exc):
    """A plain ValueError or TypeError is a fault of ours, not bad input: never hidden as exit 2."""
    fake_stage.behaviour = exc
    assert cli.main(["fake"], commands=stages) == 1
    err = capsys.readouterr().err
    assert err == f"crforge fake: error: unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)\n"
    assert cli.main(["fake", "-v"], commands=stages) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and f"{type(exc).__name__}: {exc}" in err


def test_keyboard_interrupt_is_130(fake_stage, stages, capsys):
    fake_stage.behaviour = KeyboardInterrupt()
    assert cli.main(["fake"], commands=stages) == 130
    assert "interrupted" in capsys.readouterr().err


def test_usage_errors_are_exit_2(fake_stage, stages, capsys):
    assert cli.main(["fake", "--no-such-option"], commands=stages) == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
    assert cli.main(["nonsense"], commands=stages) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["fake", "--status", "x"], commands=stages) == 2


def test_no_command_prints_help_and_exits_2(stages, capsys):
    assert cli.main([], commands=stages) == 2
    err = capsys.readouterr().err
    assert "usage: crforge" in err and "fake" in err


def test_help_and_version_exit_0(fake_stage, stages, capsys):
    assert cli.main(["--help"], commands=stages) == 0
    out = capsys.readouterr().out
    assert "fake" in out and "do fake things" in out
    assert cli.main(["--version"], commands=stages) == 0
    assert capsys.readouterr().out.strip() == f"crforge {__version__}"
    assert cli.main(["fake", "--help"], commands=stages) == 0
    out = capsys.readouterr().out
    assert "--input" in out and "--config" in out and "--set" in out and "--verbose" in out


def test_default_command_table():
    """Every command is a thin module of crforge.cli with run(args, cfg) and its flags."""
    import importlib

    assert set(cli.COMMANDS) == {"simulate", "label", "query", "fetch", "dataset", "inspect", "train",
                                 "evaluate", "publish", "clean", "models", "export", "realdata"}
    with_config = set()
    for name, (module, help_) in cli.COMMANDS.items():
        assert module.startswith("crforge.cli.") and help_
        mod = importlib.import_module(module)
        assert callable(mod.run) and callable(mod.add_arguments)
        if mod.CONFIG is not None:
            with_config.add(name)
    assert with_config == {"simulate", "label", "query", "fetch", "dataset", "train", "evaluate"}


@pytest.mark.parametrize("cmd", [["inspect", "x"], ["clean", "x", "--model", "m"], ["publish", "x", "--name", "n"],
                                 ["export", "x", "--to", "deepcr", "--output", "o"]])
def test_commands_without_a_config_table_refuse_config_and_set(cmd, capsys):
    assert cli.main(cmd + ["--set", "a=1"]) == 2
    assert "unrecognized arguments: --set" in capsys.readouterr().err


def test_set_without_a_table_is_the_commands_own(tmp_path):
    """``crforge simulate --set seed=3`` is ``--set simulate.seed=3``; other tables stay reachable."""
    import types as _types

    mod = _types.SimpleNamespace(CONFIG=__import__("crforge.cli.runconfig", fromlist=["x"]).RunConfig,
                                 SECTION="simulate")
    args = argparse.Namespace(config=None, set=["seed=3", "label.grow_snr=2.5"])
    cfg = cli._resolve_config(mod, args)
    assert cfg.simulate.seed == 3 and cfg.label.grow_snr == 2.5


def test_only_the_chosen_stage_is_imported(fake_stage, monkeypatch, capsys):
    stages = {"fake": ("fake_stage", "fake"), "other": ("no_such_module_xyz", "never imported")}
    assert cli.main(["fake"], commands=stages) == 0
    assert cli.main(["--help"], commands=stages) == 0
    assert "never imported" in capsys.readouterr().out


def test_broken_stage_reports_import_error(stages, capsys):
    stages = {"broken": ("no_such_module_xyz", "a broken stage")}
    rc = cli.main(["broken", "--anything"], commands=stages)
    assert rc == 1
    err = capsys.readouterr().err
    assert "crforge broken: error: cannot import no_such_module_xyz" in err


def test_stage_without_run_is_reported(monkeypatch, capsys):
    mod = types.ModuleType("runless_stage")
    monkeypatch.setitem(sys.modules, "runless_stage", mod)
    assert cli.main(["x"], commands={"x": ("runless_stage", "no run")}) == 1
    assert "has no run(args, cfg)" in capsys.readouterr().err


def test_build_parser_imports_all_and_calls_add_arguments(fake_stage, stages):
    parser = cli.build_parser(commands=stages)
    args = parser.parse_args(["fake", "--input", "a", "--set", "x=1", "--set", "y=2", "-vv"])
    assert args.input == "a" and args.set == ["x=1", "y=2"] and args.verbose == 2
    assert args._command is fake_stage


def test_verbose_logging_to_stderr(fake_stage, stages, capsys):
    assert cli.main(["fake"], commands=stages) == 0
    assert "running on" not in capsys.readouterr().err
    assert cli.main(["fake", "-v"], commands=stages) == 0
    err = capsys.readouterr().err
    assert "I fake_stage: running on in.fits" in err and "debug detail" not in err
    assert cli.main(["fake", "-vv"], commands=stages) == 0
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
