"""Image loading (any file -> 8-bit RGB or a one-line ImageError) and the one-pass scan used by audit and splits.

`data.py` re-exports `load_image`; other modules should import it from there.
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

from melanoma.errors import ImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
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
