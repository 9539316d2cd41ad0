"""Convert public datasets into this repository's layout, with a class config beside them.

    python prepare_data.py pennfudan --zip PennFudanPed.zip --out data/PennFudanPed
    python prepare_data.py voc --root VOCdevkit/VOC2012 --out data/voc_person --classes person
    python prepare_data.py coco --annotations annotations/instances_val2017.json \\
        --images val2017 --out data/coco_person --classes person
    python prepare_data.py binary --root DIR --out DIR_01 --name person
    python prepare_data.py folder --images DIR/images --masks DIR/masks --out data/mine
    python prepare_data.py roboflow --root EXPORT --out data/mine
    python prepare_data.py cvat --root EXPORT --out data/mine
    python prepare_data.py cityscapes --root DIR --out data/cityscapes
    python prepare_data.py ade20k --root ADEChallengeData2016 --out data/ade20k

Each writes train_images/, train_masks/, valid_images/, valid_masks/ (class-index PNG masks,
255 = ignore) and classes.yaml, then reports the images and pixels per class. Train with
``python train.py --data OUT --config OUT/classes.yaml``. ``binary`` takes a dataset already in
that layout whose masks are 0/255 images (255 = the class, not ignore) and maps 255 to 1.
``folder`` splits one folder of images and one of masks into train and valid; ``roboflow`` reads
Roboflow's "Semantic Segmentation Masks" export, ``cvat`` CVAT's "Segmentation mask 1.1" one.
``cityscapes`` and ``ade20k`` read the two benchmarks as they unzip, their label-id masks mapped
to the benchmark's training classes. Images are written byte for byte, as hard links to the source
files (copies on another disk), but for pennfudan's, which come out of its zip.
"""

import argparse
import contextlib
import csv
import dataclasses
import errno
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml
from PIL import Image

from config import (
    DEFAULT_CLASSES,
    IGNORE_INDEX,
    IMAGE_EXTENSIONS,
    LAYOUT_FOLDERS,
    SPLITS,
    ClassConfig,
    distinct_colors,
    nonempty,
    path_arg,
    read_yaml,
    voc_palette,
)
from datasets import (
    DataError,
    DatasetError,
    Pair,
    binary_command,
    binary_kind,
    checked_mask,
    convert_penn_fudan,
    describe_identical,
    exif_orientation,
    find_pairs,
    identical_images,
    image_size,
    map_colors,
    open_image,
    palette_rgb,
    pixel_counts,
    renumbered_palettes,
    size_mismatch,
    split_of,
    turned,
    write_pair,
    zero_255_among_0_1,
)
from utils import (
    UserError,
    first_few,
    leftover_folders,
    log,
    new_folder,
    run_script,
    shell_quote,
    temp_folder,
    within,
)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
VALID_EVERY = 5  # --valid-every's default (valid_every)
# Cityscapes' 19 training classes: name, label id in *_gtFine_labelIds.png, colour, as its label
# table gives them; every other label id (unlabeled, ego vehicle, ground, parking, guard rail,
# bridge, tunnel, polegroup, caravan, trailer, license plate...) is not evaluated: ignore
CITYSCAPES_CLASSES = (
    ("road", 7, (128, 64, 128)), ("sidewalk", 8, (244, 35, 232)), ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)), ("fence", 13, (190, 153, 153)), ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)), ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)), ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)), ("person", 24, (220, 20, 60)), ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)), ("truck", 27, (0, 0, 70)), ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)), ("motorcycle", 32, (0, 0, 230)), ("bicycle", 33, (119, 11, 32)),
)  # fmt: skip
# our split: the benchmark's folder (Cityscapes' test/ has no public labels; ADE20K's zip no test)
CITYSCAPES_SPLITS = {"train": "train", "valid": "val"}
CITYSCAPES_IMAGE, CITYSCAPES_MASK = "_leftImg8bit.png", "_gtFine_labelIds.png"  # name endings
ADE20K_SPLITS = {"train": "training", "valid": "validation"}
ADE20K_CLASSES = 150  # label 0 is "other", not evaluated: ignore
# the most classes report prints on one line per split; more, as ADE20K's 150, get a table
REPORT_INLINE = 10


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--out", type=path_arg, required=True, metavar="DIR", help="the dataset folder to create"
    )
    common.add_argument("--force", action="store_true", help="replace a non-empty --out")

    def splitting(when: str = "") -> argparse.ArgumentParser:
        """--valid-every, of the importers that make the valid split (``when`` they do)."""
        flags = argparse.ArgumentParser(add_help=False)
        flags.add_argument(
            "--valid-every",
            type=int,
            metavar="N",
            # None where not given, so that cvat tells any use apart, --valid-every 5 too
            help=f"every Nth image goes to valid{when}, N at least 2 (default {VALID_EVERY})",
        )
        return flags

    def source(parser: argparse.ArgumentParser, flag: str, metavar: str, help: str) -> None:
        """A required flag of a source file or folder (an Importer's ``sources``). Its ``help``
        also goes to args.source_help ({dest: (whether a folder, help)}): main says it where the
        path is missing or of the other kind."""
        parser.add_argument(flag, type=path_arg, required=True, metavar=metavar, help=help)
        helps = parser.get_default("source_help") or {}
        parser.set_defaults(
            source_help={**helps, flag.removeprefix("--"): (metavar == "DIR", help)}
        )

    def class_names(parser, help: str, **extra) -> None:
        """--classes, the names of the classes to keep, with ``extra`` settings (choices=,
        metavar=); ``parser`` may be a group."""
        parser.add_argument("--classes", nargs="+", default=["person"], help=help, **extra)

    sub = parser.add_subparsers(dest="dataset", required=True)
    linked = "images are hard links to its files (copies where --out is on another disk)"

    def importer(name, help, *flags, description=None, images=linked) -> argparse.ArgumentParser:
        """The subcommand ``name``, with --out, --force and the ``flags`` parsers' flags; its
        --help says how its ``images`` are written."""
        return sub.add_parser(
            name,
            parents=[common, *flags],
            help=help,
            description=f"{description or help}; {images}",
        )

    penn = importer(
        "pennfudan", "the Penn-Fudan pedestrian zip", images="images are copied out of the zip"
    )
    source(penn, "--zip", "FILE", "PennFudanPed.zip")
    voc = importer("voc", "PASCAL VOC 2012 segmentation")
    source(voc, "--root", "DIR", "VOCdevkit/VOC2012")
    class_names(
        voc,
        "the classes to keep, numbered 1, 2, ... in this order (default person)",
        choices=VOC_CLASSES[1:],
    )
    coco = importer("coco", "COCO-format instance annotations", splitting())
    source(coco, "--annotations", "FILE", "instances_*.json")
    source(coco, "--images", "DIR", "the folder of its images")
    class_names(
        coco,
        "category names to keep, numbered 1, 2, ... in this order (default person)",
        metavar="NAME",
    )
    binary = importer("binary", "a dataset in our layout whose masks are 0/255 images")
    source(
        binary,
        "--root",
        "DIR",
        "the folder with train_images/, train_masks/, valid_images/, valid_masks/",
    )
    binary.add_argument(
        "--name",
        type=nonempty,
        metavar="NAME",
        default="person",
        help="the class that 255 marks (default %(default)s)",
    )
    folder = importer("folder", "one folder of images and one of masks, to split", splitting())
    source(folder, "--images", "DIR", "the folder of images")
    source(folder, "--masks", "DIR", "the folder of masks")
    folder.add_argument(
        "--mask-suffix",
        default="",
        metavar="SUFFIX",
        help="what mask names add to their image's stem (x.jpg: x_mask.png; default none: x.png)",
    )
    named = folder.add_mutually_exclusive_group()
    class_names(named, "the names of class ids 1, 2, ... (default person)", metavar="NAME")
    named.add_argument(
        "--config",
        type=path_arg,
        metavar="FILE",
        help="a classes YAML (ALL_CLASSES...) for colour masks",
    )
    roboflow = importer("roboflow", "a Roboflow 'Semantic Segmentation Masks' export")
    source(roboflow, "--root", "DIR", "the folder with train/, valid/, test/")
    cvat = importer(
        "cvat",
        "a CVAT 'Segmentation mask 1.1' export",
        splitting(" (of an export without train and validation subsets)"),
    )
    source(cvat, "--root", "DIR", "the folder with labelmap.txt, JPEGImages/, SegmentationClass/")
    trained = "masks class-index PNGs of its training classes"
    cityscapes = importer(
        "cityscapes",
        "Cityscapes' fine annotations: train and val (as valid)",
        description=f"Cityscapes' gtFine train and val splits, val as valid; {trained}",
    )
    source(cityscapes, "--root", "DIR", "the folder with leftImg8bit/ and gtFine/")
    ade20k = importer(
        "ade20k",
        "ADE20K (ADEChallengeData2016, MIT Scene Parsing): training and validation",
        description=f"ADEChallengeData2016's training and validation splits; {trained}",
    )
    source(
        ade20k,
        "--root",
        "DIR",
        "ADEChallengeData2016, the folder with images/, annotations/, objectInfo150.txt",
    )
    return parser


@contextlib.contextmanager
def staging(out: Path, force: bool) -> Iterator[Path]:
    """A path to build the dataset at; it replaces ``out`` only when the block succeeds."""
    for left in leftover_folders(out):  # kept: another run may still be writing there
        if (left / "old").exists() and not out.exists():
            log.warning(
                "%s holds --out %s as it was before a run killed outright (between moving it "
                "aside and the new one in): keep what you need of it, then delete %s",
                left / "old",
                out,
                left,
            )
        else:
            log.warning(
                "%s was left by a prepare_data run killed outright (or is one still running): "
                "delete it once no run writes --out %s",
                left,
                out,
            )
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        if out.is_dir() and not any((out / f"{split}_images").is_dir() for split in SPLITS):
            # data/ for data/voc_person: --force would replace every dataset in it
            held = sorted(p.name + "/" * p.is_dir() for p in out.iterdir())
            raise UserError(
                f"--out {out} is not empty and holds no dataset ({first_few(held)}): --force "
                f"would replace it and all it holds; to add a dataset to it, pass --out "
                f"{out / 'NAME'}"
            )
        kind = "not empty" if out.is_dir() else "a file"
        raise UserError(f"--out {out} is {kind}; pass --force to replace it")
    with contextlib.ExitStack() as parents:  # --out's parents it makes go if the block fails
        try:
            parents.enter_context(new_folder(out.parent))
            holder = temp_folder(out)
        except OSError as err:
            raise UserError(
                f"--out {out} cannot be created: {err.strerror or err} (a file on its path, or a "
                "read-only folder?); choose another --out"
            ) from err
        try:
            yield holder / "data"
            # Two renames, not a deletion then a rename: until the new folder is in place the old
            # one is only moved aside, and comes back if that fails or Ctrl-C arrives.
            old = holder / "old"
            if out.exists() or out.is_symlink():
                try:
                    out.rename(old)
                except OSError as err:
                    if err.errno == errno.EBUSY:  # a bind mount, which ismount does not see
                        why = f"cannot be renamed ({err.strerror}: a mount point?)"
                        raise unswappable(out, why) from err
                    # Windows: a program holds it, where a folder inside it would hold the new
                    # dataset inside the old one
                    raise UserError(
                        f"--out {out} cannot be replaced ({err.strerror}): is it open in another "
                        "program (a file browser, a terminal inside it)? Close it and run again"
                    ) from err
            try:
                (holder / "data").rename(out)
            except BaseException:
                if old.exists() or old.is_symlink():
                    old.rename(out)
                raise
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise UserError(  # what was written is removed below, which frees the space
                f"--out {out}: its disk filled up ({err.strerror}) while the dataset was written, "
                "and nothing was kept; free some space (about the size of the masks, and of the "
                "source images where --out is on another disk than theirs, as they are copied "
                "there, not linked) or choose an --out on another disk"
            ) from err
        finally:
            shutil.rmtree(holder, ignore_errors=True)


