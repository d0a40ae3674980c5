"""Image guards shared by the manifest (inspect) and the readers (bounded decode).

One pixel cap, ``max_pixels`` (default ``MAX_PIXELS`` = 64 Mi px = 67,108,864 pixels), decides
which images are taken at all. Why 64 Mpx: it is above every common camera sensor (61-Mpx
full-frame bodies, 50-Mpx phones), about 1300 times the pixels a CLIP model sees (224² px), and
one decoded image at the cap is 192 MiB (RGB) / 256 MiB (RGBA), which a loader decoding one image
at a time can always afford. It is also below Pillow's own decompression-bomb limit
(``Image.MAX_IMAGE_PIXELS`` ≈ 89.5 Mpx), so with the default the configured rule, not Pillow's
warning, decides and records the reason. Web images beyond it are scans, maps and panoramas whose
caption describes a tiny part of them.

``inspect(data)`` (manifest): reads the size from the header only (``Image.open`` is lazy), refuses
over the cap *before* decoding (``too_large``), then optionally decodes fully. Pillow's
``DecompressionBombWarning`` is turned into an error: it, ``DecompressionBombError`` and a PNG
text chunk that decompresses past Pillow's limit are ``decompression_bomb`` (with the default cap
only the last can happen: the cap refuses first); anything else Pillow cannot open or decode is
``corrupt_image``.

``decode_bounded(image, min_side)`` (readers): decodes one image and returns a copy whose shorter
side is below ``2 * min_side`` (JPEG: ``Image.draft`` decodes at a reduced DCT scale; others:
full decode, then ``Image.reduce`` by an integer factor); the full-size pixels are released before
it returns, so a batch decoded one image after the other holds one full-size image at a time.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile

MAX_PIXELS = 64 * 1024 * 1024

TOO_LARGE = "too_large"
DECOMPRESSION_BOMB = "decompression_bomb"
CORRUPT_IMAGE = "corrupt_image"

_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")
_BOMB_TEXT = "decompressed data too large"  # PngImagePlugin: a text/ICC chunk past MAX_TEXT_CHUNK


@dataclass(frozen=True)
class ImageFacts:
    width: int | None
    height: int | None
    pixels: int | None
    problem: str | None  # None, TOO_LARGE, DECOMPRESSION_BOMB or CORRUPT_IMAGE
    detail: str | None = None  # why, for a problem


def _is_bomb(err: BaseException) -> bool:
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return True
    return isinstance(err, ValueError) and _BOMB_TEXT in str(err).lower()


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _error_text(err: BaseException) -> str:
    """The error as recorded: without object addresses (Pillow names ``<_io.BytesIO object at
    0x…>``), so the same bytes give the same manifest in any process."""
    return _ADDRESS.sub("", f"{type(err).__name__}: {err}")


def _over(pixels: int, max_pixels: int | None) -> bool:
    return max_pixels is not None and pixels > max_pixels


def inspect(data: bytes, *, verify: bool = True, max_pixels: int | None = MAX_PIXELS) -> ImageFacts:
    """Size and problem of an encoded image (see the module docstring)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Exception as err:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
            if not _is_bomb(err):
                return ImageFacts(None, None, None, CORRUPT_IMAGE, _error_text(err))
            found = _BOMB_PIXELS.search(str(err))  # DecompressionBombError: the size is only in the text
            pixels = int(found.group(1)) if found else None
            if pixels is not None and _over(pixels, max_pixels):
                return ImageFacts(None, None, pixels, TOO_LARGE, f"{pixels} pixels > max_pixels {max_pixels}")
            return ImageFacts(None, None, pixels, DECOMPRESSION_BOMB, _error_text(err))
        with im:
            width, height = im.size
            pixels = width * height
            if _over(pixels, max_pixels):
                return ImageFacts(width, height, pixels, TOO_LARGE,
                                  f"{width}x{height} = {pixels} pixels > max_pixels {max_pixels}")
            bomb = next(  # Pillow's warning at open, made an error: refused before decoding
                (w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)), None)
            if bomb is not None:
                return ImageFacts(width, height, pixels, DECOMPRESSION_BOMB,
                                  f"DecompressionBombWarning: {bomb.message}")
            if verify:
                try:
                    im.load()
                except Exception as err:
                    problem = DECOMPRESSION_BOMB if _is_bomb(err) else CORRUPT_IMAGE
                    return ImageFacts(width, height, pixels, problem, _error_text(err))
            return ImageFacts(width, height, pixels, None)


def check_pixels(image: Image.Image, max_pixels: int | None, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` if the image's (header) size is over the cap."""
    width, height = image.size
    if _over(width * height, max_pixels):
        raise ValueError(f"{where}: image {width}x{height} = {width * height} pixels exceeds "
                         f"max_pixels {max_pixels} (too_large)")


def _is_lazy(image: Image.Image) -> bool:
    """Opened from a file object and not decoded yet (``Image.open`` reads only the header)."""
    return isinstance(image, ImageFile.ImageFile) and bool(image.tile) and image.fp is not None


def decode_bounded(image: Image.Image, min_side: int | None) -> Image.Image:
    """A decoded copy of ``image`` reduced (integer factor, aspect kept, never upscaled) so that its
    shorter side stays in ``[min_side, 2 * min_side)`` when it was larger; ``None``: full size.

    A lazy image opened on in-memory bytes is decoded from a private re-open of those bytes, so the
    caller's ``image`` stays undecoded and holds no pixels afterwards: the full-size pixels live
    only inside this call. Any other image is decoded in place."""
    private = _is_lazy(image) and isinstance(image.fp, io.BytesIO)
    source = Image.open(io.BytesIO(image.fp.getvalue())) if private else image
    try:
        if min_side is not None and _is_lazy(source) and source.format == "JPEG":
            source.draft("RGB", (min_side, min_side))  # DCT scale 1/2..1/8, both sides kept >= min_side
        source.load()
        factor = 1 if min_side is None else min(source.size) // min_side
        result = source.reduce(factor) if factor >= 2 else source
    except BaseException:
        if private:
            source.close()
        raise
    if private and result is not source:
        source.close()  # release the full-size pixels now
    return result
