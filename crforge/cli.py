"""The ``crforge`` command line: one subcommand per pipeline stage.

Each stage module owns its arguments and its work through two functions::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

The CLI adds the options every subcommand shares (``--config FILE.toml``, repeatable
``--set KEY=VALUE`` and ``-v/--verbose``); a stage resolves its config with
``crforge.config.load(StageConfig, args.config, args.set)``.

Stages are listed in :data:`STAGES` (name -> (module, help)); only the module of the
chosen subcommand is imported by :func:`main`, so ``crforge --help`` stays fast and one
broken stage does not take the others down.  Subcommands in :data:`PENDING` are known
but not built yet: they say so and exit with status 2.

Exit status: 0 success; 2 usage or configuration error (``ValueError``,
``TypeError``, ``FileNotFoundError`` raised by a stage; message
``crforge <cmd>: error: <msg>`` on stderr); 130 interrupted; otherwise what the stage
returns.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from crforge import __version__

logger = logging.getLogger(__name__)

__all__ = ["STAGES", "PENDING", "build_parser", "main", "add_common_arguments"]

#: Built stages: subcommand name -> (module path, one-line help).
STAGES: dict[str, tuple[str, str]] = {
    "simulate": (
        "crforge.pipeline.simulate",
        "simulate synthetic HST visits with injected cosmic rays (and their truth)",
    ),
    "label": (
        "crforge.pipeline.drizzle",
        "label cosmic rays in visits with AstroDrizzle (median, blot, driz_cr)",
    ),
    "query": (
        "crforge.pipeline.archive",
        "find multi-exposure HST visits on MAST (by criteria or a manifest's rows) -> a manifest",
    ),
    "fetch": (
        "crforge.pipeline.fetch",
        "download a manifest's exposures from MAST into WORK/raw (verified sizes, resume, retries)",
    ),
    "dataset": (
        "crforge.pipeline.dataset",
        "build the HDF5 training set of a manifest (simulate/fetch, label, stamp, split)",
    ),
    "inspect": (
        "crforge.pipeline.inspect",
        "validate an HDF5 training set and summarise it (splits, fields, label quality)",
    ),
    "train": (
        "crforge.training.train",
        "train the mask and inpaint networks on an HDF5 training set",
    ),
    "publish": (
        "crforge.deepcr_models.publish",
        "publish a trained, evaluated run's weights, registry records and model card into the zoo",
    ),
    "clean": (
        "crforge.deepcr_models.fitsclean",
        "mask (and inpaint) cosmic rays in a calibrated HST file with a zoo model; CRs into DQ",
    ),
    "export": (
        "crforge.deepcr_models.interop",
        "export a mask model to another package's format (deepCR 0.3.1)",
    ),
    "evaluate": (
        "crforge.training.evaluate",
        "evaluate a run against LACosmic, deepCR and inpainting baselines (ROC, TPR at FPR, MSE)",
    ),
}

#: Stages not built yet: subcommand name -> (one-line help, message when called).
PENDING: dict[str, tuple[str, str]] = {
}

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
_LOG_DATEFMT = "%H:%M:%S"


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


#: Libraries that log every step at INFO: shown only with -vv (AstroDrizzle's trailer
#: file in the scratch directory keeps all of its log anyway).
_CHATTY = ("drizzlepac", "stwcs", "stsci", "distributed", "astroquery", "astropy", "py")


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


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options every subcommand takes.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The subcommand's parser.  Adds ``--config`` (``args.config``, a path or
        None), ``--set`` (``args.set``, a list of ``KEY=VALUE`` strings) and
        ``-v/--verbose`` (``args.verbose``, a count).
    """
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--config",
        metavar="FILE.toml",
        default=None,
        help="TOML config file (overrides the defaults)",
    )
    group.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config value, e.g. --set label.driz_cr_snr='3.5 3.0' "
        "(repeatable; applied after --config)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log progress (-v) or debugging detail (-vv) to stderr",
    )


