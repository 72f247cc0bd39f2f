"""Batch prediction with a model artifact or an exported ONNX file: probabilities, melanoma alert, referral.

Everything model-specific (class names, preprocessing, temperature, thresholds, referral statistics) comes from
the model's `model.json` (for ONNX: the copy embedded by `melanoma export` in the ONNX metadata).

    probabilities = softmax(logits / temperature)      (TTA: mean of the per-view softmax)
                    then moved to the training sources' class mix where model.json has a prior_correction
                    (melanoma.priors; the referral decides before this)
                    then, for an image with less detail than the model trained on, the melanoma odds lowered
                    as model.json's detail_calibration says (melanoma.detail_calibration)
    melanoma_alert = p(melanoma) >= thresholds.melanoma_alert
    refer          = see melanoma.referral (low confidence or not like the training images)
    warning        = "" or why the result is less reliable without being referred (`detail_warning`)

Preprocessing is `images.model_input` (PIL + numpy) for both backends, and a backend is any callable from a
float32 NCHW numpy batch to (logits [N,C], features [N,D]) numpy arrays (an ensemble can plug in as one backend).
The ONNX backend needs no torch: torch is imported only by the PyTorch backend and `Predictor.preprocess`.

`run_predict` with `--out FILE` (csv) appends whole rows per batch (flush + fsync), so a killed run leaves a CSV
of complete rows (at most one half-written line at the end) that `--resume` continues.
"""

from __future__ import annotations

import base64
import csv
import glob
import io
import json
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from melanoma import detail_calibration, images, input_check, priors, referral
from melanoma.errors import ConfigError, ImageError, ModelError
from melanoma.images import is_image_file, load_image
from melanoma.partial import PartialJob, file_stamp
from melanoma.site_check import CLI_REMEDY, site_report

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "default"
ONNX_META_KEY = "melanoma"              # metadata_props key holding the whole model.json (JSON string)
ONNX_EXTRA_KEY = "melanoma.extra"       # base64 safetensors of the referral.* tensors
ONNX_CLASSES_KEY = "class_names"        # JSON list, for tools that only want the labels
ONNX_HASH_KEY = "melanoma.weights_sha256"  # SHA-256 of the model.safetensors the graph was exported from


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class Prediction:
    """One image's prediction (probabilities are temperature-scaled; melanoma_probability is NaN without a
    melanoma class)."""

    image: str
    probabilities: dict[str, float]
    prediction: str
    confidence: float
    melanoma_probability: float
    melanoma_alert: bool
    refer: bool
    refer_reason: str
    warning: str = ""


@dataclass
class PredictionResult:
    """Predictions for many files, as arrays (row i = paths[i]); unreadable files are in `errors`."""

    paths: list[str]
    probs: np.ndarray                     # [N, C] float
    class_names: list[str]
    melanoma_probability: np.ndarray      # [N] float (NaN without a melanoma class)
    alert: np.ndarray                     # [N] bool
    refer: np.ndarray                     # [N] bool
    refer_reason: list[str]               # [N] "" when not referred
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    warning: list[str] = field(default_factory=list)  # [N] "" when none; an empty list: no warnings at all

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def prediction(self) -> list[str]:
        return [self.class_names[i] for i in self.probs.argmax(axis=1)] if len(self) else []

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1) if len(self) else np.zeros(0)

    @property
    def warnings(self) -> list[str]:
        return self.warning or [""] * len(self)

    @classmethod
    def concat(cls, parts: list[PredictionResult], class_names: list[str]) -> PredictionResult:
        """One result holding the rows of `parts` in order (an empty result for no parts)."""
        if not parts:
            return cls([], np.zeros((0, len(class_names))), list(class_names), np.zeros(0), np.zeros(0, bool),
                       np.zeros(0, bool), [])
        return cls(paths=[p for part in parts for p in part.paths],
                   probs=np.concatenate([part.probs for part in parts]), class_names=list(class_names),
                   melanoma_probability=np.concatenate([part.melanoma_probability for part in parts]),
                   alert=np.concatenate([part.alert for part in parts]),
                   refer=np.concatenate([part.refer for part in parts]),
                   refer_reason=[r for part in parts for r in part.refer_reason],
                   errors=[e for part in parts for e in part.errors],
                   warning=[w for part in parts for w in part.warnings])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The rows as named numpy arrays (strings as unicode arrays: no pickle), for partial.PartialJob."""
        errors = np.array(self.errors, dtype=str).reshape(-1, 2)
        return {"paths": np.array(self.paths, dtype=str), "probs": self.probs,
                "melanoma_probability": self.melanoma_probability, "alert": self.alert, "refer": self.refer,
                "refer_reason": np.array(self.refer_reason, dtype=str), "warning": np.array(self.warnings, dtype=str),
                "error_path": errors[:, 0], "error_reason": errors[:, 1]}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], class_names: list[str]) -> PredictionResult:
        """The inverse of `to_arrays`."""
        text = {name: [str(v) for v in arrays[name]] for name in ("paths", "refer_reason", "warning")}
        return cls(paths=text["paths"], probs=arrays["probs"], class_names=list(class_names),
                   melanoma_probability=arrays["melanoma_probability"], alert=arrays["alert"].astype(bool),
                   refer=arrays["refer"].astype(bool), refer_reason=text["refer_reason"],
                   errors=[(str(p), str(r)) for p, r in zip(arrays["error_path"], arrays["error_reason"])],
                   warning=text["warning"] if any(text["warning"]) else [])

    def predictions(self) -> list[Prediction]:
        """The rows as typed `Prediction` objects."""
        conf, pred, warnings = self.confidence, self.prediction, self.warnings
        return [Prediction(image=p, probabilities={c: float(v) for c, v in zip(self.class_names, self.probs[i])},
                           prediction=pred[i], confidence=float(conf[i]),
                           melanoma_probability=float(self.melanoma_probability[i]),
                           melanoma_alert=bool(self.alert[i]), refer=bool(self.refer[i]),
                           refer_reason=self.refer_reason[i], warning=warnings[i])
                for i, p in enumerate(self.paths)]


# ------------------------------------------------------------------------------------------------ backends
class _TorchBackend:
    """PyTorch eager model: float32 NCHW numpy batch -> (logits, referral features) as numpy; `layers`: the
    intermediate layers the model's referral reads (model.json referral.layers; referral.embed)."""

    kind = "pytorch"

    def __init__(self, model, layers=()):
        self.model = model.eval()
        self.layers = list(layers)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            features, logits = referral.embed(self.model, torch.from_numpy(_as_numpy(x)), self.layers)
        return logits.numpy(), features.numpy()


