"""The documentation is self-contained and true to the tree: every file or directory that README.md, docs/ and the
configs name (markdown links and `code` paths) exists in the repository, and none of them cites a document that is
not in it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

TOP_LEVEL = ("taidtron", "tools", "tests", "docs", "configs", "launch", "data")
# `code` spans that look like repository paths: a known top-level directory, then path characters.
CODE_PATH = re.compile(r"`((?:" + "|".join(TOP_LEVEL) + r")/[\w./-]*)`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# Paths a run or a user creates; documented on purpose although they are not in the tree.
CREATED = ("runs/", "data/my_", "data/taidtron", "logs/", ".whl")


def _documents() -> list[Path]:
    tracked = subprocess.run(
        ["git", "ls-files", "README.md", "docs", "configs"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [REPO_ROOT / name for name in tracked if name.endswith((".md", ".yaml"))]


def _exists(reference: str, document: Path) -> bool:
    reference = reference.rstrip("/.,")
    if "*" in reference or "{" in reference or "<" in reference:
        return True  # a pattern or a placeholder, not one file
    return (REPO_ROOT / reference).exists() or (document.parent / reference).exists()


@pytest.mark.parametrize("document", _documents(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_file_a_document_names_exists(document):
    text = document.read_text()
    names = CODE_PATH.findall(text) + [link for link in LINK.findall(text) if "://" not in link]
    missing = [name for name in names if not name.startswith(CREATED) and not _exists(name, document)]
    assert not missing, f"{document.name} names files that do not exist: {sorted(set(missing))}"


def test_no_file_cites_a_document_outside_the_repository():
    pattern = r"DESIGN\.md|STYLE\.md|DESIGN §|gpu_probe|\.\./shared"
    found = subprocess.run(
        ["git", "grep", "-n", "-E", pattern, "--", ".", f":!{Path(__file__).relative_to(REPO_ROOT)}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    ).stdout
    assert found == "", found


def test_generated_pages_are_current():
    from taidtron.config_docs import config_reference

    assert (REPO_ROOT / "docs" / "config.md").read_text() == config_reference(), (
        "docs/config.md is out of date: run python tools/render_docs.py"
    )
