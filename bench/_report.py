"""Where the bench scripts write their figures: JSON under bench/results, and the same on stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save(report: dict[str, Any], path: str, summary: dict[str, Any] | None = None) -> None:
    """Write `report` as JSON to `path` and print `summary` (default: the report)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1))
    print(json.dumps(report if summary is None else summary, indent=1))
