"""``lmedit data ...``: list the registered datasets and show their requests."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

data_app = typer.Typer(help="Knowledge-editing datasets: list and show.", no_args_is_help=True)
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


@data_app.command("show")
def data_show(name: str = typer.Argument(..., help="dataset name (see `lmedit data list`)"),
              n: int = typer.Option(3, "--n", "-n", help="how many requests to print"),
              path: Optional[Path] = typer.Option(None, "--path", help="read this file instead of the staged one"),
              skip_invalid: bool = typer.Option(False, "--skip-invalid", help="skip records that are not valid")):
    """Print the first N requests of a dataset as JSON."""
    from .base import DatasetError
    from .registry import UnknownDataset, load_dataset

    if n < 0:
        _err.print("[bold red]error:[/] --n must be >= 0")
        raise typer.Exit(2)
    try:
        reqs = load_dataset(name, path=path, limit=n, skip_invalid=skip_invalid)
    except (UnknownDataset, DatasetError) as e:
        _err.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2)
    sys.stdout.write(json.dumps([r.to_dict() for r in reqs], indent=2, ensure_ascii=False) + "\n")
    if reqs.skipped:
        _err.print(f"skipped {len(reqs.skipped)} invalid record(s): "
                   + "; ".join(f"record {i}: {why}" for i, why in reqs.skipped[:5]))
