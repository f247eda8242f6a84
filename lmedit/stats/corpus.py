"""Text corpora for corpus statistics: read local text, cut it into model-sized token chunks.

A corpus is one of
  * None: the staged WikiText-2 text at `shared_data_dir() / "wikitext"` (test + valid, ~2.4 MB);
  * a path to a text file, or to a folder whose ``*.txt`` files (recursively, sorted) are read;
  * ``"hf:NAME"`` or ``"hf:NAME:CONFIG"`` (optionally ``"hf:NAME:CONFIG@SPLIT"``): a hub dataset with a
    ``text`` column, only if the optional `datasets` package is installed (and, offline, already cached).

Text is cut into *documents* and documents into *units* (one unit per non-empty line):
  * a line that looks like a WikiText top-level heading (`` = Title = ``) starts a new document and is
    dropped; lower headings (`` = = Section = = ``) are dropped;
  * whitespace-only lines are skipped;
  * every file is a document boundary.
Each document is tokenised unit by unit (units joined by a newline) and cut into chunks of at most
`max_len` tokens; a document's last chunk may be shorter. Chunks never span two documents.
WikiText files (name starting with ``wikitext``) are lightly detokenised (`` @-@ `` -> ``-``,
`` , `` -> ``, ``...) unless `detokenize=False`.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..paths import shared_data_dir

_TOP_HEADING = re.compile(r"^\s*= (?!=).*(?<!=) =\s*$")
_ANY_HEADING = re.compile(r"^\s*(= )+.*( =)+\s*$")
_CONTENT_HASH_LIMIT = 256 * 1024 * 1024  # above this total size the corpus identity uses size + mtime only


class CorpusError(ValueError):
    pass


def default_corpus_path() -> Path:
    return shared_data_dir() / "wikitext"


# --- WikiText detokenisation ------------------------------------------------------------------
_WT_RULES = [
    (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."),
    (" , ", ", "), (" . ", ". "), (" ; ", "; "), (" : ", ": "), (" ! ", "! "), (" ? ", "? "),
    (" 's ", "'s "), (" n't ", "n't "), (" 're ", "'re "), (" 've ", "'ve "), (" 'll ", "'ll "),
    (" 'm ", "'m "), (" 'd ", "'d "),
    ("( ", "("), (" )", ")"), ("[ ", "["), (" ]", "]"),
]


def wikitext_detokenize(line: str) -> str:
    """Undo the most visible WikiText word-level tokenisation (spaces around punctuation, @-@)."""
    s = f" {line.strip()} "
    for a, b in _WT_RULES:
        s = s.replace(a, b)
    s = s.strip()
    if s.endswith(" ."):
        s = s[:-2] + "."
    return s


def is_heading(line: str) -> bool:
    return bool(_ANY_HEADING.match(line))


def is_top_heading(line: str) -> bool:
    return bool(_TOP_HEADING.match(line))


# --- sources ----------------------------------------------------------------------------------
def _hub_spec(corpus: str) -> tuple[str, str | None, str]:
    spec = corpus[3:]
    split = "train"
    if "@" in spec:
        spec, split = spec.rsplit("@", 1)
    name, _, config = spec.partition(":")
    if not name:
        raise CorpusError(f"empty dataset name in {corpus!r}; use hf:NAME[:CONFIG][@SPLIT]")
    return name, (config or None), split


@dataclass(frozen=True)
class Corpus:
    """A resolved corpus: local files (sorted) or a hub dataset spec."""
    source: str  # the path (absolute) or "hf:..." spec
    files: tuple[Path, ...] = ()
    hub: tuple[str, str | None, str] | None = None
    detokenize: bool | None = None  # None: detokenise files whose name starts with "wikitext"

    def _detok(self, path: Path | None) -> bool:
        if self.detokenize is not None:
            return self.detokenize
        return path is not None and path.name.lower().startswith("wikitext")

    def identity(self) -> dict:
        """What the statistics depend on: file names, sizes and (up to 256 MB) a content hash."""
        if self.hub is not None:
            return {"hub": self.source, "detokenize": self.detokenize}
        files = []
        total = sum(f.stat().st_size for f in self.files)
        for f in self.files:
            st = f.stat()
            item = {"path": str(f), "size": st.st_size, "detokenize": self._detok(f)}
            if total <= _CONTENT_HASH_LIMIT:
                item["sha256"] = _file_sha256(f)
            else:
                item["mtime_ns"] = st.st_mtime_ns
            files.append(item)
        return {"source": self.source, "files": files}

    def documents(self) -> Iterator[list[str]]:
        """Lists of units (cleaned non-empty, non-heading lines), one list per document."""
        if self.hub is not None:
            sources = ((None, rec) for rec in _hub_records(*self.hub))  # each record is a document
        else:
            sources = [(f, _read_lines(f)) for f in self.files]
        for path, lines in sources:
            detok = self._detok(path)
            doc: list[str] = []
            for line in lines:
                if not line.strip():
                    continue
                if is_heading(line):
                    if is_top_heading(line) and doc:
                        yield doc
                        doc = []
                    continue
                doc.append(wikitext_detokenize(line) if detok else line.strip())
            if doc:
                yield doc


def _read_lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        yield from fh


def _hub_records(name: str, config: str | None, split: str) -> Iterator[list[str]]:
    try:
        import datasets  # noqa: F401
    except ImportError as e:
        raise CorpusError(
            f"corpus 'hf:{name}' needs the optional `datasets` package, which is not installed; "
            "pass a local text file or folder instead (default: the staged WikiText-2)") from e
    from datasets import load_dataset

    ds = load_dataset(name, config, split=split, streaming=True)
    for row in ds:
        text = row.get("text")
        if text is None:
            raise CorpusError(f"dataset {name!r} has no 'text' column")
        yield text.splitlines()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_corpus(corpus: str | os.PathLike | None = None, detokenize: bool | None = None) -> Corpus:
    """Turn the user's `corpus` argument into a Corpus (files checked to exist and be non-empty)."""
    if corpus is None:
        path = default_corpus_path()
        if not path.exists():
            raise CorpusError(f"the default corpus (WikiText-2) is not at {path}; set $LMEDIT_DATA or pass a corpus path")
        corpus = path
    if isinstance(corpus, str) and corpus.startswith("hf:"):
        return Corpus(source=corpus, hub=_hub_spec(corpus), detokenize=detokenize)
    path = Path(corpus).expanduser().resolve()
    if path.is_file():
        files = (path,)
    elif path.is_dir():
        files = tuple(sorted(p for p in path.rglob("*.txt") if p.is_file()))
        if not files:
            raise CorpusError(f"no .txt files under {path}")
    else:
        raise CorpusError(f"corpus {str(corpus)!r} is neither a file nor a folder"
                          " (for a hub dataset write hf:NAME[:CONFIG][@SPLIT])")
    if sum(f.stat().st_size for f in files) == 0:
        raise CorpusError(f"corpus {path} is empty")
    return Corpus(source=str(path), files=files, detokenize=detokenize)


