"""Issue 16, the house: rules the package's structure keeps (sizes, layers, no global
state), checked on the source so a change that breaks one fails here."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import warnings
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ngffreg"
MAX_MODULE_LINES = 600


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, resolved to absolute ``ngffreg.…`` names."""
    package = ".".join(("ngffreg", *path.relative_to(SRC).with_suffix("").parts[:-1]))
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append(name)
            out += [f"{name}.{a.name}" for a in node.names]
    return out


def test_no_module_is_over_600_lines():
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in _modules()}
    assert {k: v for k, v in sizes.items() if v > MAX_MODULE_LINES} == {}


def test_qc_imports_nothing_from_registration():
    qc = SRC / "qc"
    assert qc.is_dir(), "the QC code is a package: ngffreg/qc/"
    found = {str(p.relative_to(SRC)): [m for m in _imports(p)
                                       if m.startswith("ngffreg.registration")]
             for p in qc.rglob("*.py")}
    assert {k: v for k, v in found.items() if v} == {}


def test_no_module_switches_the_matplotlib_backend_or_uses_pyplot():
    bad = [str(p.relative_to(SRC)) for p in _modules()
           if "matplotlib.use(" in p.read_text() or "pyplot" in p.read_text()]
    assert bad == []


def test_register_is_a_short_orchestrator():
    from ngffreg.registration.register import register

    source = inspect.getsource(register)
    body = ast.parse(source).body[0].body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    lines = body[-1].end_lineno - body[0].lineno + 1
    assert lines <= 80, f"register() has {lines} lines of code"


def test_results_and_options_are_frozen():
    from ngffreg.registration.options import RegistrationOptions
    from ngffreg.registration.register import RegistrationResult

    for cls in (RegistrationOptions, RegistrationResult):
        assert cls.__dataclass_params__.frozen, cls
    opts = RegistrationOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.chunk_size = 32


def test_options_are_checked_once_when_made():
    from ngffreg.errors import InputError
    from ngffreg.registration.options import RegistrationOptions

    with pytest.raises(InputError, match="overlap_fraction"):
        RegistrationOptions(overlap_fraction=1.5)
    with pytest.raises(InputError, match="backend"):
        RegistrationOptions().replace(backend="itk")
    with pytest.raises(InputError, match="Unknown registration options"):
        RegistrationOptions().replace(chunksize=32)


def test_the_cli_gives_back_the_warning_display(tmp_path):
    from ngffreg.cli import main

    before = warnings.showwarning
    main(["info", str(tmp_path / "missing.nii.gz")])
    assert warnings.showwarning is before


def test_the_chunk_cache_size_is_read_when_used_not_at_import(monkeypatch):
    from ngffreg.sampling import ChunkCache

    monkeypatch.setenv("NGFFREG_CHUNK_CACHE_MB", "3")
    assert ChunkCache().limit == 3 * 2**20
    monkeypatch.delenv("NGFFREG_CHUNK_CACHE_MB")
    assert ChunkCache().limit == 256 * 2**20
