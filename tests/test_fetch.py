"""Packaged-model cache: a corrupt download gives a clear error and leaves no cache entry."""
import hashlib

import pytest

from lmedit.models import CATALOG, ModelFetchError, cached_path, fetch
import importlib

fetch_mod = importlib.import_module("lmedit.models.fetch")
from lmedit.models.catalog import PackagedModel


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMEDIT_HOME", str(tmp_path))
    return tmp_path


def _fake_entry(monkeypatch, parts: list[bytes], sha: str, tmp_path):
    files = []
    for i, data in enumerate(parts):
        f = tmp_path / f"part{i}"
        f.write_bytes(data)
        files.append(f)
    entry = PackagedModel(name="fake", description="", packages=("fake==1",),
                          members=tuple(f"fakepkg/part{i}" for i in range(len(parts))),
                          sha256=sha, gguf_name="fake.gguf", family="llama")
    monkeypatch.setitem(CATALOG, "fake", entry)
    lookup = dict(zip(entry.members, files))
    monkeypatch.setattr(fetch_mod, "_installed_member", lambda m: lookup[m])
    return entry


def test_checksum_mismatch_is_a_clear_error_and_leaves_no_entry(home, monkeypatch, tmp_path):
    _fake_entry(monkeypatch, [b"abc", b"def"], "0" * 64, tmp_path)
    with pytest.raises(ModelFetchError, match="sha256"):
        fetch("fake")
    assert cached_path("fake") is None
    assert [p.name for p in (home / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_parts_are_concatenated_in_order_and_conversion_failure_leaves_no_entry(home, monkeypatch, tmp_path):
    sha = hashlib.sha256(b"abcdef").hexdigest()
    _fake_entry(monkeypatch, [b"abc", b"def"], sha, tmp_path)
    seen = {}

    def convert(gguf, out):
        seen["bytes"] = gguf.read_bytes()
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # interrupted half-way through conversion

    monkeypatch.setattr(fetch_mod, "convert_gguf", convert)
    with pytest.raises(KeyboardInterrupt):
        fetch("fake")
    assert seen["bytes"] == b"abcdef"
    assert cached_path("fake") is None
    assert not (home / "models" / "fake").exists()


def test_successful_fetch_is_marked_and_reused(home, monkeypatch, tmp_path):
    sha = hashlib.sha256(b"xyz").hexdigest()
    _fake_entry(monkeypatch, [b"xyz"], sha, tmp_path)
    calls = []

    def convert(gguf, out):
        calls.append(1)
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(fetch_mod, "convert_gguf", convert)
    path = fetch("fake")
    assert cached_path("fake") == path and (path / "config.json").is_file()
    assert fetch("fake") == path and len(calls) == 1  # reused, not converted again
    # a folder without its completion marker is not trusted: it is rebuilt
    (path / fetch_mod.MARKER).unlink()
    fetch("fake")
    assert len(calls) == 2


def test_unknown_model_name():
    with pytest.raises(ModelFetchError, match="unknown packaged model"):
        fetch("gpt-17")


def test_load_model_rejects_folder_without_config(tmp_path):
    from lmedit import load_model

    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))
