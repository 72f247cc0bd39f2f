"""Image loading (any file -> 8-bit RGB or a one-line ImageError), the one-pass scan used by audit and splits, and
the eval preprocessing of inference (PIL + numpy only, no torch: ONNX prediction never imports torch).

`data.py` re-exports `load_image`; other modules should import it from there.

Eval preprocessing (`model_input`), the ONE path of `Predictor` for both backends:
    decode -> [larger than pre["detail_size"]: reduce the shorter side to it first] -> resize the shorter side
    to pre["resize"] (PIL bicubic) -> colour constancy (pre["color_constancy"])
    -> centre crop pre["input_size"] -> float32 [0, 1] -> (x - mean) / std, channels first.
It equals `transforms.eval_transform(pre)(prepare_image(image, pre))` (the trainer's validation path) within 1e-6
(tests/test_predict.py compares them on real images).
"""

from __future__ import annotations

import hashlib
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from melanoma.config import COLOR_CONSTANCY
from melanoma.errors import ConfigError, ImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif",  # what the service accepts too
                    ".heic", ".heif"}
# HEIC / HEIF: iPhones store photos so by default, and phone dermoscopes (clip-on lenses) use their camera. Once
# registered, Pillow opens them like any format; pillow-heif applies the file's rotation on decode and resets the EXIF
# orientation to 1, so exif_transpose below does not turn them twice.
register_heif_opener()
DEFAULT_MAX_PIXELS = 100_000_000
# Below this many images a process pool costs more (start-up, pickling) than it saves.
_MIN_IMAGES_FOR_POOL = 200
_PIL_LIMIT_LOCK = threading.Lock()


def is_image_file(path: Path) -> bool:
    """True for a file whose extension (any case) is one we decode; hidden files are skipped."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


@dataclass(frozen=True)
class ScanEntry:
    """What one decode of one file tells us. `error` is None for a readable image, else a one-line reason."""

    path: str
    pixel_hash: str | None = None  # blake2b of size + decoded RGB pixels: same picture = same hash, whatever the bytes
    phash: int | None = None       # imagehash.phash as a signed int64 (view as uint64 before counting bits)
    width: int | None = None       # after EXIF orientation, in pixels
    height: int | None = None
    mode: str | None = None        # Pillow mode of the file as stored (before conversion to RGB)
    file_size: int | None = None   # bytes
    error: str | None = None


@contextmanager
def _pillow_bomb_check_disabled():
    """Turn off Pillow's own decompression-bomb check while we open a file.

    We check the header size against OUR max_pixels right after opening; otherwise Pillow would warn at 89M pixels
    or raise at 179M with its own message, whatever max_pixels the caller chose. The limit is a module global,
    hence the lock.
    """
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _check_file(path: Path) -> int:
    """Return the file size in bytes, or raise ImageError for a missing, non-regular or empty file."""
    if not path.exists():
        raise ImageError(path, "file not found")
    if not path.is_file():
        raise ImageError(path, "not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    return size


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha is composited on white, 16/32-bit greys are scaled down."""
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode.startswith("I") or im.mode == "F":
        return _wide_grey_to_rgb(im)
    return im.convert("RGB")


def _wide_grey_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit ("I;16*") or 32-bit ("I", "F") greyscale to 8-bit RGB.

    Trap: Pillow's own convert("L") CLIPS these values at 255 (a 16-bit image turns almost white). "I;16" is always
    scaled from 0..65535; "I"/"F" (16-bit PNGs are often opened as "I") are scaled only when they exceed 255.
    """
    arr = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16") or arr.max(initial=0) > 255:
        arr = arr / 257.0  # 65535 / 257 = 255
    grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return grey.convert("RGB")


def _decode(path: Path, max_pixels: int | None) -> tuple[Image.Image, str]:
    """Open, size-check, fully decode and orient one image. Returns (RGB image, original mode)."""
    with _pillow_bomb_check_disabled():
        try:
            im = Image.open(path)
        except UnidentifiedImageError:
            raise ImageError(path, "not an image (unrecognised format)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(path, f"cannot open image: {_one_line(exc)}") from None
    with im:
        width, height = im.size  # from the header: nothing decoded yet
        if max_pixels is not None and width * height > max_pixels:
            raise ImageError(path, f"image too large ({width}x{height} = {width * height:,} pixels > "
                                   f"max_pixels {max_pixels:,}): possible decompression bomb")
        mode = im.mode
        try:
            im.load()  # decodes everything; raises on truncated data (LOAD_TRUNCATED_IMAGES stays False)
            rgb = _to_rgb(ImageOps.exif_transpose(im))
        except Image.DecompressionBombError as exc:  # a frame larger than the header (GIF/ICO): Pillow checks at load
            raise ImageError(path, f"image too large: {_one_line(exc)}") from None
        except (OSError, SyntaxError, ValueError, EOFError, TypeError) as exc:
            raise ImageError(path, f"corrupt or truncated image: {_one_line(exc)}") from None
    if rgb is im:
        rgb = rgb.copy()
    return rgb, mode


def load_image(path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one image file to an 8-bit RGB Pillow image with EXIF orientation applied.

    Raises ImageError(path, one-line reason) for a missing, empty, non-image, truncated or corrupt file, an
    unsupported mode, or one whose header claims more than `max_pixels` pixels (checked before decoding;
    None disables the check).
    """
    path = Path(path)
    _check_file(path)
    return _decode(path, max_pixels)[0]


