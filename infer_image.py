"""Segment images: a file, a folder or a glob.

    python infer_image.py --input photos/
    python infer_image.py --input "shots/**/*.jpg" --model outputs/best_model_iou.pth --alpha 0.6

For each image it writes <stem>_overlay.jpg and <stem>_mask.png (class ids, at the size of the
image as displayed) to --out-dir; images that share a stem keep their subfolders (a/x, b/x).
With --legend the overlays key their classes, and legend.png keys every class and its id.
"""

import os

# MPS reads this once, when torch loads: ops it lacks then run on the CPU instead of failing.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

import argparse
import glob
import logging
import time
from collections import Counter
from pathlib import Path

from PIL import Image, PngImagePlugin

from config import (
    DEFAULT_OUT_DIR,
    IMAGE_EXTENSIONS,
    check_inference_args,
    inference_flags,
    nonempty,
    parse_one_input,
    runtime_flags,
)
from datasets import (
    OTHER_IMAGE_EXTENSIONS,
    DataError,
    check_image_header,
    frame_count,
    read_image,
)
from engine import Predictor, predictor_from_args, speed_line
from utils import (
    QUEUE_BYTES,
    OrderedWriter,
    UserError,
    array_bytes,
    atomic_path,
    check_writable,
    first_few,
    legend_sheet,
    opencv_threads_for,
    pick_device,
    prefetch,
    run_script,
    same_folder,
    show,
    within,
    write_image,
    write_png,
)

log = logging.getLogger("dinoseg")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Segment images with a trained checkpoint.",
        parents=[inference_flags(DEFAULT_OUT_DIR / "inference_results_image"), runtime_flags()],
    )
    parser.add_argument(
        "--input",
        type=nonempty,
        required=True,
        metavar="PATH",
        help="an image file, a folder, or a glob",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """get_args_parser's arguments; a glob the shell expanded (--input photos/*.jpg, unquoted)
    is named as such (config.parse_one_input)."""
    return parse_one_input(get_args_parser(), argv, _several_images)


def _several_images(first: str, extra: list[str]) -> str:
    """The message for --input ``first`` followed by the files ``extra``: the glob to quote."""
    folder = Path(first).parent
    suffixes = {Path(arg).suffix for arg in (first, *extra)}
    glob = folder / f"*{suffixes.pop() if len(suffixes) == 1 else ''}"
    return (
        f"--input takes one file, folder or glob, and got {len(extra) + 1} files: a glob the "
        f'shell expanded? Quote it, --input "{glob}", or pass their folder, --input {folder}'
    )


OUTPUT_SUFFIXES = ("_mask.png", "_overlay.jpg")  # what save_result writes after each name
# videos given to this script rather than to infer_video.py (the containers phones, cameras and
# screen recorders write)
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv")
JPEG_MAX_SIDE = 65500  # the overlay's format holds no larger image
LEGEND_FILE = "legend.png"  # --legend's key of every class, in --out-dir
# legend.png's PNG text that tells it from a user's file of that name (is_legend)
LEGEND_MARK = ("Software", "infer_image.py --legend")


def is_output(path: Path, out_dir: Path | None) -> bool:
    """True for a file an earlier run wrote: a mask or overlay in --out-dir or below it, or its
    legend.png (the folders compared by identity: on macOS --out-dir Results is the folder
    results)."""
    if out_dir is None:
        return False
    if path.name == LEGEND_FILE and same_folder(path.parent, Path(out_dir)):
        return is_legend(path)
    return path.name.endswith(OUTPUT_SUFFIXES) and within(path.parent, Path(out_dir))


def is_legend(path: Path) -> bool:
    """Whether ``path`` is a legend.png this script wrote (by its LEGEND_MARK), not a photo or
    a key of the user's that --legend must not replace."""
    key, value = LEGEND_MARK
    try:
        with Image.open(path) as image:  # the header and the text before the pixels
            return image.format == "PNG" and image.info.get(key) == value
    except (OSError, ValueError):
        return False


def write_legend(out_dir: Path, predictor: Predictor) -> None:
    """Write OUT/legend.png (utils.legend_sheet: every class's colour, id and name) atomically,
    marked as this script's by LEGEND_MARK."""
    sheet = legend_sheet(predictor.classes.names, predictor.classes.vis_colors)
    info = PngImagePlugin.PngInfo()
    info.add_text(*LEGEND_MARK)
    path = out_dir / LEGEND_FILE
    try:
        with atomic_path(path) as tmp:
            write_image(tmp, Image.fromarray(sheet), "PNG", pnginfo=info)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err}; choose another --out-dir") from err


