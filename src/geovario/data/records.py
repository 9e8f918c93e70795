"""The one record every dataset reader produces, and the report of rows it could not use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geovario.errors import GeovarioError


@dataclass
class Record:
    """One geotagged image. ``line`` is where it came from in the source file (1-based), for reports.

    ``image`` is a file, or a :class:`geovario.data.archives.Member` read in place from an archive.
    """

    id: str
    image: Path | Any | None
    lat: float
    lon: float
    meta: dict[str, str] = field(default_factory=dict)
    line: int = 0


@dataclass
class Problem:
    """One unusable row: the file, the line (0 when the problem is the whole file) and what is wrong."""

    file: str
    line: int
    message: str
    kind: str = "bad row"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "kind": self.kind, "message": self.message}


SWAPPED = "swapped columns"  # a file-level problem: the lat/lon columns look exchanged


@dataclass
class Dataset:
    """The usable records of a source, what was wrong with the rest, and the format that was read."""

    source: Path
    format: str
    records: list[Record]
    problems: list[Problem]
    auto_detected: bool = False
    n_rows: int = 0

    def summary(self, max_problems: int = 20) -> str:
        how = "auto-detected" if self.auto_detected else "given"
        lines = [
            f"{self.source}: format {self.format} ({how}), {self.n_rows} rows, "
            f"{len(self.records)} usable, {len(self.problems)} bad"
        ]
        if self.problems:
            counts: dict[str, int] = {}
            for problem in self.problems:
                counts[problem.kind] = counts.get(problem.kind, 0) + 1
            lines.append("  " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())))
            shown = self.problems if max_problems <= 0 else self.problems[:max_problems]
            lines += [f"  {p}" for p in shown]
            if len(shown) < len(self.problems):
                lines.append(f"  … {len(self.problems) - len(shown)} more (run `geovario data check {self.source}` for all)")
        return "\n".join(lines)

    def require_clean(self) -> None:
        """``--strict``: any bad row is an error naming the first one."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more; see `geovario data check {self.source}`)" if len(self.problems) > 1 else ""
            raise GeovarioError(f"{self.problems[0]}{more}")
        self.require_usable()

    def require_usable(self) -> None:
        """At least one usable row, and columns that do not look swapped, or an error naming the dataset."""
        swapped = next((p for p in self.problems if p.kind == SWAPPED), None)
        if swapped is not None:
            raise GeovarioError(f"{swapped}")
        if not self.records:
            raise GeovarioError(f"{self.source}: no usable rows")

    def to_dict(self) -> dict:
        return {
            "source": str(self.source),
            "format": self.format,
            "auto_detected": self.auto_detected,
            "rows": self.n_rows,
            "usable": len(self.records),
            "problems": [p.to_dict() for p in self.problems],
        }
