"""Hostile-input checks for uploaded images. Each failure is an HTTP error with a one-line JSON reason.

    too large (bytes or pixels), too many files -> 413
    not an image (no known image signature)     -> 415
    an image that does not decode                -> 422

Client file names are only echoed back (shortened, as text); they never become paths. Uploads are decoded by
Pillow from memory and nothing else (nothing is unpickled or evaluated).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from fastapi import HTTPException
from PIL import Image, ImageOps

import melanoma.images  # noqa: F401 - registers the HEIF opener, so Image.open(..., formats=["HEIF"]) works

MAX_PIXELS = 50_000_000  # a 7000x7000 photo; above this a small file can still be a decompression bomb

# Magic numbers of the formats we accept -> (Pillow format name, file extension used with --keep-images).
SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", "PNG", ".png"),
    (b"BM", "BMP", ".bmp"),
    (b"II*\x00", "TIFF", ".tif"),
    (b"MM\x00*", "TIFF", ".tif"),
    (b"GIF87a", "GIF", ".gif"),
    (b"GIF89a", "GIF", ".gif"),
)
# HEIF files start with an ISO-BMFF "ftyp" box: 4 bytes of size, b"ftyp", then the major brand (HEVC-coded
# stills: heic/heix; sequences hevc/hevx; generic HEIF mif1/msf1). AVIF shares the box, mostly as brand avif (not
# accepted); one labelled mif1 is tried as HEIF and refused with 422 when it does not decode.
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
MEDIA_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".bmp": "image/bmp", ".tif": "image/tiff",
               ".gif": "image/gif", ".webp": "image/webp", ".heic": "image/heic"}
ACCEPTED = "JPEG, PNG, BMP, TIFF, GIF, WebP, HEIC"


@dataclass
class CheckedImage:
    label: str           # how errors and results name the file: "file 2 (lesion.jpg)"
    filename: str        # the client's name, shortened, for display only
    data: bytes
    sha256: str
    extension: str
    image: Image.Image   # decoded, EXIF-oriented, RGB


def safe_name(name: str | None) -> str:
    """The client's file name for display: its last path part, printable characters only, at most 80."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(ch for ch in base if ch.isprintable())
    return clean[:80]


def sniff(data: bytes) -> tuple[str, str] | None:
    """(Pillow format, extension) from the first bytes, or None when it is no image format we accept."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP", ".webp"
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        return "HEIF", ".heic"
    for magic, fmt, ext in SIGNATURES:
        if data.startswith(magic):
            return fmt, ext
    return None


def too_large(label: str, size: int, limit: int) -> HTTPException:
    return HTTPException(413, f"{label}: {size / 2**20:.1f} MB is over the upload limit of {limit / 2**20:g} MB")


def decode(label: str, data: bytes) -> tuple[Image.Image, str]:
    """Decode fully (a truncated file fails here, not in the model); returns the RGB image and its extension."""
    found = sniff(data)
    if found is None:
        raise HTTPException(415, f"{label}: not an image (accepted: {ACCEPTED})")
    fmt, ext = found
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
            pixels = image.width * image.height
            if pixels > MAX_PIXELS:
                raise HTTPException(413, f"{label}: {image.width}x{image.height} pixels is over the limit of "
                                         f"{MAX_PIXELS / 1e6:g} megapixels")
            image.load()
            image = ImageOps.exif_transpose(image).convert("RGB")
    except HTTPException:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPException(413, f"{label}: too many pixels (decompression bomb?)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for bad files
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise HTTPException(422, f"{label}: corrupt or truncated {fmt} image ({reason})") from None
    if min(image.size) < 8:
        raise HTTPException(422, f"{label}: image is {image.width}x{image.height} pixels; at least 8x8 is needed")
    return image, ext


def check(index: int, filename: str | None, data: bytes, limit: int) -> CheckedImage:
    """One uploaded file -> CheckedImage, or HTTPException 413/415/422 naming the file and the problem."""
    name = safe_name(filename)
    label = f"file {index + 1}" + (f" ({name})" if name else "")
    if len(data) > limit:
        raise too_large(label, len(data), limit)
    if not data:
        raise HTTPException(422, f"{label}: empty file")
    image, ext = decode(label, data)
    return CheckedImage(label, name, data, hashlib.sha256(data).hexdigest(), ext, image)