def pixel_hash(rgb: Image.Image) -> str:
    """Hash of the decoded picture (size + RGB bytes), independent of file format, metadata and compression."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{rgb.width}x{rgb.height}".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def phash_int64(rgb: Image.Image) -> int:
    """imagehash.phash (64 bits) packed into a signed int64, as in the DESIGN contract."""
    bits = imagehash.phash(rgb).hash.flatten()
    return int(np.packbits(bits).view(">i8")[0])


def scan_file(path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ScanEntry:
    """Decode one file once and describe it; never raises for a bad image (the reason goes in `error`)."""
    path = Path(path)
    try:
        size = _check_file(path)
        rgb, mode = _decode(path, max_pixels)
    except ImageError as exc:
        return ScanEntry(path=str(path), error=exc.reason)
    return ScanEntry(path=str(path), pixel_hash=pixel_hash(rgb), phash=phash_int64(rgb), width=rgb.width,
                     height=rgb.height, mode=mode, file_size=size)


def _scan_star(args) -> ScanEntry:
    return scan_file(*args)


def scan_paths(paths, max_pixels: int | None = DEFAULT_MAX_PIXELS, workers: int | None = None) -> list[ScanEntry]:
    """scan_file over many paths, in order, with a process pool of `workers` (default os.cpu_count())."""
    jobs = [(str(p), max_pixels) for p in paths]
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(jobs) < _MIN_IMAGES_FOR_POOL:
        return [_scan_star(job) for job in jobs]
    with Pool(processes=min(workers, len(jobs))) as pool:
        return pool.map(_scan_star, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8))))


def phashes_as_uint64(entries) -> np.ndarray:
    """The phash of each entry as uint64 (readable entries only; caller filters). Trap: np.bitwise_count on a
    SIGNED array counts the bits of the absolute value, so always XOR/count on this unsigned view."""
    return np.array([e.phash for e in entries], dtype=np.int64).view(np.uint64)


# ------------------------------------------------------------------------------------------------ eval preprocessing
# the Minkowski power of each colour-constancy method's illuminant estimate (Finlayson & Trezzi 2004: grey world is
# p = 1, Shades of Gray p = 6 as Barata et al. 2015 chose for dermoscopy, max-RGB the limit p -> infinity)
ILLUMINANT_POWER = {"shades_of_gray": 6, "grey_world": 1, "shades_of_gray_standardised": 6,
                    "shades_of_gray_standardised_chroma": 6, "shades_of_gray_standardised_denoised": 6}
# standardise_exposure's targets: the median grey-level mean and standard deviation (0-1 scale, vignette left out)
# of 600 HAM10000 images after Shades of Gray at 160 px (session 40), so a typical image is left nearly as it was
EXPOSURE_MEAN, EXPOSURE_STD = 0.64, 0.11
EXPOSURE_MAX_GAIN = 2.0  # contrast is at most doubled or halved: a flat image's noise and JPEG blocks stay small
VIGNETTE_LEVEL = 0.08    # grey levels below this are the dark lens vignette, not skin or lesion: left out of the stats
# standardise_exposure(chroma=True)'s target: the mean distance of a pixel's RGB from its grey level (0-1 scale,
# vignette left out) after the exposure step; medians of 600 images at 160 px: HAM10000 0.049, 9-class split 0.054
# (5-95%: 0.023-0.083; session 42). The gain is limited as the contrast's (EXPOSURE_MAX_GAIN).
CHROMA_TARGET = 0.05
# bilateral_smooth's weights (session 44): neighbours within SMOOTH_RADIUS px, a Gaussian of SMOOTH_SPATIAL_SIGMA px
# in distance times a Gaussian of SMOOTH_RANGE_SIGMA (0-1 scale, ~20 grey levels) in RGB difference. On 60 images
# of both sources at the prepared size it halves the RMS of noise of 6 grey levels (4.2 -> 2.1 grey levels) and
# cuts JPEG quality 50's change by a fifth, while moving a stored image by 1.4 grey levels RMS (a Gaussian blur of
# 0.7 px: noise 2.5, the image 1.5). Trained with it, the proxy's never-seen source LOST 0.062 +- 0.011 melanoma AUC
# (2 seeds) while in-source gained 0.016: the fine structure it flattens transfers (docs/results.md, session 44)
SMOOTH_RADIUS, SMOOTH_SPATIAL_SIGMA, SMOOTH_RANGE_SIGMA = 2, 1.0, 0.08


def resize_shorter_side(image: Image.Image, shorter_side: int) -> Image.Image:
    """Resize a PIL image so its shorter side is `shorter_side` px (PIL bicubic, antialiased); the FIRST step of the
    eval view everywhere: the trainer's decode cache, predict, evaluate, Grad-CAM and the service call it.

    Trap: torchvision's Resize on a *tensor* uses its own bicubic, which differs from PIL's by up to 0.025 in
    probability (measured on 394 validation images of a lite0 model: 3 alerts, 2 referrals and 2 predictions
    flipped). After this step eval_transform's Resize is a no-op, so every path sees the pixels the thresholds were
    fitted on.
    """
    w, h = image.size
    scale = shorter_side / min(w, h)
    if abs(scale - 1.0) > 1e-6:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    return image


def illuminant(pixels: np.ndarray, power: int = 6) -> np.ndarray:
    """The unit-length illuminant colour of an array of 0-1 RGB pixels (any shape ending in 3): the Minkowski
    p-norm mean of each channel over all the other axes (Finlayson & Trezzi 2004)."""
    axes = tuple(range(pixels.ndim - 1))
    estimate = np.power(np.mean(np.power(pixels, power), axis=axes), 1.0 / power)  # per channel, in [0, 1]
    return estimate / max(float(np.linalg.norm(estimate)), 1e-6)


def shades_of_gray(image: Image.Image, power: int = 6) -> Image.Image:
    """Shades-of-Gray colour constancy (Finlayson & Trezzi 2004; Barata et al. 2015 for dermoscopy): estimate the
    illuminant per channel as the Minkowski p-norm mean of the pixels, then scale each channel so that illuminant
    becomes neutral grey. Removes much of the colour cast that differs between clinics, devices and light sources.
    power=1 is grey world. The illuminant's brightness is kept (only its colour is removed).
    PIL RGB in, PIL RGB out (uint8, clipped)."""
    x = np.asarray(image, dtype=np.float32) / 255.0
    # a grey illuminant (1,1,1)/sqrt(3) -> gains 1
    gains = 1.0 / (np.maximum(illuminant(x, power), 1e-6) * np.sqrt(3.0))
    out = np.clip(x * gains, 0.0, 1.0) * 255.0
    return Image.fromarray(np.round(out).astype(np.uint8), mode="RGB")


def prepare_image(image: Image.Image, pre: dict) -> Image.Image:
    """The deterministic PIL stage EVERY path shares (training cache, predict, evaluate, explain, export parity):
    reduce an image whose shorter side exceeds pre["detail_size"] (if set) to it, resize the shorter side to
    pre["resize"], then apply the colour constancy pre["color_constancy"] names (if any).

    Why detail_size: sources come at different resolutions (HAM10000 copies 200x150, the 9-class split 180x180,
    clinic cameras megapixels). Resized straight to `resize`, a sharp source and an upsampled low-resolution one
    differ in fine detail, a cue a network learns and that says nothing about the lesion. Reduced to the lowest
    source's shorter side first, every image carries the same detail (measured in docs/results.md, session 10)."""
    detail = pre.get("detail_size")
    if detail and min(image.size) > int(detail):
        image = resize_shorter_side(image, int(detail))  # same level of detail as the lowest-resolution source
    image = resize_shorter_side(image, int(pre.get("resize", pre["input_size"])))
    return apply_color_constancy(image, pre.get("color_constancy"))


