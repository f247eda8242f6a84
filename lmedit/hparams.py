"""Typed method hyper-parameters: dataclasses loaded from yaml, with per-family defaults.

Resolution order for `load_hparams("ft-m", "llama", overrides)`:
  dataclass defaults < hparams/<method>/default.yaml < hparams/<method>/<model_type>.yaml < overrides
Unknown keys are rejected; values are converted by field type (so yaml's "5e-4" string is a float).
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

HPARAMS_DIR = Path(__file__).parent / "hparams"


class InvalidHparams(ValueError):
    pass


@dataclasses.dataclass
class HParams:
    """Base class; subclasses add fields (with `metadata={"help": ...}`) and checks in `validate`."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:  # overridden by methods
        pass

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HParams":
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InvalidHparams(f"unknown hparam(s) for {cls.__name__}: {sorted(unknown)}; known: {sorted(names)}")
        kwargs = {k: _convert(v, hints[k], f"{cls.__name__}.{k}") for k, v in d.items()}
        try:
            return cls(**kwargs)
        except InvalidHparams:
            raise
        except (TypeError, ValueError) as e:
            raise InvalidHparams(f"{cls.__name__}: {e}") from e

    def replace(self, **overrides) -> "HParams":
        return type(self).from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, cond: bool, msg: str) -> None:
        if not cond:
            raise InvalidHparams(f"{type(self).__name__}: {msg}")


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or str(origin) == "types.UnionType":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin in (list, tuple):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise InvalidHparams(f"{where} must be a list, got {value!r}")
        elem = args[0] if args else Any
        out = [_convert(v, elem, where) for v in value]
        return tuple(out) if origin is tuple else out
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise InvalidHparams(f"{where} must be {getattr(hint, '__name__', hint)}, got {value!r}") from None
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise InvalidHparams(f"{path} must hold a mapping of hparam names to values")
    return data


def load_hparams(cls: type[HParams], method: str, model_type: str | None = None,
                 overrides: dict[str, Any] | None = None, path: str | Path | None = None) -> HParams:
    """Build hparams for a method from packaged defaults, an optional yaml file and overrides."""
    merged: dict[str, Any] = {}
    folder = HPARAMS_DIR / method
    for f in [folder / "default.yaml", folder / f"{model_type}.yaml" if model_type else None]:
        if f is not None and f.is_file():
            merged.update(_read_yaml(f))
    if path is not None:
        merged.update(_read_yaml(Path(path)))
    merged.update(overrides or {})
    return cls.from_dict(merged)


def parse_overrides(items) -> dict:
    """`["key=value", ...]` (the CLI's --set) -> {key: yaml-parsed value}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set takes key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out
