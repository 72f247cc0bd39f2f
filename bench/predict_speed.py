"""CPU inference speed and memory of the shipped model: ONNX Runtime vs PyTorch, fp32 and INT8, side by side.

Prints, for models/default (efficientnet_lite0, 160 px, with its referral statistics):

* the input path per image (JPEG decode, resize, colour constancy, crop + normalise), for a 180x180 9-class JPEG
  and a 200x150 HAM10000 JPEG (the shared copy), in ms;
* single-image end-to-end p50 / p95 (file -> decode -> preprocess -> model -> probabilities, alert, referral) with
  the model's test-time views (model.json test_time_augmentation; the shipped default averages 8 since session 37)
  and, beside it, the same call with one view,
  model-only p50, and end-to-end batch throughput (`predict_paths`, decoding in threads) in images/s, for
  PyTorch fp32, ONNX fp32 and ONNX INT8. INT8 is built like `melanoma export --int8` but WITHOUT its quality bounds,
  to show what the refused file would have bought (`kept` says whether `export --int8` writes it), and for a
  3-member ensemble (three copies of the shipped model, `melanoma ensemble`) in PyTorch and as one ONNX graph;
* peak memory (RSS) of `melanoma predict` over 200 images with the ONNX model, in a fresh process, and whether that
  process imported torch.

    python bench/predict_speed.py [--threads 1] [--runs 60] [--images 200] [--model runs/default-v3/seed1]

When the model is itself an ensemble (the shipped default since session 6) the 3-member rows are left out: its
own rows are the ensemble's figures; `--model` measures another model folder (e.g. one member) the same way.

Other processes loading the CPU inflate the figures; the 1-minute load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MODEL = REPO / "models" / "default"


def _ms(fn, runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def _sample_images(n: int) -> list[str]:
    """n real JPEGs: half 9-class (180x180), half HAM10000 (200x150 here), spread over the folders."""
    isic = sorted(str(p) for p in (SHARED / "isic-9class" / "Train").rglob("*.jpg"))
    ham = sorted(str(p) for p in (SHARED / "ham10000" / "images").glob("*.jpg"))
    return isic[:: max(1, len(isic) // (n - n // 2))][: n - n // 2] + ham[: n // 2]


def input_path(pre: dict, paths: list[str], runs: int) -> None:
    """ms per stage of the eval preprocessing (images.model_input), per kind of image."""
    from PIL import Image

    from melanoma import images

    print("\ninput path, ms per image (median):")
    print(f"{'image':<22}{'decode':>8}{'resize':>8}{'colour':>8}{'crop+norm':>11}{'total':>8}")
    for label, path in (("9-class 180x180 JPEG", paths[0]), ("HAM10000 200x150 JPEG", paths[-1])):
        decoded = images.load_image(path)
        resized = images.resize_shorter_side(decoded, int(pre["resize"]))
        method = pre.get("color_constancy")
        constant = images.apply_color_constancy(resized, method)
        stages = [statistics.median(_ms(fn, runs)) for fn in (
            lambda: images.load_image(path),
            lambda: images.resize_shorter_side(decoded, int(pre["resize"])),
            lambda: images.apply_color_constancy(resized, method),
            lambda: images.normalise(images.center_crop(np.asarray(constant), int(pre["input_size"])), pre))]
        print(f"{label:<22}" + "".join(f"{v:>8.2f}" for v in stages[:3]) + f"{stages[3]:>11.2f}{sum(stages):>8.2f}")
        assert isinstance(decoded, Image.Image)


def measure(predictor, paths: list[str], runs: int, batch: int) -> dict:
    one = predictor.model_input(paths[0])[None]
    model_only = _ms(lambda: predictor.backend(one), runs)
    e2e = _ms(lambda: predictor.predict([paths[0]]), runs)  # the model's own test-time views
    one_view = _ms(lambda: predictor.predict([paths[0]], tta=False), runs) if predictor.tta_views > 1 else e2e
    start = time.perf_counter()
    result = predictor.predict_paths(paths, batch_size=batch)
    throughput = len(result) / (time.perf_counter() - start)
    return {"e2e_p50": float(np.percentile(e2e, 50)), "e2e_p95": float(np.percentile(e2e, 95)),
            "model_p50": float(np.percentile(model_only, 50)), "throughput": throughput, "result": result,
            "one_view_p50": float(np.percentile(one_view, 50)), "views": predictor.tta_views}


def peak_rss_of_onnx_predict(onnx_path: Path, paths: list[str], tmp: Path) -> dict:
    """`melanoma predict FOLDER --model X.onnx` in a fresh interpreter: peak RSS (MB) and whether torch loaded."""
    folder = tmp / "rss-images"
    folder.mkdir()
    for i, path in enumerate(paths):
        shutil.copyfile(path, folder / f"{i:04d}{Path(path).suffix}")
    # Trap: ru_maxrss survives fork + exec on Linux (the child would report this big parent's peak); VmHWM of
    # /proc/self/status belongs to the new process image only.
    script = ("import json, re, sys\nfrom melanoma import cli\n"
              f"rc = cli.main(['predict', {str(folder)!r}, '--model', {str(onnx_path)!r}, '--out', "
              f"{str(tmp / 'rss.csv')!r}])\n"
              "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
              "print(json.dumps({'rc': rc, 'peak_mb': hwm / 1024, 'torch': 'torch' in sys.modules}))\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "seconds": time.perf_counter() - start,
            "images": len(paths)}


def three_member_ensemble(tmp: Path, model: Path) -> Path:
    """An ensemble of three copies of the shipped model (speed only: three members cost the same whatever their
    weights), built like `melanoma ensemble` (its threshold fitted on the members' validation images)."""
    from melanoma.ensemble import build_ensemble

    runs = []
    for k in range(3):
        runs.append(tmp / f"member-{k}")
        shutil.copytree(model, runs[-1], ignore=shutil.ignore_patterns("*.onnx"))
    build_ensemble(runs, tmp / "ensemble", bootstrap=10)
    return tmp / "ensemble"


def ref_views(rows: dict) -> str:
    return "/".join(sorted({str(m["views"]) for m in rows.values()}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads (default 1)")
    ap.add_argument("--runs", type=int, default=60, help="timed repetitions per single-image figure (default 60)")
    ap.add_argument("--images", type=int, default=200, help="images for throughput and peak memory (default 200)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", type=Path, default=MODEL, help="model folder (default: the shipped models/default)")
    args = ap.parse_args(argv)
    model = args.model

    import torch

    from melanoma import export
    from melanoma.predict import Predictor

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    paths = _sample_images(args.images)
    print(f"torch {torch.__version__}, {args.threads} thread(s), cpu count {os.cpu_count()}, "
          f"load average (1 min) before: {os.getloadavg()[0]:.2f}; {len(paths)} real JPEGs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32_path = tmp / "model.onnx"
        export.export_onnx(model, fp32_path)
        rss = peak_rss_of_onnx_predict(fp32_path, paths, tmp)
        fp32 = Predictor.load(fp32_path, threads=args.threads)
        cal = export._split(model, None, None)[0]
        int8_path = tmp / "model.int8.onnx"
        int8_path.write_bytes(export._quantize(fp32_path, fp32, cal))
        predictors = {"PyTorch fp32": Predictor.load(model), "ONNX fp32": fp32,
                      "ONNX INT8": Predictor.load(int8_path, threads=args.threads)}
        if not str(json.loads((model / "model.json").read_text())["architecture"]).startswith("ensemble("):
            ensemble = three_member_ensemble(tmp, model)
            ensemble_onnx = tmp / "ensemble.onnx"
            export.export_onnx(ensemble, ensemble_onnx)
            predictors.update({"3x PyTorch": Predictor.load(ensemble),
                               "3x ONNX": Predictor.load(ensemble_onnx, threads=args.threads)})
        input_path(fp32.pre, paths, args.runs)
        rows = {name: measure(p, paths, args.runs, args.batch) for name, p in predictors.items()}
    ref = rows["ONNX fp32"]["result"]
    print(f"\nend to end with the model's {ref_views(rows)} test-time view(s) (model.json test_time_augmentation); "
          "'1-view p50': the same call with --no-tta; 'model p50': one forward pass of one image")
    print(f"\n{'backend':<14}{'e2e p50 ms':>11}{'e2e p95 ms':>11}{'model p50 ms':>13}{'b' + str(args.batch) + ' img/s':>11}"
          f"{'alerts = fp32':>15}{'1-view p50':>12}")
    for name, m in rows.items():
        # an ensemble has its own threshold: its alert agreement with the single model is not a quality figure
        agree = float(np.mean(m["result"].alert == ref.alert))
        print(f"{name:<14}{m['e2e_p50']:>11.2f}{m['e2e_p95']:>11.2f}{m['model_p50']:>13.2f}{m['throughput']:>11.1f}"
              f"{agree:>15.1%}{m['one_view_p50']:>12.2f}")
    print("\nONNX INT8 is shown for its speed only: `melanoma export --int8` refuses it unless melanoma AUC moves by "
          f"<= {export.INT8_MAX_AUC_CHANGE} and >= {export.INT8_MIN_ALERT_AGREEMENT:.0%} of alerts agree "
          "(run it to see the figures)")
    print(f"\nONNX `melanoma predict` of {rss['images']} images in a fresh process: peak RSS {rss['peak_mb']:.0f} MB, "
          f"{rss['seconds']:.1f} s wall, torch imported: {rss['torch']}")
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}  (other jobs on this CPU inflate the figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
