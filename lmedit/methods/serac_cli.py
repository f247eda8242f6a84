"""`lmedit serac ...`: train (and cache) SERAC's scope classifier and counterfactual model ahead of editing.

    lmedit serac train --model smollm2-135m --n 200
    lmedit serac train --model smollm2-135m --n 200 --classifier-n 600 --set cf_lr=1e-4 --force
    lmedit serac path --model smollm2-135m --n 200      # where that model would be cached
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

serac_app = typer.Typer(help="SERAC: train the scope classifier and the counterfactual model once (cached).",
                        no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _hparams(model, hparams: Optional[Path], n: Optional[int], classifier_n: Optional[int], sets: list[str]):
    from ..hparams import load_hparams
    from ..models import ModelAdapter
    from .serac import SeracHparams

    from ..hparams import parse_overrides

    try:
        overrides = parse_overrides(sets)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if n is not None:
        overrides["cf_records"] = n
    if classifier_n is not None:
        overrides["classifier_records"] = classifier_n
    return load_hparams(SeracHparams, "serac", ModelAdapter(model).model_type, overrides=overrides, path=hparams)


@serac_app.command("train")
def train(
    model: str = typer.Option("smollm2-135m", help="packaged model name, local folder or hub id (the base model)"),
    n: Optional[int] = typer.Option(None, help="ZsRE train records for the counterfactual model (hparam cf_records)"),
    classifier_n: Optional[int] = typer.Option(None, help="ZsRE train records for the scope classifier"),
    hparams: Optional[Path] = typer.Option(None, help="yaml file with SERAC hparams"),
    set_: List[str] = typer.Option([], "--set", help="override one hparam: key=value (repeatable)"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    force: bool = typer.Option(False, help="train again even if cached"),
):
    """Fine-tune the counterfactual model and train the scope classifier; both are cached under $LMEDIT_HOME/serac."""
    from ..hparams import InvalidHparams
    from ..models import load_model
    from .base import EditFailed
    from .serac import cf_path, classifier_path, counterfactual_model, model_fingerprint, scope_classifier
    from ._embedding import make_embedder

    try:
        with console.status(f"loading {model}"):
            m, tok = load_model(model, dtype=dtype, device=device)
        hp = _hparams(m, hparams, n, classifier_n, set_)
        fp = model_fingerprint(m)
        t = time.perf_counter()
        with console.status(f"scope classifier ({hp.embedder}, {hp.classifier_records} records)"):
            scope_classifier(make_embedder(hp.embedder, m, tok), hp, fp, force=force)
        console.print(f"classifier: {classifier_path(hp, fp)} ({time.perf_counter() - t:.1f}s)")
        t = time.perf_counter()
        with console.status(f"counterfactual model ({hp.cf_records} records, {hp.cf_epochs} epoch(s))"):
            counterfactual_model(m, tok, hp, fp, force=force)
        console.print(f"counterfactual model: {cf_path(m, hp, fp)} ({time.perf_counter() - t:.1f}s)")
    except (InvalidHparams, EditFailed, ValueError, FileNotFoundError) as e:
        err.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2)


@serac_app.command("path")
def path(
    model: str = typer.Option("smollm2-135m", help="packaged model name, local folder or hub id"),
    n: Optional[int] = typer.Option(None, help="ZsRE train records for the counterfactual model"),
    classifier_n: Optional[int] = typer.Option(None, help="ZsRE train records for the scope classifier"),
    hparams: Optional[Path] = typer.Option(None, help="yaml file with SERAC hparams"),
    set_: List[str] = typer.Option([], "--set", help="override one hparam: key=value (repeatable)"),
):
    """Where the classifier and counterfactual model for these settings are (or would be) cached."""
    from ..models import load_model
    from .serac import cf_path, classifier_path, model_fingerprint

    m, _ = load_model(model)
    hp = _hparams(m, hparams, n, classifier_n, set_)
    fp = model_fingerprint(m)
    for what, p in (("classifier", classifier_path(hp, fp)), ("counterfactual model", cf_path(m, hp, fp))):
        console.print(f"{what}: {p} ({'cached' if p.exists() else 'not trained'})")