def _normalise(stages: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    out = {}
    for name, entry in stages.items():
        if isinstance(entry, str):
            out[name] = (entry, "")
        else:
            module, help_ = entry
            out[name] = (module, help_)
    return out


def _pending_runner(name: str, message: str):
    def run(args: argparse.Namespace) -> int:
        print(f"crforge {name}: {message}", file=sys.stderr)
        return EXIT_USAGE

    return run


def _broken_runner(name: str, module: str, exc: BaseException):
    def run(args: argparse.Namespace) -> int:
        print(
            f"crforge {name}: error: cannot import {module}: "
            f"{type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1

    return run


def _import_stage(module: str) -> ModuleType:
    mod = importlib.import_module(module)
    if not callable(getattr(mod, "run", None)):
        raise AttributeError(f"stage module {module} has no run(args) function")
    return mod


def build_parser(
    stages: Mapping[str, Any] | None = None,
    pending: Mapping[str, tuple[str, str]] | None = None,
    *,
    only: str | None = None,
) -> argparse.ArgumentParser:
    """Build the ``crforge`` argument parser.

    Parameters
    ----------
    stages : Mapping, optional
        Subcommand name -> ``(module path, help)`` (or just the module path); default
        :data:`STAGES`.  Each module must define ``run(args) -> int`` and may define
        ``add_arguments(parser)``.
    pending : Mapping, optional
        Subcommand name -> ``(help, message)`` for stages not built yet; default
        :data:`PENDING`.  A name also in ``stages`` is taken from ``stages``.
    only : str, optional
        Import only this stage's module (the others are registered with their help
        text but no arguments; ``""`` imports none).  ``None`` imports every stage
        module.

    Returns
    -------
    argparse.ArgumentParser
        The parser; a parsed namespace carries ``command``, ``_run`` (the function
        to call) and ``_pending`` (True for stages not built yet).

    Notes
    -----
    A stage module that fails to import is still registered; calling it reports
    the import error and exits with status 1 (``-vv`` does not change that; import
    the module directly to see the traceback).
    """
    stages = _normalise(STAGES if stages is None else stages)
    pending = dict(PENDING if pending is None else pending)
    parser = argparse.ArgumentParser(
        prog="crforge",
        description="Turn multi-exposure HST visits into cosmic-ray training data "
        "and train deepCR-style networks on it.",
    )
    parser.add_argument("--version", action="version", version=f"crforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for name, (module, help_) in stages.items():
        p = sub.add_parser(name, help=help_ or None, description=help_ or None)
        run = None
        if only is None or only == name:
            try:
                mod = _import_stage(module)
            except (ImportError, AttributeError) as exc:
                logger.debug("cannot import stage %s (%s)", name, module, exc_info=True)
                run = _broken_runner(name, module, exc)
                p.set_defaults(_lenient=True)
            else:
                add_arguments = getattr(mod, "add_arguments", None)
                if add_arguments is not None:
                    add_arguments(p)
                if mod.__doc__ and not help_:
                    p.description = mod.__doc__.strip().split("\n\n")[0]
                run = mod.run
        add_common_arguments(p)
        p.set_defaults(_run=run, _pending=False, _parser=p)

    for name, (help_, message) in pending.items():
        if name in stages:
            continue
        p = sub.add_parser(name, help=f"{help_} (not built yet)", description=help_)
        add_common_arguments(p)
        p.set_defaults(
            _run=_pending_runner(name, message), _pending=True, _lenient=True, _parser=p
        )
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


def main(
    argv: Sequence[str] | None = None,
    *,
    stages: Mapping[str, Any] | None = None,
    pending: Mapping[str, tuple[str, str]] | None = None,
) -> int:
    """Run the ``crforge`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.
    stages, pending : Mapping, optional
        As :func:`build_parser` (for tests and embedding).

    Returns
    -------
    int
        The exit status: 0 success, 2 usage/configuration error or a stage not built
        yet, 130 interrupted, else the stage's own status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    all_names = list(_normalise(STAGES if stages is None else stages))
    all_names += list(PENDING if pending is None else pending)
    # import only the chosen stage's module (none for --help or no command)
    parser = build_parser(stages, pending, only=_chosen_command(argv, all_names) or "")
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "_lenient", False):
            sub_parser = getattr(args, "_parser", parser)
            sub_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version, usage errors
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)

    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    _setup_logging(getattr(args, "verbose", 0))
    cmd = args.command
    logger.debug("crforge %s: %s", cmd, vars(args))
    try:
        status = args._run(args)
    except KeyboardInterrupt:
        print(f"crforge {cmd}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, FileNotFoundError) as exc:
        logger.debug("crforge %s failed", cmd, exc_info=True)
        print(f"crforge {cmd}: error: {_error_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    if status is None:
        return EXIT_OK
    return int(status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