def convert_voc(root: Path, out: Path, classes: list[str]) -> None:
    """VOC 2012 with its official train/val lists; unchosen classes become background."""
    lists = root / "ImageSets" / "Segmentation"
    lut = np.zeros(256, np.uint8)
    lut[IGNORE_INDEX] = IGNORE_INDEX  # the object borders stay ignored
    for new_id, name in enumerate(classes, start=1):
        lut[VOC_CLASSES.index(name)] = new_id
    stems_of: dict[str, list[str]] = {}
    for split, listed in (("train", "train.txt"), ("valid", "val.txt")):
        if not (lists / listed).is_file():
            # --root VOCdevkit, or the folder its tar was extracted into
            inner = [p for p in (root / "VOC2012", root / "VOCdevkit/VOC2012") if p.is_dir()]
            hint = export_hint(root, "voc") or (f"; pass --root {inner[0]}" if inner else "")
            raise UserError(f"{lists / listed} is missing: --root must be VOCdevkit/VOC2012{hint}")
        stems_of[split] = [word for line in text_lines(lists / listed) for word in line.split()]
        if not stems_of[split]:
            raise UserError(f"{lists / listed} lists no image, so the {split} split would be empty")
    shared = sorted(set(stems_of["train"]) & set(stems_of["valid"]))
    if problem := in_both(shared, lists / "train.txt", lists / "val.txt"):
        raise UserError(problem[0])
    splits: dict[str, list[Pair]] = {}
    for split, listed in (("train", "train.txt"), ("valid", "val.txt")):
        splits[split] = []
        for stem in stems_of[split]:
            image = root / "JPEGImages" / f"{stem}.jpg"
            mask = root / "SegmentationClass" / f"{stem}.png"
            if missing := [str(p) for p in (image, mask) if not p.is_file()]:
                verb = "is" if len(missing) == 1 else "are"
                raise UserError(
                    f"{lists / listed} names {stem}, but {' and '.join(missing)} {verb} missing"
                )
            splits[split].append((image, mask))
    if problem := copies_across(images_of(splits), lists / "train.txt", lists / "val.txt"):
        raise UserError(problem[0])
    for split, pairs in splits.items():
        for image, mask in pairs:
            ids = read_voc_mask(mask)
            if problem := size_mismatch((image, mask), displayed_size(image), ids.shape):
                raise UserError(problem[0])
            write_pair(out, split, image.name, image, lut[ids])


def in_both(shared: list[str], train: Path, valid: Path) -> list[str]:
    """The problem of the items ``shared`` that ``train`` and ``valid``, the two splits' list
    files or folders, both hold: copied into both splits, each would be scored by validation
    after the model trained on it, and the valid scores would flatter it.

    Returns:
        a list of problems, as the checks each caller adds together return: this one, or
        none where nothing is shared.
    """
    if not shared:
        return []
    more = f" and {len(shared) - 5} more" if len(shared) > 5 else ""
    kind = "folders" if train.is_dir() else "lists"
    return [
        f"{len(shared)} item(s) are in both {train} and {valid}: {', '.join(shared[:5])}{more}; "
        "validation would score images the model trained on, so remove each from one of the "
        f"two {kind}"
    ]


def images_of(splits: dict[str, list[Pair]]) -> dict[str, list[Path]]:
    """The image files of each split's (image, mask) pairs."""
    return {split: [image for image, _ in pairs] for split, pairs in splits.items()}


def copies_across(images: dict[str, list[Path]], train: Path, valid: Path) -> list[str]:
    """The problem of the valid ``images`` (files by split) whose bytes repeat a train image's,
    under its name or another (identical_images; none: no problem).

    The splits come from the folders or list files ``train`` and ``valid`` (in_both's problem,
    naming each copy as "train name = valid name", or by its one name), or from one folder split
    by the importer, ``train`` and ``valid`` alike. One file in both splits (a CVAT item in both
    subset lists) is left to in_both, which the importer calls with the lists.
    """
    found = identical_images(*(images.get(split, []) for split in ("train", "valid")))
    pairs = [(t, v) for t, v in found if t != v]
    if not pairs:
        return []
    if train != valid:
        names = [t.name if t.name == v.name else f"{t.name} = {v.name}" for t, v in pairs]
        return in_both(names, train, valid)
    return [
        f"{len(pairs)} pair(s) of files in {train} are identical, byte for byte, and would go "
        f"one to train and one to valid (train = valid): {describe_identical(pairs, train)}; "
        "validation would score images the model trained on, so delete one of each pair"
    ]


def displayed_size(image: Path) -> tuple[int, int]:
    """(W, H) of ``image`` as training reads it (image_size), or a UserError naming it where
    training could not read it: importers that write images unchanged check them so."""
    try:
        return image_size(image)
    except DataError as err:
        raise UserError(str(err)) from err


def read_voc_mask(path: Path) -> np.ndarray:
    """A VOC SegmentationClass mask as (H, W) VOC class ids (255 = border).

    The official files are palette PNGs whose pixel values are the ids (grayscale ones from
    other distributions too); one re-saved as RGB, or with a palette of its own colours in
    another order, holds VOC's colours, mapped back here.
    """
    try:
        img = open_image(path)
    except DataError as err:
        raise UserError(str(err)) from err
    if img.mode == "P" and (by_colour := _voc_palette_ids(img)) is not None:
        return by_colour
    if img.mode in ("P", "L"):
        ids = np.asarray(img)
        bad = np.setdiff1d(ids, [*range(len(VOC_CLASSES)), IGNORE_INDEX])
        if bad.size:  # the look-up would make them background silently
            raise UserError(
                f"{path}: values [{first_few([str(v) for v in bad])}] are not VOC class ids (0-"
                f"{len(VOC_CLASSES) - 1}, {IGNORE_INDEX} = border); use the official "
                "SegmentationClass PNGs"
            )
        return ids
    if img.mode not in ("RGB", "RGBA"):
        raise UserError(f"{path}: a {img.mode} mask; VOC masks are palette PNGs")
    rgb = np.asarray(img.convert("RGB"))
    ids = np.array([*range(len(VOC_CLASSES)), IGNORE_INDEX], np.uint8)
    colors = voc_palette(256)
    positions = map_colors(rgb, [colors[i] for i in ids])
    if positions is None:
        known = {tuple(colors[i]) for i in ids}
        found = np.unique(rgb.reshape(-1, 3), axis=0).tolist()
        unknown = next(tuple(c) for c in found if tuple(c) not in known)
        raise UserError(
            f"{path}: colour {unknown} is not a VOC class colour; use the official "
            "SegmentationClass palette PNGs"
        )
    return ids[positions]


def _voc_palette_ids(img: Image.Image) -> np.ndarray | None:
    """The (H, W) VOC ids of a palette mask whose used indices are not VOC's ids but whose
    colours are VOC's (convert("P"), editors and PNG optimizers number colours in any order);
    None where its indices are the ids: VOC's palette, or colours that are not VOC's (a gray
    palette, index i being (i, i, i)). Index 255 is the border whatever its colour, as
    palettes of VOC's 21 class colours alone leave it black."""
    indices = np.asarray(img)
    palette = palette_rgb(img)
    used = np.flatnonzero(pixel_counts(indices))
    used = used[used != IGNORE_INDEX]
    voc = np.asarray(voc_palette(256), np.uint8)
    if (palette[used] == voc[used]).all():
        return None
    ids = np.array([*range(len(VOC_CLASSES)), IGNORE_INDEX], np.uint8)
    positions = map_colors(palette[used][None], voc[ids])
    if positions is None:
        return None
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[used] = ids[positions[0]]
    return lut[indices]


