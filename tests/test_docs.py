"""Truth by test for the documentation: every ```python block of the README and of
the pages of the docs site (docs/, and the zoo/ and benchmarks/ write-ups the site
publishes) runs.

Pages are read as the site shows them: a ``--8<-- "FILE:SECTION"`` line (pymdownx.snippets)
is replaced by that section of FILE. The README runs first, then the pages in order, all
in one namespace, as a reader would paste them; a block already run (the README's
examples included in a page) is not run again. They run in a temporary folder that
holds what the examples name: a copy of ``tests/assets/`` and a small image folder
``my_images/{train,test}/<class>/*.jpg``. Weights are the ones shipped in the
package; nothing is downloaded, and the decoded-image cache goes to the temporary
folder. A block directly below a line ``<!-- docs-test: skip (reason) -->`` is not
run (keep these few: only blocks that need a file nobody can download here).
"""

import pathlib
import re
import shutil

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
         *sorted((ROOT / "zoo").glob("*.md")), *sorted((ROOT / "benchmarks").glob("*.md"))]
SNIPPET = re.compile(r'^\s*--8<-- "(?P<file>[^":]+)(?::(?P<section>[\w-]+))?"\s*$')
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
CLASSES = ("circles", "squares")


def page_lines(path):
    """The lines of ``path`` with its snippet includes expanded (sections only)."""
    lines = []
    for line in path.read_text().splitlines():
        match = SNIPPET.match(line)
        if not match:
            lines.append(line)
            continue
        included = page_lines(ROOT / match["file"])
        if match["section"]:
            start = next(i for i, t in enumerate(included) if f"--8<-- [start:{match['section']}]" in t)
            end = next(i for i, t in enumerate(included) if f"--8<-- [end:{match['section']}]" in t)
            included = included[start + 1:end]
        lines += included
    return lines


def python_blocks(path):
    """``(first line number, code, skip reason or None)`` of each ```python block
    (line numbers count the expanded page)."""
    lines = page_lines(path)
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            match = SKIP.search(lines[i - 1]) if i else None
            blocks.append((i + 2, "\n".join(lines[i + 1:end]), match and match["reason"]))
            i = end
        i += 1
    return blocks


def _image_folder(folder, per_class):
    """``folder/{train,test}/<class>/*.jpg``: 32x32 pictures, one colour per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for c, name in enumerate(CLASSES):
            (folder / split / name).mkdir(parents=True)
            for k in range(n):
                pixels = rng.integers(0, 80, (32, 32, 3))
                pixels[..., 2 * c] += 150
                Image.fromarray(pixels.astype(np.uint8)).save(folder / split / name / f"{k}.jpg")


@pytest.fixture
def reader_folder(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "tests" / "assets", tmp_path / "tests" / "assets")
    _image_folder(tmp_path / "my_images", per_class=4)
    monkeypatch.setenv("LARQ_ESBNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_code_blocks_are_found():
    readme = python_blocks(ROOT / "README.md")
    assert len(readme) >= 4, "the README's four examples are python blocks"
    skipped = [(p.name, line) for p in PAGES for line, _, reason in python_blocks(p) if reason]
    assert len(skipped) <= 3, f"keep the skipped blocks few: {skipped}"


def test_python_blocks_run(reader_folder, capsys):
    namespace, done = {"__name__": "__docs__"}, set()
    for page in PAGES:
        for line, code, reason in python_blocks(page):
            if reason or code in done:
                continue
            name = f"{page.relative_to(ROOT)}:{line}"  # tracebacks point at the page and line
            exec(compile(code, name, "exec"), namespace)
            done.add(code)
    assert len(done) >= 6
    assert "LceBconv2d: 18 found, 18 expected -> OK" in capsys.readouterr().out


def test_readme_model_table_is_the_generated_one():
    """The README's table (between the markers zoo/make_model_table.py --write fills)
    is zoo/models.md, the table the docs site shows."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n", readme.index("<!-- model table: start")) + 1
    end = readme.index("<!-- model table: end -->")
    assert readme[start:end].strip() == (ROOT / "zoo" / "models.md").read_text().strip()