def find_images(spec: str, out_dir: Path | None = None) -> list[Path]:
    """The images named by --input: a file, the images of a folder, or a glob's matches.

    A folder or glob leaves out the masks and overlays an earlier run wrote to ``out_dir`` (an
    --out-dir inside the inputs would otherwise feed them back in, run after run), and names
    the files of other image formats it meets (.gif, .avif) and a folder's subfolders, which are
    not read, in a warning.
    """
    spec = os.path.expanduser(spec)  # as config.path_arg: --input=~/photos keeps its ~
    path = Path(spec)
    if path.is_file():
        check_image_file(spec, path)
        return [path]
    if not any(c in spec for c in "*?[") and not path.exists():
        raise UserError(f"--input {spec} does not exist; give an image file, a folder or a glob")
    # A folder's hidden files are left out as a glob's are: macOS writes "._NAME" beside each
    # file it copies to a USB drive or a network share (metadata, not pixels)
    matches = (
        [p for p in path.iterdir() if not p.name.startswith(".")]
        if path.is_dir()
        else [Path(p) for p in glob.glob(spec, recursive=True) or literal_folder_glob(path)]
    )
    found = sorted(
        p
        for p in matches
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not is_output(p, out_dir)
    )
    warn_of_other_formats(matches)
    if path.is_dir():
        warn_of_subfolders(path, matches, out_dir)
    found = without_label_masks(found)
    if not found:
        kinds = " ".join(IMAGE_EXTENSIONS)
        raise UserError(
            f"--input {spec}: no images found (give a file, a folder or a glob of {kinds})"
        )
    return found


def check_image_file(spec: str, path: Path) -> None:
    """Refuse the file --input names where it is a video, an image of a format the installed
    Pillow does not read, or no image by its header: before the model loads, where reading it
    would call it unreadable or corrupt once it has."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        raise UserError(f"--input {spec} is a video, not an image: segment it with infer_video.py")
    if suffix in OTHER_IMAGE_EXTENSIONS and suffix not in Image.registered_extensions():
        # a phone's .heic without a plug-in (or .avif before Pillow 11.3)
        raise UserError(
            f"--input {spec} is a {suffix} image, a format the installed Pillow does not read: "
            "convert it to JPEG or PNG"
        )
    try:
        check_image_header(path)
    except DataError as err:
        raise UserError(f"--input {err}; give an image file, a folder or a glob") from err


def warn_of_other_formats(matches: list[Path]) -> None:
    """Name the files of ``matches`` in image formats this script does not read: a photo saved
    as .gif or .avif would be missing from the results without a word."""
    other = sorted(
        p.name for p in matches if p.suffix.lower() in OTHER_IMAGE_EXTENSIONS and p.is_file()
    )
    if other:
        log.warning(
            "%d files of other image formats are not read: %s (convert them to %s)",
            len(other),
            first_few(other),
            " ".join(IMAGE_EXTENSIONS),
        )


def warn_of_subfolders(folder: Path, matches: list[Path], out_dir: Path | None) -> None:
    """Name the subfolders among ``folder``'s entries ``matches``, which are not read: their
    photos would be missing without a word. The one holding ``out_dir`` is this script's own."""
    skipped = sorted(
        f"{p.name}/" for p in matches if p.is_dir() and not (out_dir and within(Path(out_dir), p))
    )
    if skipped:
        log.warning(
            "%d %s not read: %s (a folder's own images only; to read its subfolders too, give "
            'a glob: "%s")',
            len(skipped),
            "subfolder is" if len(skipped) == 1 else "subfolders are",
            first_few(skipped),
            folder / "**" / "*.jpg",
        )