def convert_coco(
    annotations: Path, images: Path, out: Path, classes: list[str], every: int
) -> dict[str, int]:
    """COCO polygons and RLE for the chosen categories.

    Overlaps: crowd regions, and the boxes of objects with a box but no mask, are drawn first as
    ignore (255), then objects from the largest to the smallest, so a smaller object lying on a
    larger one keeps its pixels. Images with none of the chosen categories are left out; sorted
    by file name, every ``every``-th image goes to valid.

    Returns:
        {"boxes": the annotations drawn as ignore over their box, "orphans": those left out as
        their image_id is no image's, "orphan_ids": those image ids, the first few as text,
        "exif": the images with an EXIF orientation other than 1 that no entry's sides show
        the annotation tool applied, "exif_names": their file names, the first few as text}
    """
    data = _read_coco(annotations)
    ids_of: dict[str, list] = {}  # merged exports repeat a name under several ids
    for c in data["categories"]:
        ids_of.setdefault(c["name"], []).append(c["id"])
    unknown = [c for c in classes if c not in ids_of]
    if unknown:
        raise UserError(f"{annotations} has no categories {unknown}; it has {sorted(ids_of)}")
    class_of = {i: k for k, name in enumerate(classes, start=1) for i in ids_of[name]}
    anns: dict[int, list] = {}
    for ann in data["annotations"]:
        if ann["category_id"] in class_of:
            anns.setdefault(ann["image_id"], []).append(ann)
    if _fractions_only([ann for found in anns.values() for ann in found]):
        raise UserError(
            f"{annotations}: every polygon vertex of its annotations of {classes} lies within 0 "
            "to 1: fractions of the image's sides (a converter from a normalized format?), "
            "which would draw each object within its image's top-left pixel. COCO polygons are "
            "in pixels: multiply x by the image's width and y by its height"
        )
    kept = sorted(
        (img for img in data["images"] if img["id"] in anns), key=lambda i: i["file_name"]
    )
    # annotations of images a subset left out (or of another export): nothing to draw them on
    listed = {img["id"] for img in data["images"]}
    unlisted = sorted((i for i in anns if i not in listed), key=str)
    orphans = sum(len(anns[i]) for i in unlisted)
    files, names = _coco_file_names(annotations, kept)
    # checked before any is written (a missing file matches none; the loop names it)
    placed = [(split_of(i, every), img, images / files[img["id"]]) for i, img in enumerate(kept)]
    sources = {split: [] for split in SPLITS}
    for split, _, source in placed:
        sources[split].append(source)
    if problem := copies_across(sources, images, images):
        raise UserError(problem[0])
    drawn = boxes = 0  # annotations with a mask: an export of boxes alone has "segmentation": []
    shown = 0  # photos with an EXIF orientation whose sides show that the tool applied it
    unsure = []  # the names of those whose sides cannot show it
    for split, img, source in placed:
        if not source.is_file():
            # --images coco for coco/val2017: the folder holding the file one level down
            inner = [d for d in sorted(images.iterdir()) if (d / files[img["id"]]).is_file()]
            file = Path(files[img["id"]])
            if inner:
                hint = f"; pass --images {inner[0]}"
            elif (images.parent / file).is_file():  # images/1.jpg, read from --images images
                hint = f"; pass --images {images.parent}, as its file_name names {file.parts[0]}/"
            elif (images / file.name).is_file():  # a path on the machine that exported it
                hint = f"; --images holds {file.name}: write file_name entries relative to --images"
            else:
                hint = ""
            raise UserError(
                f"{annotations} names {img['file_name']}, missing from --images {images}{hint}"
            )
        size = displayed_size(source)
        given = (img["width"], img["height"])
        # sides the entry leaves out (as many converters do) are the image's, as training reads it
        img["width"], img["height"] = (
            mine if side is None else side for side, mine in zip(given, size, strict=True)
        )
        if size != (img["width"], img["height"]):
            if size[::-1] == (img["width"], img["height"]) and turned(source):
                raise UserError(
                    f"{annotations}: image {img['id']} ({img['file_name']}) has width "
                    f"{img['width']}, height {img['height']}, the size of {source} as stored, but "
                    f"its EXIF orientation turns it to {size[0]}x{size[1]}, as training reads it: "
                    "its annotations were drawn on the stored pixels, by a tool that ignores the "
                    "orientation. Set the EXIF Orientation of every photo it annotated to 1 "
                    "(exiftool -n -Orientation=1 FILE), so that they are read as annotated: those "
                    "turned upside down keep their sides, and no size check finds them"
                )
            raise UserError(
                f"{annotations}: image {img['id']} ({img['file_name']}) has width {img['width']}, "
                f"height {img['height']}, but {source} is {size[0]}x{size[1]} as displayed: its "
                "masks would not fit it. Pass the --images the annotations were drawn on (not "
                "resized copies; a photo turned by its EXIF orientation swaps the sides)"
            )
        if exif_orientation(source) != 1:
            # A quarter-turned photo whose entry gives its sides, unequal, passed the check above:
            # the tool drew on it as displayed. Upside down or mirrored, the sides say nothing.
            if None not in given and size[0] != size[1] and turned(source):
                shown += 1
            else:
                unsure.append(img["file_name"])
        # drawn once its size is known to be the file's: an entry's sides may be anything
        mask, masked, boxed = _draw_coco_mask(img, anns[img["id"]], class_of, annotations)
        drawn += masked
        boxes += boxed
        write_pair(out, split, names[img["id"]], source, mask)
    if not kept:
        named = (
            f": its {orphans} annotations of them name image ids that no image has "
            f"({first_few(list(map(str, unlisted)))}; annotations of another export?)"
            if orphans
            else ""
        )
        raise UserError(
            f"{annotations}: no image has an annotation of {classes}{named}; nothing to convert"
        )
    if not drawn:  # every mask would be background alone, and training would learn nothing
        count = sum(map(len, anns.values()))
        raise UserError(
            f"{annotations}: none of the {count} annotations of {classes} has a polygon or RLE "
            "mask (their segmentation is empty or missing: an export of bounding boxes?); the coco "
            "importer needs instance masks, not boxes only"
        )
    # an empty valid split; said last, so that a broken entry is named first
    where = f"{annotations}: only {len(kept)} image(s) have an annotation of {classes}"
    check_valid_every(len(kept), every, where)
    unsure = [] if shown else unsure  # a tool applying it to some photos applies it to all
    return {
        "boxes": boxes,
        "orphans": orphans,
        "orphan_ids": first_few(list(map(str, unlisted))),
        "exif": len(unsure),
        "exif_names": first_few(unsure),
    }


def _fractions_only(anns: list[dict]) -> bool:
    """Whether the numbers of ``anns``' polygons all lie within 0 to 1, some between: vertices
    as fractions of the image's width and height, not pixels. Other values are _check_polygons'
    to name."""
    values = [
        v
        for ann in anns
        if isinstance(seg := ann.get("segmentation"), list)
        for part in seg
        if isinstance(part, list)
        for v in part
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    return all(0 <= v <= 1 for v in values) and any(0 < v < 1 for v in values)


def _read_coco(annotations: Path) -> dict:
    """The annotation file's JSON, checked to hold the lists and keys that convert_coco reads;
    an image's height or width is an int, or None where the entry leaves it out or writes null."""
    try:
        # bytes: JSON is UTF-8, whatever the locale's encoding (a Windows code page would
        # misread non-ASCII file and category names)
        data = json.loads(annotations.read_bytes())
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError included
        raise UserError(f"cannot read COCO annotations {annotations}: {err}") from err
    keys = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in keys):
        raise UserError(
            f"{annotations} is not a COCO instance-annotation file: it needs the lists "
            f"{', '.join(keys)} (pass instances_*.json, not captions_*.json or another kind)"
        )
    for kind, needed in (
        ("images", ("id", "file_name")),
        ("annotations", ("image_id", "category_id")),
        ("categories", ("id", "name")),
    ):
        for entry in data[kind]:
            missing = [k for k in needed if not isinstance(entry, dict) or k not in entry]
            if missing:
                name = entry.get("id", "?") if isinstance(entry, dict) else repr(entry)[:40]
                raise UserError(
                    f"{annotations}: {kind[:-1]} {name} lacks {missing[0]!r}; every entry of "
                    f"its {kind} list needs {', '.join(needed)}"
                )
    for kind, keys, label in (
        ("images", ("id",), "file_name"),
        ("annotations", ("image_id", "category_id"), "id"),
        ("categories", ("id",), "name"),
    ):
        for entry in data[kind]:
            for key in keys:
                value = entry[key]
                # a list was a TypeError's traceback, and a NaN is equal to no id, not even
                # its own copy in an annotation (its objects lost); infinity is still one value
                if isinstance(value, bool) or not (
                    isinstance(value, int | str)
                    or (isinstance(value, float) and not math.isnan(value))
                ):
                    raise UserError(
                        f"{annotations}: {kind[:-1]} {entry.get(label)}'s {key} is {value!r}, "
                        "not an id; ids are numbers or texts"
                    )
    for category in data["categories"]:
        if not isinstance(category["name"], str):  # --classes names are texts
            raise UserError(
                f"{annotations}: category {category['id']}'s name is {category['name']!r}, not "
                f'a text; write it in quotes ("{category["name"]}") and pass that to --classes'
            )
    for kind, noun, label in (("images", "image", "file_name"), ("categories", "category", "name")):
        first: dict = {}  # id -> its first entry
        for entry in data[kind]:
            other = first.setdefault(entry["id"], entry)
            if other[label] != entry[label]:  # annotations name both by that id
                raise UserError(
                    f"{annotations}: {noun} id {entry['id']} is given to {other[label]} and "
                    f"{entry[label]}, so its annotations cannot tell them apart (exports merged "
                    "without renumbering?); renumber the ids of one export before merging"
                )
        data[kind] = list(first.values())  # listed twice alike (same id and name): one entry
    for key, kind in (("image_id", "images"), ("category_id", "categories")):
        ids = {entry["id"] for entry in data[kind]}
        as_text = {str(i): i for i in ids}
        for ann in data["annotations"]:
            value = ann[key]
            if value not in ids and str(value) in as_text:
                raise UserError(
                    f"{annotations}: annotation {ann.get('id')}'s {key} is {value!r}, and its "
                    f'{kind} have the id {as_text[str(value)]!r}: a text "1" is not the number '
                    "1, so its object would be left out; write the ids one way in both lists"
                )
    # An object of a category no entry defines lies in its image as background would: its class
    # is unknown, even whether it is one of --classes (one chosen but left out of the list)
    defined = {category["id"] for category in data["categories"]}
    if undefined := [ann for ann in data["annotations"] if ann["category_id"] not in defined]:
        missing = sorted({ann["category_id"] for ann in undefined}, key=str)
        raise UserError(
            f"{annotations}: {len(undefined)} annotation(s) "
            f"({first_few([str(ann.get('id')) for ann in undefined])}) have a category_id that "
            f"no entry of its categories has ({first_few(list(map(str, missing)))}): their class "
            "is unknown, and their objects would be trained as background. Add those categories "
            "to its categories list, or remove those annotations"
        )
    for img in data["images"]:
        if not isinstance(img["file_name"], str):
            raise UserError(
                f"{annotations}: image {img['id']}'s file_name is {img['file_name']!r}, not a "
                "file name; name its file under --images"
            )
        for side in ("height", "width"):
            value = img[side] = img.get(side)  # left out or null: convert_coco reads the file's
            if value is None:
                continue
            if not _whole(value):
                raise UserError(
                    f"{annotations}: image {img['id']}'s {side} is {value!r}, not a whole number "
                    'of pixels; write its size in pixels (40, not "40" or 40.5)'
                )
            img[side] = int(value)  # 480.0 as some converters write it: numpy takes no float
    return data


def _whole(value) -> bool:
    """Whether a JSON value is a positive whole number: 480 or 480.0, not "480", 480.5 or true."""
    if isinstance(value, bool):
        return False
    # an int is taken as it is: float() of one of 309 digits or more is an OverflowError
    if isinstance(value, float):
        return value.is_integer() and value > 0
    return isinstance(value, int) and value > 0


