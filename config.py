"""Defaults, named constants, the backbone table, the class configuration and the flags that
several scripts share.

A default that several scripts use lives here once; a flag of one script keeps its default in
that script's parser. A YAML file given to train.py with ``--config`` may set the class
configuration (``ALL_CLASSES``, and optionally ``LABEL_COLORS_LIST`` or ``MASK_IDS``, and
``VIS_LABEL_MAP``) and any of its flags (by the name with underscores, e.g. ``lr`` or
``backbone_lr``); the command line wins over the file.
"""

import argparse
import dataclasses
import difflib
import logging
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import yaml

from utils import AMP_DTYPES, UserError, check_gui

log = logging.getLogger("dinoseg")

PATCH_SIZE = 14
IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jfif")
# The largest image read, 2**30 pixels (3.2 GB as RGB): aerial and satellite photos of several
# hundred megapixels are read, while Pillow's own guard (179 megapixels) is for untrusted input.
MAX_IMAGE_PIXELS = 2**30
SPLITS = ("train", "valid")
# a dataset's four folders: SPLIT_images/ and SPLIT_masks/ for each split
LAYOUT_FOLDERS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "masks"))
AMP_CHOICES = ("off", *AMP_DTYPES)  # --amp: full precision, or one of utils.amp_dtype's

DEFAULT_IMGSZ = (640, 640)  # (W, H)
DEFAULT_DATA_DIR = Path("data/PennFudanPed")
DEFAULT_OUT_DIR = Path("outputs")
OVERLAY_ALPHA = 0.5  # the overlays' colour opacity: --alpha's and Predictor.overlay's default
# train.py's checkpoints in --out-dir: the best valid mIoU's, which evaluation and inference take
# by default, and the last epoch's, which --resume continues
BEST_CHECKPOINT = "best_model_iou.pth"
LAST_CHECKPOINT = "last_model.pth"

HUB_REPO = "facebookresearch/dinov2"
WEIGHTS_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
PENN_FUDAN_URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"