def without_label_masks(paths: list[Path]) -> list[Path]:
    """``paths`` less the label masks beside their images (see label_masks), named in a
    warning: a Roboflow export's labels, segmented as photos, filled --out-dir with noise."""
    labels = label_masks(paths)
    if not labels:
        return paths
    log.warning(
        "%d label mask(s) beside their images are not read: %s (NAME_mask.png of class "
        'ids beside NAME.jpg, as in a Roboflow export); to segment them, give a glob: "%s"',
        len(labels),
        first_few([p.name for p in labels]),
        labels[0].parent / "*_mask.png",
    )
    leave_out = set(labels)
    return [p for p in paths if p not in leave_out]


# Pillow modes of one channel: class ids, not a photo's colours
LABEL_MODES = ("1", "L", "P", "I", "I;16")


def label_masks(paths: list[Path]) -> list[Path]:
    """The files of ``paths`` that are the labels of an image among them: NAME_mask.png beside
    NAME.jpg (any image extension) with one channel, as Roboflow exports them. A colour
    NAME_mask.png is a photo of that name, and a mask whose image is not among ``paths`` (a
    glob of masks alone) was asked for."""
    stems = {(p.parent, p.stem.casefold()) for p in paths}
    labels = []
    for path in paths:
        stem = path.stem.casefold()
        if path.suffix.lower() != ".png" or not stem.endswith("_mask"):
            continue
        if (path.parent, stem.removesuffix("_mask")) not in stems:
            continue
        try:
            with Image.open(path) as image:  # the header only
                if image.mode in LABEL_MODES:
                    labels.append(path)
        except (OSError, ValueError):
            continue  # read_image names it among the files that cannot be read
    return labels


def literal_folder_glob(pattern: Path) -> list[str]:
    """The matches of ``pattern`` with its longest leading folder that exists taken as written.

    glob reads the brackets of a folder named "Photos [2024]" as a pattern (one of 2, 0 or 4),
    so a glob inside such a folder matched nothing; find_images tries this only then.
    """
    for folder in pattern.parents:
        if folder.is_dir():
            if folder == Path(glob.escape(str(folder))):
                return []  # no glob character in it: nothing to take otherwise
            rest = pattern.relative_to(folder)
            return glob.glob(os.path.join(glob.escape(str(folder)), rest), recursive=True)
    return []


def output_names(paths: list[Path]) -> dict[Path, str]:
    """The name each input's outputs start with: its stem, made unique where stems repeat.

    Images that share a stem (photos/a/x.jpg and photos/b/x.jpg) keep their folders below the
    inputs' common folder (a/x, b/x); files that still collide (x.jpg and x.png) keep their
    extension too (x_jpg, x_png). Names that differ only in case (Photo, photo) count as the
    same: on macOS and Windows they name one file.
    """
    stems = Counter(p.stem.casefold() for p in paths)
    root = Path(os.path.commonpath([p.parent.resolve() for p in paths]))
    names = {}
    for path in paths:
        names[path] = path.stem
        if stems[path.stem.casefold()] > 1:
            # the folder resolved, not the file: a symbolic link keeps its own name and place
            where = (path.parent.resolve() / path.name).relative_to(root)
            names[path] = where.with_suffix("").as_posix()
    repeats = Counter(name.casefold() for name in names.values())
    for path, name in names.items():
        if repeats[name.casefold()] > 1:
            names[path] = f"{name}_{path.suffix.lstrip('.').lower()}"
    # A name made above can still meet another file's stem (x.png -> x_png, and x_png.bmp)
    taken, used = {name.casefold() for name in names.values()}, set()
    for path, name in names.items():
        unique, n = name, 2
        while unique.casefold() in used or (unique != name and unique.casefold() in taken):
            unique, n = f"{name}_{n}", n + 1
        used.add(unique.casefold())
        names[path] = unique
    return names


