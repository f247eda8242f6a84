"""``lmedit data ...``: list the registered datasets, show their requests, count what a slice measures."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

data_app = typer.Typer(help="Knowledge-editing datasets: list, show, stats.", no_args_is_help=True)
_console = Console()
_err = Console(stderr=True)


@data_app.command("list")
def data_list():
    """The registered datasets: name, records in the file, path, description."""
    from ..paths import shared_data_dir
    from .registry import get_dataset, list_datasets

    t = Table(title=f"datasets (paths relative to {shared_data_dir()}; set $LMEDIT_DATA to move it)")
    for col in ("name", "count", "path", "description"):
        t.add_column(col, overflow="fold")
    for name in list_datasets():
        info = get_dataset(name)
        path = info.path
        try:
            rel = str(path.relative_to(shared_data_dir()))
        except ValueError:
            rel = str(path)
        count = "-" if info.expected_count is None else str(info.expected_count)
        if info.known_invalid:
            count += f" ({info.known_invalid} invalid)"
        shown = rel if path.is_file() else f"{rel} [red](missing)[/]"
        t.add_row(name, count, shown, info.description)
    _console.print(t)


_NAME = typer.Argument(..., help="dataset name (see `lmedit data list`)")
_PATH = typer.Option(None, "--path", help="read this file instead of the staged one")
_SKIP = typer.Option(False, "--skip-invalid", help="skip records that are not valid")


def _load(name: str, n: int | None, path: Path | None, skip_invalid: bool):
    from .base import DatasetError
    from .registry import UnknownDataset, load_dataset

    if n is not None and n < 0:
        _err.print("[bold red]error:[/] --n must be >= 0")
        raise typer.Exit(2)
    try:
        return load_dataset(name, path=path, limit=n, skip_invalid=skip_invalid)
    except (UnknownDataset, DatasetError) as e:
        _err.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2)


@data_app.command("show")
def data_show(name: str = _NAME, n: int = typer.Option(3, "--n", "-n", help="how many requests to print"),
              path: Optional[Path] = _PATH, skip_invalid: bool = _SKIP):
    """Print the first N requests of a dataset as JSON."""
    reqs = _load(name, n, path, skip_invalid)
    sys.stdout.write(json.dumps([r.to_dict() for r in reqs], indent=2, ensure_ascii=False) + "\n")
    if reqs.skipped:
        _err.print(f"skipped {len(reqs.skipped)} invalid record(s): "
                   + "; ".join(f"record {i}: {why}" for i, why in reqs.skipped[:5]))


@data_app.command("stats")
def data_stats(name: str = _NAME,
               n: Optional[int] = typer.Option(None, "--n", "-n", help="only the first N requests (default: all)"),
               path: Optional[Path] = _PATH, skip_invalid: bool = _SKIP,
               as_json: bool = typer.Option(False, "--json", help="print the counts as JSON")):
    """Count what a slice of a dataset measures: rephrases, locality and portability prompts, and how many
    of those name the edited subject (locality about the subject itself is the hard kind)."""
    from .base import describe

    counts = describe(_load(name, n, path, skip_invalid))
    if as_json:
        sys.stdout.write(json.dumps(counts) + "\n")
        return
    t = Table(title=f"{name}" + (f", first {n} requests" if n is not None else ""))
    t.add_column("count")
    t.add_column("value", justify="right")
    for k, v in counts.items():
        t.add_row(k, str(v))
    _console.print(t)
