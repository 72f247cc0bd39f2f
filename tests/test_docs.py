"""The documentation: the MkDocs site builds with --strict (every page in the nav, every link and anchor
resolves), loads nothing from the network, and the README stays a short user guide whose links resolve and whose
headline figures come from the experiment record."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 12 * 1024  # bytes: a user guide, not the experiment record
EXTERNAL_ASSET = re.compile(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="(?:https?:)?//', re.I)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).parent / "mkdocs"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([str(mkdocs), "build", "--strict", "-d", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_site_builds_strict_with_every_page(site):
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")}
    assert {p.stem for p in site.glob("*.html")} >= pages
    changes = (site / "changelog.html").read_text()
    assert "Unreleased" in changes  # CHANGELOG.md is included, not copied


def test_site_loads_nothing_from_the_network(site):
    offenders = [f"{p.name}: {m.group(0)}" for p in site.rglob("*.html") for m in EXTERNAL_ASSET.finditer(
        p.read_text(encoding="utf-8"))]
    assert not offenders, offenders[:5]
    assert not any("fonts.googleapis" in p.read_text(encoding="utf-8") for p in site.rglob("*.html"))


def _github_slug(heading: str) -> str:
    """The anchor GitHub (and MkDocs' toc) gives a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _links(markdown: str) -> list[str]:
    return [m for m in re.findall(r"\]\(([^)\s]+)\)", markdown) if not re.match(r"https?://", m)]


def test_readme_is_a_short_guide_whose_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= README_LIMIT
    for must in ("Decision support, not a diagnosis", "make run", "make test", "melanoma predict",
                 "melanoma serve", "melanoma train", "melanoma evaluate", "not met"):
        assert must in readme, must
    for link in _links(readme):
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), link
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), flags=re.M)
            assert anchor in {_github_slug(h) for h in headings}, link


def test_headline_figures_come_from_the_experiment_record():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Headline figures"):readme.index("## Documentation")]
    record = (ROOT / "docs" / "results.md").read_text() + (ROOT / "models" / "README.md").read_text()
    figures = set(re.findall(r"\d+\.\d+", table))
    assert len(figures) >= 10
    assert not [f for f in figures if f not in record]


def test_changelog_keeps_a_changelog_shape():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog") and "## [Unreleased]" in text
    assert re.search(r"^### (Added|Changed|Fixed)$", text, flags=re.M)
