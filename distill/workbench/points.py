"""A sweep's folder on disk, `<state_dir>/distill/sweeps/<id>/`: `sweep.json` (what the sweep is, written
once) and `points.jsonl`, one JSON object per finished point, appended and fsynced as each point ends,
so a killed sweep loses at most the point it was training and resumes with the rest. (No model library
is imported here: `kdgate distill sweep show` reads these without torch.)

Reading keeps the first record of each id (a point is never trained twice, but should two lines ever
share an id the first one is what the report and a pick already saw) and skips a torn last line.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / POINTS_FILE
>>> append_point(path, {"id": "T2-a0.9-L2", "agreement": 0.9})
>>> with path.open("a") as torn:
...     _ = torn.write('{"id": "T4-a0')              # what a kill -9 mid-append can leave
>>> [p["id"] for p in read_points(path)]
['T2-a0.9-L2']
>>> append_point(path, {"id": "T4-a0.9-L2", "agreement": 0.91})
>>> sorted(done_ids(read_points(path)))
['T2-a0.9-L2', 'T4-a0.9-L2']
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from durablefs import append_line

POINTS_FILE = "points.jsonl"
SPEC_FILE = "sweep.json"


def sweeps_root(state_dir: Path) -> Path:
    return Path(state_dir) / "distill" / "sweeps"


def read_spec(folder: Path) -> dict[str, Any]:
    """`sweep.json`: what the sweep is, and its references (teacher, current student) with their figures."""
    loaded: dict[str, Any] = json.loads((folder / SPEC_FILE).read_text())
    return loaded


def append_point(path: Path, record: Mapping[str, Any]) -> None:
    """Appends one finished point; durable once this returns. NaN is written as null (JSON has no NaN)."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
    append_line(path, json.dumps(clean, sort_keys=True))


def read_points(path: Path) -> list[dict[str, Any]]:
    """The recorded points in the order they finished; [] before the first."""
    if not path.exists():
        return []
    points: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a torn last line: the point it held was not finished
            continue
        points.setdefault(str(record["id"]), record)
    return list(points.values())


def done_ids(points: Iterable[Mapping[str, Any]]) -> set[str]:
    return {str(p["id"]) for p in points}
