"""Where lmedit keeps what it downloads and computes (models, statistics, runs)."""
from __future__ import annotations

import os
from pathlib import Path


def lmedit_home() -> Path:
    """Root of the cache: $LMEDIT_HOME, else ~/.cache/lmedit."""
    home = os.environ.get("LMEDIT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "lmedit"


def models_dir() -> Path:
    return lmedit_home() / "models"


def stats_dir() -> Path:
    return lmedit_home() / "stats"


def shared_data_dir() -> Path:
    """The staged datasets: $LMEDIT_DATA, else ../shared/data next to the repository."""
    env = os.environ.get("LMEDIT_DATA")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parent.parent
    return here.parent / "shared" / "data"