class _OnnxBackend:
    """onnxruntime session of a file written by `melanoma export` (outputs "logits", "features")."""

    kind = "onnx"

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.session.run(["logits", "features"], {self.input_name: _as_numpy(x)})
        return logits, features


def _as_numpy(x) -> np.ndarray:
    """A float32 C-contiguous numpy batch from numpy or a (CPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def session_options(threads: int | None = None, spinning: bool = False):
    """onnxruntime settings measured for this workload (docs/inference.md, bench/predict_speed.py):

    * full graph optimisation (constant folding, Conv+BN+activation fusion): lite0 p50 12.7 -> 2.8 ms vs "basic";
    * the CPU memory arena stays on: off cost 25-45% of batch throughput for ~30 MB less memory;
    * one inter-op thread (the graph is a chain); `threads` intra-op threads (None: onnxruntime's default, the
      physical cores);
    * no busy-waiting worker threads by default: spinning lowers latency on an idle machine but doubled it when
      other processes share the cores (lite0 p50 5.1 -> 8.3 ms with 2 threads next to other jobs).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = int(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def _onnx_session(path, threads: int | None, spinning: bool = False):
    """An onnxruntime CPU session of an ONNX file (or its bytes); ModelError (one line) when it cannot load."""
    import onnxruntime as ort

    source = path if isinstance(path, bytes) else str(path)
    try:
        return ort.InferenceSession(source, session_options(threads, spinning), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        name = "<in-memory ONNX model>" if isinstance(path, bytes) else path
        raise ModelError(f"{name}: cannot load ONNX model ({str(exc).splitlines()[0][:200]})") from None


def read_onnx_meta(path: Path, session=None) -> dict:
    """model.json as embedded by `melanoma export`, with the referral tensors back in meta["extra"]."""
    props = (session or _onnx_session(path, 1)).get_modelmeta().custom_metadata_map
    if ONNX_META_KEY not in props:
        raise ModelError(f"{path}: ONNX file has no melanoma metadata (export it with `melanoma export`)")
    meta = json.loads(props[ONNX_META_KEY])
    meta["extra"] = {}
    if props.get(ONNX_EXTRA_KEY):
        from safetensors.numpy import load as load_tensors  # numpy arrays: no torch on the ONNX path

        meta["extra"] = load_tensors(base64.b64decode(props[ONNX_EXTRA_KEY]))
    return meta


def resolve_model(path) -> Path:
    """The model path to use: `path`, or the shipped default model (ModelError when none is shipped)."""
    if path:
        return Path(path)
    if (DEFAULT_MODEL_DIR / "model.json").is_file():
        return DEFAULT_MODEL_DIR
    onnx_default = DEFAULT_MODEL_DIR / "model.onnx"
    if onnx_default.is_file():
        return onnx_default
    raise ModelError(f"no default model is shipped yet ({DEFAULT_MODEL_DIR} is empty); pass --model RUN_FOLDER "
                     "(a trained run, model.json) or --model FILE.onnx")


# ------------------------------------------------------------------------------------------------ inputs
def _to_image(item) -> Image.Image:
    """A PIL image, a path, an HxW(x3/4) uint8 numpy array or a uint8 CHW tensor -> RGB PIL image."""
    if isinstance(item, Image.Image):
        return item.convert("RGB") if item.mode != "RGB" else item
    if isinstance(item, (str, os.PathLike)):
        return load_image(item)
    if type(item).__module__.startswith("torch"):  # a torch.Tensor, recognised without importing torch
        if str(item.dtype) != "torch.uint8" or item.ndim != 3 or item.shape[0] != 3:
            raise ImageError("<tensor>", f"expected a uint8 (3, H, W) tensor, got {item.dtype} {tuple(item.shape)}")
        return Image.fromarray(item.permute(1, 2, 0).cpu().numpy())
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3):
            raise ImageError("<array>", f"expected a uint8 HxW or HxWxC array, got {item.dtype} {item.shape}")
        return Image.fromarray(item).convert("RGB")
    raise ImageError(repr(item)[:60], f"unsupported image type {type(item).__name__}")


def _name_of(item, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return getattr(item, "filename", "") or f"image-{index}"


LOW_DETAIL = "less detail than the training images"


def model_views(meta: dict, source: str = "") -> int:
    """The test-time augmentation views a model's alert threshold was chosen on (model.json
    "test_time_augmentation": {"views": N}, written by `melanoma threshold --tta-views N`); 1 without it."""
    section = meta.get("test_time_augmentation") or {}
    views = section.get("views", 1) if isinstance(section, dict) else None
    if not isinstance(views, int) or not 1 <= views <= len(images.NUMPY_TTA_VIEWS):
        raise ModelError(f"{source or 'model.json'}: test_time_augmentation.views must be an integer from 1 to "
                         f"{len(images.NUMPY_TTA_VIEWS)}, got {views!r}")
    return views


def detail_warning(shorter_side: int, pre: dict, calibrated: bool = False) -> str:
    """"" or the warning for an image whose shorter side (px, as decoded) is below the model's
    preprocessing.detail_size: every training image was first reduced to that side, so a smaller one reaches the
    network enlarged, with less fine detail than it learned from. Not a referral: such images are ranked nearly
    as well, but their melanoma probabilities rise, so the alert fires more often (the shipped model of session
    11: 68% of its older-archive validation images alerted at 150 px, 84% at 120 px, 91% at 100 px;
    docs/results.md). calibrated: the model's detail calibration lowered the melanoma probability to match
    (`detail_calibration`), so only the ranking is less reliable. Models without detail_size trained on mixed
    detail: no warning."""
    detail = pre.get("detail_size")
    if not detail or shorter_side >= int(detail):
        return ""
    why = "melanoma probability adjusted for it" if calibrated else "alerts fire more often"
    return f"{LOW_DETAIL}: shorter side {shorter_side} px, trained at {int(detail)} px ({why})"


# ------------------------------------------------------------------------------------------------ predictor
class Predictor:
    """A loaded model (PyTorch artifact or ONNX) plus everything model.json says about using it."""

    def __init__(self, backend, meta: dict, source: str = ""):
        self.backend, self.meta, self.source = backend, meta, source
        self.class_names: list[str] = list(meta["class_names"])
        mel = meta.get("melanoma_class")
        self.melanoma_index: int | None = self.class_names.index(mel) if mel in self.class_names else None
        self.temperature = float(meta.get("temperature") or 1.0)
        thresholds = meta.get("thresholds") or {}
        alert = thresholds.get("melanoma_alert")
        self.alert_threshold = 0.5 if alert is None else float(alert)
        # model.json's top-level thresholds are the single source; the referral section supplies the method.
        ref_meta = dict(meta.get("referral") or {})
        ref_meta["thresholds"] = {**ref_meta.get("thresholds", {}),
                                  **{k: v for k, v in thresholds.items()
                                     if k in ("refer_confidence", "ood_score") and v is not None}}
        self.referrer = referral.Referrer(ref_meta, meta.get("extra"))
        self.pre: dict = meta["preprocessing"]
        # images with less detail than pre["detail_size"]: melanoma log-odds lowered per model.json (or None)
        self.detail_calibration: dict | None = meta.get("detail_calibration")
        # probabilities moved from the balanced training classes to the training mix (melanoma.priors), or None
        self.class_weights = priors.weights_of(meta)
        # test-time augmentation views averaged by default: those the alert threshold was chosen on
        self.tta_views = model_views(meta, source)

    @classmethod
    def load(cls, path=None, threads: int | None = None, spinning: bool = False) -> Predictor:
        """Load a run folder / model.json / model.safetensors (PyTorch) or an .onnx file (onnxruntime with
        `threads` intra-op threads, default all physical cores; spinning=True trades CPU for latency on a machine
        nobody else uses; see `session_options`).
        path=None: the shipped default model."""
        path = resolve_model(path)
        if path.suffix.lower() == ".onnx":
            if not path.is_file():
                raise ModelError(f"{path}: no such ONNX file")
            session = _onnx_session(path, threads, spinning)
            return cls(_OnnxBackend(session), read_onnx_meta(path, session), str(path))
        from melanoma.artifacts import load_model

        model, meta = load_model(path)
        return cls(_TorchBackend(model, referral.layers_of(meta)), meta, str(path))

    def model_input(self, image) -> np.ndarray:
        """Any accepted image (PIL, path, uint8 array/tensor) -> the normalised model input, float32 [3, S, S]."""
        return images.model_input(_to_image(image), self.pre)

    def preprocess(self, image):
        """`model_input` as a torch tensor (for Grad-CAM and other PyTorch callers; imports torch)."""
        import torch

        return torch.from_numpy(self.model_input(image))

    @property
    def model(self):
        """The PyTorch model (ModelError for an ONNX predictor)."""
        if self.backend.kind != "pytorch":
            raise ModelError(f"{self.source}: this needs the PyTorch model; an ONNX file has no gradients "
                             "(use the run folder / model.json instead)")
        return self.backend.model

    def views(self, tta: bool | None = None, tta_views: int | None = None) -> int:
        """How many test-time augmentation views a call averages: tta=None the model's own (model.json
        test_time_augmentation, 1 without it) unless tta_views names a count; tta=False one; tta=True tta_views
        (default 8)."""
        if tta is False:
            return 1
        if tta_views is None:
            return 8 if tta else self.tta_views
        return images.check_view_count(tta_views)

    def views_for_command(self, tta: bool | None = None, tta_views: int | None = None) -> int:
        """`views` for a command's run, with `views_warning` (if any) printed on stderr."""
        n = self.views(tta, tta_views)
        warning = self.views_warning(n)
        if warning:
            print(warning, file=sys.stderr)
        return n

    def views_warning(self, n: int) -> str:
        """A one-line warning when a call averages another number of views than the alert threshold was chosen on
        (its sensitivity then is not the one model.json states), else ""."""
        if n == self.tta_views:
            return ""
        return (f"warning: predicting with {n} test-time view(s); the model's alert threshold was chosen on "
                f"{self.tta_views} (re-choose it for {n}: `melanoma threshold --tta-views {n}`)")

    def infer(self, x, tta: bool | None = None, tta_views: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised batch [N,3,S,S] (numpy or torch) -> (probabilities [N,C] averaged over the views (`views`:
        the model's own by default), features [N,D] and logits [N,C] of the un-augmented view, which the referral
        scores)."""
        x = _as_numpy(x)
        views = images.tta_views(x, self.views(tta, tta_views))  # view 0 is the identity
        probs, features, first_logits = None, None, None
        for view in views:
            logits, feats = self.backend(view)
            p = referral.softmax(logits, self.temperature)
            probs = p if probs is None else probs + p
            features = feats if features is None else features
            first_logits = logits if first_logits is None else first_logits
        return probs / len(views), features, first_logits

    def input_statistics(self, x) -> np.ndarray:
        """input_check statistics [N, 2] of a normalised batch (what the referral's input check scores)."""
        return input_check.statistics(_for_input_check(x), self.pre)

    def _result(self, names, probs, features, logits, errors, image_stats=None, sides=()) -> PredictionResult:
        """The batch's PredictionResult; `sides`: each image's shorter side as decoded (px), for the warnings."""
        n = len(names)
        probs = np.zeros((0, len(self.class_names))) if probs is None else probs
        # the referral decides on the outputs it was fitted on: the un-augmented view's (its confidence too, not
        # the views' mean, whose lower top probability would refer more images), before any detail shift
        seen = referral.softmax(logits, self.temperature) if logits is not None and n else probs
        with _one_blas_thread():
            refer, reasons = (self.referrer.decide(seen, features, logits, image_stats) if n
                              else (np.zeros(0, bool), []))
        probs = priors.reweight(probs, self.class_weights)
        calibrated = bool(self.detail_calibration) and self.melanoma_index is not None
        if calibrated and len(sides) == n:
            shifts = [detail_calibration.logit_shift(s, self.detail_calibration, self.pre.get("detail_size"))
                      for s in sides]
            probs = detail_calibration.shift_melanoma(probs, self.melanoma_index, shifts)
        if self.melanoma_index is None:
            p_mel, alert = np.full(n, np.nan), np.zeros(n, bool)
        else:
            p_mel = probs[:, self.melanoma_index]
            alert = p_mel >= self.alert_threshold
        return PredictionResult(paths=list(names), probs=probs, class_names=self.class_names,
                                melanoma_probability=p_mel, alert=alert, refer=refer, refer_reason=reasons,
                                errors=list(errors), warning=[detail_warning(s, self.pre, calibrated) for s in sides])

    def predict(self, images, tta: bool | None = None, tta_views: int | None = None, batch_size: int = 32
                ) -> list[Prediction]:
        """Predict PIL images / paths / uint8 arrays (one image or a list). A bad image raises ImageError
        (use `predict_paths` to skip bad files instead)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            decoded = [_to_image(im) for im in chunk]
            x = np.stack([self.model_input(im) for im in decoded])
            probs, features, logits = self.infer(x, tta, tta_views)
            names = [_name_of(im, start + i) for i, im in enumerate(chunk)]
            sides = [min(im.size) for im in decoded]
            out += self._result(names, probs, features, logits, [], self.input_statistics(x), sides).predictions()
        return out

    def _decode(self, path: str):
        """Decode + preprocess one file: (model input (numpy), shorter side as decoded (px)), or the one-line
        reason it was skipped."""
        try:
            image = load_image(path)
            return self.model_input(image), min(image.size)
        except ImageError as exc:
            return exc.reason
        except Exception as exc:  # noqa: BLE001 - e.g. an image too small/odd for the transform: skip it
            return f"cannot preprocess image: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}"

    def iter_batches(self, paths, tta: bool | None = None, tta_views: int | None = None, batch_size: int = 32,
                     progress: bool = False, workers: int = 4):
        """Predict image files batch by batch, yielding one PredictionResult per batch (its unreadable files in
        `.errors`, the rest go on). Decoding runs in a small thread pool (PIL releases the GIL while decoding),
        one batch ahead of the model."""
        from tqdm import tqdm

        paths = [str(p) for p in paths]
        batches = [paths[i:i + batch_size] for i in range(0, len(paths), max(1, batch_size))]
        with ThreadPoolExecutor(max_workers=max(1, min(workers, os.cpu_count() or 1))) as pool, \
                tqdm(total=len(paths), unit="img", file=sys.stderr, disable=not progress) as bar:
            pending = [pool.submit(self._decode, p) for p in batches[0]] if batches else []
            for index, batch in enumerate(batches):
                decoded = [f.result() for f in pending]
                if index + 1 < len(batches):  # start decoding the next batch while the model runs
                    pending = [pool.submit(self._decode, p) for p in batches[index + 1]]
                good = [(p, t) for p, t in zip(batch, decoded) if not isinstance(t, str)]
                errors = [(p, t) for p, t in zip(batch, decoded) if isinstance(t, str)]
                part = self._result([], None, None, None, errors)
                if good:
                    x = np.stack([t for _, (t, _side) in good])
                    probs, feats, logits = self.infer(x, tta, tta_views)
                    part = self._result([p for p, _ in good], probs, feats, logits, errors,
                                        self.input_statistics(x), [side for _, (_t, side) in good])
                bar.update(len(batch))
                yield part

    def predict_paths(self, paths, tta: bool | None = None, tta_views: int | None = None, batch_size: int = 32,
                      progress: bool = False, workers: int = 4) -> PredictionResult:
        """Predict image files in batches; unreadable files go to `result.errors`, the rest go on."""
        return PredictionResult.concat(list(self.iter_batches(paths, tta, tta_views, batch_size, progress, workers)),
                                       self.class_names)

    def predict_resumable(self, purpose: str, paths, tta: bool | None = None, tta_views: int | None = None,
                          batch_size: int = 32, progress: bool = False) -> tuple[PredictionResult, PartialJob]:
        """`predict_paths`, chunk by chunk, reloading the chunks an interrupted run of the same job saved
        (partial.py). Call the returned job's finish() once the command's outputs are written."""
        job = PartialJob(purpose, self._job_settings(tta, tta_views), [str(p) for p in paths])
        parts = job.run(lambda chunk: self.predict_paths(chunk, tta, tta_views, batch_size).to_arrays(), progress)
        return PredictionResult.concat([PredictionResult.from_arrays(a, self.class_names) for a in parts],
                                       self.class_names), job

    def _job_settings(self, tta: bool | None, tta_views: int | None) -> dict:
        """What predictions depend on besides the images: model.json (with the weights' SHA-256; an .onnx file's
        own stamp), the preprocessing, alert threshold and detail calibration as set now, backend, TTA."""
        return {"meta": {k: v for k, v in self.meta.items() if k != "extra"}, "pre": self.pre,
                "source": file_stamp(self.source) if Path(self.source).is_file() else "",
                "alert": self.alert_threshold, "detail_calibration": self.detail_calibration,
                "backend": self.backend.kind, "views": self.views(tta, tta_views)}


_BLAS_CONTROLLER = None


def _one_blas_thread():
    """Context: numpy's BLAS on one thread. The referral's small matrix products ([N,1280] @ [1280,64]) took
    48 ms instead of 0.06 ms per image with OpenBLAS's default threads on a CPU shared with other processes
    (measured, 2 cores); one thread is never slower at these sizes. The limit is process-wide while it lasts."""
    global _BLAS_CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _BLAS_CONTROLLER is None:
        _BLAS_CONTROLLER = ThreadpoolController()  # scans the loaded libraries once
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def _for_input_check(x):
    """input_check.statistics takes the numpy batch as it is."""
    return x


# ------------------------------------------------------------------------------------------------ files
def expand_paths(inputs) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, folders (recursive, images by extension in any case) and globs -> (image paths, problems).

    A file named explicitly is kept whatever its extension (the decoder decides); a missing path or a glob
    matching nothing is reported as a problem.
    """
    found, problems = [], []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            found += sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.exists():
            found.append(item)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            found += [m for m in matches if Path(m).is_file()]
            if not matches:
                problems.append((item, "no file matches this pattern"))
        else:
            problems.append((item, "no such file or folder"))
    unique = list(dict.fromkeys(found))  # a file named twice (folder + glob) is predicted once
    return unique, problems


# ------------------------------------------------------------------------------------------------ writers
def _fmt(value: float) -> str:
    return "" if value is None or np.isnan(value) else f"{value:.6f}"


def _bool(value) -> str:
    return "true" if bool(value) else "false"


def csv_header(class_names, labels: bool = False) -> list[str]:
    """Columns of the shared prediction CSV layout (docs/DESIGN.md)."""
    return ["image", "path", *class_names, "prediction", "confidence", "melanoma_probability",
            "melanoma_alert", "refer", "refer_reason", "warning"] + (["label"] if labels else [])


def prediction_rows(result: PredictionResult, labels=None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the shared prediction CSV layout (docs/DESIGN.md), `label` last when given."""
    header = csv_header(result.class_names, labels is not None)
    conf, pred, warnings = result.confidence, result.prediction, result.warnings
    rows = []
    for i, path in enumerate(result.paths):
        row = [Path(path).name, str(path), *(_fmt(v) for v in result.probs[i]), pred[i], _fmt(conf[i]),
               _fmt(result.melanoma_probability[i]), _bool(result.alert[i]), _bool(result.refer[i]),
               result.refer_reason[i], warnings[i]]
        rows.append(row + ([str(labels[i]) if labels[i] is not None else ""] if labels is not None else []))
    return header, rows


def _csv_text(header, rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


class ResumableCsv:
    """The prediction CSV written batch by batch: whole rows appended, then flush + fsync, so a kill at any moment
    leaves complete rows plus at most one half-written line at the end, which `open(resume=True)` drops.

    On resume the rows already there are kept (their `path` column says which images are done); a file whose
    header is not this model's layout is an error rather than a mix of two models' rows.
    """

    def __init__(self, path, header: list[str], resume: bool):
        self.path, self.header = Path(path), header
        self.done_rows: list[list[str]] = self._read_done() if resume and self.path.exists() else []
        from melanoma.artifacts import atomic_write_text

        # Rewrite the kept rows atomically (this drops a half-written last line), then append to that file.
        atomic_write_text(self.path, _csv_text(header, self.done_rows))
        self._fh = open(self.path, "a", encoding="utf-8", newline="")

    def _read_done(self) -> list[list[str]]:
        """Complete rows of an earlier run, each path once. A trailing line without its newline is dropped."""
        data = self.path.read_bytes()
        data = data[: data.rfind(b"\n") + 1]  # everything after the last newline is a partial row
        try:
            rows = list(csv.reader(io.StringIO(data.decode("utf-8")), strict=True))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"{self.path}: cannot be resumed, not a readable prediction CSV ({exc}); "
                              "use another --out or drop --resume") from None
        if not rows:
            return []
        if rows[0] != self.header:
            raise ConfigError(f"{self.path}: cannot be resumed, its columns are not this model's prediction CSV "
                              "(another model or --format?); use another --out or drop --resume")
        kept, seen = [], set()
        for row in rows[1:]:
            # a row cut inside a quoted newline parses short: it is not done
            if len(row) == len(self.header) and row[1] not in seen:
                seen.add(row[1])
                kept.append(row)
        return kept

    @property
    def done_paths(self) -> set[str]:
        return {row[1] for row in self.done_rows}

    def append(self, rows: list[list[str]]) -> None:
        if rows:
            self._fh.write(_csv_text(None, rows))
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def _emit(text: str, out) -> None:
    """Write `text` atomically to `out`, or to stdout when out is None or "-"."""
    if out in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from melanoma.artifacts import atomic_write_text

    atomic_write_text(Path(out), text)


def write_predictions_csv(result: PredictionResult, out, labels=None) -> None:
    """The prediction CSV (image, path, one column per class, prediction, confidence, melanoma_probability,
    melanoma_alert, refer, refer_reason, warning[, label]); booleans are written true/false, probabilities to 6
    places."""
    _emit(_csv_text(*prediction_rows(result, labels)), out)


def isic_matrix(result: PredictionResult) -> tuple[list[str], np.ndarray]:
    """ISIC 2018 columns (MEL, NV, BCC, AKIEC, BKL, DF, VASC) by summing our class probabilities into them
    (the `isic2018` label map: AKIEC = actinic keratosis + squamous cell carcinoma, BKL = pigmented benign
    keratosis + seborrheic keratosis). ModelError when the model's classes do not cover the 7 columns."""
    from melanoma.errors import ConfigError
    from melanoma.labelmaps import resolve_label_map

    try:
        resolved = resolve_label_map("isic2018", result.class_names)
    except ConfigError as exc:
        raise ModelError(f"--format isic needs classes that cover MEL, NV, BCC, AKIEC, BKL, DF, VASC; {exc}; "
                         "use --format csv") from None
    matrix = np.asarray(result.probs, dtype=np.float64).reshape(-1, len(result.class_names))
    return list(resolved.target_classes), matrix @ resolved.matrix(len(result.class_names))


def write_isic_csv(result: PredictionResult, out) -> None:
    """ISIC challenge submission CSV: `image` = file name without extension, then the 7 ISIC 2018 columns."""
    columns, matrix = isic_matrix(result)
    rows = [[Path(p).stem, *(_fmt(v) for v in matrix[i])] for i, p in enumerate(result.paths)]
    _emit(_csv_text(["image", *columns], rows), out)


def write_json(result: PredictionResult, out, predictor: Predictor | None = None) -> None:
    """{"model": {...}, "predictions": [Prediction fields + path], "skipped": [{"path", "reason"}]}."""
    model = {}
    if predictor is not None:
        model = {"source": predictor.source, "backend": predictor.backend.kind,
                 "architecture": predictor.meta.get("architecture"), "class_names": predictor.class_names,
                 "temperature": predictor.temperature, "melanoma_alert_threshold": predictor.alert_threshold}
    preds = []
    for p in result.predictions():
        row = asdict(p)
        row["melanoma_probability"] = None if np.isnan(p.melanoma_probability) else p.melanoma_probability
        preds.append({"image": Path(p.image).name, "path": p.image, **{k: v for k, v in row.items() if k != "image"}})
    doc = {"model": model, "predictions": preds,
           "skipped": [{"path": path, "reason": reason} for path, reason in result.errors]}
    _emit(json.dumps(doc, indent=2) + "\n", out)


# ------------------------------------------------------------------------------------------------ command
def _check_format(predictor: Predictor, fmt: str) -> None:
    """Fail before predicting anything when the output format cannot be written for this model."""
    from melanoma.errors import ConfigError

    if fmt not in ("csv", "isic", "json"):
        raise ConfigError(f"unknown --format {fmt!r} (use csv, isic or json)")
    if fmt == "isic":
        empty = PredictionResult([], np.zeros((0, len(predictor.class_names))), predictor.class_names,
                                 np.zeros(0), np.zeros(0, bool), np.zeros(0, bool), [])
        isic_matrix(empty)


def _summary(predicted: int, skipped: int, alerts: int, referred: int, resumed: int = 0, warned: int = 0) -> str:
    earlier = f" ({resumed} from the earlier run)" if resumed else ""
    warnings = f", {warned} with {LOW_DETAIL} (column warning)" if warned else ""
    return (f"{predicted} predicted{earlier}, {skipped} skipped, {alerts} melanoma alerts, {referred} referred"
            f"{warnings}")


def site_findings(predictor: Predictor, rows: list, header: list[str], views: int) -> list[str]:
    """melanoma.site_check on this run's rows: does the alert fire on these images as its validation images
    predict? Only at the views the alert was chosen on (other views move the operating point); [] when it does."""
    if views != predictor.tta_views:
        return []
    column = {name: header.index(name) for name in ("melanoma_alert", "refer", "refer_reason", "warning")}
    referred = [r for r in rows if r[column["refer"]] == "true"]
    report = site_report(len(rows), alerted=sum(r[column["melanoma_alert"]] == "true" for r in rows),
                         referred=len(referred), warned=sum(bool(r[column["warning"]]) for r in rows),
                         refer_reasons=Counter(r[column["refer_reason"]] or "unspecified" for r in referred),
                         meta=predictor.meta, what=f"these {len(rows)} images",
                         remedy=CLI_REMEDY)
    return report["findings"]


def _check_options(fmt: str, out, resume: bool, batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if resume and fmt != "csv":
        raise ConfigError(f"--resume works with --format csv only ({fmt} output is written once, at the end)")
    if resume and out in (None, "-"):
        raise ConfigError("--resume needs --out FILE: the prediction CSV to continue")


def _pending(files: list[str], done: set[str]) -> list[str]:
    """Files not in `done` (the CSV's path column), compared as written and as absolute paths."""
    done_abs = {os.path.abspath(p) for p in done}
    return [f for f in files if f not in done and os.path.abspath(f) not in done_abs]


def _stream_csv(predictor: Predictor, files: list[str], out, resume: bool, **options) -> tuple[list, list, int]:
    """Predict into a ResumableCsv; returns (all rows in the file, skipped (path, reason), rows from before)."""
    writer = ResumableCsv(out, csv_header(predictor.class_names), resume)
    rows, skipped = list(writer.done_rows), []
    try:
        for part in predictor.iter_batches(_pending(files, writer.done_paths), **options):
            for path, reason in part.errors:
                print(f"skipped {path}: {reason}", file=sys.stderr)
            skipped += part.errors
            new_rows = prediction_rows(part)[1]
            writer.append(new_rows)
            rows += new_rows
    finally:
        writer.close()
    if not rows:
        Path(out).unlink(missing_ok=True)  # nothing readable: leave no header-only file behind
    return rows, skipped, len(writer.done_rows)


def run_predict(paths, model=None, out=None, fmt: str = "csv", tta: bool | None = None,
                tta_views: int | None = None, explain_dir=None, batch_size: int = 32, resume: bool = False) -> int:
    """`melanoma predict`: expand inputs, predict, write csv/isic/json, optional Grad-CAM PNGs.

    A CSV to a file is written batch by batch (whole rows, fsync'd); `resume=True` keeps the rows an interrupted
    run wrote and predicts only the missing images. Every unreadable file gets one `skipped <path>: <reason>` line
    on stderr and the rest go on. Exit status 0, or 1 when not a single image could be read.
    """
    _check_options(fmt, out, resume, batch_size)
    predictor = Predictor.load(model)
    _check_format(predictor, fmt)
    views = predictor.views_for_command(tta, tta_views)
    if explain_dir:
        _ = predictor.model  # ModelError now (ONNX has no gradients), not after predicting everything
    files, problems = expand_paths(paths)
    for path, reason in problems:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    options = {"tta_views": views, "batch_size": batch_size, "progress": sys.stderr.isatty()}
    header = csv_header(predictor.class_names)
    if fmt == "csv" and out not in (None, "-"):
        rows, skipped, resumed = _stream_csv(predictor, files, out, resume, **options)
    else:
        result = predictor.predict_paths(files, **options)
        for path, reason in result.errors:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        rows, skipped, resumed = prediction_rows(result)[1], result.errors, 0
        if len(result):
            {"csv": write_predictions_csv, "isic": write_isic_csv}.get(
                fmt, lambda r, o: write_json(r, o, predictor))(result, out)
    if rows and explain_dir:
        from melanoma.explain import write_explanations

        explained = [row[1] for row in rows]
        # the panels show the prediction the CSV holds: explain predicts with the model's own views, so another count
        # (--tta-views, --no-tta) is predicted here once more (Grad-CAM dominates the time anyway)
        shown = predictor.predict(explained, tta_views=views) if views != predictor.tta_views else None
        written = write_explanations(predictor, explained, explain_dir, predictions=shown)
        print(f"wrote {len(written)} Grad-CAM images to {explain_dir}", file=sys.stderr)
    column = {name: header.index(name) for name in ("melanoma_alert", "refer", "warning")}
    print(_summary(len(rows), len(problems) + len(skipped), sum(r[column["melanoma_alert"]] == "true" for r in rows),
                   sum(r[column["refer"]] == "true" for r in rows), resumed,
                   sum(bool(r[column["warning"]]) for r in rows)), file=sys.stderr)
    for finding in site_findings(predictor, rows, header, views):
        print(f"note: {finding}", file=sys.stderr)
    if not rows:
        print("error: no image could be read", file=sys.stderr)
        return 1
    return 0
