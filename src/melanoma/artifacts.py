"""The model artifact: `model.safetensors` (weights) beside `model.json` (everything needed to rebuild and use it).

model.json is the single source of truth for class names, preprocessing, temperature and thresholds. It also
records `weights_sha256`, the SHA-256 of model.safetensors: loading refuses a truncated, swapped or edited weights
file. Artifacts written before the hash existed (no `weights_sha256`) still load.

`weights_dtype` in model.json ("float32", the default, "float16" or "int8") is how the network's floating-point
weights are STORED; they are always loaded into float32. float16 halves the file (3 Lite0 members: 41 -> 21 MB).
int8 stores every weight matrix / convolution kernel as int8 with one float32 scale per output channel
(symmetric, max-abs / 127; tensors `int8_scale.<key>`) and the small 1-D tensors (biases, batch norm) as float16:
about a quarter of float32 (6 Lite0 members: 23 MB). This is weight STORAGE only: the loaded model computes in
float32 with the dequantised weights (not ONNX INT8 inference, `export --int8`). Whoever writes a rounded model
must fit its thresholds on the rounded weights (`round_weights`), which is what `melanoma ensemble
--weights-dtype` does. Extra tensors (referral statistics, fingerprints) stay float32.

torch is imported inside the functions that need it: the torch-free ONNX prediction path uses this module's
atomic writers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from melanoma import __version__
from melanoma.errors import ConfigError, ModelError

FORMAT = "melanoma-model"
FORMAT_VERSION = 1
EXTRA_PREFIX = "extra."
HASH_KEY = "weights_sha256"  # model.json key: hex SHA-256 of model.safetensors
WEIGHTS_DTYPES = ("float32", "float16", "int8")  # model.json "weights_dtype": storage of the network's float weights
INT8_SCALE_PREFIX = "int8_scale."  # model.safetensors: per-output-channel float32 scales of int8-stored weights
INTENDED_USE = ("Decision support for dermatologists: flags dermoscopic lesions that need a second look. "
                "Not a diagnosis, not for use without a clinician, not validated for clinical deployment.")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that a reader never sees it half-written (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600: a service running as another user could not read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    umask = os.umask(0)  # the only portable way to read it is to set it; done once, at import (threads: later)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _mode_for(path: Path) -> int:
    """The permissions of the file being replaced, else those a plain open() would give (0666 minus the umask)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(weights_path: Path, meta: dict) -> None:
    """ModelError (one line, naming the file) when model.json records a hash that the weights file does not have."""
    expected = meta.get(HASH_KEY)
    if not expected:
        return  # an artifact from before the hash was recorded
    try:
        actual = file_sha256(weights_path)
    except OSError as exc:
        raise ModelError(f"{weights_path}: unreadable weights ({exc})") from None
    if actual != str(expected).lower():
        raise ModelError(f"{weights_path}: SHA-256 {actual[:16]}... does not match model.json's {HASH_KEY} "
                         f"{str(expected)[:16]}...: the weights file was truncated, replaced or edited")


def checked_weights_dtype(name: str | None) -> str:
    """A storage dtype for model.json's `weights_dtype` ("float32" for None); ModelError for anything else."""
    name = name or "float32"
    if name not in WEIGHTS_DTYPES:
        raise ModelError(f"unknown weights_dtype {name!r} (expected one of {WEIGHTS_DTYPES})")
    return name


def stored_tensors(state: dict, dtype: str) -> dict:
    """The network's state dict as `dtype` storage writes it (see the module docstring); integer tensors and
    float32 storage are kept as they are."""
    stored = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if not value.is_floating_point() or dtype == "float32":
            stored[key] = value
        elif dtype == "int8" and value.ndim >= 2:
            stored[key], stored[INT8_SCALE_PREFIX + key] = _int8_per_channel(value)
        else:
            stored[key] = value.half()
    return stored


def loaded_state(tensors: dict) -> dict:
    """Inverse of `stored_tensors` (float32 again); `extra.*` tensors are left out."""
    import torch

    state = {}
    for key, value in tensors.items():
        if key.startswith((EXTRA_PREFIX, INT8_SCALE_PREFIX)):
            continue
        scale = tensors.get(INT8_SCALE_PREFIX + key)
        if scale is not None:
            # the same float32 arithmetic as round_weights, so the reloaded model predicts exactly what was fitted
            value = (value.float().reshape(value.shape[0], -1) * scale[:, None]).reshape(value.shape)
        elif value.dtype == torch.float16:
            value = value.float()  # exact: every float16 value is a float32 value
        state[key] = value
    return state


