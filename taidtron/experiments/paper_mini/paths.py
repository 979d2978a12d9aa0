"""Where the experiment's inputs live, and the two file helpers every step uses."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "paper_mini.yaml"
"""What every distillation run shares (configs/paper_mini.yaml)."""


def rel(path: Path | str) -> str:
    """A path as the page shows it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def read_json(path: Path):
    """The JSON in `path`, or None when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else None
