"""The README must stay true: its Python examples run, and every file it names exists.

A README that shows code which no longer runs, or sends a reader to a file that has
moved, is the first thing a new user meets; these tests fail instead.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def python_blocks(text):
    """The bodies of the ```python fenced blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_python_examples():
    assert python_blocks(README), "README.md has no ```python block to run"


@pytest.mark.parametrize("index", range(len(python_blocks(README))))
def test_readme_python_block_runs(index, tmp_path):
    # A fresh interpreter in an empty folder: the example may import only what a user
    # has after `pip install -e .`, and may not lean on the test suite's state.
    code = python_blocks(README)[index]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, (f"README python block {index + 1} failed:\n{code}\n"
                                    f"--- stderr ---\n{result.stderr}")


def named_paths(text):
    """Repository paths the README names: `npfcn/...`, `csrc/...`, `tests/...`, links."""
    paths = set(re.findall(r"`((?:npfcn|csrc|tests|benchmarks|tools|docs)/[^`*\s]*)`", text))
    paths |= set(re.findall(r"\]\(((?:docs|npfcn|benchmarks)/[^)#\s]+)", text))
    return sorted(p for p in paths if "*" not in p)


def test_readme_names_only_existing_files():
    missing = [p for p in named_paths(README) if not (ROOT / p).exists()]
    assert not missing, f"README.md names files that do not exist: {missing}"


def layout_rows(text):
    """{folder or file: text of its rows} from the README's layout table (a folder may
    have several rows; a row may name several paths in its first cell)."""
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2:
            for path in re.findall(r"`([^`]+)`", cells[0]):
                rows[path] = rows.get(path, "") + " " + cells[1]
    return rows


def package_modules():
    """The package's .py files: those git tracks (so a stray local file is no module of
    npfcn), or every one on disk where this is no git checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", "npfcn"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = []
    if listed:
        return sorted(ROOT / p for p in listed if p.endswith(".py"))
    return sorted((ROOT / "npfcn").rglob("*.py"))


def test_layout_table_lists_every_module():
    # Every module of the package appears in the layout table: by its own path, or by
    # its file name in the row of its folder.
    rows = layout_rows(README)
    assert rows, "README.md has no layout table"
    unlisted = []
    for module in package_modules():
        rel = module.relative_to(ROOT).as_posix()
        folder = module.parent.relative_to(ROOT).as_posix() + "/"
        if rel in rows:
            continue
        if folder in rows and f"`{module.name}`" in rows[folder]:
            continue
        if module.name == "__init__.py" and folder in rows:
            continue
        unlisted.append(rel)
    assert not unlisted, f"modules missing from the README's layout table: {unlisted}"


def test_benchmark_page_generator_runs():
    # docs/benchmarks.md is printed by benchmarks/summary.py from benchmarks/results/; a
    # result file in a shape the script misreads must fail here, not when someone
    # regenerates the page.
    script = ROOT / "benchmarks" / "summary.py"
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# Benchmarks") and "## How they measure" in result.stdout
