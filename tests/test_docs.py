"""
The docs site builds (`mkdocs build --strict`), and every ```python block in docs/**/*.md and
README.md runs: a page's blocks, concatenated in order (later blocks build on earlier ones), in a
fresh interpreter whose working directory is a new temp dir. Blocks that are not meant to run use
another fence (```bash, ```jsonnet, ```text). The pages run two at a time, started together with
the site build, so the file takes about as long as its slowest pair.
"""
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGE_TIMEOUT = 120
# A fence opens with ``` and a language, and closes with a bare ``` at the same indentation.
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^\s`]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
LANGUAGES = {"python", "bash", "jsonnet", "text", "yaml", "json"}


def pages() -> List[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def blocks(page: Path) -> List[tuple]:
    """(language, code) for each fenced block of a page, in order."""
    text = page.read_text()
    found = []
    for m in FENCE.finditer(text):
        indent = m.group("indent")
        body = "".join(line[len(indent):] if line.startswith(indent) else line
                       for line in m.group("body").splitlines(keepends=True))
        found.append((m.group("lang"), body))
    return found


def python_of(page: Path) -> str:
    return "\n".join(code for lang, code in blocks(page) if lang == "python")


def run_python(code: str, cwd: Path, timeout: float = PAGE_TIMEOUT) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter in `cwd`, with the repository importable (not installed)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               PYTHONHASHSEED="0")
    (cwd / "page.py").write_text(code)
    return subprocess.run([sys.executable, "page.py"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


RUNNABLE = [p for p in pages() if python_of(p).strip()]


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.fixture(scope="module")
def started(tmp_path_factory) -> Dict[str, Future]:
    """Starts the site build and every page's code at once, two at a time; each test waits for its own."""
    pool = ThreadPoolExecutor(max_workers=2)
    futures: Dict[str, Future] = {}
    site = tmp_path_factory.mktemp("site")
    futures["mkdocs"] = pool.submit(
        subprocess.run, [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                         "-d", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    for page in RUNNABLE:
        futures[_id(page)] = pool.submit(run_python, python_of(page), tmp_path_factory.mktemp(page.stem))
    futures["site"] = site
    yield futures
    pool.shutdown(wait=True)


def test_site_builds_strict(started) -> None:
    result = started["mkdocs"].result()
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    site = started["site"]
    for page in sorted(DOCS.rglob("*.md")):
        rel = page.relative_to(DOCS).with_suffix("")
        html = site / ("index.html" if rel.name == "index" else rel / "index.html")
        assert html.is_file(), f"{page} was not rendered to {html}"
        assert len(html.read_text()) > 2000, f"{html} is (nearly) empty"


@pytest.mark.parametrize("page", RUNNABLE, ids=_id)
def test_page_code_runs(started, page: Path) -> None:
    result = started[_id(page)].result()
    assert result.returncode == 0, (
        f"the python blocks of {_id(page)} failed (exit {result.returncode}):\n"
        f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


def test_every_block_names_its_language() -> None:
    """A block without a language (or ```py) would escape the test; each names one we know."""
    for page in pages():
        for lang, code in blocks(page):
            assert lang in LANGUAGES, f"{_id(page)}: a ```{lang} block (use one of {sorted(LANGUAGES)}):\n{code[:200]}"


def test_the_pages_with_code_are_found() -> None:
    names = {_id(p) for p in RUNNABLE}
    for must in ("README.md", "docs/quickstart.md", "docs/guides/fvcore.md", "docs/guides/ignite.md",
                 "docs/guides/mmengine.md"):
        assert must in names, f"{must} has no python block that runs"


def test_a_broken_block_fails(tmp_path: Path) -> None:
    """The runner reports a failing block as a failure (else the page tests would prove nothing)."""
    page = tmp_path / "broken.md"
    page.write_text("# Broken\n\n```python\nx = 1\n```\n\ntext\n\n```python\nassert x == 2, 'x is not 2'\n```\n")
    result = run_python(python_of(page), tmp_path)
    assert result.returncode != 0 and "x is not 2" in result.stderr
