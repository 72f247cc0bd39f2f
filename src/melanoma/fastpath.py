"""Choosing the fast training path for a model on this machine: channels-last memory format always, bf16 autocast
only where it measures faster. AMX and AVX-512 bf16 speed up dense convolutions (seed-cnn, ResNets) but not the
depthwise ones of EfficientNets, so the choice is measured per (model, input size, batch, CPU), once, and cached.

The cache lives in $MELANOMA_CACHE_DIR or ~/.cache/melanoma/fastpath.json; the chosen precision is written into the
run's config.yaml, so a resumed run (or a DDP child) never re-decides."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from melanoma.artifacts import atomic_write_text

CANDIDATES = ("32-true", "bf16-mixed")
PROBE_STEPS = 3  # timed optimiser steps per candidate, after one warm-up step


def cache_path() -> Path:
    from melanoma.partial import cache_root

    return cache_root() / "fastpath.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(accelerator: str = "auto") -> dict:
    """What a run trained on, for its result.json: the CPU's name, torch's threads and version, and the GPU's name
    where one trains (the rule of resolve_precision). Why: with identical code, data and seed, runs on two CPUs
    landed 0.035 AUC apart (docs/results.md, session 34), so a recipe is paired only with baseline runs of the
    same machine. Trap: a resumed run records the machine that finished it."""
    on_gpu = torch.cuda.is_available() and accelerator != "cpu"
    return {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if on_gpu else None}


def _key(architecture: str, size: int, batch: int) -> str:
    return f"{architecture}|{size}|{batch}|{_cpu_name()}|{torch.get_num_threads()}t|torch{torch.__version__}"


def step_seconds(model: torch.nn.Module, size: int, batch: int, precision: str, steps: int = PROBE_STEPS) -> float:
    """Median seconds of one channels-last training step (forward, backward, AdamW) on random data."""
    model = model.train().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def choose_cpu_precision(architecture: str, size: int, batch: int, num_classes: int = 9) -> str:
    """The faster of fp32 and bf16 autocast for this model on this CPU (measured once, then cached)."""
    from melanoma.models import create_model

    path, key = cache_path(), _key(architecture, size, batch)
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]["precision"]
    torch.manual_seed(0)
    model = create_model(architecture, num_classes=num_classes, pretrained=False, image_size=size)
    probe_batch = min(batch, 16)  # the ratio, not the absolute speed, decides
    seconds = {p: step_seconds(model, size, probe_batch, p) for p in CANDIDATES}
    best = min(seconds, key=seconds.get)
    cache[key] = {"precision": best, "seconds_per_step": {p: round(s, 4) for p, s in seconds.items()},
                  "probe_batch": probe_batch}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache, indent=1))
    except OSError:
        pass  # a read-only home: decide again next time
    return best


def resolve_precision(cfg) -> str:
    """cfg.precision if given, else $MELANOMA_PRECISION if set (the test suite pins 32-true: no probing); bf16-mixed
    on a GPU; else the measured faster CPU path."""
    chosen = cfg.precision or os.environ.get("MELANOMA_PRECISION")
    if chosen:
        return chosen
    if torch.cuda.is_available() and cfg.accelerator != "cpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return choose_cpu_precision(cfg.model, int(cfg.image_size), cfg.batch_size)