RGB = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One backbone: an official DINOv2 model, its shape, and the blocks that feed the head.

    The shape is the official checkpoint's (embed_dim, depth, registers, SwiGLU) and the built
    model's (num_heads): model.load_backbone checks every built model against its row.
    """

    hub_name: str  # the official torch.hub entry point, e.g. dinov2_vitl14_reg
    embed_dim: int
    depth: int
    num_heads: int
    timm_name: str  # the same architecture in timm
    # the official "+ms" head's four blocks; --layers N takes the last N
    head_blocks: tuple[int, ...]
    registers: int = 0  # register tokens (4 in the official _reg models)
    swiglu: bool = False  # a SwiGLU MLP (ViT-g/14): officially mlp.w12/w3, in timm mlp.fc1/fc2

    def blocks(self, layers: int) -> tuple[int, ...]:
        """The indices of the last ``layers`` of the head blocks."""
        if not 1 <= layers <= len(self.head_blocks):
            raise UserError(f"--layers must be between 1 and {len(self.head_blocks)}, not {layers}")
        return self.head_blocks[-layers:]

    @property
    def weights_name(self) -> str:
        """The file torch.hub caches the official weights under, named as the official hubconf.py
        names it: the architecture, then the registers (dinov2_vitl14_reg4_pretrain.pth)."""
        registers = f"_reg{self.registers}" if self.registers else ""
        return f"{self.arch}{registers}_pretrain.pth"

    @property
    def arch(self) -> str:
        """The official architecture without its registers (dinov2_vitl14), the folder of its
        weights at WEIGHTS_BASE_URL."""
        return self.hub_name.removesuffix("_reg")


def _official(
    hub_name: str,
    embed_dim: int,
    depth: int,
    num_heads: int,
    timm_name: str,
    registers: int = 0,
    swiglu: bool = False,
) -> BackboneSpec:
    """The row of an official model, its last four blocks feeding the head as in the official
    "+ms" head."""
    head_blocks = tuple(range(depth - 4, depth))
    return BackboneSpec(
        hub_name, embed_dim, depth, num_heads, timm_name, head_blocks, registers, swiglu
    )


# --backbone NAME: a key, stored in every checkpoint (never rename one). A row that feeds the head
# other blocks of an official model is dataclasses.replace(BACKBONES[NAME], head_blocks=...)
# under a new key: see the README's "Extending".
BACKBONES: dict[str, BackboneSpec] = {
    spec.hub_name: spec
    for spec in (
        _official("dinov2_vits14", 384, 12, 6, "vit_small_patch14_dinov2"),
        _official("dinov2_vitb14", 768, 12, 12, "vit_base_patch14_dinov2"),
        _official("dinov2_vitl14", 1024, 24, 16, "vit_large_patch14_dinov2"),
        _official("dinov2_vitg14", 1536, 40, 24, "vit_giant_patch14_dinov2", swiglu=True),
        _official("dinov2_vits14_reg", 384, 12, 6, "vit_small_patch14_reg4_dinov2", 4),
        _official("dinov2_vitb14_reg", 768, 12, 12, "vit_base_patch14_reg4_dinov2", 4),
        _official("dinov2_vitl14_reg", 1024, 24, 16, "vit_large_patch14_reg4_dinov2", 4),
        _official(
            "dinov2_vitg14_reg", 1536, 40, 24, "vit_giant_patch14_reg4_dinov2", 4, swiglu=True
        ),
    )
}
DEFAULT_BACKBONE = "dinov2_vits14"
DEFAULT_SOURCE = "hub"  # --backbone-source of a new model (a checkpoint keeps its own)
DEFAULT_LAYERS = 4  # all of the "+ms" head's blocks


def official_weights_name(backbone: str) -> str:
    """The file name torch.hub caches official weights under: dinov2_vits14_pretrain.pth."""
    return BACKBONES[backbone].weights_name


def voc_palette(n: int) -> list[RGB]:
    """The first ``n`` colours of the PASCAL VOC colour map: distinct, black for index 0.

    Index i spreads its bits over the colour's high bits, three at a time (R, G, B), so the first
    eight are the corners of the colour cube at half brightness and later ones fall between them.
    """
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


# The least value of a default class colour's brightest channel: VOC's (64, 0, 0), (32, 32, 64)
# and the like vanish in an overlay on a dark photo, while half-bright maroon and navy show.
MIN_BRIGHTEST = 128


def distinct_colors(n: int) -> tuple[RGB, ...]:
    """``n`` distinct colours for ``n`` classes: black for class 0 (background, which overlays
    leave undrawn), green for class 1 as the default classes have, then the VOC colour map's
    without black, its dark green (beside the green, a second class in nearly the same colour)
    and those too dark to see (MIN_BRIGHTEST)."""
    colors = [(0, 0, 0), (0, 255, 0)]
    # 512 entries hold 447 such colours: more than the IGNORE_INDEX classes there may be
    for i, color in enumerate(voc_palette(512)):
        if i not in (0, 2) and max(color) >= MIN_BRIGHTEST:
            colors.append(color)
    return tuple(colors[:n])


# the class configuration's keys in a YAML file and a checkpoint; ALL_CLASSES alone is required
CLASS_KEYS = ("ALL_CLASSES", "LABEL_COLORS_LIST", "VIS_LABEL_MAP", "MASK_IDS")
# the largest value MASK_IDS may list: a 16-bit PNG's
MAX_MASK_ID = 65535


@dataclasses.dataclass(frozen=True)
class ClassConfig:
    """The classes: names, the colours that mark them in colour masks, overlay colours."""

    names: tuple[str, ...]  # ALL_CLASSES; index = class id
    # LABEL_COLORS_LIST; None where the file has none: masks are then read as class ids only
    mask_colors: tuple[RGB, ...] | None
    vis_colors: tuple[RGB, ...]  # VIS_LABEL_MAP, as given or as from_dict resolved it
    # MASK_IDS; None where the file has none. Else each class's values in the masks (the label ids
    # of Cityscapes' or ADE20K's masks, 8- or 16-bit), every other value read as ignore
    mask_ids: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self):
        n = len(self.names)
        if n < 2:
            raise UserError("ALL_CLASSES needs at least two classes (e.g. background and person)")
        if not all(name.strip() for name in self.names):  # reports and overlays name each one
            raise UserError(f"ALL_CLASSES has an empty name: {list(self.names)}")
        if len(set(self.names)) != n:
            raise UserError(f"ALL_CLASSES has repeated names: {list(self.names)}")
        if n > IGNORE_INDEX:
            # class ids are uint8 from the masks to the outputs, 255 being ignore
            raise UserError(
                f"at most {IGNORE_INDEX} classes are supported, got {n}: merge classes, such as "
                "several values of 16-bit masks into one class with MASK_IDS ([7, [8, 9], ...])"
            )
        for key, colors in (
            ("LABEL_COLORS_LIST", self.mask_colors),
            ("VIS_LABEL_MAP", self.vis_colors),
        ):
            if colors is not None and len(colors) != n:
                raise UserError(f"{key} has {len(colors)} colours for {n} classes in ALL_CLASSES")
        if self.mask_colors is not None and len(set(self.mask_colors)) != n:
            raise UserError("LABEL_COLORS_LIST has repeated colours: each class needs its own")
        if self.mask_ids is not None:
            self._check_mask_ids()

    def _check_mask_ids(self) -> None:
        n = len(self.names)
        if self.mask_colors is not None:
            # a colour mask has no ids, and a label-id mask's grays would read as colours
            raise UserError(
                "MASK_IDS (the values of masks of label ids) and LABEL_COLORS_LIST (the colours "
                "of colour masks) exclude each other: keep the one your masks need"
            )
        if len(self.mask_ids) != n:
            raise UserError(
                f"MASK_IDS has {len(self.mask_ids)} entries for {n} classes in ALL_CLASSES"
            )
        owner: dict[int, str] = {}
        for name, values in zip(self.names, self.mask_ids, strict=True):
            if not values:
                raise UserError(f"MASK_IDS gives {name} no value: list its value in the masks")
            for v in values:
                if v in owner:
                    raise UserError(f"MASK_IDS gives the value {v} to both {owner[v]} and {name}")
                owner[v] = name

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        """The YAML/checkpoint form: the upper-case keys with plain lists. VIS_LABEL_MAP is
        written as resolved, so a checkpoint draws the same overlays wherever it is loaded;
        LABEL_COLORS_LIST only where it was given, as colours made up here would read colour
        masks by them."""
        mapping = {"ALL_CLASSES": list(self.names)}
        if self.mask_colors is not None:
            mapping["LABEL_COLORS_LIST"] = [list(c) for c in self.mask_colors]
        mapping["VIS_LABEL_MAP"] = [list(c) for c in self.vis_colors]
        if self.mask_ids is not None:  # one value as a number, several as a list, as written
            mapping["MASK_IDS"] = [v[0] if len(v) == 1 else list(v) for v in self.mask_ids]
        return mapping

    @classmethod
    def from_dict(cls, mapping: dict, source: str = "the class config") -> "ClassConfig":
        """The classes of a YAML file's or a checkpoint's keys: ALL_CLASSES, and optionally
        LABEL_COLORS_LIST (without it, masks are read as class ids only), VIS_LABEL_MAP
        (without it, LABEL_COLORS_LIST's colours, or else distinct_colors) and MASK_IDS (each
        class's value, or list of values, in masks of label ids)."""
        if "ALL_CLASSES" not in mapping:
            raise UserError(
                f"{source} lacks ALL_CLASSES, the class names in the order of their ids "
                "(ALL_CLASSES: [background, cat, dog])"
            )
        names = mapping["ALL_CLASSES"]
        if not isinstance(names, list):
            raise UserError(f"{source}: ALL_CLASSES must be a list of names")
        others = [n for n in names if not isinstance(n, str)]
        if others:
            # YAML's reading of a bare 1, no or null: a list that looks like names to its writer
            read = ", ".join(
                "null" if n is None else str(n).lower() if isinstance(n, bool) else str(n)
                for n in others
            )
            raise UserError(
                f"{source}: ALL_CLASSES must be a list of names; YAML reads {read} as no text: "
                "put them in quotes ('1', 'no'), as YAML reads bare numbers, yes, no, on, off "
                "and null otherwise"
            )
        try:
            mask_colors = None
            if "LABEL_COLORS_LIST" in mapping:
                mask_colors = _colors(mapping["LABEL_COLORS_LIST"], "LABEL_COLORS_LIST", source)
            if "VIS_LABEL_MAP" in mapping:
                vis_colors = _colors(mapping["VIS_LABEL_MAP"], "VIS_LABEL_MAP", source)
            else:
                vis_colors = mask_colors if mask_colors is not None else distinct_colors(len(names))
            mask_ids = None
            if "MASK_IDS" in mapping:
                mask_ids = _mask_ids(mapping["MASK_IDS"], source)
            return cls(tuple(names), mask_colors, vis_colors, mask_ids)
        except UserError as err:
            if str(err).startswith(source):
                raise
            raise UserError(f"{source}: {err}") from err  # the file to fix


def _colors(value, key: str, source: str) -> tuple[RGB, ...]:
    def valid(c) -> bool:
        return (
            isinstance(c, list | tuple)
            and len(c) == 3
            # YAML's true is a bool, which Python counts as an int
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
        )

    if not isinstance(value, list) or not all(valid(c) for c in value):
        raise UserError(f"{source}: {key} must be a list of [R, G, B] triples of integers 0-255")
    return tuple(tuple(c) for c in value)


def _mask_ids(value, source: str) -> tuple[tuple[int, ...], ...]:
    def valid(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_MASK_ID

    entries = value if isinstance(value, list) else None
    if entries is None or not all(
        valid(e) or (isinstance(e, list) and all(valid(v) for v in e)) for e in entries
    ):
        raise UserError(
            f"{source}: MASK_IDS must list each class's value in the masks, a whole number "
            f"0-{MAX_MASK_ID} or a list of them ([7, 8, [24, 25]])"
        )
    return tuple(tuple(e) if isinstance(e, list) else (e,) for e in entries)


DEFAULT_CLASSES = ClassConfig(
    names=("background", "person"),
    mask_colors=((0, 0, 0), (0, 255, 0)),
    vis_colors=((0, 0, 0), (0, 255, 0)),
)


def nonempty(text: str) -> str:
    """argparse type of a flag that names something (a file, a folder, a class). An empty
    value, as an unset shell variable gives (--out-dir "$OUT"), would be the current folder as a
    path, where outputs would land."""
    if not text:
        raise argparse.ArgumentTypeError("an empty value (an unset shell variable?)")
    return text


def path_arg(text: str) -> Path:
    """argparse type of a file or folder flag (nonempty). A leading ~ is the home folder: the
    shell leaves it as typed in --out-dir=~/runs, and so does a YAML file."""
    return Path(nonempty(text)).expanduser()


WEIGHTS_WORDS = ("pretrained", "random")  # --weights values that name no file


def weights_arg(text: str) -> str | Path:
    """argparse type of --weights: one of WEIGHTS_WORDS as typed, or a file (path_arg), which
    checkpoints and args.yaml then record absolute, as every path flag."""
    return text if text in WEIGHTS_WORDS else path_arg(text)


def add_layers_flag(group) -> None:
    """--layers, as train.py and model.py's summary take it (a checkpoint records its own)."""
    group.add_argument(
        "--layers",
        type=int,
        default=DEFAULT_LAYERS,
        metavar="N",
        help="how many last blocks feed the head (default %(default)s)",
    )


def add_device_flag(group) -> None:
    """--device, as train.py, the inference scripts and the benchmarks take it (the names
    utils.pick_device resolves)."""
    group.add_argument(
        "--device",
        choices=["auto", "cuda", "mps", "cpu"],
        default="auto",
        help="auto tries CUDA, then MPS, then the CPU (default %(default)s)",
    )


def add_amp_flag(group, help_text: str | None = None) -> None:
    """--amp, one precision, as train.py, the inference scripts and the benchmarks take it
    (utils.amp_dtype resolves it). ``help_text`` is each script's own."""
    group.add_argument("--amp", choices=AMP_CHOICES, default="off", help=help_text)


def add_imgsz_flag(group, default: tuple[int, int] | None, help_text: str) -> None:
    """--imgsz W H, width first in every script. ``default`` and ``help_text`` are each script's
    own: training's size, a checkpoint's, a benchmark's."""
    group.add_argument(
        "--imgsz", type=int, nargs=2, metavar=("W", "H"), default=default, help=help_text
    )


def backbone_flags(
    inference: bool = False, weights: str | None = "pretrained"
) -> argparse.ArgumentParser:
    """Flags that choose and load the backbone, shared by every script.

    For inference the weights come from the checkpoint: there is no --weights, and --backbone
    only checks that the checkpoint holds the expected backbone. ``weights`` is the default of
    --weights; None (model.py's summary) loads none.
    """
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("backbone")
    group.add_argument(
        "--backbone",
        choices=list(BACKBONES),
        default=None if inference else DEFAULT_BACKBONE,
        help="the checkpoint's backbone must be this one"
        if inference
        else "the DINOv2 backbone; _reg: with 4 registers (default %(default)s)",
    )
    group.add_argument(
        "--backbone-source",
        choices=["hub", "timm"],
        default=None,
        help="hub (default): torch.hub.load of the official repository, using the TORCH_HOME "
        "cache; timm: the same architecture built by timm, with no download. For a checkpoint, "
        "the default is the source it was trained with",
    )
    group.add_argument(
        "--hub-dir",
        type=path_arg,
        default=None,
        metavar="DIR",
        help="a local clone of facebookresearch/dinov2 to load the hub code from",
    )
    if inference:
        return parser
    group.add_argument(
        "--weights",
        type=weights_arg,
        default=weights,
        metavar="W",
        help="'pretrained' (official weights; hub downloads or uses its cache, timm reads the "
        "torch.hub cache file), a .pth or .safetensors file of the official (or timm's) "
        "layout, or 'random' for smoke tests "
        + ("(default %(default)s)" if weights else "(default: none, the architecture alone)"),
    )
    return parser


def runtime_flags() -> argparse.ArgumentParser:
    """Flags that choose where and how fast to run, shared by train.py and the inference scripts."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("runtime")
    add_device_flag(group)
    add_amp_flag(
        group,
        "bf16 on CUDA and recent CPUs, fp16 on CUDA and MPS: training autocasts, inference "
        "casts the backbone's weights (default %(default)s)",
    )
    add_imgsz_flag(
        group,
        None,
        f"input size; default {DEFAULT_IMGSZ[0]} {DEFAULT_IMGSZ[1]} for training, "
        "the checkpoint's for evaluation and inference",
    )
    return parser


DEFAULT_TTA_SCALES = (0.75, 1.0, 1.25)
# --slide's default largest short side, in short sides of the window (--imgsz): 2 keeps a
# 4000x3000 photo at 640x640 to 12 windows (1707x1280), at twice the plain path's detail
SLIDE_SHORT_SIDES = 2


def tta_flags(needs: str = "") -> argparse.ArgumentParser:
    """Test-time augmentation and sliding windows, shared by train.py --eval-only and the
    inference scripts.

    Args:
        needs: the flag --tta and --slide go with, for their help ("--eval-only" in train.py),
            if any.
    """
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("test-time augmentation")
    group.add_argument(
        "--tta",
        action="store_true",
        help="average class probabilities over --tta-scales and horizontal flips"
        + (f", with {needs}" if needs else ""),
    )
    group.add_argument(
        "--tta-scales",
        type=float,
        nargs="+",
        default=list(DEFAULT_TTA_SCALES),
        metavar="S",
        help="the scales --tta uses, relative to --imgsz (default "
        f"{' '.join(map(str, DEFAULT_TTA_SCALES))})",
    )
    group = parser.add_argument_group("sliding window")
    group.add_argument(
        "--slide",
        action="store_true",
        help="segment each image in overlapping windows of --imgsz, --batch at a time, at its "
        "own size up to --slide-size (with --tta, each window's views)"
        + (f", with {needs}" if needs else ""),
    )
    group.add_argument(
        "--slide-size",
        type=int,
        metavar="PX",
        help="the largest short side --slide segments an image at: larger ones are shrunk to "
        f"it, smaller ones never enlarged (default {SLIDE_SHORT_SIDES} times --imgsz's short "
        "side)",
    )
    return parser


def check_tta_scales(args: argparse.Namespace) -> None:
    """Refuse --tta-scales without --tta: given alone (as the README's +ms ratios are written),
    the masks and metrics would be those without TTA."""
    if not args.tta and tuple(args.tta_scales) != DEFAULT_TTA_SCALES:
        raise UserError("--tta-scales applies only with --tta: add --tta, or drop --tta-scales")


def tta_setting(args: argparse.Namespace) -> tuple[list[float], bool] | None:
    """(scales, flip) for --tta, or None."""
    if not args.tta:
        return None
    if not all(0 < s < math.inf for s in args.tta_scales):  # nan fails both
        raise UserError(f"--tta-scales must be positive and finite, not {args.tta_scales}")
    return list(args.tta_scales), True


class Slide(NamedTuple):
    """--slide: the model's input size (W, H) as windows over each image, shrunk (never
    enlarged) to a short side of at most short_side(window) pixels; ``batch`` windows at a time
    through the network."""

    size: int | None  # --slide-size
    batch: int

    def short_side(self, window: tuple[int, int]) -> int:
        """The largest short side an image is segmented at with (W, H) windows."""
        return self.size or SLIDE_SHORT_SIDES * min(window)


def check_slide_size(args: argparse.Namespace) -> None:
    """Refuse --slide-size without --slide (the masks would be those without windows), or under
    a patch."""
    if args.slide_size is not None and not args.slide:
        raise UserError("--slide-size applies only with --slide: add --slide, or drop --slide-size")
    if args.slide_size is not None and args.slide_size < PATCH_SIZE:
        raise UserError(f"--slide-size must be at least {PATCH_SIZE} pixels, not {args.slide_size}")


def slide_setting(args: argparse.Namespace) -> Slide | None:
    """Slide(--slide-size, --batch) for --slide, or None."""
    check_slide_size(args)
    return Slide(args.slide_size, args.batch) if args.slide else None


def inference_flags(out_dir: Path, items: str = "images") -> argparse.ArgumentParser:
    """Flags shared by infer_image.py and infer_video.py (which differ only in their I/O loop).

    Args:
        out_dir: the script's default --out-dir.
        items: what the script segments ("images", "frames"), for --batch's help.
    """
    parser = argparse.ArgumentParser(
        add_help=False, parents=[backbone_flags(inference=True), tta_flags()]
    )
    group = parser.add_argument_group("inference")
    group.add_argument(
        "--model",
        type=path_arg,
        default=DEFAULT_OUT_DIR / BEST_CHECKPOINT,
        metavar="CKPT",
        help="a checkpoint (default %(default)s), or with --backend onnxruntime an .onnx file "
        "from export.py",
    )
    group.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="torch (PyTorch), or onnxruntime for an .onnx file from export.py "
        "(default %(default)s)",
    )
    group.add_argument(
        "--out-dir",
        type=path_arg,
        default=out_dir,
        metavar="DIR",
        help="where results go (default %(default)s)",
    )
    group.add_argument(
        "--alpha",
        type=float,
        default=OVERLAY_ALPHA,
        metavar="A",
        help="overlay opacity, 0 to 1 (default %(default)s)",
    )
    group.add_argument(
        "--legend",
        action="store_true",
        help="key the classes in each overlay's corner by colour and name (infer_image.py "
        "also writes legend.png, of every class and its id in the masks, to --out-dir)",
    )
    group.add_argument(
        "--batch",
        type=int,
        default=4,
        metavar="N",
        help=f"{items} that go through the model together (default %(default)s)",
    )
    group.add_argument(
        "--compile", action="store_true", help="torch.compile the model (slow start, faster run)"
    )
    group.add_argument(
        "--int8",
        action="store_true",
        help="CPU: int8 linear layers (torchao), compiled; faster on x86 CPUs with VNNI, and "
        "masks differ from float32 in a few pixels",
    )
    group.add_argument("--show", action="store_true", help="show results in a window")
    return parser


def check_at_least(args: argparse.Namespace, minimums: dict[str, int]) -> None:
    """Refuse a count below its minimum, naming the flag: ``{"batch": 1, "num_vis": 0}``."""
    for dest, minimum in minimums.items():
        if getattr(args, dest) < minimum:
            raise UserError(f"{flag_name(args, dest)} must be at least {minimum}")


def parse_one_input(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    several: Callable[[str, list[str]], str],
) -> argparse.Namespace:
    """``parser``'s arguments, of a script whose --input takes one path. Files after it (a glob
    the shell expanded, unquoted) are refused with ``several(input, files after it)``, the
    message, where argparse would call the second an unrecognized argument."""
    args, extra = parser.parse_known_args(argv)
    if extra and all(Path(arg).is_file() for arg in extra):
        raise UserError(several(args.input, extra))
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def check_learning_rates(args: argparse.Namespace, flags, weight_decay: float) -> None:
    """Refuse an AdamW learning rate of ``flags`` ("lr", "backbone_lr") outside (0, 1], or one
    whose product with ``weight_decay`` passes 1.

    AdamW moves each weight by about lr per step (a huge one overflowed inside its step), and
    multiplies it by 1 - lr * weight_decay.
    """
    for dest in flags:
        lr = getattr(args, dest)
        flag = flag_name(args, dest)
        if not 0 < lr <= 1:
            raise UserError(
                f"{flag} must be above 0 and at most 1 (AdamW moves each weight by about that "
                f"much per step), not {lr}"
            )
        if lr * weight_decay > 1:
            raise UserError(
                f"{flag} {lr} with {flag_name(args, 'weight_decay')} {weight_decay} multiplies "
                f"each weight by 1 - {lr * weight_decay:g} per step: lower one of them, so that "
                "their product is at most 1"
            )


def check_imgsz(imgsz) -> None:
    """Refuse an --imgsz smaller than one patch (None means the default, which is fine)."""
    if imgsz is not None and min(imgsz) < PATCH_SIZE:
        raise UserError(f"--imgsz must be at least {PATCH_SIZE} {PATCH_SIZE} (one patch)")


def check_inference_args(args: argparse.Namespace) -> None:
    """Checks shared by both inference scripts."""
    if args.backend == "torch" and args.model.suffix.lower() == ".onnx":
        raise UserError(
            f"--model {args.model} is an ONNX model: add --backend onnxruntime to run it (the "
            "torch backend runs the .pth checkpoints train.py writes)"
        )
    if not 0 <= args.alpha <= 1:
        raise UserError(f"--alpha must be between 0 and 1, not {args.alpha}")
    if args.batch < 1:
        raise UserError("--batch must be at least 1")
    check_imgsz(args.imgsz)
    check_tta_scales(args)
    if args.compile and args.tta:
        # each scale of test-time augmentation would compile a graph of its own
        raise UserError("--compile does not apply to --tta: drop one of them")
    if args.int8 and args.tta:
        raise UserError("--int8 runs a compiled model, which does not apply to --tta: drop one")
    check_slide_size(args)
    if (args.compile or args.int8) and args.slide:
        # an image smaller than a window runs one window of its own size, compiled anew
        flag = "--int8" if args.int8 else "--compile"
        raise UserError(f"{flag} does not apply to --slide: drop one of them")
    if args.int8 and args.amp != "off":
        raise UserError(f"--int8 replaces --amp {args.amp}: use one of them")
    if args.show:
        check_gui()


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# what YAML's double-quoted escapes make of a Windows path, and no path holds: \n, \t, \r, \0,
# \N (U+0085), \L, \P (U+2028, U+2029)
ESCAPED_IN_PATH = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
WINDOWS_PATHS_IN_YAML = (
    "In YAML double quotes a backslash starts an escape (\\n, \\t, \\U): write a Windows path "
    "unquoted or in single quotes ('C:\\Users\\me\\data'), or with forward slashes"
)


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping, turning every failure into one readable message."""
    if path.is_dir():
        # a dataset folder, given for the classes.yaml that prepare_data.py writes into it
        inside = path / "classes.yaml"
        such = f", such as {inside}" if inside.is_file() else ""
        raise UserError(f"config file {path} is a folder; pass the YAML file{such}")
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        # bytes: YAML is UTF-8 (or UTF-16 with a BOM), whatever the locale's encoding (a
        # Windows code page would misread class names such as "café")
        data = yaml.load(path.read_bytes(), Loader=_UniqueKeyLoader)
    except (OSError, yaml.YAMLError) as err:
        if recorded_settings(path):
            # a checkpoint stores its run's settings, but not as YAML: its args.yaml does
            settings = path.parent / "args.yaml"
            where = settings if settings.is_file() else "OUT/args.yaml of the run that wrote it"
            raise UserError(
                f"config file {path} is a checkpoint written by train.py, not a YAML file: pass "
                f"--config {where}, which holds its run's settings and classes"
            ) from err
        # "C:\Users\me": in double quotes, \U starts an escape (\n a newline)
        hint = f"\n{WINDOWS_PATHS_IN_YAML}" if "escape" in str(err) else ""
        raise UserError(f"cannot read config file {path}: {err}{hint}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return data


# The settings of a run that --resume continues unless --config or the command line changes
# them: its data and optimization. (The model, classes and size always come from the checkpoint;
# the device, workers and outputs from this command line.)
RESUMED_SETTINGS = (
    "data", "epochs", "batch", "accum", "seed", "lr", "backbone_lr", "weight_decay", "scheduler",
    "no_augment", "cache_features", "cache_dir", "amp", "patience", "class_weights", "loss",
)  # fmt: skip
# The model settings of a resumed run, and of the one --eval-only scores: always the checkpoint's.
# They are parsed under the command line like RESUMED_SETTINGS, so a value that differs from the
# checkpoint's was asked for, and train.py names it.
RESUMED_MODEL = ("backbone", "layers", "fine_tune", "weights")


def checkpoint_settings(ckpt: dict) -> dict:
    """The run settings a checkpoint recorded (its ``args``), with the model's backbone, layers and
    fine-tuning as it holds them: a checkpoint saved without ``args`` still names those."""
    recorded = ckpt.get("args")
    recorded = dict(recorded) if isinstance(recorded, dict) else {}
    recorded.update({k: ckpt[k] for k in RESUMED_MODEL if k in ckpt})
    return recorded


def recorded_settings(checkpoint: Path) -> dict:
    """checkpoint_settings of a checkpoint file, or {} where it has none to read (the
    checkpoint's own check then names the problem)."""
    from model import peek_checkpoint  # model.py imports this module

    return checkpoint_settings(peek_checkpoint(checkpoint))


def scored_checkpoint(args: argparse.Namespace) -> Path:
    """The checkpoint train.py --eval-only scores: --model, or OUT/best_model_iou.pth."""
    return args.model or args.out_dir / BEST_CHECKPOINT


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """Parse ``argv`` with the defaults of an optional ``--config`` YAML file underneath, and
    under that, with ``--resume``, the settings of the run that wrote the checkpoint (with
    ``--eval-only``, the model settings of the checkpoint it scores).

    The file's (and the checkpoint's) settings are turned into command-line tokens placed before
    ``argv``, so argparse checks their types and choices, and a flag given on the command line
    wins: ``--resume last_model.pth`` alone continues the run with its own data, epochs,
    learning rate and schedule.

    Returns:
        (args, classes): the namespace, and the ClassConfig (the default unless the file sets one).
        ``args.from_checkpoint`` is the frozenset of the recorded settings (of RESUMED_SETTINGS
        and RESUMED_MODEL) whose parsed value is the checkpoint's; empty without a checkpoint.
        ``args.from_config``, the settings whose value is the --config file's (flag_name names
        the file in their messages); empty without one.
    """
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--resume", default=None)
    known, _ = pre.parse_known_args(argv)
    classes = DEFAULT_CLASSES
    file_argv: list[str] = []
    if known.config:  # an empty one is refused by the parser's path_arg, naming the flag
        config = Path(known.config)
        data = read_yaml(config)
        class_part = {k: v for k, v in data.items() if k in CLASS_KEYS}
        if class_part:
            classes = ClassConfig.from_dict(class_part, source=str(config))
        file_argv = _flags_to_argv(parser, data, f"config file {config}")
    args = parser.parse_args(file_argv + argv)
    # --resume and --eval-only as parsed, so the file may set them as well as the command line
    eval_only = getattr(args, "eval_only", False)
    source = scored_checkpoint(args) if eval_only else getattr(args, "resume", None)
    # --eval-only scores its checkpoint's model; a resumed run also continues its data and
    # optimization
    keys = RESUMED_MODEL if eval_only else RESUMED_SETTINGS + RESUMED_MODEL
    recorded = recorded_settings(source) if source is not None else {}
    resumed = {k: recorded[k] for k in keys if recorded.get(k) is not None}
    if resumed.get("backbone", DEFAULT_BACKBONE) not in BACKBONES:
        # a row renamed or removed since: the checkpoint's own check names it, with the fix
        del resumed["backbone"]
    if resumed:
        recorded_argv = _flags_to_argv(parser, resumed, f"checkpoint {source}")
        args = parser.parse_args(recorded_argv + file_argv + argv)
    if eval_only and known.resume is None:
        # A resumed run's OUT/args.yaml records resume: PATH; --eval-only scores a checkpoint
        # and continues no run, so only a --resume on the command line is refused with it.
        args.resume = None
    # for train.py's warnings and checks, which ask where a value came from; one given again as
    # the checkpoint recorded it (a path relative, a None) counts as the checkpoint's
    args.from_checkpoint = frozenset(
        k for k in keys if k in recorded and same_setting(getattr(args, k), recorded[k])
    )
    kept = [k for k in resumed if k in RESUMED_SETTINGS and k in args.from_checkpoint]
    args.from_config = (
        frozenset(_settings_of(parser, data) - _given(parser, argv)) if file_argv else frozenset()
    )
    if kept:
        log.info(
            "--resume: continuing %s's run with its %s",
            source,
            # as flags: no_augment false is --augment, not "--no-augment False"
            ", ".join(
                " ".join(_flags_to_argv(parser, {k: resumed[k]}, f"checkpoint {source}"))
                for k in kept
            ),
        )
    return args, classes


def _settings_of(parser: argparse.ArgumentParser, data: dict) -> set[str]:
    """The dests of ``parser`` that a --config file's ``data`` sets."""
    return {a.dest for a in parser._actions if a.option_strings and a.dest in data}


def _given(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests that the command line ``argv`` sets (already parsed once, with the file's)."""
    unset = object()
    dests = {a.dest for a in parser._actions if a.option_strings}
    # argparse fills in a default only where the namespace lacks the attribute
    given, _ = parser.parse_known_args(argv, argparse.Namespace(**dict.fromkeys(dests, unset)))
    return {dest for dest in dests if getattr(given, dest) is not unset}


def flag_name(args: argparse.Namespace, dest: str) -> str:
    """The setting ``dest`` as a message names it: its flag, and where the --config file gave
    its value, that file (a bad value there was blamed on a flag the user never typed)."""
    flag = f"--{dest.replace('_', '-')}"
    if dest in getattr(args, "from_config", ()):
        return f"{flag} ({dest} in the config file {args.config})"
    return flag


def plain_value(value):
    """A parsed value as a checkpoint and args.yaml record it: a path as an absolute one (not
    resolved: a symlink keeps its name), so that --resume, --eval-only and --config
    OUT/args.yaml find it from another working folder."""
    return str(value.absolute()) if isinstance(value, Path) else value


def same_setting(value, recorded) -> bool:
    """Whether the parsed ``value`` is the setting a checkpoint ``recorded``. A recorded relative
    path (of a checkpoint from before paths were recorded absolute) is taken from the current
    folder, as the parsed one was."""
    if isinstance(value, Path) and isinstance(recorded, str):
        return plain_value(value) == plain_value(Path(recorded))
    return plain_value(value) == recorded


def _flags_to_argv(parser: argparse.ArgumentParser, data: dict, where: str) -> list[str]:
    """Command-line tokens for the settings ``data`` of ``where`` ("config file PATH", or
    "checkpoint PATH" for the settings it recorded), which the messages name."""
    # A flag without a default of its own turns a setting off (--augment for no_augment,
    # --no-patience for patience); the setting's own flag is the other one.
    negations = negation_flags(parser)
    actions = {a.dest: a for a in parser._actions if a.option_strings and not _is_negation(a)}
    # A run's OUT/args.yaml records config: null, which sets nothing (and may name a flag the
    # parser lacks); a config file naming another one is refused.
    settings = {
        k: v for k, v in data.items() if k not in CLASS_KEYS and not (k == "config" and v is None)
    }
    unknown = [k for k in settings if k not in actions or k == "config"]
    if unknown:
        raise _unknown_keys(unknown, settings, actions, negations, where)
    argv: list[str] = []
    for key, value in settings.items():
        flag = actions[key].option_strings[-1]
        if isinstance(actions[key], argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise UserError(f"{where}: {key} must be true or false")
            if value:
                argv.append(flag)
            elif key in negations:
                argv.append(negations[key])
        elif value is None and key in negations:
            # patience: null turns off a patience that a resumed checkpoint continues
            argv.append(negations[key])
        elif value is not None:
            if value is False and "off" in (actions[key].choices or ()):
                items = ["off"]  # YAML reads a bare off (amp: off) as false
            else:
                items = [str(v) for v in (value if isinstance(value, list) else [value])]
            _check_count(actions[key], items, where)
            _check_values(actions[key], items, where)
            argv += [flag, *items]
    return argv


def _unknown_keys(
    unknown: list, settings: dict, actions: dict, negations: dict, where: str
) -> UserError:
    """The error for ``unknown`` keys of ``settings``, which name no flag of ``actions``, with
    the key to write instead where one was written as its flag (num-vis, --lr, augment: true),
    and the closest key where one was misspelt."""
    allowed = sorted([*CLASS_KEYS, *(d for d in actions if d not in ("help", "config"))])
    by_lower = {a.lower(): a for a in allowed}  # all_classes for ALL_CLASSES
    hints = []
    for key in unknown:
        dest = str(key).lstrip("-").replace("-", "_")
        negated = [d for d, flag in negations.items() if flag == f"--{dest.replace('_', '-')}"]
        # a misspelt key (epoch, lr_scheduler), another repository's name (num_epochs,
        # num_workers, img_size), or a class key in lower case; below 0.75 the closest key is
        # often another setting (warmup: amp, data_dir: out_dir)
        close = difflib.get_close_matches(dest.lower(), list(by_lower), n=1, cutoff=0.75)
        if negated and isinstance(settings[key], bool):
            value, opposite = ("true", "false") if settings[key] else ("false", "true")
            if not isinstance(actions[negated[0]], argparse._StoreTrueAction):
                opposite = "null"  # no_patience: true is patience: null
            hints.append(f"write {key}: {value} as {negated[0]}: {opposite}")
        elif dest != key and dest in allowed:
            hints.append(f"write {key} as {dest}")
        elif close:
            hints.append(f"{key}: did you mean {by_lower[close[0]]}?")
    listed = ", ".join(allowed)
    if not hints:
        return UserError(f"{where} has unknown keys {unknown}; allowed keys: {listed}")
    # the hints first: after the list of some thirty keys they went unread
    end = "" if hints[-1].endswith("?") else "."
    return UserError(
        f"{where} has unknown keys {unknown}: {'; '.join(hints)}{end} Allowed keys: {listed}"
    )


def as_flag(parser: argparse.ArgumentParser, key: str, value) -> str:
    """The setting ``key: value`` as the command line writes it, for messages: "--lr 0.001",
    "--no-augment", and a switch that is off, or a None turned off by a flag of its own, as its
    negation ("--augment", "--no-patience") where it has one."""
    flags = {a.dest: a.option_strings[-1] for a in parser._actions if not _is_negation(a)}
    negations = negation_flags(parser)
    flag = flags.get(key, f"--{key.replace('_', '-')}")
    if isinstance(value, bool):
        return flag if value else negations.get(key, f"no {flag}")
    if value is None and key in negations:
        return negations[key]
    if isinstance(value, list):  # --class-weights 1.0 5.0
        return " ".join([flag, *map(str, value)])
    return f"{flag} {value}"


def negation_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The flags that turn a setting off, by the setting's dest: {"no_augment": "--augment",
    "patience": "--no-patience"}."""
    return {a.dest: a.option_strings[-1] for a in parser._actions if _is_negation(a)}


def _is_negation(action: argparse.Action) -> bool:
    """A flag without a default of its own that stores False or None (store_false is a
    store_const of False): the way back to the default of another flag's setting."""
    return (
        isinstance(action, argparse._StoreConstAction)
        and action.default is argparse.SUPPRESS
        and action.const in (False, None)
    )


def _check_count(action: argparse.Action, values: list[str], where: str) -> None:
    """Refuse a setting with the wrong number of items, naming its file (argparse would blame a
    flag the command line does not have, or call the extra item unrecognized)."""
    expected = 1 if action.nargs is None else action.nargs
    if isinstance(expected, int) and len(values) != expected:
        example = "a single value" if expected == 1 else f"a list of {expected} values"
        raise UserError(f"{where}: {action.dest} takes {example}, not {values}")
    if expected == "+" and not values:
        raise UserError(f"{where}: {action.dest} takes a list of one or more values")


def _check_values(action: argparse.Action, values: list[str], where: str) -> None:
    """Refuse a setting's bad value naming its file, as argparse would name the flag."""
    for v in values:
        try:
            converted = action.type(v) if action.type is not None else v
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            raise UserError(f"{where}: {action.dest}: {v!r} is not a valid value ({err})") from err
        if action.type in (path_arg, weights_arg) and ESCAPED_IN_PATH.search(v):
            # "D:\new\test" in double quotes reads as D:, a newline, "ew", a tab and "est"
            raise UserError(
                f"{where}: {action.dest}: {v!r} holds a control character. " + WINDOWS_PATHS_IN_YAML
            )
        if action.choices is not None and converted not in action.choices:
            raise UserError(
                f"{where}: {action.dest}: {v!r} is not one of {', '.join(map(str, action.choices))}"
            )
