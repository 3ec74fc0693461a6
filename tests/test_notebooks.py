"""The notebooks in ``notebooks/`` run top to bottom on real data and reach their results.

Each notebook is executed with nbclient in a fresh kernel of this interpreter (the one
running the tests, i.e. ``.venv``'s), in a temporary working folder, with matplotlib's Agg
backend. Every notebook ends with a cell of ``assert``s on its physical results; here a
number it prints is checked as well, so a notebook that silently stops computing fails.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
#: Seconds one cell may take before the notebook fails.
CELL_TIMEOUT = 600


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"no output matching {pattern!r}"
    return float(match[1])


#: notebook -> check of its printed output (all stream text of the executed notebook).
CHECKS = {
    "01_multiscale_spatial_metadata.ipynb":
        lambda out: _number(r"same value at ITK's physical point:\s+([\d.]+)%", out) == 100.0,
    "02_chunked_registration.ipynb":
        lambda out: (_number(r"coarse \+ blocks\s+([\d.]+)", out)
                     > _number(r"coarse affine\s+([\d.]+)", out) + 0.03),
    "03_distributing.ipynb":
        lambda out: (_number(r"reused: (\d+)", out) >= 1
                     and _number(r"over the mask: median ([\d.]+) mm", out) < 1.0),
    "04_transforms.ipynb":
        lambda out: _number(r"ngffreg vs ANTs: ([\d.e+-]+) mm", out) < 1e-3,
}


def test_every_notebook_is_tested_and_committed_without_outputs():
    import nbformat

    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(CHECKS)
    for name in found:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{name} is committed with outputs; clear them "
                    "(jupyter nbconvert --clear-output --inplace)")


def _kernel_manager():
    """A manager for a ``python3`` kernel running this interpreter, whatever kernel specs
    are installed elsewhere on the machine."""
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())

    return KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())


def _execute(path: Path, workdir: Path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    probe = nbformat.v4.new_code_cell("import sys\nprint('kernel prefix:', sys.prefix)")
    nb.cells.insert(0, probe)
    client = NotebookClient(nb, kernel_name="python3", km=_kernel_manager(),
                            timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(workdir)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    return nb


def _stream_text(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.outputs if out.output_type == "stream")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook_runs_top_to_bottom(name, data_dir, tmp_path, monkeypatch):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("NGFFREG_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = _execute(NOTEBOOKS / name, tmp_path)

    probe = nb.cells[0].outputs[0]["text"]
    assert probe.strip() == f"kernel prefix: {sys.prefix}", "the kernel is not this Python"
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert "assert" in last.source and any(o.output_type == "stream" for o in last.outputs), (
        "the notebook's final cell of checks did not run to its end")
    assert CHECKS[name](_stream_text(nb)), f"{name}: printed results not as expected"