def _coordinate(value) -> bool:
    """Whether a JSON value is a finite number that numpy holds: 12, -3.5 or 1e12, not "12",
    true, NaN or an integer of 64 bits or more (JSON holds any; 2**64 - 1 is -1 written
    unsigned)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) < value < 2**63
    return isinstance(value, float) and math.isfinite(value)


def _coco_file_names(annotations: Path, images: list[dict]) -> tuple[dict, dict]:
    """By image id: its file under --images, its flat name in --out (mask names must not clash)."""
    # Exports from annotation tools name images in subfolders (train/1.jpg, val/1.jpg): the
    # folders become part of the flat name, and a mask's name is its image's stem. An absolute
    # name loses its root, which would otherwise put the image outside --out. Tools on Windows
    # write train\1.jpg, whose backslash is a character of the name elsewhere: read as "/".
    files = {img["id"]: img["file_name"].replace("\\", "/") for img in images}
    names = {i: _flat_name(file) for i, file in files.items()}
    ids_of: dict[str, list] = {}
    for i, file in files.items():
        ids_of.setdefault(file, []).append(i)
    if twice := [(file, ids) for file, ids in ids_of.items() if len(ids) > 1]:
        file, ids = twice[0]
        more = f" ({len(twice) - 1} more files are listed so)" if len(twice) > 1 else ""
        raise UserError(
            f"{annotations} lists {file} as images {' and '.join(map(str, ids))}{more}: one file "
            "under several ids (exports of one image merged), whose masks would replace each "
            "other; list it once, with all its annotations under that image's id"
        )
    # written under their names, such images would be skipped by training, their masks unpaired
    unread = [
        img["file_name"]
        for img in images
        if Path(names[img["id"]]).suffix.lower() not in IMAGE_EXTENSIONS
    ]
    if unread:
        raise UserError(
            f"{annotations} names images training does not read (it takes "
            f"{' '.join(IMAGE_EXTENSIONS)} files): {first_few(unread)}; convert them to "
            ".png or .jpg and write their new names into its file_name entries"
        )
    clashes = _stem_clashes([(img["file_name"], names[img["id"]]) for img in images])
    if clashes:
        raise UserError(
            f"{annotations} names images that would share a mask name: "
            + first_few([" and ".join(files) for files in clashes])
            + "; rename them apart (their masks are named by the image's name without extension, "
            "and names that differ only in case are one file on macOS and Windows)"
        )
    return files, names


def _draw_coco_mask(img: dict, anns: list[dict], class_of: dict, annotations: Path) -> tuple:
    """An image's (H, W) uint8 class-index mask, how many of ``anns`` had a mask to draw, and
    how many had a box alone, drawn as ignore."""
    mask = np.zeros((img["height"], img["width"]), np.uint8)
    shapes = []  # (crowd, area, value, pixels)
    boxes = 0
    for ann in anns:
        pixels = _coco_mask(ann, img, annotations)
        flag = ann.get("iscrowd") or 0  # missing or null: an object
        if isinstance(flag, str) or flag not in (0, 1):
            # a string "0" read as true would draw the object as ignore
            raise UserError(
                f"{annotations}: annotation {ann.get('id')}'s iscrowd is {flag!r}, not 0 or 1"
            )
        crowd = bool(flag)
        if pixels is None:
            # a rectangle of a task mixing them with polygons: its object's pixels are unknown,
            # and drawn as background it would be trained as background
            pixels = _coco_box(ann, img, f"{annotations}: annotation {ann.get('id')}")
            if pixels is None:
                continue
            boxes += 1
            crowd = True
        # counted, not the entry's "area": converters write 0 there, or the box's area
        area = int(np.count_nonzero(pixels))
        shapes.append(
            (crowd, area, IGNORE_INDEX if crowd else class_of[ann["category_id"]], pixels)
        )
    for _, _, value, pixels in sorted(shapes, key=lambda s: (not s[0], -s[1])):
        mask[pixels] = value
    return mask, len(shapes) - boxes, boxes


def _coco_box(ann: dict, img: dict, where: str) -> np.ndarray | None:
    """An annotation's bbox [x, y, width, height] as an (H, W) bool mask of its image, or None
    where it is one of no area. ``where`` names the annotation in the UserError for a bbox that
    is missing or not a box: the object lies somewhere unknown, and left out it would be trained
    as background."""
    from pycocotools import mask as mask_utils

    if "bbox" not in ann:
        raise UserError(
            f"{where} has neither a mask (its segmentation is empty, missing or polygons of "
            "fewer than 3 points) nor a bbox, so where its object lies is unknown and its pixels "
            "would be trained as background; give it a polygon or a bbox [x, y, width, height], "
            "or remove it"
        )
    box = ann["bbox"]
    if not (
        isinstance(box, list)
        and len(box) == 4
        and all(map(_coordinate, box))
        and box[2] >= 0
        and box[3] >= 0
    ):
        raise UserError(
            f"{where}'s bbox is {box!r}, not [x, y, width, height]: four numbers, from the "
            "top-left corner, width and height 0 or more; it has no mask (segmentation), so "
            "its box is drawn as ignore"
        )
    if box[2] == 0 or box[3] == 0:  # a point or a line covers no pixel
        return None
    h, w = img["height"], img["width"]
    # cut to the image, which leaves its pixels as they were: pycocotools crashes on far corners
    x0, y0 = np.clip(box[:2], -1, [w + 1, h + 1])
    x1, y1 = np.clip([box[0] + box[2], box[1] + box[3]], -1, [w + 1, h + 1])
    # an (N, 4) array: pycocotools' boxes, rasterized as their polygons would be
    rle = mask_utils.frPyObjects(np.array([[x0, y0, x1 - x0, y1 - y0]], np.float64), h, w)
    return mask_utils.decode(rle)[..., 0].astype(bool)


def _stem_clashes(named: list[tuple[str, str]]) -> list[list[str]]:
    """From (label, flat name in --out) pairs, the labels of each group of names that would
    write one mask: the same stem, where case does not count (IMG_1.jpg and img_1.png name one
    file on macOS and Windows, and the second image and mask would replace the first's)."""
    by_stem: dict[str, list[str]] = {}
    for label, name in named:
        by_stem.setdefault(Path(name).stem.casefold(), []).append(label)
    return [labels for labels in by_stem.values() if len(labels) > 1]


def _flat_name(file_name: str) -> str:
    """One file name for a COCO file_name: train/1.jpg -> train_1.jpg, /data/1.jpg -> data_1.jpg,
    ../images/1.jpg -> images_1.jpg."""
    path = Path(file_name)
    parts = path.relative_to(path.anchor).parts if path.anchor else path.parts
    # Without the ".." of a name relative to another folder, and without leading dots: a name
    # starting with "." is a hidden file, which training skips with its mask without a word.
    return "_".join(part for part in parts if part != "..").lstrip(".")


def _coco_mask(ann: dict, img: dict, annotations: Path) -> np.ndarray | None:
    """One annotation's segmentation as an (H, W) bool mask of its image, or None where it has
    no polygon of 3 points or more: an empty list, as exports of boxes alone write, or no
    segmentation at all (left out or null, as detection exports and converters write)."""
    from pycocotools import mask as mask_utils

    h, w = img["height"], img["width"]
    seg = ann.get("segmentation")
    where = f"{annotations}: annotation {ann.get('id')}"
    if seg is None:  # a box alone, as "segmentation": [] is
        return None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [h, w]:
            raise UserError(
                f"{where}'s RLE has size {seg['size']} but its image {img['file_name']} has "
                f"height {h}, width {w}; the RLE belongs to another image or its sides are swapped"
            )
        counts = seg["counts"]
        runs = _compressed_counts(counts) if isinstance(counts, str) else counts
        if isinstance(runs, list):
            # pycocotools decodes counts short of h * w into unset memory (random pixels of the
            # class) and refuses longer ones without saying why
            whole = all(_whole(c) or c == 0 for c in runs)
            if not whole or sum(runs) != h * w:
                cover = (
                    f"cover {int(sum(runs))} pixels, not {h} x {w} = {h * w}"
                    if whole
                    else "are not all whole numbers of 0 or more"
                )
                raise UserError(
                    f"{where}'s RLE counts {cover} (image {img['file_name']}): its run "
                    "lengths must cover every pixel, column by column, the last run of "
                    "background included"
                )
        # uncompressed RLE (counts a list) or compressed (a string)
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(counts, list) else seg
    elif isinstance(seg, list):  # polygons
        _check_polygons(seg, img, where)
        # A part of fewer than 3 points covers nothing, and pycocotools would read a 4-number
        # part as a box [x, y, w, h]: leave such parts out.
        parts = [p for p in seg if len(p) >= 6 and len(p) % 2 == 0]
        if not parts:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(parts, h, w))
    else:
        raise UserError(
            f"{where}'s segmentation is {repr(seg)[:40]}, neither a list of polygons nor an RLE; "
            'write polygons [[x1, y1, x2, y2, ...]] or an RLE {"size": [height, width], '
            '"counts": ...}'
        )
    try:
        return mask_utils.decode(rle).astype(bool)
    except (ValueError, TypeError) as err:
        raise UserError(f"{where}: its segmentation is not a valid RLE ({err})") from err


