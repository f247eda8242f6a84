"""Rebuild the KnowEdit tables of docs/BENCHMARKS.md from the published grid cells.

    python scripts/knowedit_tables.py           # rewrite the block between the markers
    python scripts/knowedit_tables.py --check   # exit 1 if the doc's block differs from the cells

Only the block between the two markers is generated (one table per model and subset, with the
`lmedit bench table` command that prints it); the prose around it is written by hand.
"""
from __future__ import annotations

import sys
from pathlib import Path

from lmedit.bench.report import table

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"
CELLS = ROOT / "docs" / "results" / "knowedit"
BEGIN, END = "<!-- knowedit-tables:begin -->", "<!-- knowedit-tables:end -->"

METHODS = 16
SUBJECT_KEYED = 6  # rome r-rome memit pmet emmet alphaedit: no Sanitation cell (its records have no subject)
GRID = {  # model key -> (display name, [(subset key, title)])
    "smollm2-135m": ("SmolLM2-135M", [("zsre", "ZsRE"), ("wiki-recent", "WikiData_recent"),
                                      ("wiki-counterfact", "WikiData_counterfact"), ("wikibio-test", "WikiBio"),
                                      ("convsent-test", "ConvSent"), ("sanitation-test", "Sanitation")]),
    "qwen2.5-0.5b": ("Qwen2.5-0.5B", [("zsre", "ZsRE"), ("wiki-counterfact", "WikiData_counterfact")]),
}


def runnable(subset: str) -> int:
    return METHODS - SUBJECT_KEYED if subset.startswith("sanitation") else METHODS


def render(cells_dir: Path = CELLS) -> str:
    parts, done, total = [], 0, 0
    for model, (name, subsets) in GRID.items():
        for key, title in subsets:
            total += runnable(key)
            cells = sorted(p for p in cells_dir.glob(f"{model}-{key}-*") if p.is_dir())
            if not cells:
                continue
            done += len(cells)
            rows = [line for line in table(cells).splitlines() if line.startswith("|")]
            rel = cells_dir.relative_to(ROOT) if cells_dir.is_relative_to(ROOT) else cells_dir
            parts.append(f"**KnowEdit {title}, {name}** ({len(cells)} of {runnable(key)} methods; "
                         f"`lmedit bench table {rel}/{model}-{key}-*`):\n\n" + "\n".join(rows) + "\n")
    head = f"Cells published: {done} of {total}.\n"
    return "\n".join([head] + parts)


def splice(doc: str, block: str) -> str:
    if doc.count(BEGIN) != 1 or doc.count(END) != 1:
        raise ValueError(f"{DOC} must hold each of {BEGIN} and {END} once")
    a, b = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[:a] + "\n" + block + "\n" + doc[b:]


def main(argv: list[str]) -> int:
    doc = DOC.read_text()
    new = splice(doc, render())
    if "--check" in argv:
        if new != doc:
            print(f"{DOC} is out of date: run python scripts/knowedit_tables.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
