"""The one summary table of a GPU session: eager, compiled and the package's default path, side by side.

Benchmarks that take ``--rows FILE`` write their results there as JSON rows (:class:`Row`); at the
end of ``benchmarks/gpu_session.sh`` this script prints every row of ``$OUT/*.rows.json``:

    python benchmarks/session_table.py gpu-logs/

"eager" is plain PyTorch without ``torch.compile``; "compiled" the same work under ``torch.compile``;
"default" what the package runs by default (the step of ``spidr-hf pretrain``, the kernels' ``auto``
backend). "x" is compiled / default for times and default / compiled for throughputs: above 1, the
default path is faster than compiled PyTorch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Row:
    """One measured thing: its value for each path (None: not run), peak memory, compiler counts."""

    what: str
    unit: str  # "audio-s/s" (higher is better) or "us" (lower is better)
    eager: float | None = None
    compiled: float | None = None
    default: float | None = None
    peak_mib: dict[str, float] = field(default_factory=dict)  # path -> MiB
    graphs: int | None = None  # graphs compiled for the "compiled" column (1 = no recompilation)
    graph_breaks: int | None = None
    syncs: int | None = None  # host synchronisations in one compiled step (None: not checked)
    note: str = ""


def write_rows(path: str | Path, rows: list[Row]) -> None:
    Path(path).write_text(json.dumps([asdict(row) for row in rows], indent=1))


def read_rows(folder: str | Path) -> list[Row]:
    rows = []
    for path in sorted(Path(folder).glob("*.rows.json")):
        rows += [Row(**entry) for entry in json.loads(path.read_text())]
    return rows


def _value(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _ratio(row: Row) -> str:
    if not row.compiled or not row.default:
        return "-"
    higher_is_better = not row.unit.endswith("us")
    ratio = row.default / row.compiled if higher_is_better else row.compiled / row.default
    return f"{ratio:.2f}x"


def _memory(row: Row) -> str:
    values = [row.peak_mib.get(path) for path in ("eager", "compiled", "default")]
    return " / ".join("-" if v is None else f"{v:,.0f}" for v in values)


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def format_table(rows: list[Row]) -> str:
    header = ("what", "unit", "eager", "compiled", "default", "x", "peak MiB e / c / d", "graphs", "breaks", "syncs")
    table = [header] + [
        (
            row.what, row.unit, _value(row.eager), _value(row.compiled), _value(row.default), _ratio(row),
            _memory(row), _count(row.graphs), _count(row.graph_breaks), _count(row.syncs),
        )  # fmt: skip
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    for line in table:
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(line[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells))
    notes = [f"  {row.what}: {row.note}" for row in rows if row.note]
    return "\n".join(lines + (["notes:", *notes] if notes else []))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0] if argv else "gpu-logs")
    rows = read_rows(folder)
    if not rows:
        print(f"session_table: no *.rows.json in {folder}")
        return 1
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
