"""The docs match the code: the API page documents every public name where it lives, the README's and the pages'
relative links reach a file and a heading, and the README's Python quick start runs as written.
(`bash scripts/docs.sh`, run by CI, builds the site with `mkdocs build --strict`.)"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import nni_mrs_plugin

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted(DOCS.rglob("*.md"))]


def _slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) and GitHub give a heading: lower case, code marks and punctuation
    dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[\s]+", "-", text).strip("-")


def _anchors(page: Path) -> set:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def test_slug_follows_the_toc_rules():
    assert _slug("`MRSPruner` and the MRS allocator") == "mrspruner-and-the-mrs-allocator"
    assert _slug("Tests and other Pythons") == "tests-and-other-pythons"


def test_api_page_documents_every_public_name():
    """A name added to the package's API without a page entry, or an entry whose module moved, fails here
    (and an entry naming something that does not exist fails the strict site build)."""
    page = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: (\S+)$", page, flags=re.M))
    expected = {f"nni_mrs_plugin.{module}.{name}" for name, module in nni_mrs_plugin._EXPORTS.items()}
    assert not expected - documented, f"not on docs/api.md: {sorted(expected - documented)}"
    assert not documented - expected, f"on docs/api.md but not public: {sorted(documented - expected)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_reach_a_file_and_heading(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading '{anchor}' in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 300, f"README.md has {lines} lines; reference material belongs in docs/"


@pytest.mark.slow
def test_readme_python_quick_start_runs(tmp_path):
    """Quick start 3 as written: adversarial training, MRSPruner at half the FLOPs, removal, fine-tuning with a
    checkpoint folder, robust evaluation and a saved model, in a fresh interpreter."""
    section = (ROOT / "README.md").read_text().split("## Quick start 3", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "quick_start.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed 0.4" in result.stdout or "removed 0.5" in result.stdout, result.stdout[-2000:]
    assert (tmp_path / "runs" / "ft" / "last.pt").exists()
    reloaded = nni_mrs_plugin.load_pruned(tmp_path / "pruned.pt")
    assert sum(p.numel() for p in reloaded.parameters()) < sum(
        p.numel() for p in nni_mrs_plugin.build_model("small_cnn", in_channels=1).parameters())