def _int8_per_channel(weight):
    """Symmetric per-output-channel int8 (max-abs / 127; an all-zero channel gets scale 1): (int8 q, float32 scale)."""
    import torch

    flat = weight.float().reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(flat / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(weight.shape).contiguous(), scale.contiguous()


def round_weights(model, dtype: str):
    """Round `model`'s floating-point parameters and buffers in place to what `dtype` storage keeps (float32:
    unchanged), so predictions made now equal those of the saved and reloaded model; returns the model."""
    import torch

    dtype = checked_weights_dtype(dtype)
    if dtype != "float32":
        state = model.state_dict()  # state_dict tensors share storage with the model
        rounded = loaded_state(stored_tensors(state, dtype))
        with torch.no_grad():
            for key, tensor in state.items():
                tensor.copy_(rounded[key])
    return model


def write_safetensors(path: Path, tensors: dict, metadata: dict | None) -> str:
    """Write `tensors` (contiguous torch tensors) to a safetensors file atomically; returns its hex SHA-256 (of
    the bytes written, so the file is not read back)."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def save_model(model, meta: dict, out_dir, extra_tensors: dict | None = None) -> Path:
    """Write model.safetensors (+ `extra.*` tensors) and model.json (with the weights' SHA-256) atomically;
    the network's floating-point tensors are stored as meta["weights_dtype"] (default float32). Returns the
    model.json path."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in
               stored_tensors(model.state_dict(), checked_weights_dtype(meta.get("weights_dtype"))).items()}
    for name, value in (extra_tensors or {}).items():
        tensors[EXTRA_PREFIX + name] = torch.as_tensor(value).detach().cpu().contiguous()
    digest = write_safetensors(out_dir / "model.safetensors", tensors, {"format": FORMAT})
    meta = {k: v for k, v in meta.items() if k not in ("extra", HASH_KEY)}  # a re-saved meta gets the NEW hash
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
            HASH_KEY: digest, **meta}
    full.setdefault("model_card", {}).setdefault("intended_use", INTENDED_USE)
    atomic_write_text(out_dir / "model.json", json.dumps(full, indent=2))
    return out_dir / "model.json"


def resolve_model_path(path) -> tuple[Path, Path]:
    """Return (model.safetensors, model.json) for a run folder, either file of the pair, or raise ModelError."""
    path = Path(path)
    if path.is_dir():
        folder = path
    elif path.suffix in (".json", ".safetensors"):
        folder = path.parent
    else:
        raise ModelError(f"{path}: not a model (expected a run folder, model.json or model.safetensors)")
    weights, meta = folder / "model.safetensors", folder / "model.json"
    for needed in (weights, meta):
        if not needed.is_file():
            raise ModelError(f"{needed}: missing (a model is model.safetensors beside model.json)")
    return weights, meta


def read_meta(path) -> dict:
    """Read and validate model.json of a model path."""
    _, meta_path = resolve_model_path(path)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{meta_path}: unreadable model metadata ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{meta_path}: not a melanoma model file (format={meta.get('format')!r})")
    for key in ("architecture", "class_names", "preprocessing"):
        if key not in meta:
            raise ModelError(f"{meta_path}: missing required field {key!r}")
    return meta


def load_model(path) -> tuple:
    """Rebuild the model described by model.json and load its weights (after checking their SHA-256 against
    model.json); returns (torch model in eval mode, meta)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from melanoma.models import create_model

    weights_path, _ = resolve_model_path(path)
    meta = read_meta(path)
    verify_weights(weights_path, meta)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{weights_path}: unreadable weights ({exc})") from None
    extra = {k[len(EXTRA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    checked_weights_dtype(meta.get("weights_dtype"))  # an unknown storage dtype is refused before anything is built
    state = loaded_state(tensors)  # float16 / int8 storage comes back as float32
    model = create_model(meta["architecture"], num_classes=len(meta["class_names"]), pretrained=False,
                         image_size=int(meta["preprocessing"]["input_size"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{weights_path}: weights do not match {meta['architecture']} ({first})") from None
    meta["extra"] = extra
    return model.eval(), meta


def build_test_model(out_dir, architecture: str = "seed-cnn", class_names=None, image_size: int = 64,
                     seed: int = 0) -> Path:
    """Write a random-weight model artifact (for tests and benchmarks); returns its folder."""
    import torch

    from melanoma.models import create_model, default_preprocessing

    class_names = list(class_names or ["actinic keratosis", "basal cell carcinoma", "dermatofibroma", "melanoma",
                                       "nevus", "pigmented benign keratosis", "seborrheic keratosis",
                                       "squamous cell carcinoma", "vascular lesion"])
    torch.manual_seed(seed)
    model = create_model(architecture, num_classes=len(class_names), pretrained=False, image_size=image_size)
    pre = default_preprocessing(architecture, image_size=image_size)
    meta = {"architecture": architecture, "class_names": class_names,
            "melanoma_class": "melanoma" if "melanoma" in class_names else None,
            "preprocessing": pre, "temperature": 1.0,
            "thresholds": {"melanoma_alert": 0.5, "refer_confidence": 0.0}}
    save_model(model, meta, out_dir)
    return Path(out_dir)


MODEL_FILES = ("model.json", "model.safetensors", "val_predictions.csv")  # what a thresholded copy carries


def check_new_model_folder(run: Path, out) -> Path:
    """`out` as a Path, or ConfigError when it is RUN itself or a folder (or file) that already holds something."""
    out = Path(out).expanduser()
    if out.resolve() == run.resolve():
        raise ConfigError(f"{out}: --out is the model folder itself; use --in-place to change it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: already exists and is not an empty folder; choose a new --out")
    return out


def copy_model_files(run: Path, out) -> Path:
    """A new model folder holding RUN's model files (the run's checkpoints and logs stay behind)."""
    out = check_new_model_folder(run, out)
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (run / name).is_file():
            shutil.copyfile(run / name, out / name)
    return out
