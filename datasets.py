"""Reading, pairing, validating and augmenting segmentation data; the Penn-Fudan download.

A dataset folder holds ``train_images/``, ``train_masks/``, ``valid_images/`` and
``valid_masks/``; an image and its mask share a file stem. A mask is either a class-index image
(pixel = class id, 255 = ignore), a label-id image mapped to class ids by MASK_IDS (where the
class config gives them), a colour image using the colours of LABEL_COLORS_LIST (where it gives
those), or, for two classes, an instance-id image (0 background, 1..N objects of the foreground
class).
"""

import functools
import hashlib
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.error import URLError

import cv2
import numpy as np
import torch
from PIL import ExifTags, Image
from torch.utils.data import Dataset, DistributedSampler, Sampler

from config import (
    IGNORE_INDEX,
    IMAGE_EXTENSIONS,
    LAYOUT_FOLDERS,
    MAX_IMAGE_PIXELS,
    PENN_FUDAN_URL,
    SPLITS,
    ClassConfig,
    read_yaml,
)
from utils import (
    UserError,
    first_few,
    link_or_copy,
    network_timeout,
    new_folder,
    shell_quote,
    temp_folder,
    write_image,
)

if TYPE_CHECKING:
    import albumentations as A

log = logging.getLogger("dinoseg")

Pair = tuple[Path, Path]  # (image, mask)
# the most class names or colours a problem of one mask lists; more are counted
MAX_NAMES_SHOWN = 10
MAX_PROBLEMS_SHOWN = 30  # the most problems a DatasetError lists; more are counted
MISSING_SHOWN = 10  # the most classes the warning of classes absent from a split names


class DataError(ValueError):
    """One image or mask that cannot be used; the message says why."""


class OtherClasses(DataError):
    """A mask whose values or colours are not those of the classes."""


class UnlistedColours(OtherClasses):
    """A colour mask where the class config has no LABEL_COLORS_LIST to read it by; its message
    says to add one with --config, advice() what helps where the classes are a checkpoint's."""

    def __init__(self, found: str):
        self.found = found  # the mask and its colours
        super().__init__(self.advice(None))

    def advice(self, kept_classes: str | None) -> str:
        """The message, with ``kept_classes`` as check_dataset takes it."""
        return f"{self.found}: {_colour_list_advice(kept_classes)}"


def _colour_list_advice(kept_classes: str | None) -> str:
    """How to have colour masks read by their colours where the class config lists none: add
    LABEL_COLORS_LIST with --config, which a checkpoint's classes (``kept_classes``, as
    check_dataset takes it) do not take."""
    if kept_classes is None:
        return (
            "add LABEL_COLORS_LIST to the --config YAML, each class's colour in these masks in "
            "the order of ALL_CLASSES"
        )
    return (
        f"{kept_classes}, which list no LABEL_COLORS_LIST, and --config does not change them: "
        "save these masks as class ids (each pixel its class's index in ALL_CLASSES), or train "
        "a new model with a --config whose LABEL_COLORS_LIST gives each class's colour in "
        "these masks"
    )


class DatasetError(UserError):
    """Every problem found in a dataset, reported together, and a closing ``note`` if any."""

    def __init__(self, root: Path, problems: list[str], note: str | None = None):
        self.problems = problems
        # A dataset read the wrong way (Cityscapes' label ids without MASK_IDS) has a problem
        # in every mask: thousands of lines of one kind, the note past them scrolled away.
        lines = "\n".join(f"  - {p}" for p in problems[:MAX_PROBLEMS_SHOWN])
        if len(problems) > MAX_PROBLEMS_SHOWN:
            lines += f"\n  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more"
        super().__init__(
            f"the dataset {root} has {len(problems)} problem(s); fix them and run again:\n{lines}"
            + (f"\n{note}" if note else "")
        )


def open_image(path: Path) -> Image.Image:
    """Decode an image file with its EXIF orientation applied, or raise DataError."""
    img, _ = _decode_file(path)
    method = _exif_transpose(img)
    return img.transpose(method) if method is not None else img


