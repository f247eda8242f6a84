"""The one registry of editing methods. Methods register themselves on import."""
from __future__ import annotations

import difflib

from .base import EditMethod

_METHODS: dict[str, type[EditMethod]] = {}


class UnknownMethod(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def register(cls: type[EditMethod]) -> type[EditMethod]:
    """Class decorator: `@register class FTM(...): name = "ft-m"`."""
    name = cls.name
    if name in _METHODS:
        raise ValueError(f"method {name!r} is already registered")
    _METHODS[name] = cls
    return cls


def get_method(name: str) -> EditMethod:
    key = name.lower()
    if key not in _METHODS:
        close = difflib.get_close_matches(key, list(_METHODS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownMethod(f"unknown method {name!r}{hint} (available: {', '.join(sorted(_METHODS))})")
    return _METHODS[key]()


def list_methods() -> list[str]:
    return sorted(_METHODS)
