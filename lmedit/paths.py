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
    """Cached second-moment statistics: $LMEDIT_STATS_DIR, else $LMEDIT_HOME/stats.

    The separate variable lets statistics go elsewhere (a scratch disk, a test's temporary folder)
    while models are still read from the usual cache.
    """
    env = os.environ.get("LMEDIT_STATS_DIR")
    return Path(env).expanduser() if env else lmedit_home() / "stats"


def shared_data_dir() -> Path:
    """The staged datasets: $LMEDIT_DATA, else ../shared/data next to the repository."""
    env = os.environ.get("LMEDIT_DATA")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parent.parent
    return here.parent / "shared" / "data"