def check_no_foreign_results(names: dict[Path, str], out_dir: Path, legend: bool = False) -> None:
    """Refuse to replace a file in ``out_dir`` that no earlier run wrote.

    An earlier run writes an image's mask and overlay together (save_result), so a mask without
    its overlay, or an overlay without its mask, is the user's: a Roboflow export keeps each
    image beside its NAME_mask.png of labels, which results written next to the photos replaced.
    With ``legend``, so is a legend.png without LEGEND_MARK.
    """
    legend_path = out_dir / LEGEND_FILE
    if legend and (legend_path.exists() or legend_path.is_symlink()) and not is_legend(legend_path):
        raise UserError(
            f"--legend would replace {legend_path}, which no earlier run wrote: choose another "
            "--out-dir, or move it away"
        )
    foreign = []
    for name in names.values():
        files = [out_dir / f"{name}{suffix}" for suffix in OUTPUT_SUFFIXES]
        present = [f.exists() for f in files]
        if any(present) and not all(present):
            foreign.append(files[present.index(True)].relative_to(out_dir).as_posix())
    if foreign:
        raise UserError(
            f"{len(foreign)} file(s) in --out-dir {out_dir} would be replaced by results, but no "
            f"earlier run wrote them (a mask without its overlay, or an overlay without its mask: "
            f"labels?): {first_few(foreign)}; choose another --out-dir, or move them away"
        )


def read_batches(
    paths: list[Path], predictor: Predictor, batch: int, several: list[str] | None = None
):
    """Yield (paths, images, resized batch, errors) groups of ``batch`` images, the last one
    shorter; unreadable files become errors (the resized batch is None where none was read).
    Files of several frames or pages, of which only the first is read, are added to
    ``several`` as "PATH (N frames)".

    An unreadable file does not shorten its batch: a compiled model pads a short batch to the
    size it compiled for, so a short first one would compile the model again at the second.
    """
    ok, images, errors = [], [], []
    for i, path in enumerate(paths, 1):
        try:
            images.append(read_image(path))
            ok.append(path)
            if several is not None and (frames := frame_count(path)) > 1:
                several.append(f"{path} ({frames} frames)")
        except DataError as err:
            errors.append(str(err))
        if len(images) == batch or i == len(paths):
            resized = predictor.resize_batch(images) if images else None
            yield ok, images, resized, errors
            ok, images, errors = [], [], []


def save_result(
    out_dir: Path, name: str, image, mask, predictor: Predictor, alpha: float, legend: bool = False
) -> None:
    """Write the mask and the overlay (keying its classes with ``legend``); both land, or (if
    either cannot be written) neither."""
    if max(mask.shape) > JPEG_MAX_SIDE:  # Pillow would only say "broken data stream"
        raise ValueError(f"a JPEG overlay holds at most {JPEG_MAX_SIDE} pixels a side")
    mask_path, overlay_path = (out_dir / f"{name}{suffix}" for suffix in OUTPUT_SUFFIXES)
    with atomic_path(mask_path) as mask_tmp, atomic_path(overlay_path) as overlay_tmp:
        write_png(mask_tmp, mask)
        overlay = Image.fromarray(predictor.overlay(image, mask, alpha, legend))
        write_image(overlay_tmp, overlay, "JPEG", quality=92)


def save_or_note(failures: list[str], path: Path, *args) -> None:
    """save_result, noting a failure (a name too long, a JPEG wider than 65500 pixels, a full
    disk) under the image's path instead of ending the run."""
    try:
        save_result(*args)
    except (OSError, ValueError) as err:
        failures.append(f"{path}: its results cannot be written ({err})")