def apply_color_constancy(image: Image.Image, method: str | None) -> Image.Image:
    """The colour constancy `method` (one of COLOR_CONSTANCY; None as "none", which returns the image as is) applied
    to a PIL RGB image. ConfigError for a name this version does not know (a model.json from a newer one)."""
    method = method or "none"
    if method not in COLOR_CONSTANCY:
        raise ConfigError(f"unknown colour constancy {method!r} in preprocessing (use {' or '.join(COLOR_CONSTANCY)})")
    if method == "none":
        return image
    image = shades_of_gray(image, ILLUMINANT_POWER[method])
    if method.startswith("shades_of_gray_standardised"):
        image = standardise_exposure(image, chroma=method.endswith("_chroma"))
    if method.endswith("_denoised"):  # after the exposure step, so the range weight sees a standardised contrast
        image = bilateral_smooth(image)
    return image


def standardise_exposure(image: Image.Image, chroma: bool = False) -> Image.Image:
    """Per-image brightness and contrast standardisation: one affine map of all three channels that brings the grey
    level's mean and standard deviation over the image (its dark vignette left out) to EXPOSURE_MEAN and
    EXPOSURE_STD, the contrast gain limited to EXPOSURE_MAX_GAIN either way. Removes the exposure and contrast that
    differ between cameras and clinics (as Shades of Gray removes the colour of the light); colour ratios to the grey
    level move only by the shared offset. chroma=True: then also scale every pixel's distance from its grey level
    so that its mean over the image is CHROMA_TARGET (how colourful the camera renders skin and lesion differs too),
    the gain limited likewise; grey levels stay. PIL RGB in, PIL RGB out (uint8, clipped)."""
    x = np.asarray(image, dtype=np.float32) / 255.0
    grey = x.mean(axis=2)
    lit = grey >= VIGNETTE_LEVEL
    if lit.sum() < 0.1 * lit.size:  # (almost) all dark: nothing to measure exposure on, so measure every pixel
        lit = np.ones_like(lit)
    measured = grey[lit]  # one copy of the lit grey levels for both statistics
    out = (x - float(measured.mean())) * _limited_gain(EXPOSURE_STD, float(measured.std())) + EXPOSURE_MEAN
    if chroma:
        out = _standardise_chroma(out, lit)
    return Image.fromarray(np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8), mode="RGB")