def _compressed_counts(text: str) -> list[int] | None:
    """The run lengths of a compressed RLE's counts string, None where it is not one.

    Each count is written in 5-bit groups, lowest first, as characters from "0" (48): 0x20
    marks a group that another follows, 0x10 in the last group a negative number; from the
    fourth count on, the one two places back is added.
    """
    counts: list[int] = []
    position = 0
    while position < len(text):
        value = shift = 0
        more = True
        while more:
            if position == len(text) or not 0 <= ord(text[position]) - 48 < 64:
                return None  # cut short, or a character no count is written with
            group = ord(text[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift  # negative: sign-extended
        counts.append(value + counts[-2] if len(counts) > 2 else value)
    return counts


def _check_polygons(seg: list, img: dict, where: str) -> None:
    """Refuse polygons that are not lists [x1, y1, x2, y2, ...] of numbers within the image's
    width and height of it: pycocotools crashes (a segmentation fault) on null, NaN and far
    coordinates, and a polygon of [x, y] points, or not inside a list, would cover nothing.
    Points that cover no area as one polygon (stray points) pass, as degenerate parts."""
    h, w = img["height"], img["width"]
    fix = "write each polygon as one flat list inside it: [[x1, y1, x2, y2, ...]]"
    if not all(isinstance(part, list) for part in seg):
        raise UserError(f"{where}'s segmentation is not a list of polygons; {fix}")
    for part in seg:
        for k, v in enumerate(part):
            side = w if k % 2 == 0 else h
            if isinstance(v, bool) or not isinstance(v, int | float) or not -side <= v <= 2 * side:
                raise UserError(
                    f"{where}'s polygon holds {v!r}, not a pixel coordinate of its {w}x{h} "
                    f"image {img['file_name']}: polygons are flat lists [x1, y1, x2, y2, ...] of "
                    "numbers within the image (or less than its size outside it)"
                )
    # Parts of 1 point each cover nothing, and pycocotools refuses such a list, so COCO's own
    # files hold none (its evaluation and torchvision's loaders pass each one whole): points
    # that would cover an area as one polygon are that polygon written as [x, y] pairs, while
    # stray points (exports of some tools) are degenerate parts, left out as others are.
    if len(seg) >= 3 and all(len(part) == 2 for part in seg):
        x, y = np.array(seg, np.float64).T
        if np.dot(x, np.roll(y, 1)) != np.dot(y, np.roll(x, 1)):  # the shoelace area is not 0
            raise UserError(f"{where}'s segmentation is a list of [x, y] points; {fix}")


def read_binary_mask(path: Path) -> tuple[np.ndarray, str]:
    """Read a 0/255 mask as class ids: values of 128 and more become 1, the rest 0.

    Grayscale, 1-bit and palette masks work, and RGB(A) ones whose three channels are equal. A
    mask of only 0 and 1 (with some 1) holds class ids already and is kept as it is.

    Returns:
        (H, W) uint8 class ids with the file's EXIF orientation applied, and the kind of file:
        "0/255"; "other" where it held other values (JPEG compression, antialiased edges),
        thresholded; "0/1" for a mask of class ids.
    """
    img = open_image(path)
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode == "P":
        img = img.convert("RGB")  # the palette's colours, as a viewer shows them
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        raise DataError(f"{path}: a {img.mode} image; save the mask as 8-bit grayscale")
    values = np.asarray(img)
    if values.ndim == 3:
        channels = values[..., : 1 if img.mode == "LA" else 3]  # the alpha channel is not a label
        if (channels != channels[..., :1]).any():
            raise DataError(
                f"{path}: a colour mask (its channels differ); 'binary' takes black-and-white "
                "masks, while colour masks listed in LABEL_COLORS_LIST train as they are"
            )
        values = channels[..., 0]
    if values.max(initial=0) == 1:  # 0 and 1 only: class ids, which a threshold would erase
        return values.astype(np.uint8), "0/1"
    other = bool(((values != 0) & (values != 255)).any())
    return (values >= 128).astype(np.uint8), "other" if other else "0/255"


def convert_binary(root: Path, out: Path) -> dict[str, int]:
    """Convert a dataset in our layout, turning its 0/255 masks into 0/1 class-index PNGs.

    Images are hard-linked (copied where that fails) and pair with masks by stem, as in
    training. Every problem (unpaired files, unreadable images or masks, colour masks, a mask of
    another size than its image, as training checks them) is reported at once.

    Returns:
        the number of masks of each kind read_binary_mask names.
    """
    splits = {}
    problems = []
    for split in SPLITS:
        splits[split], found = find_pairs(root / f"{split}_images", root / f"{split}_masks")
        problems += found
        if not splits[split] and not found:
            problems.append(f"{root / f'{split}_images'}: no images")
    problems += copies_across(images_of(splits), root / "train_images", root / "valid_images")
    kinds = dict.fromkeys(("0/255", "other", "0/1"), 0)
    foreground = 0  # pixels of 128 and more
    for split, pairs in splits.items():
        for image, mask_path in pairs:
            try:  # read as training reads it: a corrupt image, or one of another size, is named
                size = image_size(image)
            except DataError as err:
                problems.append(str(err))
                size = None
            try:
                mask, kind = read_binary_mask(mask_path)
            except DataError as err:
                problems.append(str(err))
                continue
            if size is not None:
                problems += size_mismatch((image, mask_path), size, mask.shape)
            kinds[kind] += 1
            foreground += int(mask.sum()) if kind != "0/1" else 0
            if not problems:  # otherwise nothing is kept: the masks are only checked
                write_pair(out, split, image.name, image, mask)
    if problems:
        raise DatasetError(root, problems)
    if foreground == 0:
        raise UserError(
            f"no mask under {root} has values of 128 or more, so every pixel would be background: "
            "these are not 0/255 masks (masks of 0 and 1 are class ids already; train on "
            f"--data {root} directly)"
        )
    return kinds


class Matched(NamedTuple):
    """pair_files's answer: what paired, what did not and why."""

    pairs: dict[str, Pair]  # by item: an image's path under its folder without the extension
    unmasked: list[Path]  # images without a mask, in name order
    problems: list[str]  # missing folders, names used twice, masks without an image...


def pair_files(
    images: Path,
    masks: Path,
    suffix: str = "",
    *,
    nested: bool = False,
    masks_optional: bool = False,
) -> Matched:
    """Pair each image with the mask named by the image's stem and ``suffix`` (x.jpg with
    x_mask.png for "_mask"; x.png for "").

    ``images`` and ``masks`` may be one folder, as Roboflow exports: there a file whose stem ends
    with ``suffix`` is a mask, the others images. ``nested`` reads subfolders too, pairing by the
    path below the folder (sub/x.jpg with sub/x.png), as CVAT exports. An image without a mask
    is a problem unless ``masks_optional`` (CVAT writes masks for annotated frames only).
    Hidden files and folders and other formats are skipped (_image_files).

    Returns:
        Matched, its pairs sorted by item
    """
    same = images.resolve() == masks.resolve()
    problems = []
    found: dict[str, dict[str, Path]] = {"image": {}, "mask": {}}
    for kind, folder in (("image", images), ("mask", masks)):
        if not folder.is_dir():
            if not (same and kind == "mask"):  # one folder, named once
                what = "a file, not a folder" if folder.exists() else "folder missing"
                problems.append(f"{folder}: {what}")
            continue
        for p in _image_files(folder, nested):
            is_mask = p.stem.endswith(suffix)
            if same and is_mask != (kind == "mask"):
                continue
            if kind == "mask" and not is_mask:
                problems.append(f"{p}: a mask whose name does not end with --mask-suffix {suffix}")
                continue
            key = p.relative_to(folder).with_suffix("").as_posix()
            key = key[: len(key) - len(suffix)] if kind == "mask" else key
            if key in found[kind]:
                problems.append(f"{p}: same name as {found[kind][key].name}; keep one of them")
            found[kind][key] = p
    by_item, named = found["image"], found["mask"]
    unmasked = [by_item[k] for k in sorted(by_item) if k not in named]
    if not masks_optional:
        problems += [
            f"{p}: image without a mask named {p.stem}{suffix} in {masks}" for p in unmasked
        ]
    problems += [
        f"{named[k]}: mask without an image in {images}" for k in named if k not in by_item
    ]
    pairs = {k: (by_item[k], named[k]) for k in sorted(by_item) if k in named}
    return Matched(pairs, unmasked, problems)


def _image_files(folder: Path, nested: bool = False) -> list[Path]:
    """The image files of ``folder`` (and of its subfolders where ``nested``) in name order.

    Hidden files and everything in hidden folders are skipped, as find_pairs skips hidden
    files: macOS's ._NAME forks, and the thumbnails and caches (.thumbnails/, .ipynb_checkpoints/)
    that viewers and notebooks keep beside images, which would pair as frames or stand as masks
    without an image.
    """
    return [
        p
        for p in sorted(folder.rglob("*") if nested else folder.iterdir())
        if not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
    ]


def convert_pairs(
    root: Path,
    splits: dict[str, list[Pair]],
    problems: list[str],
    classes: ClassConfig,
    out: Path,
    names: dict[Path, str] | None = None,
) -> dict[str, int | str]:
    """Check each pair as training does (unreadable files, mask values or colours outside
    ``classes``, a mask of another size than its image) and write the pairs into ``out`` with
    class-index PNG masks, images hard-linked under their ``names`` (default: their own), or
    copied where the file system refuses a link (utils.link_or_copy).

    Every problem, those given and each pair's, is raised at once (DatasetError), and then
    nothing is written.

    Returns:
        {"instances": the number of masks read as instance ids, "ignore only": the number holding
        255 (ignore) where none holds a pixel of a class but background, else 0, "0/255 among 0/1":
        the number of zero_255_among_0_1's masks, and "0/255 among 0/1 names" a few of their names}
    """
    instances = ignoring = 0
    classes_seen = False  # a pixel of class 1, 2, ... in any mask
    any_class = False  # a pixel of any class, 0 too
    # under MASK_IDS a 255 is any value it does not list, not a black-and-white mask's white
    binary = classes.num_classes == 2 and classes.mask_ids is None
    used_ids = []  # as check_dataset collects them
    two_valued: dict[str, list[Path]] = {}  # so too
    for split, pairs in splits.items():
        for image, mask in pairs:
            found, ids, counts, reading = checked_mask((image, mask), classes)
            problems += found
            # renumbered_palettes looks up the ids read in the palette: under MASK_IDS they are
            # class ids, not the mask's indices
            if reading == "ids" and classes.mask_colors is None and classes.mask_ids is None:
                used_ids.append((mask, np.flatnonzero(counts).tolist()))
            instances += reading == "instances"
            ignoring += bool(counts[IGNORE_INDEX])
            if binary and (kind := binary_kind(counts, reading)):
                two_valued.setdefault(kind, []).append(mask)
            classes_seen |= bool(counts[1 : classes.num_classes].any())
            any_class |= bool(counts[: classes.num_classes].any())
            if not problems:  # otherwise nothing is kept: the pairs are only checked
                name = names[image] if names else image.name
                write_pair(out, split, name, image, ids)
    problems += renumbered_palettes(used_ids)
    if classes.mask_ids is not None and not any_class and not problems:
        # as check_dataset refuses it: masks of ignore alone
        problems.append(
            "none of the masks holds a value that MASK_IDS lists (others read as ignore): list "
            "the values the masks hold for each class in MASK_IDS of --config"
        )
    if problems:
        raise DatasetError(root, problems)
    mixed = zero_255_among_0_1(two_valued)
    return {
        "instances": instances,
        # black-and-white masks, whose 255 reads as ignore: a dataset without its classes (under
        # MASK_IDS, masks of ignore alone are refused above)
        "ignore only": 0 if classes_seen or classes.mask_ids is not None else ignoring,
        "0/255 among 0/1": len(mixed),
        "0/255 among 0/1 names": first_few([m.name for m in mixed]),
    }


def convert_folder(
    args: argparse.Namespace, out: Path, classes: ClassConfig
) -> dict[str, int | str]:
    """A folder of images and one of masks, split by name: sorted by image stem, every
    ``--valid-every``-th pair goes to valid, the rest to train."""
    matched = pair_files(args.images, args.masks, args.mask_suffix)
    pairs, problems = list(matched.pairs.values()), matched.problems
    every = valid_every(args)
    entries = list(args.images.iterdir()) if not pairs and args.images.is_dir() else []
    entries = [p for p in entries if not p.name.startswith(".")]  # skipped, as pair_files does
    folders = sorted(f"{p.name}/" for p in entries if p.is_dir())
    if folders and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in entries):
        # images/train/, images/val/...: a dataset split already, or sorted into folders (its
        # masks, each without an image here, are not worth naming one by one)
        raise UserError(
            f"--images {args.images} holds no image but the subfolders {first_few(folders)}: "
            "point --images and --masks at folders of image files (a dataset split already, "
            "into train/ and val/, needs no splitting: move its files into DIR/train_images, "
            "DIR/train_masks, DIR/valid_images, DIR/valid_masks and pass --data DIR)"
        )
    if not problems:
        check_valid_every(len(pairs), every, f"{args.images}: {len(pairs)} image(s) with a mask")
    splits = every_nth(pairs, every)
    problems += copies_across(images_of(splits), args.images, args.images)
    return convert_pairs(args.images, splits, problems, classes, out)


def valid_every(args: argparse.Namespace) -> int:
    """--valid-every, or VALID_EVERY where it was not given."""
    return VALID_EVERY if args.valid_every is None else args.valid_every


def check_valid_every(count: int, every: int, where: str) -> None:
    """Refuse ``count`` images too few for every ``every``-th to leave one in valid."""
    if count < every:
        fix = (
            f"pass --valid-every {count} to put one of them in valid"
            if count >= 2
            else "a train and a valid split need at least 2 images"
        )
        raise UserError(
            f"{where}, and every {every}th image (--valid-every {every}) goes to valid; {fix}"
        )


def every_nth(pairs: list[Pair], every: int) -> dict[str, list[Pair]]:
    """The pairs by split, in their order: every ``every``-th to valid, the rest to train."""
    splits: dict[str, list[Pair]] = {split: [] for split in SPLITS}
    for position, pair in enumerate(pairs):
        splits[split_of(position, every)].append(pair)
    return splits


def text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, without the byte-order mark Excel writes, or a UserError
    naming it."""
    try:
        return path.read_bytes().decode("utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from err


ROBOFLOW_SPLITS = {"train": "train", "valid": "valid"}  # our split: its folder (test/ is left out)


def export_hint(root: Path, importer: str) -> str:
    """Where --root of ``importer`` is an export that another importer reads, that importer's
    command ("; this is ..."); "" otherwise."""
    coco = sorted((root / "train").glob("*.coco.json"))  # Roboflow's COCO Segmentation export
    kinds = {
        "cvat": (root / "labelmap.txt").is_file(),
        "roboflow": (root / "train" / "_classes.csv").is_file(),
        "voc": (root / "ImageSets/Segmentation/train.txt").is_file()
        and not (root / "labelmap.txt").is_file(),
        "coco": bool(coco),
    }
    found = [kind for kind, here in kinds.items() if here and kind != importer]
    if not found:
        return ""
    kind, where = found[0], shell_quote(str(root))
    if kind == "coco":
        images = shell_quote(str(coco[0].parent))
        return (
            f"; this is a COCO-format export ({coco[0].name}): python prepare_data.py coco "
            f"--annotations {shell_quote(str(coco[0]))} --images {images} reads it"
        )
    what = {
        "cvat": "a CVAT export (it has labelmap.txt)",
        "roboflow": "a Roboflow export (it has train/_classes.csv)",
        "voc": "a VOC-style export (ImageSets/Segmentation/train.txt, no labelmap.txt)",
    }[kind]
    return f"; this is {what}: python prepare_data.py {kind} --root {where} reads it"


def read_roboflow_classes(root: Path) -> list[str]:
    """The class names by pixel value in a Roboflow export's train/_classes.csv, whose lines are
    "Pixel Value, Class" and then "0, background", "1, cat", ..."""
    path = root / "train" / "_classes.csv"
    if not path.is_file():
        hint = (  # --root export/train
            f"; {root} holds _classes.csv, so it is one split of the export: pass --root "
            f"{root.parent}"
            if (root / "_classes.csv").is_file()
            else export_hint(root, "roboflow")
        )
        raise UserError(
            f"{path} is missing: --root must be a Roboflow 'Semantic Segmentation Masks' export, "
            f"with train/ and valid/ holding NAME.jpg, NAME_mask.png and _classes.csv{hint}"
        )
    lines = text_lines(path)
    rows = [[cell.strip() for cell in row] for row in csv.reader(lines) if "".join(row).strip()]
    if rows and not rows[0][0].isdigit():
        rows = rows[1:]  # the header
    names: dict[int, str] = {}
    for row in rows:
        if len(row) < 2 or not row[0].isdigit() or int(row[0]) in names:
            raise UserError(
                f"{path}: the line {', '.join(row)!r} is not 'pixel value, class name' of a new "
                "pixel value"
            )
        names[int(row[0])] = row[1]
    if sorted(names) != list(range(len(names))):
        raise UserError(
            f"{path}: pixel values {sorted(names)} are not 0, 1, 2, ... without gaps; masks here "
            "hold class ids numbered so"
        )
    return [names[value] for value in range(len(names))]


def convert_roboflow(root: Path, out: Path, classes: ClassConfig) -> dict[str, int | str]:
    """Roboflow's train/ and valid/ folders, each image beside its NAME_mask.png of class ids.

    Returns:
        {"instances": masks read as instance ids, "test": images in test/, left out}
    """
    splits, problems = {}, []
    for split, folder in ROBOFLOW_SPLITS.items():
        matched = pair_files(root / folder, root / folder, "_mask")
        splits[split], found = list(matched.pairs.values()), matched.problems
        if not (root / folder).is_dir():
            what = "a file, not a folder" if (root / folder).exists() else "folder missing"
            found = [
                f"{root / folder}: {what} (export a dataset version with a {folder} split, or "
                "split one folder with prepare_data.py folder --mask-suffix _mask)"
            ]
        elif not splits[split] and not found:
            found = [f"{root / folder}: no image with its NAME_mask.png"]
        problems += found
    problems += copies_across(images_of(splits), root / "train", root / "valid")
    kinds = convert_pairs(root, splits, problems, classes, out)
    test = root / "test"
    files = _image_files(test) if test.is_dir() else []
    return {**kinds, "test": sum(not p.stem.endswith("_mask") for p in files)}  # its images


def read_labelmap(path: Path) -> ClassConfig:
    """The classes of a CVAT (Datumaro) labelmap.txt: a line "name:r,g,b:parts:actions" per
    class, in the order of their ids (background first, as CVAT writes it); # starts a comment."""
    if not path.is_file():
        raise UserError(
            f"{path} is missing: --root must be a CVAT 'Segmentation mask 1.1' export, with "
            f"labelmap.txt, JPEGImages/ and SegmentationClass/{export_hint(path.parent, 'cvat')}"
        )
    lines = text_lines(path)
    names, colors = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rsplit(":", 3)  # a label's name may hold a colon, the other fields not
        rgb = fields[1].split(",") if len(fields) == 4 else []
        if len(rgb) != 3 or not all(v.strip().isdigit() and int(v) <= 255 for v in rgb):
            raise UserError(
                f"{path}, line {number}: {line.strip()!r} is not 'name:r,g,b::' with three "
                "values 0-255"
            )
        names.append(fields[0].strip())
        colors.append(tuple(int(v) for v in rgb))
    try:
        return ClassConfig(tuple(names), tuple(colors), tuple(colors))
    except UserError as err:  # fewer than two labels, a name or colour twice
        raise UserError(f"{path}: {err}") from err


def _cvat_subsets(root: Path) -> dict[str, tuple[Path, set[str]]] | None:
    """The list file and item ids of each split from the export's subset lists, where it has a
    train and a validation one (ImageSets/Segmentation/Train.txt and Validation.txt, or train.txt
    and val.txt...); None otherwise (one "default" list: a task without subsets).

    Raises:
        UserError: two lists of one split (Train.txt and train.txt, val.txt and Validation.txt),
            of which reading one would silently leave the other's items out.
    """
    folder = root / "ImageSets" / "Segmentation"
    names = {"train": ("train",), "valid": ("validation", "valid", "val")}
    lists = {
        split: sorted(p for p in folder.glob("*.txt") if p.stem.casefold() in stems)
        for split, stems in names.items()
    }
    for split, paths in lists.items():
        if len(paths) > 1:
            raise UserError(
                f"{folder}: {' and '.join(p.name for p in paths)} each list the {split} subset; "
                "keep one of them, merging their items into it"
            )
    if not all(lists.values()):
        return None
    return {
        split: (path, {line.strip() for line in text_lines(path)} - {""})  # a blank line is no item
        for split, (path,) in lists.items()
    }


def convert_cvat(args: argparse.Namespace, out: Path, classes: ClassConfig) -> dict[str, int | str]:
    """CVAT's "Segmentation mask 1.1" export: JPEGImages/, SegmentationClass/ (colour masks in the
    colours of labelmap.txt) and ImageSets/Segmentation/ subset lists.

    Images without a mask were not annotated (CVAT writes masks for annotated frames only) and
    are left out. The splits are the export's train and validation subsets where it has them
    (other subsets left out), else every ``--valid-every``-th image by name goes to valid. Item
    ids in subfolders become flat names: sub/x.jpg is sub_x.jpg.

    Returns:
        {"instances": 0, "unannotated": images without a mask, "unlisted": annotated images in
        neither the train nor the validation subset, "lists": those subsets' list files}
    """
    root = args.root
    images_dir, masks_dir = root / "JPEGImages", root / "SegmentationClass"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "is missing"
            raise UserError(
                f"{folder} {what}: --root must be a CVAT 'Segmentation mask 1.1' export"
            )
    # by item id, the path without the extension ("sub/x" for sub/x.jpg)
    matched = pair_files(images_dir, masks_dir, nested=True, masks_optional=True)
    pairs, problems = matched.pairs, matched.problems
    names = {
        image: _flat_name(image.relative_to(images_dir).as_posix()) for image, _ in pairs.values()
    }
    problems += [  # flat names that clash (a/b_c and a_b/c), also by case
        f"{images_dir}: {' and '.join(ids)} would share one name in --out; rename one of them"
        for ids in _stem_clashes([(i, names[image]) for i, (image, _) in pairs.items()])
    ]
    subsets = _cvat_subsets(root)
    if subsets is not None and args.valid_every is not None:
        raise UserError(
            f"--valid-every {args.valid_every} splits an export without subsets, but {root} has "
            f"its own: {subsets['train'][0].name} and {subsets['valid'][0].name} are the splits. "
            "Drop --valid-every, or delete those lists to split every --valid-every-th image"
        )
    unlisted = {}
    if subsets is None:
        if not problems:
            check_valid_every(
                len(pairs), valid_every(args), f"{root}: {len(pairs)} annotated image(s)"
            )
        splits = every_nth(list(pairs.values()), valid_every(args))
    else:
        splits = {s: [pair for i, pair in pairs.items() if i in subsets[s][1]] for s in SPLITS}
        # among the annotated items: only those are written
        both = subsets["train"][1] & subsets["valid"][1]
        shared = [i for i in pairs if i in both]
        problems += in_both(shared, subsets["train"][0], subsets["valid"][0])
        problems += [  # said here, where the list is known, not as "the split came out empty"
            f"{path}: none of the {len(ids)} item(s) it lists has a mask in {masks_dir}, "
            f"so the {split} split would be empty; annotate some of its frames in CVAT, or "
            f"delete the subset lists in {path.parent} to split every --valid-every-th image"
            for split, (path, ids) in subsets.items()
            if not splits[split]
        ]
        listed = set().union(*(ids for _, ids in subsets.values()))
        unlisted = {
            "unlisted": sum(i not in listed for i in pairs),
            "lists": " nor ".join(path.name for path, _ in subsets.values()),
        }
    problems += copies_across(images_of(splits), images_dir, images_dir)
    kinds = convert_pairs(root, splits, problems, classes, out, names)
    return {**kinds, "unannotated": len(matched.unmasked), **unlisted}


def _subfolders(root: Path) -> list[Path]:
    """``root``'s folders, none where it cannot be listed (a missing --root is named later)."""
    try:
        return [d for d in root.iterdir() if d.is_dir()]
    except OSError:
        return []


def cityscapes_folder(root: Path, name: str, zip_name: str) -> Path:
    """``root``/``name`` (leftImg8bit or gtFine, as ``zip_name`` unzips), or a UserError that
    says how to get it there."""
    folder = root / name
    if folder.is_dir():
        return folder
    subfolders = _subfolders(root)  # where a zip was unzipped one level down
    if folder.exists():
        hint = f" (a file of that name): unzip {zip_name} into {root}"
    elif root.name in ("leftImg8bit", "gtFine") and (root.parent / name).is_dir():
        hint = f": --root is its {root.name}/ folder; pass --root {root.parent}"
    elif holders := sorted(d for d in subfolders if (d / name).is_dir()):
        # macOS and Windows unzip a zip into a folder of its name (leftImg8bit_trainvaltest/),
        # and a --root of the folder above the dataset holds it one level down
        other = "gtFine" if name == "leftImg8bit" else "leftImg8bit"
        apart = sorted(d for d in subfolders if (d / other).is_dir())
        if (holders[0] / other).is_dir():
            hint = f": it is in {holders[0]}; pass --root {holders[0]}"
        elif not (root / other).is_dir() and apart:  # both zips unzipped into their own folders
            hint = (
                f": it is in {holders[0]}; move {holders[0] / name} and {apart[0] / other} into "
                f"{root}"
            )
        else:
            hint = f": it is in {holders[0]}; move {holders[0] / name} into {root}, beside {other}/"
    elif (root / zip_name).is_file():
        hint = f": unzip {root / zip_name} into {root} first"
    else:
        hint = (
            f": download {zip_name} from cityscapes-dataset.com and unzip it into {root}, "
            "beside leftImg8bit/ and gtFine/"
        )
        if name == "gtFine" and (root / "gtCoarse").is_dir():
            hint += "; gtCoarse/ is not read: the benchmark's labels are gtFine's"
    raise UserError(f"no {name}/ under --root {root}{hint}")


def _cityscapes_split(images: Path, labels: Path) -> tuple[list[Pair], list[str]]:
    """The (image, label-id mask) pairs of one split's CITY/ folders, by name, and its problems:
    a folder missing, an image without its mask, a mask without its image. Other files of
    gtFine (*_color.png, *_instanceIds.png, *_polygons.json) are not read."""
    problems = []
    for folder in (images, labels):
        if not folder.is_dir():
            what = "a file, not a folder" if folder.exists() else "folder missing"
            problems.append(f"{folder}: {what}")
    if problems:
        return [], problems
    found = [
        {
            p.relative_to(folder).as_posix().removesuffix(ending): p
            for p in _image_files(folder, nested=True)
            if p.name.endswith(ending)
        }
        for folder, ending in ((images, CITYSCAPES_IMAGE), (labels, CITYSCAPES_MASK))
    ]
    by_item, masks = found
    problems += [
        f"{p}: image without its mask {labels / (item + CITYSCAPES_MASK)}"
        for item, p in by_item.items()
        if item not in masks
    ]
    problems += [
        f"{p}: mask without its image {images / (item + CITYSCAPES_IMAGE)}"
        for item, p in masks.items()
        if item not in by_item
    ]
    if not by_item and not masks:
        problems.append(f"{images}: no CITY/NAME{CITYSCAPES_IMAGE} image")
    return [(by_item[item], masks[item]) for item in sorted(by_item) if item in masks], problems


def convert_cityscapes(root: Path, out: Path, classes: ClassConfig) -> dict[str, int | str]:
    """Cityscapes as its two zips unzip into ``root``: leftImg8bit/SPLIT/CITY/NAME_leftImg8bit.png
    and gtFine/SPLIT/CITY/NAME_gtFine_labelIds.png, read through ``classes``' MASK_IDS. Its
    train is train, its val valid; test, whose labels are not public, is left out. Images keep
    their names without _leftImg8bit (CITY_SEQ_FRAME.png), hard-linked.

    Returns:
        convert_pairs's counts, and {"unlabelled test": the images in leftImg8bit/test,
        "test folder": that folder}
    """
    images_root = cityscapes_folder(root, "leftImg8bit", "leftImg8bit_trainvaltest.zip")
    labels_root = cityscapes_folder(root, "gtFine", "gtFine_trainvaltest.zip")
    splits, problems = {}, []
    for split, folder in CITYSCAPES_SPLITS.items():
        splits[split], found = _cityscapes_split(images_root / folder, labels_root / folder)
        problems += found
    images = images_of(splits)
    names = {i: i.name.removesuffix(CITYSCAPES_IMAGE) + ".png" for s in images.values() for i in s}
    problems += [  # a city's image copied into another city's folder
        f"{images_root}: {' and '.join(same)} would share one name in --out; keep one of them"
        for same in _stem_clashes([(str(i.relative_to(images_root)), n) for i, n in names.items()])
    ]
    train, valid = (images_root / CITYSCAPES_SPLITS[split] for split in SPLITS)
    problems += copies_across(images, train, valid)
    kinds = convert_pairs(root, splits, problems, classes, out, names)
    test = images_root / "test"
    files = _image_files(test, nested=True) if test.is_dir() else []
    count = sum(p.name.endswith(CITYSCAPES_IMAGE) for p in files)
    return {**kinds, "unlabelled test": count, "test folder": str(test)}


def check_ade20k_root(root: Path) -> None:
    """Refuse a ``root`` that is not ADEChallengeData2016 as its zip unzips, saying which."""
    inner = root / "ADEChallengeData2016"
    for name in ("images/", "annotations/", "objectInfo150.txt"):
        path = root / name
        if path.is_dir() if name.endswith("/") else path.is_file():
            continue
        if inner.is_dir():
            hint = f"; pass --root {inner}"
        elif (root / "ADEChallengeData2016.zip").is_file():
            hint = f": unzip {root / 'ADEChallengeData2016.zip'} first, then pass --root {inner}"
        elif root.name in ("images", "annotations") and (root.parent / name).exists():
            hint = f": --root is its {root.name}/ folder; pass --root {root.parent}"
        else:
            hint = (
                ": --root must be ADEChallengeData2016 as ADEChallengeData2016.zip (the MIT "
                "Scene Parsing release) unzips, with images/, annotations/ and objectInfo150.txt"
            )
        raise UserError(f"no {name} under --root {root}{hint}")


def read_ade20k_names(root: Path) -> list[str]:
    """The class names of ADEChallengeData2016/objectInfo150.txt: after a header, a line per
    label id 1 to 150, "Idx<TAB>Ratio<TAB>Train<TAB>Val<TAB>Name" where Name lists the class's
    synonyms ("building, edifice"), the first of which names it here."""
    path = root / "objectInfo150.txt"
    lines = [line for line in text_lines(path) if line.strip()]
    if lines and not lines[0].split("\t")[0].strip().isdigit():
        lines = lines[1:]  # the header
    names = []
    for line in lines:
        fields = line.split("\t")
        name = fields[-1].split(",")[0].strip()
        if len(fields) < 2 or fields[0].strip() != str(len(names) + 1) or not name:
            raise UserError(
                f"{path}: the line {line!r} is not label {len(names) + 1}'s "
                "'Idx<TAB>Ratio<TAB>Train<TAB>Val<TAB>Name'; use the file ADEChallengeData2016.zip "
                "holds"
            )
        names.append(name)
    if len(names) != ADE20K_CLASSES:
        raise UserError(
            f"{path} lists {len(names)} classes, not ADE20K's {ADE20K_CLASSES}; use the file "
            "ADEChallengeData2016.zip holds"
        )
    return names


def convert_ade20k(root: Path, out: Path, classes: ClassConfig) -> dict[str, int | str]:
    """ADEChallengeData2016: images/SPLIT/ADE_*.jpg, each with annotations/SPLIT/ADE_*.png of
    label ids (0 other, 1-150 the classes of objectInfo150.txt), read through ``classes``'
    MASK_IDS. Its training is train, its validation valid; images are hard-linked."""
    splits, problems = {}, []
    folders = {split: root / "images" / folder for split, folder in ADE20K_SPLITS.items()}
    for split, folder in ADE20K_SPLITS.items():
        matched = pair_files(folders[split], root / "annotations" / folder)
        splits[split] = list(matched.pairs.values())
        problems += matched.problems
        if not splits[split] and not matched.problems:
            problems.append(f"{folders[split]}: no image with its mask")
    problems += copies_across(images_of(splits), folders["train"], folders["valid"])
    return convert_pairs(root, splits, problems, classes, out)


def report(folder: Path, names: list[str]) -> None:
    """Print images and labelled pixels per class and split: a line per split of up to
    REPORT_INLINE classes, else a line per split (its images and ignored pixels) and a table of a
    line per class (id, name, pixels in train, in valid)."""
    counts, images = {}, {}
    for split in SPLITS:
        counts[split] = np.zeros(256, np.int64)
        masks = sorted((folder / f"{split}_masks").glob("*.png"))
        for path in masks:
            counts[split] += np.bincount(np.asarray(open_image(path)).ravel(), minlength=256)
        images[split] = f"{len(masks)} image{'' if len(masks) == 1 else 's'}"
    if len(names) <= REPORT_INLINE:
        for split in SPLITS:
            pixels = ", ".join(f"{name} {counts[split][i]:,}" for i, name in enumerate(names))
            ignored = counts[split][IGNORE_INDEX]
            print(f"{split}: {images[split]}; pixels: {pixels}; ignored {ignored:,}")
        return
    for split in SPLITS:
        print(f"{split}: {images[split]}; ignored pixels {counts[split][IGNORE_INDEX]:,}")
    heads = [f"{split} pixels" for split in SPLITS]
    cells = [[f"{counts[split][i]:,}" for split in SPLITS] for i in range(len(names))]
    wide = [max(len(head), *(len(row[k]) for row in cells)) for k, head in enumerate(heads)]
    id_wide, name_wide = len(str(len(names) - 1)), max(map(len, ["class", *names]))
    rows = [("id", "class", heads)] + [(i, names[i], cells[i]) for i in range(len(names))]
    for i, name, row in rows:
        numbers = "  ".join(f"{cell:>{width}}" for cell, width in zip(row, wide, strict=True))
        print(f"{i:>{max(id_wide, 2)}}  {name:<{name_wide}}  {numbers}")


class Importer(NamedTuple):
    """One subcommand of get_args_parser.

    ``sources`` names the flags (by their dest) that give its source paths: --out may neither
    hold nor lie inside them. ``convert(args, stage, classes)`` writes the four folders into
    the staging folder ``stage``, with ``classes`` the ones main writes to classes.yaml, and
    returns counts for print_notes (read_binary_mask's kinds of mask; convert_pairs's masks read
    as instance ids or of ignore alone, with the images cvat, roboflow and cityscapes left out;
    coco's objects drawn as ignore over their box, and its annotations of images not listed) or
    None.
    """

    sources: tuple[str, ...]
    convert: Callable[[argparse.Namespace, Path, ClassConfig], dict[str, int | str] | None]


def _convert_penn_fudan(args: argparse.Namespace, out: Path, classes: ClassConfig) -> None:
    convert_penn_fudan(args.zip, out)  # its counts are the report's: not read_binary_mask's


# the subcommands of get_args_parser, each with its own flags there
IMPORTERS = {
    "pennfudan": Importer(("zip",), _convert_penn_fudan),
    "voc": Importer(("root",), lambda args, out, _: convert_voc(args.root, out, args.classes)),
    "coco": Importer(
        ("annotations", "images"),
        lambda args, out, _: convert_coco(
            args.annotations, args.images, out, args.classes, valid_every(args)
        ),
    ),
    "binary": Importer(("root",), lambda args, out, _: convert_binary(args.root, out)),
    "folder": Importer(("images", "masks"), convert_folder),
    "roboflow": Importer(
        ("root",), lambda args, out, classes: convert_roboflow(args.root, out, classes)
    ),
    "cvat": Importer(("root",), convert_cvat),
    "cityscapes": Importer(
        ("root",), lambda args, out, classes: convert_cityscapes(args.root, out, classes)
    ),
    "ade20k": Importer(
        ("root",), lambda args, out, classes: convert_ade20k(args.root, out, classes)
    ),
}


def importer_classes(args: argparse.Namespace, kept: list[str]) -> ClassConfig:
    """The classes of the dataset an importer writes: background and ``kept`` (VOC's colours
    for voc), roboflow's _classes.csv, cvat's labelmap.txt, folder's --config, or a benchmark's
    training classes by their label ids (MASK_IDS, which the converted masks no longer need)."""
    if getattr(args, "config", None) is not None:
        return ClassConfig.from_dict(read_yaml(args.config), source=str(args.config))
    if args.dataset == "cityscapes":
        names, ids, colors = zip(*CITYSCAPES_CLASSES, strict=True)
        return ClassConfig(names, None, colors, tuple((i,) for i in ids))
    if args.dataset == "ade20k":
        check_ade20k_root(args.root)
        names = read_ade20k_names(args.root)
        # no background among them: distinct_colors' black would leave wall (class 0) undrawn
        colors = distinct_colors(len(names) + 1)[1:]
        ids = tuple((i,) for i in range(1, len(names) + 1))  # 0 (other) reads as ignore
        try:
            return ClassConfig(tuple(names), None, colors, ids)
        except UserError as err:  # a name twice
            raise UserError(f"{args.root / 'objectInfo150.txt'}: {err}") from err
    if args.dataset == "cvat":
        return read_labelmap(args.root / "labelmap.txt")
    names = (
        read_roboflow_classes(args.root) if args.dataset == "roboflow" else ["background", *kept]
    )
    if args.dataset == "voc":
        voc = voc_palette(len(VOC_CLASSES))
        colors = mask_colors = tuple(voc[VOC_CLASSES.index(n)] for n in names)
    elif tuple(names) == DEFAULT_CLASSES.names:
        return DEFAULT_CLASSES  # whose colours training reads without --config
    else:  # COCO has 80 categories, roboflow any number
        colors = distinct_colors(len(names))
        # for overlays only: folder and roboflow would read a palette mask of class ids by
        # its colours, and labelme's (VOC's colours) made class 1, (128, 0, 0), class 2
        mask_colors = None
    try:
        return ClassConfig(tuple(names), mask_colors, colors)
    except UserError as err:  # roboflow's names: two classes of one name, a single class
        if args.dataset == "roboflow":
            raise UserError(f"{args.root / 'train' / '_classes.csv'}: {err}") from err
        flag = "--name" if args.dataset == "binary" else "--classes"
        raise UserError(f"{flag}: {err}") from err  # more classes than class ids


def holds_written_dataset(out: Path) -> bool:
    """Whether the folder ``out`` holds a dataset as this script writes one and nothing else:
    the file classes.yaml and the four folders, of files alone."""
    return (out / "classes.yaml").is_file() and all(
        p.name == "classes.yaml"
        or (p.name in LAYOUT_FOLDERS and p.is_dir() and all(f.is_file() for f in p.iterdir()))
        for p in out.iterdir()
    )


def check_out(args: argparse.Namespace, sources: tuple[str, ...]) -> None:
    """Refuse an --out that cannot replace or be replaced safely: one ending in "..", the current
    folder, a folder holding one of the ``sources`` flags' paths, a non-empty folder inside one
    of them (but a dataset an earlier run wrote there, which --force replaces), or a mount
    point."""
    out = args.out
    if out.name == "..":  # staging would rename "..", which no file system allows
        raise UserError(
            f"--out {out} ends in ..: pass the folder it names, --out {os.path.abspath(out)}"
        )
    if within(Path.cwd(), out):  # a folder cannot be renamed from inside
        raise UserError(
            f"--out {out} is the current folder or holds it; name a new folder, such as "
            f"--out data/{args.dataset}"
        )
    for key in sources:
        source = getattr(args, key)
        if within(source, out):
            flag = f"--{key} {source}"
            raise UserError(
                f"--out {out} holds the source {flag}: the new dataset would replace "
                f"{flag}; choose another --out"
            )
        if (
            within(out, source)
            and out.is_dir()
            and any(out.iterdir())
            and not holds_written_dataset(out)
        ):
            # --force would delete a part of the source (its train_masks, its images...)
            raise UserError(
                f"--out {out} is a folder of the source --{key} {source} and holds files: "
                "replacing it would delete them; choose an --out outside the source"
            )
    if os.path.ismount(out):  # said before converting; staging names those that ismount misses
        raise unswappable(out, "is a mount point (a Docker volume, a drive or a share)")


def unswappable(out: Path, why: str) -> UserError:
    """The error of an --out folder that cannot be renamed, so that the finished dataset, built
    beside it, cannot take its place."""
    return UserError(
        f"--out {out} {why}, so the new dataset cannot take its place; pass a new folder inside "
        f"it, such as --out {out / 'dataset'}"
    )


def print_notes(args: argparse.Namespace, kinds: dict, names: list[str], kept: list[str]) -> None:
    """Say what the importer did to masks and images that the user may not expect, from its
    counts of each kind (Importer.convert's)."""
    if kinds.get("other"):
        print(
            f"{kinds['other']} mask(s) held values other than 0 and 255 (JPEG compression or "
            "soft edges): thresholded at 128, so 128..255 became 1"
        )
    if kinds.get("instances"):
        # where this importer takes its classes from: folder's --classes only without --config
        if args.dataset == "roboflow":
            fix = f"list each class in {args.root / 'train' / '_classes.csv'}"
        elif args.dataset == "cvat":
            fix = f"list each class in {args.root / 'labelmap.txt'}, in the order of their ids"
        elif getattr(args, "config", None) is not None:
            fix = f"list each class in ALL_CLASSES of {args.config}, in the order of their ids"
        else:
            fix = "name each class with --classes, in the order of their ids"
        print(
            f"{kinds['instances']} mask(s) held values above 1, read as instance ids (0 "
            f"background, 1, 2, ... one per object): every object became {names[1]}. If those "
            f"values are class ids, {fix}"
        )
    if kinds.get("boxes"):
        print(
            f"{kinds['boxes']} annotation(s) of {kept} had a box but no mask (segmentation "
            f"empty or missing: rectangles): their boxes were marked {IGNORE_INDEX} (ignore), as "
            "their pixels are unknown"
        )
    if kinds.get("orphans"):
        print(
            f"{kinds['orphans']} annotation(s) of {kept} name an image id that no image has "
            f"({kinds['orphan_ids']}): left out, as there is no image to draw them on"
        )
    if kinds.get("exif"):
        print(
            f"{kinds['exif']} image(s) ({kinds['exif_names']}) have an EXIF orientation other "
            "than 1 (stored turned or mirrored) that no entry's width and height show the "
            "annotations followed: their masks were drawn on them as displayed, as training "
            "reads them. If the annotation tool showed them as stored, set their EXIF "
            "Orientation to 1 (exiftool -n -Orientation=1 FILE)"
        )
    if kinds.get("unannotated"):
        print(
            f"{kinds['unannotated']} image(s) without a mask in SegmentationClass/ (frames not "
            "annotated: CVAT writes masks for annotated frames only) were left out"
        )
    if kinds.get("unlisted"):
        print(
            f"{kinds['unlisted']} annotated image(s) in neither {kinds['lists']} (other subsets, "
            "such as Test) were left out"
        )
    if kinds.get("test"):
        print(
            f"{kinds['test']} image(s) in {args.root / 'test'} (the export's test split) were "
            "left out"
        )
    if kinds.get("unlabelled test"):
        print(
            f"{kinds['unlabelled test']} image(s) in {kinds['test folder']} (Cityscapes' test "
            "split, whose labels are not public) were left out"
        )
    # where 255 marks the one class, binary makes it class 1 (and keeps 0/1 masks as they are)
    binary = f"if 255 marks {names[1]}, map it to 1: {binary_command(args.out, names[1])}"
    if kinds.get("ignore only"):
        fix = (
            binary
            if len(names) == 2
            else f"label the masks with the class ids 1-{len(names) - 1} of {names[1:]}"
        )
        print(
            f"no mask holds a pixel of {' or '.join(names[1:])}, while {kinds['ignore only']} hold "
            f"{IGNORE_INDEX} (ignore): black-and-white masks? Training would learn background "
            f"alone; {fix}"
        )
    if count := kinds.get("0/255 among 0/1"):
        print(
            f"{count} mask(s) held 0 and {IGNORE_INDEX} (ignore) but no {names[1]}, while others "
            f"held {names[1]} as 1 and none held both: 0/{IGNORE_INDEX} masks among 0/1 ones "
            f"({kinds['0/255 among 0/1 names']})? Their {IGNORE_INDEX} was kept as ignore, so "
            f"training would not see their {names[1]}; {binary} (0/1 masks stay as they are)"
        )
    if kinds.get("0/1"):
        print(
            f"{kinds['0/1']} mask(s) held only 0 and 1: class ids already, kept as they are "
            f"(1 = {kept[0]})"
        )


def main(args: argparse.Namespace) -> None:
    if getattr(args, "valid_every", None) is not None and args.valid_every < 2:
        raise UserError("--valid-every must be at least 2")
    for key, (folder, what) in args.source_help.items():
        # said here, where the flag is known: the importers would call a file inside a folder
        # missing (export.zip/labelmap.txt), or fail to read a folder as a file
        path = getattr(args, key)
        if not path.exists():
            raise UserError(f"--{key} {path} does not exist: pass --{key} {what}")
        if folder and not path.is_dir():
            unzip = " (unzip it first)" if path.suffix.lower() == ".zip" else ""
            raise UserError(f"--{key} {path} is a file, not a folder: pass --{key} {what}{unzip}")
        if not folder and path.is_dir():
            unzipped = path / "PennFudanPed" if (path / "PennFudanPed").is_dir() else path
            if args.dataset == "pennfudan" and (unzipped / "PedMasks").is_dir():
                # a browser that unzips downloads (Safari): folder makes the same dataset of it
                images, masks = (shell_quote(str(unzipped / n)) for n in ("PNGImages", "PedMasks"))
                raise UserError(
                    f"--zip {path} is Penn-Fudan as unzipped: run python prepare_data.py folder "
                    f"--images {images} --masks {masks} --mask-suffix _mask --out "
                    f"{shell_quote(str(args.out))}"
                )
            raise UserError(f"--{key} {path} is a folder, not a file: pass --{key} {what}")
    suffix = getattr(args, "mask_suffix", "")
    separators = [c for c in "/\\" if c in suffix]
    stem, extension = os.path.splitext(suffix)
    if stem and extension.lower() in IMAGE_EXTENSIONS:  # _mask.png for x_mask.png
        raise UserError(
            f"--mask-suffix {suffix} ends in an extension, which masks' names are matched "
            f"without: pass --mask-suffix {stem}"
        )
    if suffix.lower() in IMAGE_EXTENSIONS or separators:
        # matched against the stem: ".png" and "_m/x" name no mask, and every file was named
        why = f"a path, with {separators[0]}" if separators else "a file extension"
        raise UserError(
            f"--mask-suffix {suffix} is {why}: it is what a mask's name adds to its image's "
            "before the extension (_mask for x.jpg and x_mask.png); masks are read in any image "
            "format, so drop it where a mask's name is its image's (x.jpg and x.png)"
        )
    if (
        args.dataset == "folder"
        and not args.mask_suffix
        and args.images.resolve() == args.masks.resolve()
    ):
        raise UserError(
            f"--images and --masks are one folder, {args.images}: pass --mask-suffix, what a "
            "mask's name adds to its image's (_mask for x.jpg and x_mask.png)"
        )
    flag = "--name" if args.dataset == "binary" else "--classes"
    kept = [args.name] if args.dataset == "binary" else getattr(args, "classes", ["person"])
    repeated = sorted({c for c in kept if kept.count(c) > 1} | {"background"} & set(kept))
    if repeated:
        raise UserError(
            f"{flag} names {repeated} twice (background is always class 0): list each class once"
        )
    if not all(name.strip() for name in kept):  # an unset shell variable: --classes "$NAME"
        raise UserError(f"{flag} gives a blank class name in {kept}: name each class")
    importer = IMPORTERS[args.dataset]
    check_out(args, importer.sources)
    classes = importer_classes(args, kept)
    with staging(args.out, args.force) as stage:
        kinds = importer.convert(args, stage, classes) or {}  # masks of each kind
        for split in SPLITS:
            if not (stage / f"{split}_masks").is_dir():
                raise UserError(f"the {split} split came out empty; nothing was written")
        # the masks written hold class ids, which MASK_IDS would read as label ids again
        written = dataclasses.replace(classes, mask_ids=None)
        (stage / "classes.yaml").write_text(yaml.safe_dump(written.to_dict(), sort_keys=False))
    names = list(classes.names)
    report(args.out, names)
    print_notes(args, kinds, names, kept)
    print(
        f"Wrote {args.out}; train with: python train.py --data {shell_quote(str(args.out))} "
        f"--config {shell_quote(str(args.out / 'classes.yaml'))}"
    )


if __name__ == "__main__":
    run_script(lambda: main(get_args_parser().parse_args()))
