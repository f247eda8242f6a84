"""Sharding independent (single/batch protocol) cases over processes or a Ray cluster.

Each worker loads its own copy of the model and appends to its own cases.w<k>.jsonl, so
workers never write the same file and a resumed run skips what any worker finished.
"""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from .config import RunConfig
from .run import RunError, _shard_main


def run_processes(cfg: RunConfig, run_dir: Path) -> None:
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    with ctx.Pool(cfg.workers) as pool:
        results = [pool.apply_async(_shard_main, (cfg.to_dict(), str(run_dir), k, cfg.workers))
                   for k in range(cfg.workers)]
        for r in results:
            r.get()


def run_ray(cfg: RunConfig, run_dir: Path) -> None:
    try:
        import ray
    except ImportError as e:
        raise RunError("--ray needs the optional extra: pip install 'lmedit[ray]'") from e
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=cfg.ray, ignore_reinit_error=True, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(_shard_main)
        n = cfg.workers
        ray.get([task.remote(cfg.to_dict(), str(run_dir), k, n) for k in range(n)])
    finally:
        if started_here:
            ray.shutdown()