def bilateral_smooth(image: Image.Image) -> Image.Image:
    """Edge-preserving smoothing (a bilateral filter, Tomasi & Manduchi 1998) of a PIL RGB image: every pixel
    becomes the mean of its neighbours within SMOOTH_RADIUS px, each weighted by a Gaussian of its distance and one
    of its RGB difference from the pixel (SMOOTH_* above). Flattens sensor noise and JPEG blocks, which differ
    between cameras and storage (session 43: noise of 6 grey levels took the shipped alert from 40% to 5% of
    HAM10000's images), and keeps edges stronger than the range. Borders reflect. PIL RGB in and out (uint8).
    A loss as a normalisation (session 44, above); kept for shades_of_gray_standardised_denoised."""
    x = np.asarray(image, dtype=np.float32) / 255.0
    r = SMOOTH_RADIUS
    padded = np.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
    h, w = x.shape[:2]
    total, weights = np.zeros_like(x), np.zeros(x.shape[:2] + (1,), dtype=np.float32)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            neighbour = padded[r + dy:r + dy + h, r + dx:r + dx + w]
            difference = np.square(neighbour - x).sum(axis=2, keepdims=True)
            weight = np.exp(-(dy * dy + dx * dx) / (2.0 * SMOOTH_SPATIAL_SIGMA ** 2)
                            - difference / (2.0 * SMOOTH_RANGE_SIGMA ** 2))
            total += weight * neighbour
            weights += weight
    out = total / weights  # the centre's own weight is 1, so never 0
    return Image.fromarray(np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8), mode="RGB")


