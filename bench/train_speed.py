"""End-to-end training images/s of the current and the fast path (real trainer, data loading included), then
training throughput and peak memory of the registry models, and data-loading throughput of the train preset.

    .venv/bin/python bench/train_speed.py                      # defaults: ~1-2 minutes on 2 CPU cores
    .venv/bin/python bench/train_speed.py --steps 20 --batch-size 32 --threads 8

Model rows: images/s of the median of `--steps` timed optimizer steps (after one warm-up step) on random inputs, for
seed-cnn and efficientnet_lite0 at 180 and 224 px, on CPU (fp32) and, when CUDA is available, on GPU with AMP
and channels_last. Each configuration runs in a fresh process so its peak RSS (resource.getrusage, the process'
high-water mark) is its own; GPU rows also give torch.cuda.max_memory_allocated.

Data rows: images/s (median per image) of the train preset in one process with ONE torch thread, as in a
DataLoader worker, from cached uint8 tensors (what the trainer does) vs decoding the JPEG every time. If that
rate times the number of workers exceeds the training images/s, data loading is not the bottleneck.
Trap: transforms in a process with several torch threads on busy cores run many times slower (OpenMP threads
spin-wait on tiny ops), so the main process (num_workers=0) should not do the augmentation with >1 thread.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "../shared/data/isic-9class/Train"
CONFIGS = [("seed-cnn", 180), ("seed-cnn", 224), ("efficientnet_lite0", 180), ("efficientnet_lite0", 224)]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _train_steps(model, batch, labels, steps, device, amp_dtype) -> list[float]:
    """Run `steps` optimizer steps; returns each step's seconds (synchronised on GPU)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    loss_fn = torch.nn.CrossEntropyLoss()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(batch), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def bench_model(name: str, size: int, device_name: str, steps: int, batch_size: int, threads: int) -> dict:
    """One configuration (run in its own process): images/s and peak memory."""
    from melanoma.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    model = create_model(name, num_classes=9, image_size=size if name == "seed-cnn" else None).to(device).train()
    batch = torch.randn(batch_size, 3, size, size, device=device)
    labels = torch.randint(0, 9, (batch_size,), device=device)
    amp_dtype = None
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.cuda.reset_peak_memory_stats()
    _train_steps(model, batch, labels, 1, device, amp_dtype)  # warm-up: allocator, cuDNN autotune
    seconds = _train_steps(model, batch, labels, steps, device, amp_dtype)
    # median step: robust to other jobs stealing the CPU for a moment
    row = {"model": name, "size": size, "device": device_name + (f" amp {str(amp_dtype)[6:]}" if amp_dtype else ""),
           "img_s": batch_size / statistics.median(seconds), "rss_mib": _peak_rss_mib()}
    if device.type == "cuda":
        row["cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def _sample_paths(data: Path, n: int) -> list[Path]:
    paths = sorted(data.rglob("*.jpg"))
    if not paths:
        sys.exit(f"no .jpg images under {data}; pass --data")
    return paths[:: max(1, len(paths) // n)][:n]


def bench_data(data: Path, size: int, n_images: int) -> list[dict]:
    """Train-preset images/s from cached uint8 tensors vs decoding JPEGs, one process, one thread."""
    from melanoma.data import load_image
    from melanoma.models import default_preprocessing
    from melanoma.transforms import train_transform
    from torchvision.transforms.v2 import functional as F

    torch.set_num_threads(1)  # what DataLoader workers use
    paths = _sample_paths(data, n_images)
    transform = train_transform(default_preprocessing("efficientnet_lite0", image_size=size))
    cached = [F.pil_to_tensor(load_image(p)) for p in paths]  # what the trainer keeps in memory
    rows = []
    for label, get in [("cached uint8", lambda i: cached[i]), ("decode jpeg", lambda i: load_image(paths[i]))]:
        for i in range(min(4, len(paths))):  # warm-up: first calls build kernels/caches
            transform(get(i))
        seconds = []
        for i in range(len(paths)):
            start = time.perf_counter()
            transform(get(i))
            seconds.append(time.perf_counter() - start)
        rows.append({"source": label, "size": size, "img_s": 1 / statistics.median(seconds)})
    return rows


# End-to-end: the real trainer (`melanoma.training.train`: Lightning, DataLoader workers, augmentation from the
# decoded cache) on real images; images/s between the 3rd and the last optimiser step, data loading included.
PATHS = {"current": {"channels_last": False, "precision": "32-true"},  # before issue 13: NCHW, fp32
         "fast": {"channels_last": True, "precision": None}}  # NHWC, bf16 autocast where measured faster (fastpath)
E2E_CONFIGS = [("efficientnet_lite0", 160), ("seed-cnn", 180)]


class _StepClock:
    """Lightning callback recording the wall time at the end of every optimiser step."""

    def __init__(self):
        import lightning as L

        clock = self

        class _Callback(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                clock.times.append(time.perf_counter())

        self.times: list[float] = []
        self.callback = _Callback()


def bench_end_to_end(name: str, size: int, path: str, steps: int, batch_size: int, data: Path, out: Path) -> dict:
    """One training run of `steps` optimiser steps on the real pipeline (run in its own process)."""
    from melanoma.config import TrainConfig
    from melanoma.training import train

    clock = _StepClock()
    cfg = TrainConfig(data=str(data), out=str(out / f"{name}-{size}-{path}"), model=name, image_size=size,
                      epochs=1, batch_size=batch_size, samples_per_epoch=steps * batch_size, seed=0,
                      extra={"progress_bar": False, "bootstrap": 10}, **PATHS[path])
    train(cfg, callbacks=[clock.callback])
    timed = clock.times[2:]  # the first steps pay for kernel selection and worker start-up
    img_s = batch_size * (len(timed) - 1) / (timed[-1] - timed[0])
    return {"model": name, "size": size, "path": path, "img_s": img_s, "precision": cfg.precision or "auto",
            "rss_mib": _peak_rss_mib()}


def _subset(data: Path, per_class: int, root: Path) -> Path:
    """A class-folder copy (symlinks) of the first `per_class` images of each class: decoding stays short."""
    for class_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        target = root / class_dir.name
        target.mkdir(parents=True)
        for image in sorted(class_dir.glob("*.jpg"))[:per_class]:
            (target / image.name).symlink_to(image.resolve())
    return root


def end_to_end_rows(args) -> list[dict]:
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = _subset(args.data, 40, Path(tmp) / "data")
        for name, size in E2E_CONFIGS:
            for path in ("current", "fast"):
                rows.append(_in_child_process(bench_end_to_end, name, size, path, args.e2e_steps, 32, data,
                                              Path(tmp) / "runs"))
                r = rows[-1]
                print(f"{r['model']:<20}{r['size']:>5}  {r['path']:<8}{r['img_s']:>9.1f}{r['rss_mib']:>14.0f}",
                      flush=True)
    return rows


def _child(queue, fn, args) -> None:
    queue.put(fn(*args))


def _in_child_process(fn, *args):
    """Like _in_fresh_process, in a non-daemonic child: the trainer starts DataLoader worker processes, which a
    Pool worker may not."""
    ctx = mp.get_context("spawn" if torch.cuda.is_available() else "fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _in_fresh_process(fn, *args):
    # fork is cheap (no re-import) and safe while this process has not touched CUDA; with CUDA use spawn
    method = "spawn" if torch.cuda.is_available() else "fork"
    with mp.get_context(method).Pool(1) as pool:
        return pool.apply(fn, args)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps per configuration (default 4)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JPEG folder for the data-loading rows")
    p.add_argument("--data-images", type=int, default=64, help="images timed in the data-loading rows")
    p.add_argument("--e2e-steps", type=int, default=14, help="optimiser steps per end-to-end row (batch 32)")
    p.add_argument("--only-e2e", action="store_true", help="print only the end-to-end rows (the issue's figures)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"end to end (melanoma train on real images, data loading included), batch 32, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'model':<20}{'size':>5}  {'path':<8}{'img/s':>9}{'peak RSS MiB':>14}")
    rows = {(r["model"], r["path"]): r["img_s"] for r in end_to_end_rows(args)}
    for name, _ in E2E_CONFIGS:
        print(f"{name}: fast / current = {rows[(name, 'fast')] / rows[(name, 'current')]:.2f}x")
    if args.only_e2e:
        return
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, threads {args.threads}, batch {args.batch_size}, steps {args.steps}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other jobs skew CPU figures)")
    print(f"{'model':<20}{'size':>5}  {'device':<18}{'img/s':>9}{'peak RSS MiB':>14}{'CUDA MiB':>10}")
    for device in devices:
        for name, size in CONFIGS:
            r = _in_fresh_process(bench_model, name, size, device, args.steps, args.batch_size, args.threads)
            cuda = f"{r['cuda_mib']:>10.0f}" if "cuda_mib" in r else f"{'-':>10}"
            print(f"{r['model']:<20}{r['size']:>5}  {r['device']:<18}{r['img_s']:>9.1f}{r['rss_mib']:>14.0f}{cuda}",
                  flush=True)
    print(f"\ndata loading, train preset, 1 process x 1 thread, {args.data_images} images from {args.data.resolve()}")
    for size in (180, 224):
        for r in _in_fresh_process(bench_data, args.data, size, args.data_images):
            print(f"{r['source']:<20}{r['size']:>5}  {r['img_s']:>9.1f} img/s", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
