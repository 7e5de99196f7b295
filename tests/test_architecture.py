"""The shape of the code: one import root, layers without cycles, light configs, short functions.

These read the source (AST) or import modules in a fresh interpreter; they do not
run the stages, except ``crforge label`` and ``crforge dataset`` on a tiny visit to
show that neither imports torch.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: import-root package -> folder (pyproject's package-dir)
FOLDERS = {"crforge": ROOT / "crforge", "crforge.pipeline": ROOT / "pipeline",
           "crforge.training": ROOT / "training", "crforge.deepcr_models": ROOT / "deepcr_models"}
#: the layers, lowest first: a package may import only from itself and the ones before it
LAYERS = ["crforge.core", "crforge.pipeline", "crforge.training", "crforge.deepcr_models", "crforge.cli"]
GENERIC = ("pipeline", "training", "deepcr_models")


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for pkg, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if pkg == "crforge" and parts and parts[0] in GENERIC:
                continue
            out[".".join([pkg, *parts])] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module name an ``import`` in the file names (function-local ones included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            names.add("<relative>")
    return names


def _layer(module: str) -> str | None:
    for layer in reversed(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return layer
    if module == "crforge" or module.startswith("crforge."):
        return "crforge.core"  # crforge/config.py, errors.py, atomic.py, __init__.py
    return None


def test_one_import_root_and_no_generic_top_level_imports():
    """Nothing imports ``pipeline``/``training``/``deepcr_models`` as top-level names, nor relatively."""
    for module, path in _modules().items():
        imports = _imports(path)
        assert "<relative>" not in imports, f"{path}: relative import (use crforge.* absolute imports)"
        bad = {i for i in imports if i.split(".")[0] in GENERIC}
        assert not bad, f"{path}: imports {sorted(bad)} (the import root is crforge)"


def test_import_graph_has_no_cycle_between_packages():
    """core <- pipeline <- training <- deepcr_models <- cli: every import goes down the layers."""
    edges = set()
    for module, path in _modules().items():
        src = _layer(module)
        for name in _imports(path):
            dst = _layer(name)
            if dst is not None and dst != src:
                edges.add((src, dst))
                assert LAYERS.index(dst) < LAYERS.index(src), (
                    f"{path} ({src}) imports {name} ({dst}): against the layers {LAYERS}")
    assert ("crforge.training", "crforge.pipeline") in edges  # the check sees real edges


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {m for m, p in _modules().items() if p.name == "__init__.py"}
    assert found == listed, f"not listed: {sorted(found - listed)}; listed, not found: {sorted(listed - found)}"
    assert {k: str(ROOT / v) for k, v in cfg["package-dir"].items()} == {k: str(v) for k, v in FOLDERS.items()}


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120).stdout


def test_config_modules_import_only_the_standard_library():
    """Reading a run config never imports numpy, astropy, h5py or torch."""
    mods = sorted(m for m in _modules() if m.endswith(".config") or m.endswith(".runconfig"))
    assert "crforge.training.config" in mods and "crforge.cli.runconfig" in mods
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "print(sorted(m for m in ('numpy', 'astropy', 'h5py', 'torch', 'scipy') if m in sys.modules))")
    assert json.loads(_fresh(code).replace("'", '"')) == []


@pytest.mark.parametrize("cmd", ["simulate", "label", "query", "fetch", "dataset", "inspect"])
def test_data_commands_never_import_torch(cmd):
    code = (f"import sys, crforge.cli.{'inspect_cmd' if cmd == 'inspect' else cmd} as c\n"
            "from crforge.cli import build_parser\n"
            f"build_parser(only={cmd!r})\n"
            "print('torch' in sys.modules)")
    assert _fresh(code).strip() == "False"


def test_label_and_dataset_runs_never_import_torch(tmp_path):
    """The whole of ``crforge simulate``, ``label`` and ``dataset`` (serial) without torch."""
    manifest = tmp_path / "m.toml"
    manifest.write_text('name = "tiny"\nseed = 7\n[defaults]\nchip_shape = [256, 256]\nn_exposures = 2\n\n'
                        '[[visit]]\nfield_type = "extragalactic"\nseed = 1\n')
    code = ("import sys\nfrom crforge.cli import main\n"
            f"rc1 = main(['simulate', '--out', {str(tmp_path / 'raw')!r}, '--size', '256x256', '--n-exposures', '2'])\n"
            f"import pathlib; v = next(pathlib.Path({str(tmp_path / 'raw')!r}).iterdir())\n"
            f"rc2 = main(['label', str(v), '--out', {str(tmp_path / 'labels')!r}])\n"
            f"rc3 = main(['dataset', '--manifest', {str(manifest)!r}, '--work', {str(tmp_path / 'w')!r},"
            " '--scheduler', 'serial', '--set', 'stamps.max_ignored=1.0'])\n"
            "print(rc1, rc2, rc3, 'torch' in sys.modules)")
    assert _fresh(code).split()[-4:] == ["0", "0", "0", "False"]


def _library_files() -> list[Path]:
    return [p for m, p in _modules().items() if not m.startswith("crforge.cli")]


def test_no_function_over_80_lines():
    """Functions short enough to read at once (docstring included)."""
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "\n".join(long)


def test_library_has_no_argparse_and_no_print():
    """The command line lives in crforge.cli; library code logs instead of printing."""
    for path in _library_files():
        tree = ast.parse(path.read_text())
        assert "argparse" not in _imports(path), f"{path}: argparse outside crforge.cli"
        prints = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Name) and n.func.id == "print"]
        assert not prints, f"{path}: print() at lines {prints}"


def test_subpackage_inits_import_nothing_heavy():
    """Importing a sub-package (to reach its config) runs no numpy/astropy/torch code."""
    for module, path in _modules().items():
        if path.name != "__init__.py" or module in ("crforge", "crforge.cli", "crforge.deepcr_models"):
            continue
        body = ast.parse(path.read_text()).body
        imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))
                   and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
        assert not imports, f"{path}: a sub-package __init__ holds only its docstring"
