"""Execute every notebook in notebooks/ with nbclient: a cell error fails the test.

The kernel is the interpreter running pytest (a kernelspec written to a temporary
folder), started in notebooks/ with this process's environment. Skipped only when
nbclient / ipykernel are not installed (``pip install -e .[notebooks]``) or the
CIFAR-10 archives are missing (``$LARQ_ESBNN_CIFAR10``, else
``../shared/datasets/cifar10`` beside the repository; see conftest.py).

``LARQ_ESBNN_NOTEBOOK_WEIGHTS=/path/weights.h5`` runs the notebooks with that file
in place of their ``WEIGHTS = "cifar10"`` cell (for example before the CIFAR-10
weights are registered). Executing all four takes a few minutes on 2 CPU cores.
"""

import json
import os
import pathlib
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_pretrained_summary.ipynb",
    "02_finetune_image_folder.ipynb",
    "03_es_vs_baseline.ipynb",
    "04_export_benchmark.ipynb",
]
CELL_TIMEOUT = 900  # seconds per cell; the slowest cell (fine-tuning) takes about a minute here
WEIGHTS_CELL = 'WEIGHTS = "cifar10"'
WEIGHTS_ENV = "LARQ_ESBNN_NOTEBOOK_WEIGHTS"
KERNEL_NAME = "larq-esbnn-tests"


def read(path):
    import nbformat

    return nbformat.read(path, as_version=4)


def test_all_notebooks_present():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_without_outputs(path):
    pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e .[notebooks])")
    nb = read(path)
    assert nb.nbformat == 4
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name} cell {index} has outputs; clear them before committing"
            )


def _kernel_manager(folder):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "larq-esbnn tests",
        "language": "python",
    }))
    specs = KernelSpecManager(kernel_dirs=[str(folder / "kernels")])
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def _use_weights(nb, weights):
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.strip() == WEIGHTS_CELL]
    for cell in cells:
        cell.source = f"WEIGHTS = {weights!r}"
    return len(cells)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch, cifar10_dir):
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e .[notebooks])")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e .[notebooks])")
    if not (cifar10_dir / "train.tar.gz").is_file():
        pytest.skip(f"CIFAR-10 train.tar.gz not found in {cifar10_dir}")
    monkeypatch.setenv("LARQ_ESBNN_CIFAR10", str(cifar10_dir.resolve()))
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    nb = read(path)
    weights = os.environ.get(WEIGHTS_ENV)
    if weights:
        _use_weights(nb, weights)
    client = nbclient.NotebookClient(
        nb, km=_kernel_manager(tmp_path), timeout=CELL_TIMEOUT, allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError naming the failing cell
        seconds = time.perf_counter() - start
    finally:
        # nbclient shuts down only kernels it started itself; this one was passed in
        # (km=...), and a live TensorFlow kernel holds 0.3-0.8 GB until the session ends
        if client.km.has_kernel:
            client.km.shutdown_kernel(now=True)
    print(f"{path.name}: executed in {seconds:.0f} s")

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{path.name}: some cells did not run"
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"


def test_weights_override_replaces_the_weights_cell():
    pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e .[notebooks])")
    nb = read(NOTEBOOK_DIR / "01_pretrained_summary.ipynb")
    assert _use_weights(nb, "/tmp/x.h5") == 1
    assert any(c.source == "WEIGHTS = '/tmp/x.h5'" for c in nb.cells)