def _decode_file(path: Path, draft: bool = False) -> tuple[Image.Image, tuple[int, int]]:
    """Decode an image file as stored, or raise DataError: the image, and its (W, H) as stored.

    ``draft`` decodes a JPEG at 1/8 of its size (libjpeg scales in its inverse DCT), so the
    image is smaller than the size returned; every byte is still read, so a truncated or corrupt
    file fails as at full size.
    """
    try:
        img = _open_unguarded(path)
        size = img.size
        if size[0] * size[1] > MAX_IMAGE_PIXELS:
            img.close()
            raise DataError(
                f"{path}: a {size[0]}x{size[1]} image ({size[0] * size[1]:,} pixels), over the "
                f"limit of {MAX_IMAGE_PIXELS:,} pixels read here; cut it into tiles (the model "
                "sees each image at --imgsz anyway)"
            )
        if draft:
            img.draft(None, (max(1, size[0] // 8), max(1, size[1] // 8)))
        img.load()
    except DataError:
        raise
    except Image.DecompressionBombError as err:  # a frame or tile past Pillow's guard, in load()
        raise DataError(f"{path}: an image too large for Pillow to decode ({err})") from err
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable or corrupt image ({err})") from err
    return img, size


def check_image_header(path: Path) -> None:
    """Raise DataError where ``path`` cannot be opened, or Pillow recognizes no image format in
    its header (a text file, an empty download). Only the header is read: a file that passes
    may still fail to decode."""
    try:
        _open_unguarded(path).close()
    except Image.UnidentifiedImageError as err:
        raise DataError(f"{path} is not an image (Pillow recognizes no format in it)") from err
    except OSError as err:
        raise DataError(f"{path} cannot be read ({err.strerror or err})") from err


_PILLOW_GUARD = threading.Lock()


def _open_unguarded(path: Path) -> Image.Image:
    """Image.open without Pillow's decompression-bomb guard, which refuses (as "could be
    decompression bomb DOS attack") any image over 179 megapixels: users pass their own files,
    and _decode_file's MAX_IMAGE_PIXELS is the bound. The guard is Pillow's global setting,
    lifted only while a header is parsed, under a lock: the dataset check opens images in
    threads."""
    with _PILLOW_GUARD:
        guard = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = guard


def _exif_transpose(img: Image.Image) -> Image.Transpose | None:
    """The transpose that turns ``img`` upright by its EXIF orientation, None if none is needed.

    Phones store rotation in EXIF; applied, pixels match what viewers (and annotators) see.
    Only the pixels are turned: ImageOps.exif_transpose also re-encodes the EXIF block, which
    fails (struct.error, TypeError...) on the malformed tags many cameras write.
    """
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # an EXIF block Pillow cannot parse: the pixels are still good
        orientation = 1
    return _EXIF_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None


# EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose)
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# the transposes that turn a W x H image into an H x W one
_SWAPS_SIDES = {
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
}


def read_image(path: Path) -> np.ndarray:
    """Read any common image as (H, W, 3) uint8 RGB with EXIF orientation applied.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted; a file of
    several frames or pages gives its first (see frame_count). The array is writable and
    C-contiguous, as torch.from_numpy expects.
    """
    img, _ = _decode_file(Path(path))
    arr = _pillow_rgb(img)
    method = _exif_transpose(img)
    return _TRANSPOSE_ARRAY[method](arr) if method is not None else _writable(arr)


TIFF_SUBFILE_TYPE = 254  # the tag that says what kind of image a TIFF directory holds


def frame_count(path: Path) -> int:
    """The frames or pages of an image file, of which read_image reads the first: more than 1
    for an animated GIF, WebP or PNG and a multi-page TIFF.

    Images that are no frames of their own are not counted: the further images of a camera's
    MPO JPEG (a preview, a depth map), and a TIFF's reduced-resolution copies and transparency
    masks (the overviews of a cloud-optimized GeoTIFF). 1 also for a file whose frames cannot
    be counted (read_image names a bad file).
    """
    try:
        with _open_unguarded(Path(path)) as img:
            if img.format == "MPO":
                return 1
            if img.format != "TIFF":
                return getattr(img, "n_frames", 1)
            pages = 0
            for i in range(img.n_frames):  # each seek reads a directory, no pixels
                img.seek(i)
                # NewSubfileType: bit 0 a reduced-resolution copy, bit 2 a transparency mask
                pages += not img.tag_v2.get(TIFF_SUBFILE_TYPE, 0) & 0b101
            return max(1, pages)
    except Exception:  # the count is for a warning: Pillow raises many types on damaged files
        return 1


# the pixels of a 16- or 32-bit image that _pillow_rgb scales in float64 at a time (8 MB each)
WIDE_BAND_PIXELS = 2**20


def _pillow_rgb(img: Image.Image) -> np.ndarray:
    """A decoded image as (H, W, 3) uint8 RGB, as stored (not turned by its EXIF orientation);
    read-only where it is a view of Pillow's bytes."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)  # uint16, int32 or float32: the maxima below are those of float64
        if img.mode.startswith("I;16"):
            top = 65535.0  # one scale for every frame, so a dark one stays dark
        elif img.mode == "F" and arr.max() <= 1.0:
            top = 1.0  # float images in 0..1
        else:  # 32-bit integers or floats: 16-bit data, or 8-bit values stored wide
            top = 65535.0 if arr.max() > 255 else 255.0
        # A band of rows at a time: the whole image in float64 took three arrays of 8 bytes a
        # pixel (a 48-megapixel 16-bit scan peaked 1.2 GB above its decoding)
        gray = np.empty(arr.shape, np.uint8)
        rows = max(1, WIDE_BAND_PIXELS // max(1, arr.shape[1]))
        for y in range(0, len(arr), rows):
            band = arr[y : y + rows].astype(np.float64)
            band = np.clip(band / top * 255.0 + 0.5, 0, 255)
            gray[y : y + rows] = band.astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def _writable(arr: np.ndarray) -> np.ndarray:
    return arr if arr.flags.writeable and arr.flags.c_contiguous else arr.copy()


# the transposes of _EXIF_TRANSPOSE on (H, W, C) arrays, each one copy into a new array
_TRANSPOSE_ARRAY = {
    Image.Transpose.FLIP_LEFT_RIGHT: lambda a: cv2.flip(a, 1),
    Image.Transpose.ROTATE_180: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    Image.Transpose.FLIP_TOP_BOTTOM: lambda a: cv2.flip(a, 0),
    Image.Transpose.TRANSPOSE: lambda a: np.ascontiguousarray(a.transpose(1, 0, 2)),
    Image.Transpose.ROTATE_270: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    Image.Transpose.TRANSVERSE: lambda a: np.ascontiguousarray(a[::-1, ::-1].transpose(1, 0, 2)),
    Image.Transpose.ROTATE_90: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def image_size(path: Path) -> tuple[int, int]:
    """(W, H) of an image as displayed (EXIF orientation applied).

    The whole file is decoded, so that a truncated or corrupt image is found by the check, not
    in training; a JPEG at 1/8 scale (_decode_file's draft): 30 instead of 80 ms for a 4000x3000
    photo, of the 210 ms that checking its pair took.
    """
    img, (w, h) = _decode_file(Path(path), draft=True)
    return (h, w) if _exif_transpose(img) in _SWAPS_SIDES else (w, h)


def read_mask(path: Path, classes: ClassConfig) -> np.ndarray:
    """Read a mask as (H, W) uint8 class ids (255 = ignore), detecting its kind per file.

    Raises:
        DataError: unreadable file, unknown colours, or values that are not class ids.
    """
    return _read_mask(path, classes)[0]


def _lossy_format(path: Path) -> str | None:
    """The lossy compression a file is stored with, "JPEG" or "lossy WebP", or None."""
    with path.open("rb") as f:
        head = f.read(12)
        if head.startswith(b"\xff\xd8\xff"):  # the start of every JPEG (and MPO) file
            return "JPEG"
        if not (head.startswith(b"RIFF") and head[8:] == b"WEBP"):
            return None
        # a WebP file's chunks: its bitstream is "VP8 " (lossy) or "VP8L" (lossless), after
        # optional ones ("VP8X" features, "ICCP" colour profile, "ALPH" alpha...)
        while len(chunk := f.read(8)) == 8:
            kind, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if kind in (b"VP8 ", b"VP8L"):
                return "lossy WebP" if kind == b"VP8 " else None
            f.seek(size + size % 2, os.SEEK_CUR)  # chunks are padded to an even size
    return None


def _read_mask(
    path: Path, classes: ClassConfig, count: bool = False
) -> tuple[np.ndarray, str, np.ndarray | None]:
    """read_mask's (H, W) class ids; how they were read: "ids", "instances" (instance ids),
    "colours", or "gray ids" (grayscale class ids whose values are all LABEL_COLORS_LIST grays,
    some of another class: read by its colours, the same mask would mean something else); and
    the ids' pixel_counts where reading them counted them already (``count``), else None."""
    path = Path(path)
    img = open_image(path)
    lossy = _lossy_format(path)
    if lossy is not None:
        # Compression moves values near every edge: a 0/1 mask gains 2s (then read as instance
        # ids), a 3-class one swaps ids silently. No reading of it can be trusted.
        raise DataError(
            f"{path}: a {lossy} mask: {lossy} compression changes the pixel values near edges, "
            "so its class ids or colours are not the ones drawn; save masks as PNG (0/255 "
            f"{lossy} masks: python prepare_data.py binary thresholds them into PNG class ids)"
        )
    arr = np.asarray(img)
    if img.mode == "P" and (mapped := _map_palette(path, img, arr, classes)) is not None:
        return mapped, "colours", None
    if img.mode in ("RGB", "RGBA"):
        rgb = arr[..., :3]
        if classes.mask_colors is not None:
            mapped = map_colors(rgb, classes.mask_colors)
            if mapped is not None:
                return mapped, "colours", None
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            raise _unread_colours(path, rgb, classes)
        arr = rgb[..., 0]  # a gray class-index mask stored as RGB
    elif img.mode == "LA":
        arr = arr[..., 0]
    elif arr.ndim != 2:
        raise DataError(f"{path}: unsupported mask mode {img.mode}")
    if classes.mask_ids is not None:
        arr = map_mask_ids(arr, classes.mask_ids, path)
    try:
        ids, instances, counts = _check_ids(arr, classes, path, count)
    except DataError:
        # A gray colour mask saved as grayscale (0/128/255 for the colours [0, 0, 0],
        # [128, 128, 128], [255, 255, 255]): read by its colours, as the same mask in RGB is
        if arr.dtype == np.uint8 and classes.mask_colors is not None:
            mapped = map_colors(np.repeat(arr[..., None], 3, axis=2), classes.mask_colors)
            if mapped is not None:
                return mapped, "colours", None
            if img.mode in ("RGB", "RGBA") and _gray_of_another_class(arr, classes):
                # An RGB mask is read by its colours: one of gray colours with a blended gray
                # is not "values 127, 128 not class ids" but a colour not listed
                raise _unread_colours(path, rgb, classes) from None
        raise
    if instances:
        return ids, "instances", counts
    if img.mode != "P" and arr.dtype == np.uint8 and gray_conflicts(arr, classes):
        return ids, "gray ids", counts
    return ids, "ids", counts


def _unread_colours(
    path: Path,
    rgb: np.ndarray,
    classes: ClassConfig,
    kind: str = "a colour mask",
    skipped: np.ndarray | None = None,
) -> DataError:
    """The error for an (H, W, 3) colour mask that LABEL_COLORS_LIST does not map: the class
    config lists no colours, or some of the mask's are not listed, each named with its pixels
    and where the first is. ``kind`` says what was read by its colours; ``skipped`` is (H, W)
    bool, the pixels to leave out (a palette mask's index 255)."""
    codes = _rgb_codes(rgb)
    if classes.mask_colors is None:
        # colours made up for the classes would read such a mask silently wrong
        codes = np.unique(codes)
        found = f"a colour mask (colours {[_decode(c) for c in codes[:5]]}"
        found += f"{' ...' if len(codes) > 5 else ''})"
        if classes.mask_ids is not None:  # LABEL_COLORS_LIST, the fix otherwise, excludes it
            return DataError(
                f"{path}: {found}, but MASK_IDS reads masks of label ids (Cityscapes' "
                "*_labelIds.png, not its *_color.png): pass masks of label ids, or list each "
                "class's colour in LABEL_COLORS_LIST in place of MASK_IDS"
            )
        return UnlistedColours(
            f"{path}: {found}, but the class config has no LABEL_COLORS_LIST, so masks are read "
            "as class ids only"
        )
    unread = ~np.isin(codes, [_code(c) for c in classes.mask_colors])
    if skipped is not None:
        unread &= ~skipped
    where = np.flatnonzero(unread)
    unknown, first, counts = np.unique(codes.ravel()[where], return_index=True, return_counts=True)
    # the most pixels first: an unlisted class's colour before the blends along its edges
    shown = []
    for i in np.argsort(-counts, kind="stable")[:5]:
        y, x = divmod(int(where[first[i]]), codes.shape[1])
        pixels = f"{counts[i]} pixel{'s' if counts[i] > 1 else ''}"
        shown.append(f"{_decode(unknown[i])} in {pixels} (the first at x={x}, y={y})")
    more = f", and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    listed = [list(c) for c in classes.mask_colors]
    # each mask with the problem has a line: 150 colours on each would bury the ones not listed
    listed = listed if len(listed) <= MAX_NAMES_SHOWN else f"(its {len(listed)} colours)"
    return OtherClasses(
        f"{path}: {kind} with {len(unknown)} colour{'s' if len(unknown) > 1 else ''} not in "
        f"LABEL_COLORS_LIST {listed}: {', '.join(shown)}"
        f"{more}; list each class's colour there (--config). Many colours of a few pixels "
        "each are edges blended by anti-aliasing, a smoothing resize or a JPEG copy, while "
        "colour masks need exact colours"
    )


def gray_conflicts(gray: np.ndarray, classes: ClassConfig) -> dict[int, int]:
    """For a grayscale mask whose every value is a gray colour of LABEL_COLORS_LIST: the values
    whose colour is the class of another id, value -> that class (255, ignore as an id, is
    white's class where white is listed); {} otherwise.

    Such a mask reads two ways: a 0/255 one of the colours [0, 0, 0], [128, 128, 128],
    [255, 255, 255] is background and ignore as ids, background and class 2 as colours.
    """
    if classes.mask_colors is None:  # read as class ids only
        return {}
    class_of = {c[0]: i for i, c in enumerate(classes.mask_colors) if c[0] == c[1] == c[2]}
    if all(v == i for v, i in class_of.items()):  # no gray colour reads otherwise (the default)
        return {}
    values = np.flatnonzero(pixel_counts(gray)).tolist()
    if not all(v in class_of for v in values):
        return {}
    return {v: class_of[v] for v in values if class_of[v] != v}


def _gray_of_another_class(gray: np.ndarray, classes: ClassConfig) -> bool:
    """Whether some value v of an (H, W) uint8 mask is the gray colour [v, v, v] that
    LABEL_COLORS_LIST lists for a class other than v."""
    class_of = {c[0]: i for i, c in enumerate(classes.mask_colors or ()) if c[0] == c[1] == c[2]}
    return any(class_of.get(v, v) != v for v in np.flatnonzero(pixel_counts(gray)).tolist())


def _code(color) -> int:
    r, g, b = (int(v) for v in color)
    return (r << 16) | (g << 8) | b


def _decode(code: int) -> list[int]:
    code = int(code)
    return [(code >> 16) & 255, (code >> 8) & 255, code & 255]


def _rgb_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def map_colors(rgb: np.ndarray, colors) -> np.ndarray | None:
    """(H, W, 3) uint8 colours -> (H, W) uint8 positions of each pixel's colour in ``colors``
    (class ids, for LABEL_COLORS_LIST), or None if some pixel has a colour not listed."""
    codes = _rgb_codes(rgb)
    palette = np.array([_code(c) for c in colors])
    order = np.argsort(palette)
    pos = np.searchsorted(palette[order], codes).clip(0, len(palette) - 1)
    found = palette[order][pos] == codes
    if not found.all():
        return None
    return order[pos].astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _mask_id_table(mask_ids: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """MASK_IDS as a look-up table: (M,) uint8 class ids by mask value, IGNORE_INDEX where no
    class lists the value; M is 256 or past the largest value listed."""
    table = np.full(max(256, max(max(v) for v in mask_ids) + 1), IGNORE_INDEX, np.uint8)
    for class_id, values in enumerate(mask_ids):
        table[list(values)] = class_id
    return table


def map_mask_ids(arr: np.ndarray, mask_ids: tuple[tuple[int, ...], ...], path: Path) -> np.ndarray:
    """(H, W) integer label ids (8-, 16- or 32-bit) -> (H, W) uint8 class ids through MASK_IDS;
    values no class lists become IGNORE_INDEX (255).

    One table look-up, not a pass per class: ADE20K's 150 classes cost what two do.
    """
    table = _mask_id_table(mask_ids)
    if arr.dtype == np.uint8:
        return cv2.LUT(np.ascontiguousarray(arr), table[:256])
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: {arr.dtype} values, not label ids for MASK_IDS (whole numbers)")
    # 32-bit masks may hold negative values or ones past every value listed: no class's
    inside = (arr >= 0) & (arr < len(table))
    return np.where(inside, table[np.where(inside, arr, 0)], IGNORE_INDEX).astype(np.uint8)


def palette_rgb(img: Image.Image) -> np.ndarray:
    """A palette image's colours as (256, 3) uint8, index by index; black past the palette's
    end (a PNG may store fewer than 256)."""
    colors = np.zeros((256, 3), np.uint8)
    found = np.asarray(img.getpalette("RGB") or [], np.uint8).reshape(-1, 3)[:256]
    colors[: len(found)] = found
    return colors


def _map_palette(
    path: Path, img: Image.Image, arr: np.ndarray, classes: ClassConfig
) -> np.ndarray | None:
    """Class ids for a palette mask whose indices are not class ids but whose colours are
    LABEL_COLORS_LIST colours, else None (read the indices, as always without that list).

    A colour mask saved with a palette (PIL's convert("P"), PNG optimizers, "PNG-8") numbers its
    colours in any order; VOC-style masks, whose indices are the ids, have colours that match
    their ids or are not the config's. Index 255 stays ignore.

    Raises:
        OtherClasses: a used index shows another class's colour, so the indices are no class
            ids, but some used colours are not listed (a blended edge colour).
    """
    if classes.mask_colors is None:
        return None
    colors = palette_rgb(img)
    # From the palette alone, first: unless some index holds another class's colour, the
    # indices are the ids, and the mask need not be scanned (_check_ids scans it anyway). Only
    # the colours the palette holds count: Image.fromarray(ids, "P").save() writes one, black,
    # and the indices past it, which have none, were read as black, the background.
    defined = colors[: len(img.getpalette("RGB") or []) // 3]
    class_of = {_code(c): i for i, c in enumerate(classes.mask_colors)}
    if all(class_of.get(_code(c), i) == i for i, c in enumerate(defined) if i != IGNORE_INDEX):
        return None
    used = np.flatnonzero(pixel_counts(arr))
    used = used[used != IGNORE_INDEX]
    ids = map_colors(colors[used][None], classes.mask_colors)
    if ids is None:
        others = [i for i in used if class_of.get(_code(colors[i]), i) != i]
        if others:
            # Read by the indices, its colours' classes come out shuffled: with two classes
            # as instance ids, the person's index 0 as background.
            i = others[0]
            raise _unread_colours(
                path,
                colors[arr],
                classes,
                kind=f"a palette mask read by its colours (index {i} is {colors[i].tolist()}, "
                f"the colour of {classes.names[class_of[_code(colors[i])]]}, so its indices "
                "are not class ids)",
                skipped=arr == IGNORE_INDEX,
            )
        return None
    if (ids[0] == used).all():
        return None
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[used] = ids[0]
    return lut[arr]


def pixel_counts(mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (256,) int64: the number of pixels of each value.

    OpenCV's histogram, in 27 ms for a 4000x3000 mask where np.bincount, which first widens
    every pixel to int64, took 60; counted in pieces of 2**24 pixels, which its float32 counts
    hold exactly.
    """
    flat = np.ascontiguousarray(mask).reshape(1, -1)
    counts = np.zeros(256, np.int64)
    for start in range(0, flat.shape[1], 2**24):
        hist = cv2.calcHist([flat[:, start : start + 2**24]], [0], None, [256], [0, 256])
        counts += hist.ravel().astype(np.int64)
    return counts


def _check_ids(
    arr: np.ndarray, classes: ClassConfig, path: Path, count: bool = False
) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """(H, W) class ids, whether ``arr`` held instance ids, and with ``count`` the ids'
    pixel_counts (None where ``arr`` is not uint8); raises DataError for others."""
    k = classes.num_classes
    if arr.dtype == np.uint8 and not count and k <= IGNORE_INDEX:
        # Training reads every mask each epoch, and nearly all hold class ids only: no value in
        # k..254 settles it in 2 ms where the histogram (pixel_counts) took 27 (4000x3000).
        others = cv2.inRange(np.ascontiguousarray(arr), k, IGNORE_INDEX - 1)
        if not cv2.countNonZero(others):
            return arr.copy(), False, None
    # uint8 (nearly every mask): from a histogram, half the time of np.unique's hashing, and
    # the dataset check sums the same counts
    counts = pixel_counts(arr) if arr.dtype == np.uint8 else None
    values = np.flatnonzero(counts) if counts is not None else np.unique(arr)
    # 32-bit integer and float masks can hold negative or fractional values: uint8 would wrap
    # or truncate them into class ids
    invalid = (values < 0) | (values != np.floor(values))
    bad = values[invalid | ((values >= k) & (values != IGNORE_INDEX))]
    if bad.size == 0:
        return arr.astype(np.uint8), False, counts
    objects = values[values > 0]
    if k == 2 and not invalid.any() and (objects == np.arange(1, objects.size + 1)).all():
        # Instance ids (Penn-Fudan style: 1, 2, ... N, one per object, without gaps): every
        # object belongs to the one foreground class. Other values are mistakes, not objects.
        if counts is not None:  # every object's pixels become 1s
            background = counts[0]
            counts = np.zeros(256, np.int64)
            counts[:2] = background, arr.size - background
        return (arr > 0).astype(np.uint8), True, counts
    listed = [v.item() for v in bad[:5]]
    hint = ""
    # values no class list explains (a fraction, a negative, a 0/255 mask's soft edges) are not
    # other classes: check_dataset's advice for those (a new model) would not fix them
    error = DataError if invalid.any() else OtherClasses
    if values.max() == 65535:
        # 16-bit masks drawn in black and white: no threshold here reads them (binary takes 8-bit)
        hint = (
            "; a 16-bit mask whose 65535 (white) marks a class? Save its class ids "
            f"0-{k - 1} as an 8-bit PNG"
        )
        error = DataError
    elif k == 2 and (values == IGNORE_INDEX).any():
        # 0/255 masks that went through JPEG or were drawn with soft edges: 255 and values
        # in between, which no reading as class or instance ids can make sense of
        hint = (
            "; a 0/255 mask with values in between (JPEG compression, soft edges)? python "
            "prepare_data.py binary thresholds such masks into 0/1 class ids"
        )
        error = DataError
    elif k == 2:
        hint = "; instance-id masks number their objects 1, 2, 3, ... without gaps"
    elif not invalid.any() and classes.mask_ids is None:
        hint = (
            "; masks of label ids that are not the class ids (Cityscapes' labelIds, ADE20K's 0 "
            "for other) are read through MASK_IDS in the --config file"
        )
    # every mask of a dataset can have this problem, each on a line: a list of ADE20K's 150
    # names on each would bury the values
    names = list(classes.names) if k <= MAX_NAMES_SHOWN else f"the {k} classes of ALL_CLASSES"
    raise error(
        f"{path}: values {listed}{' ...' if bad.size > 5 else ''} are not class ids "
        f"0-{k - 1} of {names} or {IGNORE_INDEX} (ignore){hint}"
    )


# image formats Pillow reads that find_pairs and infer_image.py do not take (.gif, .avif,
# .jp2...): named, not skipped silently. AVIF also where Pillow cannot read it (before 11.3),
# and HEIC/HEIF, phones' photos, which it reads only through a plug-in: photos saved in them
# would otherwise still go missing without a word.
OTHER_IMAGE_EXTENSIONS = frozenset(
    {*Image.registered_extensions(), ".avif", ".heic", ".heif"} - set(IMAGE_EXTENSIONS)
)


def find_pairs(image_dir: Path, mask_dir: Path) -> tuple[list[Pair], list[str]]:
    """Pair images with masks by file stem.

    Returns:
        (pairs sorted by stem, problems: unpaired files, folders missing, a folder's path that
        is a file, stems used twice), each problem a line "PATH: what is wrong"
    """
    problems = []
    found = {}
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            what = "a file, not a folder" if folder.exists() else "folder missing"
            problems.append(f"{folder}: {what}")
            found[folder] = {}
            continue
        by_stem: dict[str, Path] = {}
        unread = []
        for p in sorted(folder.iterdir()):
            if p.name.startswith("."):
                # hidden: macOS writes "._NAME" beside each file it copies to a USB drive or a
                # network share (metadata, not pixels), which would fail as corrupt images
                continue
            if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
                if p.is_dir() or p.suffix.lower() in OTHER_IMAGE_EXTENSIONS:
                    unread.append(f"{p.name}/" if p.is_dir() else p.name)
                continue
            if p.stem in by_stem:
                problems.append(f"{p}: same stem as {by_stem[p.stem].name}; keep one of them")
            by_stem[p.stem] = p
        found[folder] = by_stem
        if unread:
            # a pair of them would be left out of training without a word
            log.warning(
                "%s: %d subfolders or files of other formats are not read: %s (images and "
                "masks sit directly in the folder, as %s files)",
                folder,
                len(unread),
                first_few(unread),
                " ".join(IMAGE_EXTENSIONS),
            )
    images, masks = found[image_dir], found[mask_dir]
    problems += [
        f"{images[s]}: image without a mask in {mask_dir}" for s in images if s not in masks
    ]
    problems += [
        f"{masks[s]}: mask without an image in {image_dir}" for s in masks if s not in images
    ]
    pairs = [(images[s], masks[s]) for s in sorted(images) if s in masks]
    return pairs, problems


# identical_images reads this much of each file whose size a file of the other split shares, and
# the rest only of those whose first bytes match too: two different photos of one size (common
# among JPEGs, and every uncompressed BMP or TIFF of one resolution) differ within it
HEAD_BYTES = 64 * 1024


def identical_images(train: Iterable[Path], valid: Iterable[Path]) -> list[tuple[Path, Path]]:
    """The (train, valid) pairs of files whose bytes are identical, whatever their names: an
    image copied into both splits, which validation would score after training on it.

    Cheap where there are none: the files are grouped by size first (a stat each), and only
    those whose size occurs in both splits are read, their first HEAD_BYTES, and then the rest
    of those whose first bytes match a file of the other split too. A file that cannot be read
    matches nothing (check_pair names it). A path given in both lists pairs with itself.

    Returns:
        the pairs, sorted
    """
    groups = [(list(train), list(valid))]
    with ThreadPoolExecutor(max_workers=8) as pool:
        # a stat is quicker than handing it to a thread; reads are not
        for key, mapper in ((_size, map), (_head_digest, pool.map), (_tail_digest, pool.map)):
            groups = [part for group in groups for part in _split_by(key, group, mapper)]
    return sorted((t, v) for trains, valids in groups for t in trains for v in valids)


def _split_by(
    key: Callable[[Path], Hashable], group: tuple[list[Path], list[Path]], mapper: Callable
) -> list[tuple[list[Path], list[Path]]]:
    """``group``'s (train files, valid files) split by ``key`` (computed by ``mapper``, map or a
    pool's), keeping the parts that hold files of both splits."""
    parts: dict[Hashable, tuple[list[Path], list[Path]]] = {}
    for side, files in enumerate(group):
        keys = mapper(key, files)
        for path, k in zip(files, keys, strict=True):
            parts.setdefault(k, ([], []))[side].append(path)
    return [part for part in parts.values() if part[0] and part[1]]


def _size(path: Path) -> Hashable:
    try:
        return os.stat(path).st_size
    except OSError:
        return path  # matches no size, nor another file


def _head_digest(path: Path) -> Hashable:
    return _digest(path, 0, HEAD_BYTES)


def _tail_digest(path: Path) -> Hashable:
    """The digest of the bytes after HEAD_BYTES (of none for a file no longer than that, which
    is then not opened again)."""
    size = _size(path)
    if isinstance(size, int) and size <= HEAD_BYTES:
        return b""  # the head digest held all of it
    return _digest(path, HEAD_BYTES, None)


def _digest(path: Path, start: int, length: int | None) -> Hashable:
    """The BLAKE2b digest of ``length`` bytes of ``path`` from ``start`` (None: to its end)."""
    digest = hashlib.blake2b()
    try:
        with open(path, "rb") as f:
            f.seek(start)
            if length is not None:
                digest.update(f.read(length))
            else:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    except OSError:
        return path
    return digest.digest()


def describe_identical(pairs: list[tuple[Path, Path]], root: Path, shown: int = 5) -> str:
    """Up to ``shown`` of identical_images' pairs as "train_images/a.jpg = valid_images/b.jpg"
    (paths relative to ``root`` where they lie under it), then how many more there are."""

    def name(path: Path) -> str:
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    more = f" and {len(pairs) - shown} more" if len(pairs) > shown else ""
    return ", ".join(f"{name(t)} = {name(v)}" for t, v in pairs[:shown]) + more


def check_pair(
    pair: Pair, classes: ClassConfig, kept_classes: str | None = None
) -> tuple[list[str], np.ndarray, str]:
    """The pair's problems, its mask's pixel count per value (256 bins; zeros if unread), and
    how the mask was read (_read_mask; "other classes" where its values or colours are not the
    classes', "" where it is unread for another reason). ``kept_classes`` as check_dataset
    takes it."""
    problems, _, counts, reading = checked_mask(pair, classes, kept_classes)
    return problems, counts, reading


def checked_mask(
    pair: Pair, classes: ClassConfig, kept_classes: str | None = None
) -> tuple[list[str], np.ndarray | None, np.ndarray, str]:
    """check_pair's checks, keeping the mask they decoded for a caller that writes it: the
    pair's problems, the mask's (H, W) uint8 class ids (None if unread), its pixel counts and
    how it was read, as check_pair gives them. check_dataset calls check_pair instead, so as
    not to hold a whole dataset's masks."""
    image_path, mask_path = pair
    problems = []
    size = mask = counts = None
    reading = ""
    try:
        size = image_size(image_path)
    except DataError as err:
        problems.append(str(err))
    try:
        mask, reading, counts = _read_mask(mask_path, classes, count=True)
    except UnlistedColours as err:  # its own advice, not check_dataset's note on other classes
        problems.append(err.advice(kept_classes))
    except DataError as err:
        problems.append(str(err))
        reading = "other classes" if isinstance(err, OtherClasses) else ""
    if size is not None and mask is not None:
        problems += size_mismatch(pair, size, mask.shape)
    if counts is None:  # counted while reading it where it held class or instance ids
        counts = pixel_counts(mask) if mask is not None else np.zeros(256, np.int64)
    return problems, mask, counts, reading


def size_mismatch(pair: Pair, size: tuple[int, int], shape: tuple[int, ...]) -> list[str]:
    """The problem of a pair whose image is ``size`` (W, H, as image_size gives it) and whose
    mask is of ``shape`` (H, W): none where they match."""
    image_path, mask_path = pair
    if (shape[1], shape[0]) == size:
        return []
    hint = ""
    if (shape[0], shape[1]) == size:
        if turned(image_path):
            hint = (
                " (sides swapped: a phone photo turned upright by its EXIF orientation, and a "
                "mask drawn on its stored pixels? Masks must match the image as displayed)"
            )
        elif turned(mask_path):
            hint = (
                " (sides swapped: the mask is turned by an EXIF orientation of its own, its "
                "image by none; save the mask without EXIF)"
            )
        else:
            hint = (
                " (sides swapped: neither file has an EXIF orientation; the mask of a copy of "
                "the image turned a quarter turn? Masks must match the image as displayed)"
            )
    return [
        f"{mask_path}: mask is {shape[1]}x{shape[0]} but its image {image_path.name} is "
        f"{size[0]}x{size[1]}{hint}"
    ]


def turned(path: Path) -> bool:
    """Whether the EXIF orientation of an image file swaps its width and height when read."""
    try:
        with _open_unguarded(path) as img:
            return _exif_transpose(img) in _SWAPS_SIDES
    except Exception:  # for a hint: the file's own problems are reported by those who read it
        return False


def exif_orientation(path: Path) -> int:
    """The EXIF orientation that reading an image file applies, 2 to 8, or 1 where it applies
    none (none written, a value outside 1 to 8, or an EXIF block or file it cannot parse)."""
    try:
        with _open_unguarded(path) as img:
            method = _exif_transpose(img)
    except Exception:  # for a note: the file's own problems are reported by those who read it
        return 1
    return next((k for k, v in _EXIF_TRANSPOSE.items() if v == method), 1)


def _written_classes(root: Path, classes: ClassConfig) -> list[str] | None:
    """The ALL_CLASSES of the classes.yaml that prepare_data.py writes into the dataset folder
    ``root``, where they are not ``classes``' names; None otherwise (or none readable)."""
    try:
        names = read_yaml(root / "classes.yaml").get("ALL_CLASSES")
    except (UserError, AttributeError):  # none there, unreadable, or no mapping
        return None
    if isinstance(names, list) and [str(n) for n in names] != list(classes.names):
        return [str(n) for n in names]
    return None


def _classes_hint(root: Path, classes: ClassConfig) -> str:
    """How to give the classes of masks read as instance ids: the classes.yaml that
    prepare_data.py writes into the dataset folder, where it lists other classes."""
    if names := _written_classes(root, classes):
        return f"pass --config {root / 'classes.yaml'} ({', '.join(names)})"
    return (
        "list your classes (ALL_CLASSES: [background, cat, dog]) in a YAML file and pass it "
        "with --config"
    )


def _layout_advice(root: Path) -> str | None:
    """What a --data folder without any of the four dataset folders is, and how to make a
    dataset of it, for the layouts people pass by mistake; None for any other folder."""
    if root.name in LAYOUT_FOLDERS:
        return (
            f"one of a dataset's four folders: pass the folder that holds them, --data "
            f"{root.parent}"
        )
    out = root.with_name(f"{root.name}_prepared")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return (
            "a folder of images/ and masks/, not yet split into train and valid: run python "
            f"prepare_data.py folder --images {root / 'images'} --masks {root / 'masks'} --out "
            f"{out}, then --data {out}"
        )
    if (root / "PNGImages").is_dir() and (root / "PedMasks").is_dir():
        # the split and masks this gives are those of train.py's own download (pennfudan)
        return (
            "Penn-Fudan as unzipped, not yet split into train and valid: run python "
            f"prepare_data.py folder --images {root / 'PNGImages'} --masks {root / 'PedMasks'} "
            f"--mask-suffix _mask --out {out}, then --data {out}"
        )
    for what, importer, marker in (
        ("a Roboflow export", "roboflow", root / "train" / "_classes.csv"),
        ("a CVAT export", "cvat", root / "labelmap.txt"),
        ("Cityscapes as unzipped", "cityscapes", root / "gtFine"),
        ("ADE20K (ADEChallengeData2016) as unzipped", "ade20k", root / "objectInfo150.txt"),
    ):
        if marker.exists():
            return (
                f"{what}: run python prepare_data.py {importer} --root {root} --out {out}, then "
                f"--data {out}"
            )
    return None


def check_dataset(
    root: Path, classes: ClassConfig, splits=SPLITS, kept_classes: str | None = None
) -> dict[str, list[Pair]]:
    """The pairs per split of check_dataset_pixels, which checks the whole dataset."""
    return check_dataset_pixels(root, classes, splits, kept_classes)[0]


def check_dataset_pixels(
    root: Path, classes: ClassConfig, splits=SPLITS, kept_classes: str | None = None
) -> tuple[dict[str, list[Pair]], dict[str, np.ndarray]]:
    """Check a whole dataset before training; return its pairs per split, and per split the
    (256,) int64 pixel counts of each class id (255: ignored) of its masks as read, at their
    own sizes, which the check counts anyway.

    Every image and mask is decoded once; all problems are collected and raised together.
    ``kept_classes`` says why --config cannot change ``classes`` where they are a checkpoint's
    ("a resumed run keeps the classes of --resume CKPT"), for the advice of a warning.

    Raises:
        DatasetError: listing each problem with its file and reason.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--data {root} is not a folder")
    folders = [root / f"{split}_{kind}" for split in splits for kind in ("images", "masks")]
    if not any(folder.is_dir() for folder in folders) and (advice := _layout_advice(root)):
        raise UserError(f"--data {root} is {advice}")
    problems: list[str] = []
    pairs_by_split = {}
    for split in splits:
        image_dir, mask_dir = root / f"{split}_images", root / f"{split}_masks"
        pairs, found = find_pairs(image_dir, mask_dir)
        problems += found
        if not pairs and image_dir.is_dir() and mask_dir.is_dir():  # else "folder missing"
            problems.append(f"{image_dir}: the {split} split has no image-mask pairs")
        pairs_by_split[split] = pairs
    pixels = {}  # per split: pixels per mask value
    readings: dict[str, list[Path]] = {}  # how each mask was read -> those masks
    used_ids: list[tuple[Path, list[int]]] = []  # masks read as class ids: the values they hold
    two_valued: dict[str, list[Path]] = {}  # two classes: binary_kind -> those masks
    # under MASK_IDS a 255 is a value it does not list, not a 0/255 mask's white
    binary = classes.num_classes == 2 and classes.mask_ids is None
    with ThreadPoolExecutor(max_workers=8) as pool:
        for split, pairs in pairs_by_split.items():
            pixels[split] = np.zeros(256, np.int64)
            checked = pool.map(lambda p: check_pair(p, classes, kept_classes), pairs)
            for (_, mask_path), (found, counts, reading) in zip(pairs, checked, strict=True):
                problems += found
                pixels[split] += counts
                readings.setdefault(reading, []).append(mask_path)
                if reading == "ids" and classes.mask_colors is None and classes.mask_ids is None:
                    used_ids.append((mask_path, np.flatnonzero(counts).tolist()))
                if binary and (kind := binary_kind(counts, reading)):
                    two_valued.setdefault(kind, []).append(mask_path)
    problems += _mixed_gray_readings(readings, classes)
    problems += renumbered_palettes(used_ids, kept_classes)
    if problems:
        note = None
        if kept_classes and (others := len(readings.get("other classes", []))):
            # the problems' advice, to list the classes with --config, would not reach them
            note = (
                f"{others} {'mask holds' if others == 1 else 'masks hold'} other classes than "
                f"{list(classes.names)}: {kept_classes}, "
                "and --config does not change them. Train a new model on their classes, with "
                "--config"
            )
        elif not kept_classes and (names := _written_classes(root, classes)):
            # an imported dataset trained without its --config: every mask's problem is then
            # one of values beyond the default classes', whose own advice cannot know of it
            shown = ", ".join(names[:MISSING_SHOWN]) + (
                ", ..." if len(names) > MISSING_SHOWN else ""
            )
            note = (
                f"{root / 'classes.yaml'} lists {len(names)} classes ({shown}): pass --config "
                f"{root / 'classes.yaml'}"
            )
        raise DatasetError(root, problems, note)
    if instance_masks := len(readings.get("instances", [])):
        # Right for Penn-Fudan's own masks; but class-index masks of three or more classes,
        # trained without --config, read the same way and would merge into one class unnoticed.
        log.warning(
            "%d masks in %s hold values above 1, read as instance ids: every object becomes %s. "
            "If those values are class ids, %s",
            instance_masks,
            root,
            classes.names[1],
            _classes_hint(root, classes)
            + (f" to train a new model ({kept_classes})" if kept_classes else ""),
        )
    elif not kept_classes and (names := _written_classes(root, classes)):
        # an imported dataset trained without its --config, whose masks fit this run's classes
        # (as many, or more): the checkpoint, its overlays and graphs would misname them
        log.warning(
            "%s names the classes %s, but this run's are %s, the names the checkpoint and its "
            "overlays will give them; to train with the dataset's names, pass --config %s",
            root / "classes.yaml",
            ", ".join(names),
            ", ".join(classes.names),
            root / "classes.yaml",
        )
    _check_classes_present(root, classes, pixels)
    _warn_of_mixed_binary(root, classes, two_valued)
    _warn_of_identical_images(root, pairs_by_split)
    return pairs_by_split, pixels


def binary_kind(counts: np.ndarray, reading: str) -> str | None:
    """A two-class mask's use of 1 and 255 (ignore), from its (256,) pixel counts and how it
    was read (_read_mask's): "0/255" where it holds 0 and 255 and no 1, as class ids (a palette
    mask read by its colours says what its 255 is); "1" where it holds 1 and no 255; "1 and 255"
    where it holds both; None otherwise (no 1 and no 255, 255 alone, or 255 read by colour)."""
    if counts[1] and counts[IGNORE_INDEX]:
        return "1 and 255"
    if counts[1]:
        return "1"
    if counts[IGNORE_INDEX] and counts[0] and reading in ("ids", "gray ids"):
        return "0/255"
    return None


def zero_255_among_0_1(kinds: dict[str, list[Path]]) -> list[Path]:
    """The masks of a two-class dataset that look saved as 0/255 among 0/1 ones, from
    binary_kind's masks of each kind: its "0/255" masks where others hold 1 and none holds both
    1 and 255; none where they do not.

    A 0/255 mask's foreground reads as ignore, and trains as nothing, silently. Ignore regions
    of their own (VOC's borders around every object, COCO's crowds and box-only objects) also
    make masks of 0 and 255 alone, but then some mask holding the class holds 255 too: VOC
    outlines each object, and COCO's crowds and boxes lie beside objects. Where no mask holds
    both, nothing says that 255 means ignore here: likely 0/255 masks, not surely (a small COCO
    export may keep its crowds and boxes apart from its objects), so said, not refused.
    """
    if kinds.get("1") and not kinds.get("1 and 255"):
        return kinds.get("0/255", [])
    return []


def binary_command(root: Path, name: str) -> str:
    """The command that copies the dataset ``root`` to ``root``_01 with its 0/255 masks as class
    ids, 255 becoming ``name`` (prepare_data.py binary, whose --name is person by default)."""
    out = shell_quote(f"{root}_01")
    return (
        f"python prepare_data.py binary --root {shell_quote(str(root))} --out {out} "
        f"--name {shell_quote(name)}"
    )


def _warn_of_mixed_binary(root: Path, classes: ClassConfig, kinds: dict[str, list[Path]]) -> None:
    """Warn of zero_255_among_0_1's masks (paths under ``root``), naming a few."""
    suspects, labelled = zero_255_among_0_1(kinds), kinds.get("1", [])
    if not suspects:
        return
    names = [p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p) for p in suspects]
    name = classes.names[1]
    these = f"{len(suspects)} {'mask' if len(suspects) == 1 else 'masks'}"
    others = f"{len(labelled)} {'holds' if len(labelled) == 1 else 'hold'}"
    said = (
        f"{these} in {root} {'holds' if len(suspects) == 1 else 'hold'} 0 and {IGNORE_INDEX} "
        f"(ignore) but no pixel of {name}, while {others} {name} as 1 and none holds both: "
        f"masks saved as 0/{IGNORE_INDEX} among 0/1 ones (two annotation tools, masks re-saved "
        f"by an image editor)? Their {IGNORE_INDEX} reads as ignore, so training never sees "
        f"their {name}: {first_few(names)}. If {IGNORE_INDEX} marks {name} there, convert the "
        f"dataset with {binary_command(root, name)} (it keeps "
        "the 0/1 masks as they are), or re-save those masks as 0/1; if it marks regions to "
        "ignore, nothing needs changing"
    )
    log.warning("%s", said)


def _warn_of_identical_images(root: Path, pairs_by_split: dict[str, list[Pair]]) -> None:
    """Warn of valid images that repeat a train image byte for byte, under any name (a warning:
    training works, but validation scores what it trained on)."""
    if "train" not in pairs_by_split or "valid" not in pairs_by_split:
        return
    pairs = identical_images(*([i for i, _ in pairs_by_split[s]] for s in ("train", "valid")))
    if pairs:
        log.warning(
            "%d pair(s) of identical files in %s, a train image copied into the valid split "
            "(train = valid): %s. Validation then scores images the model trained on, and its "
            "loss and mIoU flatter the model; remove each copy from one of the two splits",
            len(pairs),
            root,
            describe_identical(pairs, root),
        )


def _mixed_gray_readings(readings: dict[str, list[Path]], classes: ClassConfig) -> list[str]:
    """A problem for each grayscale mask read as class ids that its gray colours would read
    otherwise (_read_mask's "gray ids"), where other masks of the dataset are colour masks.

    Each mask is read on its own, so a 0/255 mask among 0/128/255 gray colour masks would read
    as background and ignore while the others' 255 is a class: the same pixel value meaning two
    things in one dataset, silently.
    """
    if not readings.get("colours"):
        return []
    example = readings["colours"][0]
    problems = []
    for path in readings.get("gray ids", []):
        ids = read_mask(path, classes)
        described = [
            f"{v} ({'ignore' if v == IGNORE_INDEX else classes.names[v]} as a class id, "
            f"{classes.names[c]} as the colour {[v] * 3})"
            for v, c in gray_conflicts(ids, classes).items()
        ]
        problems.append(
            f"{path}: a grayscale mask read as class ids, but its values are also gray colours "
            f"of LABEL_COLORS_LIST, which other masks here are read by (such as {example}): "
            f"{'; '.join(described)}. Save it as an RGB colour mask, as those are read by their "
            "colours always, or save every mask as class ids"
        )
    return problems


def renumbered_palettes(
    used_ids: list[tuple[Path, list[int]]], kept_classes: str | None = None
) -> list[str]:
    """A problem where palette masks read as class ids (the config has no LABEL_COLORS_LIST)
    show one colour under two indices: colour masks that a PNG optimizer, convert("P") or an
    editor's "PNG-8" saved with a palette of their own colours, numbered per file. Read by
    their indices, a class's pixels are one id in one mask and another id in the next, silently.

    ``used_ids``: each mask and the values it holds. Class-index masks of one tool share a
    palette (VOC's colour map, a gray ramp), so one colour keeps its index. ``kept_classes`` as
    check_dataset takes it.
    """
    first: dict[tuple[int, ...], tuple[int, Path]] = {}  # colour -> (index, mask) first seen
    for path, used in used_ids:
        try:
            with _open_unguarded(path) as img:  # the header alone: the palette precedes pixels
                if img.mode != "P":
                    continue
                palette = img.getpalette("RGB") or []
        except Exception:  # read once already; nothing to add here
            continue
        colors = {
            i: tuple(palette[3 * i : 3 * i + 3])
            for i in used
            if i != IGNORE_INDEX and 3 * i + 3 <= len(palette)
        }
        if len(set(colors.values())) < len(colors):
            continue  # one colour for two of its own ids (a palette all black): no colour code
        for index, color in colors.items():
            seen, where = first.setdefault(color, (index, path))
            if seen != index:
                return [
                    f"{path}: palette index {index} is the colour {list(color)}, which is index "
                    f"{seen} in {where}: colour masks saved with a palette (a PNG optimizer, "
                    "PNG-8), each numbering its colours its own way, so their indices are no "
                    f"class ids: {_colour_list_advice(kept_classes)}"
                ]
    return []


def _check_classes_present(root: Path, classes: ClassConfig, pixels: dict) -> None:
    """Refuse masks that hold no foreground at all, or a split without a labelled pixel; warn of
    classes training never sees, or validation never scores."""
    total = sum(pixels.values())
    # under MASK_IDS a 255 is any value it does not list, not a 0/255 mask's white
    binary = classes.num_classes == 2 and classes.mask_ids is None
    if binary and not total[1] and total[IGNORE_INDEX]:
        raise UserError(
            f"no mask in {root} holds a pixel of {classes.names[1]}, but they hold "
            f"{IGNORE_INDEX} (ignore): masks saved as 0/{IGNORE_INDEX}? This repository reads "
            f"{IGNORE_INDEX} as 'ignore'. Convert them to 0/1 masks with: "
            f"{binary_command(root, classes.names[1])}"
        )
    for split, counts in pixels.items():
        if not counts[: classes.num_classes].any():
            task = {
                "train": "training has nothing to learn",
                "valid": "validation has nothing to score: its mIoU and loss would mean nothing",
            }[split]
            fix = (
                f"label its masks with the class ids 0-{classes.num_classes - 1} of "
                f"{list(classes.names)}"
            )
            if classes.mask_ids is not None:
                fix = (
                    "none of its masks holds a value that MASK_IDS lists (others read as "
                    "ignore): list the values its masks hold for each class in MASK_IDS"
                )
            raise UserError(
                f"every mask pixel of the {split} split of {root} is {IGNORE_INDEX} (ignore), so "
                f"{task}; {fix}"
            )
    for split, consequence in (
        ("train", "the model cannot learn {it}"),
        # mIoU leaves out a class absent from both the predictions and the ground truth
        (
            "valid",
            "such a class is left out of the valid mIoU while the model predicts it nowhere "
            "in that split, and counts as an IoU of 0 once it predicts it anywhere",
        ),
    ):
        if split not in pixels:
            continue
        missing = [n for n, c in zip(classes.names, pixels[split], strict=False) if not c]
        if missing:
            # a few images of ADE20K's 150 classes lack most of them: one line of 1,500 characters
            named = ", ".join(missing[:MISSING_SHOWN])
            if len(missing) > MISSING_SHOWN:
                named += f" and {len(missing) - MISSING_SHOWN} more"
            log.warning(
                "the %s split of %s has no pixel of %s: %s",
                split,
                root,
                named,
                consequence.format(it="it" if len(missing) == 1 else "them"),
            )


# Nearest neighbour with pixel centres at x + 0.5, for resize_mask and the training crops
MASK_INTERPOLATION = cv2.INTER_NEAREST_EXACT


# How resize_image resamples, part of the feature cache's keys: change it with the function, so
# that no cached features of images resized the old way are served. 2: each side by its own
# scale (1: by the area, which resampled an image shrunk one way and enlarged the other wrong).
RESIZE_VERSION = 2


def resize_image(image: np.ndarray, imgsz: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> the model's input size (W, H) = imgsz, for evaluation and inference.

    Each side is averaged by area where it shrinks (no aliasing) and blended bilinearly where it
    grows. OpenCV's area resampling repeats the pixels of a side that grows (nearest
    neighbour), so an image shrunk one way and enlarged the other (854x480 video at 640x640) is
    resized in two steps: the shrinking side first, by area, then the other, bilinearly.
    """
    w, h = imgsz
    height, width = image.shape[:2]
    if (height, width) == (h, w):
        return image
    if w <= width and h <= height:
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    if w < width or h < height:
        shrunk = (w, height) if w < width else (width, h)
        image = cv2.resize(image, shrunk, interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def slide_input_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """The (W, H) --slide segments a ``width`` x ``height`` image at: shrunk, keeping its
    aspect, to a short side of ``short_side`` where it is longer, else its own size (an image is
    never enlarged: one smaller than a window is one window of its own size)."""
    scale = short_side / min(width, height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_mask(mask: np.ndarray, imgsz: tuple[int, int]) -> np.ndarray:
    """(H, W) class ids -> (W, H) = imgsz by nearest neighbour, so ids stay ids.

    Each pixel takes the id under its centre, as resize_image samples the image (pixel centres
    at x + 0.5). OpenCV's INTER_NEAREST samples at x instead, which puts masks half a pixel of
    ``imgsz`` right of and below their images (a 4000x3000 photo at 640x480: 3 photo pixels).
    """
    w, h = imgsz
    if mask.shape == (h, w):
        return mask
    return cv2.resize(mask, (w, h), interpolation=MASK_INTERPOLATION)


# the aspect ratios (width / height) of the random crops, torchvision's and albumentations'
CROP_RATIO = (3 / 4, 4 / 3)


def crop_ratios(width: int, height: int) -> tuple[float, float]:
    """The crops' aspect ratio range for an image of ``width`` x ``height``: CROP_RATIO, moved
    along to end at the image's own aspect where that lies outside it.

    A crop of CROP_RATIO and at least half the area does not fit in an image wider than 8:3
    (or taller than 3:8): RandomResizedCrop then falls back to one central crop, the same every
    epoch: a 4000x500 panorama would train on its middle 667 pixels alone, while validation
    scores all of it. Moved, the range reaches the image's aspect (as validation resizes the
    whole image to imgsz), and crops sweep it end to end; images from 3:4 to 4:3 keep it.
    """
    low, high = CROP_RATIO
    aspect = width / height
    shift = aspect / high if aspect > high else aspect / low if aspect < low else 1.0
    return low * shift, high * shift


def train_transform(imgsz: tuple[int, int]) -> "A.Compose":
    """Flip, scale/crop and colour jitter, ending at (W, H) = imgsz. The crop comes first: its
    ``ratio`` is set per image from crop_ratios (SegmentationDataset does)."""
    # Imported here, not with the module: inference and the benchmarks import this module
    # (through engine.py) but never augment, and so run where albumentations is not installed.
    import albumentations as A

    return A.Compose(
        [
            resized_crop(imgsz),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.5),
        ]
    )


def resized_crop(imgsz: tuple[int, int]) -> "A.RandomResizedCrop":
    """albumentations' RandomResizedCrop to (W, H) = imgsz (scale 0.5-1, CROP_RATIO), with its
    crops resized as resize_image and resize_mask resize evaluation's images and masks."""
    w, h = imgsz
    return _resized_crop_class()(
        size=(h, w), scale=(0.5, 1.0), ratio=CROP_RATIO, mask_interpolation=MASK_INTERPOLATION
    )


@functools.cache
def _resized_crop_class() -> type:
    # A class built on first use, as albumentations is imported only to augment (train_transform)
    import albumentations as A

    class ResizedCrop(A.RandomResizedCrop):
        """Its own resampling picks area averaging when either side shrinks, which repeats the
        rows or columns of the other side where that one grows (a crop of 854x480 video at
        640x640): training would see blocks that evaluation, through resize_image, never does."""

        def apply(self, img, crop_coords, **params):
            x1, y1, x2, y2 = crop_coords
            return resize_image(img[y1:y2, x1:x2], self.size[::-1])

        def apply_to_mask(self, mask, crop_coords, **params):
            x1, y1, x2, y2 = crop_coords
            return resize_mask(mask[y1:y2, x1:x2], self.size[::-1])

        def __reduce__(self):
            # pickled by its maker, as a class made in a function cannot be: a spawned
            # DataLoader worker rebuilds it (``ratio`` and the seed are set again for each item)
            return resized_crop, (self.size[::-1],)

    return ResizedCrop


def seed_transforms(compose: "A.BaseCompose", seed: int) -> None:
    """Seed ``compose`` and each transform in it, nested ones too, with a seed of its own drawn
    from ``seed``.

    Compose.set_random_seed hands its own seed to every transform, so all of them drew the same
    numbers: the flip and the colour jitter (both p=0.5) came together or not at all, and only
    crops under 3/4 of the image were flipped (the crop's area is drawn from the same number).
    """
    import albumentations as A

    compose.set_random_seed(seed)
    streams = np.random.SeedSequence(seed).spawn(len(compose.transforms))
    for transform, stream in zip(compose.transforms, streams, strict=True):
        own = int(stream.generate_state(1)[0])
        if isinstance(transform, A.BaseCompose):  # a OneOf, SomeOf, ... of transforms
            seed_transforms(transform, own)
        else:
            transform.set_random_seed(own)


class PairDataset(Dataset):
    """What both datasets share: image-mask pairs, classes, size, and per-sample seeds."""

    def __init__(self, pairs: list[Pair], classes: ClassConfig, imgsz, train: bool, seed: int):
        self.pairs = pairs
        self.classes = classes
        self.imgsz = imgsz
        self.train = train
        self.seed = seed
        # In shared memory, so that DataLoader workers kept from one epoch to the next (forked
        # or spawned) see each set_epoch: a plain attribute is copied when a worker starts.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random draws __getitem__ makes, in this process and its
        workers; call it before iterating over the epoch's loader."""
        self._epoch.fill_(epoch)

    def sample_seed(self, index: int) -> int:
        """A seed from (seed, epoch, index): the same in every process, run and worker."""
        return hash((self.seed, self.epoch, index)) % 2**32  # int tuples hash stably

    def __len__(self) -> int:
        return len(self.pairs)


class SegmentationDataset(PairDataset):
    """Image-mask pairs as tensors.

    Training items are augmented to ``imgsz`` (or only resized, with augment=False), each with
    a seed derived from (seed, epoch, index): an epoch's augmentations do not depend on worker
    count or on earlier epochs, so a resumed run repeats the uninterrupted one. Evaluation items
    resize the image only and keep the mask at its original resolution, because metrics are
    computed there; with ``slide_short_side`` (--slide) the image is resized to
    slide_input_size's size instead of ``imgsz``.

    Items:
        image: (3, H, W) uint8 RGB; mask: (h, w) uint8 class ids (255 = ignore); index: int.
    """

    def __init__(
        self,
        pairs: list[Pair],
        classes: ClassConfig,
        imgsz: tuple[int, int],
        train: bool,
        seed: int = 0,
        augment: bool = True,
        slide_short_side: int | None = None,
    ):
        super().__init__(pairs, classes, imgsz, train, seed)
        self.augment = train_transform(imgsz) if train and augment else None
        self.slide_short_side = slide_short_side

    def __getitem__(self, index: int):
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        mask = read_mask(mask_path, self.classes)
        if self.augment is not None:
            self.augment.transforms[0].ratio = crop_ratios(image.shape[1], image.shape[0])
            seed_transforms(self.augment, self.sample_seed(index))
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        else:
            size = self.imgsz
            if self.slide_short_side is not None:
                size = slide_input_size(image.shape[1], image.shape[0], self.slide_short_side)
            image = resize_image(image, size)
            if self.train:
                mask = resize_mask(mask, self.imgsz)
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        # uint8 until the device (engine.py widens it there): an int64 mask is 8 times the
        # bytes through the workers' shared memory and to the GPU
        return image, torch.from_numpy(np.ascontiguousarray(mask)), index


# the bytes of masks a CachedFeatureDataset keeps in RAM, in each process
MASK_MEMORY = 2**30


class CachedFeatureDataset(PairDataset):
    """Like SegmentationDataset, but items carry cached backbone features instead of images.

    Training items use the original or, with augment, the horizontally flipped view (chosen by
    (seed, epoch, index)) and the mask resized to ``imgsz``, flipped to match. Crops and colour
    jitter cannot apply: they would change the features. Evaluation items use the original view
    and keep the mask at its original resolution.

    Items:
        features: (N*D, h, w) float16; mask: (h', w') uint8 class ids; index: int.
    """

    def __init__(self, pairs, classes, imgsz, cache, train: bool, seed: int = 0, augment=True):
        super().__init__(pairs, classes, imgsz, train, seed)
        self.cache = cache  # anything with load(image_path, view) -> tensor
        self.flips = train and augment
        # Masks are kept once read (the loader runs in this process): decoding and checking
        # one every epoch cost more than loading its cached features. A 640x640 training mask
        # is 0.4 MB, but a validation mask keeps its photo's size (12 MB at 4000x3000), so
        # past MASK_MEMORY the rest are read again each epoch instead.
        self._masks: dict[int, np.ndarray] = {}
        self._mask_bytes = 0

    def _mask(self, index: int) -> np.ndarray:
        if index in self._masks:
            return self._masks[index]
        mask = read_mask(self.pairs[index][1], self.classes)
        mask = resize_mask(mask, self.imgsz) if self.train else mask
        if self._mask_bytes + mask.nbytes <= MASK_MEMORY:
            self._masks[index] = mask
            self._mask_bytes += mask.nbytes
        return mask

    def __getitem__(self, index: int):
        image_path, _ = self.pairs[index]
        flip = self.flips and random.Random(self.sample_seed(index)).random() < 0.5
        features = self.cache.load(image_path, "flip" if flip else "orig")
        mask = self._mask(index)
        mask = mask[:, ::-1] if flip else mask
        return features, torch.from_numpy(mask.copy()), index  # the cached mask stays unshared


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ...: each item goes to exactly one process, none repeated.

    For evaluation under torchrun, where DistributedSampler's padding would count some images
    twice.
    """

    def __init__(self, size: int, rank: int, world: int):
        self.indices = range(rank, size, world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def unrepeated(sampler) -> int | None:
    """How many items at the start of ``sampler``'s order are not repeats, or None where none
    is (any sampler but a DistributedSampler that pads).

    A padding DistributedSampler lengthens the dataset to a multiple of its processes by
    repeating the first items of its order at the end; a process's share takes every
    num_replicas-th, so the repeats end it, after its ShardSampler shard's worth of items.
    """
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    return len(ShardSampler(len(sampler.dataset), sampler.rank, sampler.num_replicas))


def collate_eval(batch):
    """Stack images (a list where their sizes differ, as --slide's do) and keep masks (original
    sizes differ) in a list."""
    images, masks, indices = zip(*batch, strict=True)
    same = all(image.shape == images[0].shape for image in images)
    return torch.stack(images) if same else list(images), list(masks), list(indices)


def split_of(position: int, every: int) -> str:
    """The split of the item at ``position`` (from 0) of a list where every ``every``-th goes to
    valid: "valid" at positions every - 1, 2 * every - 1, ..., else "train"."""
    return "valid" if position % every == every - 1 else "train"


def write_pair(folder: Path, split: str, name: str, image: bytes | Path, mask: np.ndarray) -> None:
    """Write one pair into the dataset layout under ``folder``: the image's bytes as they are,
    named ``name`` (``image`` a file: hard-linked to it, or copied, as utils.link_or_copy
    does), and the (H, W) class ids as a PNG of the same stem."""
    (folder / f"{split}_images").mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_masks").mkdir(parents=True, exist_ok=True)
    dest = folder / f"{split}_images" / name
    # A name written before (a list naming an image twice) may be a hard link to a user's image:
    # writing into it would change that file, so its name goes first and the bytes to a new one
    dest.unlink(missing_ok=True)
    if isinstance(image, Path):
        link_or_copy(image, dest)
    else:
        dest.write_bytes(image)
    mask_image = Image.fromarray(mask.astype(np.uint8))
    write_image(folder / f"{split}_masks" / f"{Path(name).stem}.png", mask_image, "PNG")


def download_penn_fudan(data_dir: Path) -> None:
    """Download the Penn-Fudan pedestrian zip and convert it into ``data_dir``."""
    data_dir = Path(data_dir)
    log.info("downloading Penn-Fudan (%s) into %s", PENN_FUDAN_URL, data_dir)
    with new_folder(data_dir.parent), tempfile.TemporaryDirectory(dir=data_dir.parent) as tmp:
        zip_path = Path(tmp) / "PennFudanPed.zip"
        try:
            with network_timeout():
                torch.hub.download_url_to_file(PENN_FUDAN_URL, str(zip_path), progress=True)
        except (URLError, OSError) as err:
            raise UserError(
                f"could not download Penn-Fudan from {PENN_FUDAN_URL} ({err}). Offline: download "
                "the zip elsewhere and run  python prepare_data.py pennfudan --zip "
                f"PennFudanPed.zip --out {data_dir}  or pass --data DIR with your own dataset"
            ) from err
        counts = convert_penn_fudan(zip_path, data_dir)
    log.info("Penn-Fudan converted into %s: %s", data_dir, counts)


def convert_penn_fudan(zip_path: Path, out_dir: Path) -> dict[str, int]:
    """Convert the Penn-Fudan zip into our layout with class-index masks (0 background, 1 person).

    The split is fixed: images sorted by name, every fifth one (positions 4, 9, 14, ...) goes
    to valid, the rest to train; from the 170 images that gives 136 train and 34 valid, mixing
    the Fudan and Penn halves. The folder appears complete or not at all.

    Returns:
        the number of images per split.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise UserError(f"{out_dir} already exists; remove it to convert Penn-Fudan again")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as err:
        raise UserError(f"{zip_path} is not a readable zip file ({err})") from err
    with zf:
        # Zips made by macOS's Finder add __MACOSX/.../._NAME resource forks: not images
        names = [n for n in zf.namelist() if not re.search(r"(^|/)(__MACOSX/|\._)", n)]
        images = sorted(n for n in names if re.search(r"(^|/)PNGImages/[^/]+\.png$", n))
        masks = {Path(n).name: n for n in names if re.search(r"(^|/)PedMasks/[^/]+_mask\.png$", n)}
        if not images:
            raise UserError(
                f"{zip_path} has no PennFudanPed/PNGImages/*.png: not the Penn-Fudan zip"
            )
        missing = [n for n in images if f"{Path(n).stem}_mask.png" not in masks]
        if missing:
            raise UserError(
                f"{zip_path}: {len(missing)} images have no PedMasks/*_mask.png, e.g. {missing[0]}"
            )
        with new_folder(out_dir.parent):
            tmp = temp_folder(out_dir)
            try:
                counts = dict.fromkeys(SPLITS, 0)
                for i, name in enumerate(images):
                    split = split_of(i, 5)
                    stem = Path(name).stem
                    try:
                        with zf.open(masks[f"{stem}_mask.png"]) as f:
                            instances = np.asarray(Image.open(f))
                    except (OSError, ValueError, zipfile.BadZipFile) as err:
                        raise UserError(
                            f"{zip_path}: {masks[f'{stem}_mask.png']} is unreadable or corrupt "
                            f"({err}); download the zip again"
                        ) from err
                    write_pair(tmp, split, f"{stem}.png", zf.read(name), instances > 0)
                    counts[split] += 1
                tmp.rename(out_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return counts
