"""The validation notebooks execute without error at their small size (issue 6, deliverable 2).

Each notebook in ``notebooks/`` checks its own numbers against exact results with tolerances derived in its
markdown (harmonic-oscillator spectrum, Eyring-Kramers and a rigorous Rayleigh/Temple bracket, tracking bounds
against exact propagation, energy readout against ground truth), so a wrong result raises inside the notebook.
Here each one is executed with nbclient on a ``python3`` kernel of the current interpreter, after its
``parameters`` cell has been replaced by ``SMALL = True``; any cell error (an assertion included) fails the test.
The stored notebooks must carry no outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = (
    "01_gaussian_harmonic_oscillator",
    "02_metastability_eyring_kramers",
    "03_adiabatic_schedules",
    "04_energy_readout",
)
KERNEL = "python3"
#: Seconds any one cell may run: a stuck cell fails the test instead of hanging the suite (the slowest cell
#: takes about 10 s on the 2-core CI machine).
CELL_TIMEOUT = 300
SMALL_SOURCE = "SMALL = True"


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def _parameter_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The one code cell tagged ``parameters``; it must define SMALL."""
    cells = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged 'parameters', found {len(cells)}"
    assert cells[0].cell_type == "code" and "SMALL" in cells[0].source, cells[0].source
    return cells[0]


@pytest.fixture(scope="module")
def kernel_name() -> str:
    """``python3``, checked to launch this interpreter (jupyter_client runs sys.executable for a spec
    whose command is ``python``, ``python3`` or ``python3.X``)."""
    argv0 = KernelSpecManager().get_kernel_spec(KERNEL).argv[0]
    this = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2]), sys.executable}
    assert argv0 in this, f"the {KERNEL!r} kernel runs {argv0!r}, not this interpreter {sys.executable!r}"
    return KERNEL


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
    notebook = _read(name)
    nbformat.validate(notebook)
    _parameter_cell(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code, "no code cells"
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"code cells {dirty} carry outputs or execution counts: strip them before committing"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, kernel_name, tmp_path):
    notebook = _read(name)
    _parameter_cell(notebook).source = SMALL_SOURCE
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
