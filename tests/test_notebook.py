"""docs/tutorial.ipynb runs from top to bottom, offline, in a kernel of this interpreter.

The kernel is this Python (a kernel spec written to a temporary JUPYTER_PATH, which comes
first, so no registered kernel is needed or used). With SMOOTHGRAD_UPDATE_DOCS=1 the
executed notebook is written back to docs/, which is how its committed outputs are made.
"""

from __future__ import annotations

import html
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


@pytest.fixture
def kernel_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (smoothgrad tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return tmp_path


def test_tutorial_notebook_runs(kernel_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the traceback, when a cell fails
    outputs = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    assert "tiger cat" in text.splitlines()[0]
    pictures = [output["data"]["text/html"] for output in outputs
                if "text/html" in output.get("data", {})]
    assert len(pictures) == 8 and all("base64," in picture for picture in pictures)
    assert "relative error" in pictures[2] and "flip rate" in pictures[2]
    if os.environ.get("SMOOTHGRAD_UPDATE_DOCS"):
        for cell in notebook.cells:
            cell.metadata.pop("execution", None)
        nbformat.write(notebook, NOTEBOOK)
        shown = next(cell for cell in notebook.cells
                     if cell.cell_type == "code" and "result.show(model)" in cell.source)
        output = shown.outputs[0]["data"]["text/html"]
        picture(shown.source, output, NOTEBOOK.parent / "notebook.jpg")


def picture(source: str, output: str, path: Path) -> None:
    """A screenshot of one cell and its output as a notebook shows them (for the README)."""
    from playwright.sync_api import sync_playwright

    from test_web import CHROMIUM, FLAGS  # tests/ is on the path (pytest's rootdir mode)

    page_html = (f"<body style='font-family:sans-serif;margin:12px;width:max-content'>"
                 f"<pre style='background:#f5f5f5;padding:8px;margin:0 0 8px'>{html.escape(source)}"
                 f"</pre>{output}</body>")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 980, "height": 300})
        page.set_content(page_html)
        page.locator("body").screenshot(path=str(path), quality=85)
        browser.close()