# --- token chunks -----------------------------------------------------------------------------
def _prefix_ids(tok) -> list[int]:
    """The BOS the tokenizer puts before every text by itself (none for GPT-2-style tokenizers)."""
    ids = tok("a")["input_ids"]
    bos = getattr(tok, "bos_token_id", None)
    return [bos] if bos is not None and ids and ids[0] == bos else []


def iter_token_chunks(tok, corpus: str | os.PathLike | Corpus | None = None, max_len: int = 512,
                      n_tokens: int | None = None) -> Iterator[list[int]]:
    """Token-id lists of at most `max_len` tokens, one document at a time, `n_tokens` in all (if given).

    A tokenizer that prepends BOS to every text gets BOS at the start of every chunk (counted as
    a token). The last chunk is cut so that exactly `n_tokens` tokens come out, unless the corpus
    runs out first.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    c = corpus if isinstance(corpus, Corpus) else resolve_corpus(corpus)
    prefix = _prefix_ids(tok)
    body = max_len - len(prefix)
    left = n_tokens

    def emit(ids: list[int]):
        nonlocal left
        chunk = prefix + ids
        if left is not None:
            chunk = chunk[:left]
            left -= len(chunk)
        return chunk

    for doc in c.documents():
        buf: list[int] = []
        for i, unit in enumerate(doc):
            buf.extend(tok(unit if i == 0 else "\n" + unit, add_special_tokens=False)["input_ids"])
            while len(buf) >= body:
                yield emit(buf[:body])
                buf = buf[body:]
                if left is not None and left <= 0:
                    return
        if buf:
            yield emit(buf)
            if left is not None and left <= 0:
                return


def read_corpus(corpus: str | os.PathLike | None = None, detokenize: bool | None = None) -> Iterator[str]:
    """The corpus as document texts (units joined by newlines), lazily."""
    for doc in resolve_corpus(corpus, detokenize=detokenize).documents():
        yield "\n".join(doc)