def segment_images(paths: list[Path], names: dict[Path, str], predictor: Predictor, args) -> dict:
    """Run the pipeline: read thread -> model (this thread) -> write thread, each overlay shown
    with --show until the user stops showing.

    Returns:
        {"written", "seconds", "waited", "read_failures", "write_failures", "several_frames"}:
        the images whose results were written, the pipeline's seconds without the ``waited``
        ones --show spent waiting for keys, a message for each image that could not be read or
        written, and the files of several frames, whose first alone was segmented.
    """
    failures, write_failures, several, done = [], [], [], 0
    waited = 0.0  # seconds --show spent on the user, waiting for a key: not the pipeline's
    writer = OrderedWriter(max_bytes=QUEUE_BYTES)
    start = time.perf_counter()
    batches = prefetch(
        read_batches(paths, predictor, args.batch, several),
        max_bytes=QUEUE_BYTES,
        nbytes=lambda item: array_bytes(item[1], item[2]),
    )
    try:
        for ok, images, resized, errors in batches:
            failures += errors
            if not images:
                continue
            masks = predictor.predict_resized(resized, [im.shape[:2] for im in images])
            for path, image, mask in zip(ok, images, masks, strict=True):
                writer.submit(
                    save_or_note,
                    write_failures,
                    path,
                    args.out_dir,
                    names[path],
                    image,
                    mask,
                    predictor,
                    args.alpha,
                    args.legend,
                    nbytes=array_bytes(image, mask),
                )
                if args.show:
                    overlay = predictor.overlay(image, mask, args.alpha, args.legend)
                    shown = time.perf_counter()
                    # q, Esc or closing the window stops showing
                    args.show = show("infer_image", overlay, 0)
                    waited += time.perf_counter() - shown
            done += len(images)
    finally:
        # On an error or Ctrl-C too: the failed run's traceback holds ``batches`` and the
        # writer, whose threads would otherwise live (the reader polling for room) for as
        # long as it is kept, by a test or a notebook
        batches.close()
        writer.finish()
    return {
        "written": done - len(write_failures),
        "seconds": time.perf_counter() - start - waited,
        "waited": waited,
        "read_failures": failures,
        "write_failures": write_failures,
        "several_frames": several,
    }


def main(args: argparse.Namespace) -> None:
    check_inference_args(args)
    device = pick_device(args.device)
    paths = find_images(args.input, args.out_dir)
    names = output_names(paths)
    check_no_foreign_results(names, args.out_dir, args.legend)
    check_writable(args.out_dir, needed_bytes=2**20)  # before the model loads, not after it ran
    predictor = predictor_from_args(args, device)
    with opencv_threads_for(predictor.work_device()):
        stats = segment_images(paths, names, predictor, args)
    done, waited = stats["written"], stats["waited"]
    problems = []
    if args.legend and done:
        # one file of every class, whatever the images hold: the masks' grays read by it. Only
        # beside results: a run whose every image failed leaves no key to nothing
        try:
            write_legend(args.out_dir, predictor)
        except UserError as err:  # said with the images that failed, if any
            problems.append(str(err))
    if stats["several_frames"]:
        # an animation or a scanned document gave one mask, of its first frame, without a word
        log.warning(
            "%d image(s) hold several frames or pages, and only the first of each was "
            "segmented: %s (segment an animated GIF with infer_video.py; save other frames or "
            "pages as images of their own)",
            len(stats["several_frames"]),
            first_few(stats["several_frames"]),
        )
    if done:
        print(f"Segmented {done} image(s) into {args.out_dir}")
        print(speed_line(predictor, args, "image", predictor.model_fps()))
        left_out = f"; the {waited:.1f} s --show waited for keys left out" if waited else ""
        print(
            f"end to end: {done / stats['seconds']:.2f} images per second (reading, model, "
            f"writing{left_out})"
        )
    failed = {"read": stats["read_failures"], "written": stats["write_failures"]}
    for what, listed in failed.items():
        if listed:
            lines = "\n".join(f"  - {f}" for f in listed)
            problems.append(f"{len(listed)} of {len(paths)} image(s) could not be {what}:\n{lines}")
    if problems:
        raise UserError("\n".join(problems))


if __name__ == "__main__":
    run_script(lambda: main(parse_args()))