def noise_sigma(image: Image.Image) -> float:
    """Immerkaer's (1996) estimate of the standard deviation of additive Gaussian noise in `image`'s grey version
    (PIL "L"), in grey levels (0-255): the mean absolute response to a 3x3 kernel that cancels any locally linear
    image (the difference of two Laplacians), scaled to a standard deviation. Smooth skin dominates a dermoscopy
    image, so the estimate is mostly the camera's and the storage's noise. ValueError below 3x3 px."""
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    h, w = grey.shape
    if h < 3 or w < 3:
        raise ValueError(f"image of {w}x{h} px is too small for a noise estimate (3x3 at least)")
    rows = grey[:-2] - 2 * grey[1:-1] + grey[2:]  # the kernel [1 -2 1]^T [1 -2 1], one axis at a time
    response = np.abs(rows[:, :-2] - 2 * rows[:, 1:-1] + rows[:, 2:]).sum()
    return float(np.sqrt(np.pi / 2) * response / (6 * (w - 2) * (h - 2)))


def _limited_gain(target: float, measured: float) -> float:
    """target / measured, limited to EXPOSURE_MAX_GAIN either way (and safe for measured = 0)."""
    return float(np.clip(target / max(measured, 1e-6), 1.0 / EXPOSURE_MAX_GAIN, EXPOSURE_MAX_GAIN))


def _standardise_chroma(x: np.ndarray, lit: np.ndarray) -> np.ndarray:
    """x (HxWx3, 0-1 scale, not clipped) with every pixel's offset from its grey level scaled by one gain that brings
    the mean offset length over the `lit` pixels to CHROMA_TARGET."""
    grey = x.mean(axis=2, keepdims=True)
    gain = _limited_gain(CHROMA_TARGET, float(np.linalg.norm(x - grey, axis=2)[lit].mean()))
    return grey + (x - grey) * gain


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre crop of an HxWxC array to size x size, zero-padded when smaller (as torchvision's CenterCrop)."""
    h, w = pixels.shape[:2]
    if size > h or size > w:
        top, left = max(size - h, 0), max(size - w, 0)
        pixels = np.pad(pixels, ((top // 2, (top + 1) // 2), (left // 2, (left + 1) // 2), (0, 0)))
        h, w = pixels.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return pixels[top:top + size, left:left + size]


def normalise(pixels: np.ndarray, pre: dict) -> np.ndarray:
    """uint8 HxWx3 -> float32 3xHxW: [0, 1] then (x - mean) / std per channel (model.json's mean and std)."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(pre["mean"], dtype=np.float32)
    std = np.asarray(pre["std"], dtype=np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1))


def model_input(image: Image.Image, pre: dict) -> np.ndarray:
    """A decoded RGB image -> the normalised model input, float32 (3, S, S): resize, colour constancy, centre crop,
    normalise, as model.json's `preprocessing` says."""
    prepared = prepare_image(image, pre)
    return normalise(center_crop(np.asarray(prepared, dtype=np.uint8), int(pre["input_size"])), pre)


# The 8 symmetries of the square (dihedral group D4) on the last two axes (H, W) of an NCHW numpy batch, in the
# order of transforms.TTA_VIEW_NAMES. Dermoscopy has no "up": every view keeps the label.
NUMPY_TTA_VIEWS = [
    lambda x: x,                                           # identity
    lambda x: x[..., ::-1],                                # hflip
    lambda x: x[..., ::-1, :],                             # vflip
    lambda x: np.rot90(x, 1, axes=(-2, -1)),               # rot90 (counter-clockwise, as torch.rot90)
    lambda x: np.rot90(x, 2, axes=(-2, -1)),               # rot180
    lambda x: np.rot90(x, 3, axes=(-2, -1)),               # rot270
    lambda x: np.swapaxes(x, -2, -1),                      # transpose
    lambda x: np.swapaxes(x[..., ::-1, ::-1], -2, -1),     # anti-transpose
]


def check_view_count(n) -> int:
    """n as an int when it is a number of test-time views there are (1..8), else ConfigError."""
    if not 1 <= int(n) <= len(NUMPY_TTA_VIEWS):
        raise ConfigError(f"tta views must be between 1 and {len(NUMPY_TTA_VIEWS)}, got {n}")
    return int(n)


def tta_views(x: np.ndarray, n: int) -> list[np.ndarray]:
    """The first `n` (1..8) deterministic views of a normalised NCHW float32 batch (view 0 is the identity)."""
    check_view_count(n)
    return [np.ascontiguousarray(view(x)) for view in NUMPY_TTA_VIEWS[:n]]
