"""Examples/notebooks/tour.ipynb runs from top to bottom against a local cluster of real daemons,
and draws its figures (the colour-magnitude diagram and the density map)."""
import os

import pytest

from conftest import ROOT

NOTEBOOK = os.path.join(ROOT, "Examples", "notebooks", "tour.ipynb")


def test_the_tour_runs_and_draws_its_figures(tmp_path, bins, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("TESSERA_TOUR_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TESSERA_BIN_DIR", bins)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the colour-magnitude diagram and the density map should be drawn"
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream")
    assert "stars in the cone" in text and "rows, mean r flux" in text
