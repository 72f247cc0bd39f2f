"""CPU inference speed: PyTorch eager vs ONNX Runtime, seed-cnn and efficientnet_lite0 (random-weight artifacts).

Measures what `Predictor` runs per batch (model forward returning logits + pre-logit features), on already
preprocessed input tensors, plus one end-to-end single-image figure (JPEG decode + eval transform + model +
softmax/alert/referral) through `Predictor.predict`:

* single-image latency p50 / p95 in ms (batch 1, after warm-up)
* batch-32 throughput in images/s

    python bench/predict_speed.py [--threads 2] [--runs 100] [--models seed-cnn efficientnet_lite0]

Other processes loading the CPU (training jobs) inflate the figures; the script prints the 1-minute load average.
On a shared CPU run it as `OMP_WAIT_POLICY=PASSIVE python bench/predict_speed.py --no-spin`: busy-waiting OpenMP
(torch) and onnxruntime threads otherwise slow a 2-thread forward down up to 15x next to another busy process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from melanoma.artifacts import build_test_model
from melanoma.export import export_onnx
from melanoma.predict import Predictor

SIZES = {"seed-cnn": 180, "efficientnet_lite0": 224}  # each architecture's default input size
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic-9class" / "Train" / "melanoma"


def _latencies_ms(fn, x, runs: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        fn(x)
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def _pct(values, q) -> float:
    return float(np.percentile(values, q))


def _measure(predictor: Predictor, size: int, runs: int, batch: int) -> dict:
    one = torch.randn(1, 3, size, size)
    many = torch.randn(batch, 3, size, size)
    single = _latencies_ms(predictor.backend, one, runs)
    batch_ms = _latencies_ms(predictor.backend, many, max(5, runs // 10), warmup=2)
    sample = next(iter(sorted(SAMPLE.glob("*.jpg"))), None)
    e2e = _latencies_ms(lambda p: predictor.predict([p]), str(sample), max(20, runs // 5), warmup=3) \
        if sample else [float("nan")]
    return {"p50": _pct(single, 50), "p95": _pct(single, 95), "throughput": batch / (statistics.median(batch_ms) / 1e3),
            "e2e_p50": _pct(e2e, 50)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--models", nargs="+", default=list(SIZES))
    ap.add_argument("--no-spin", action="store_true",
                    help="onnxruntime without busy-waiting threads (better when other jobs share the CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    print(f"torch {torch.__version__}, {args.threads} threads, ort spinning {not args.no_spin}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, cpu count {os.cpu_count()}, "
          f"load average (1 min) before: {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models:
            size = SIZES.get(arch, 224)
            model_dir = build_test_model(Path(tmp) / arch, architecture=arch, image_size=size)
            onnx_path = Path(tmp) / f"{arch}.onnx"
            export_onnx(model_dir, onnx_path)
            for backend, predictor in (("pytorch", Predictor.load(model_dir)),
                                       ("onnxruntime", Predictor.load(onnx_path, threads=args.threads,
                                                                      spinning=not args.no_spin))):
                rows.append((arch, size, backend, _measure(predictor, size, args.runs, args.batch)))
    print(f"\n{'model':<20}{'size':>5}  {'backend':<12}{'p50 ms':>8}{'p95 ms':>8}{'b' + str(args.batch) + ' img/s':>12}"
          f"{'e2e p50 ms':>12}")
    for arch, size, backend, m in rows:
        print(f"{arch:<20}{size:>5}  {backend:<12}{m['p50']:>8.2f}{m['p95']:>8.2f}{m['throughput']:>12.1f}"
              f"{m['e2e_p50']:>12.2f}")
    print(f"\nload average (1 min) after: {os.getloadavg()[0]:.2f}  (other jobs on this CPU inflate the figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
