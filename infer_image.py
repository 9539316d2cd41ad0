"""Segment images: a file, a folder or a glob.

    python infer_image.py --input photos/
    python infer_image.py --input "shots/**/*.jpg" --model outputs/best_model_iou.pth --alpha 0.6

For each image it writes <stem>_overlay.jpg and <stem>_mask.png (class ids, at the size of the
image as displayed) to --out-dir; images that share a stem keep their subfolders (a/x, b/x).
"""

import os

# MPS reads this once, when torch loads: ops it lacks then run on the CPU instead of failing.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

import argparse
import glob
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from config import (
    DEFAULT_OUT_DIR,
    IMAGE_EXTENSIONS,
    check_inference_args,
    inference_flags,
    runtime_flags,
)
from datasets import DataError, read_image
from engine import Predictor, predictor_from_args
from utils import (
    OrderedWriter,
    UserError,
    atomic_path,
    check_writable,
    pick_device,
    prefetch,
    run_script,
    show,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Segment images with a trained checkpoint.",
        parents=[inference_flags(DEFAULT_OUT_DIR / "inference_results_image"), runtime_flags()],
    )
    parser.add_argument("--input", required=True, help="an image file, a folder, or a glob")
    return parser


def find_images(spec: str) -> list[Path]:
    """The images named by --input: a file, the images of a folder, or a glob's matches."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if not any(c in spec for c in "*?[") and not path.exists():
        raise UserError(f"--input {spec} does not exist; give an image file, a folder or a glob")
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    else:
        matches = (Path(p) for p in glob.glob(spec, recursive=True))
        found = sorted(p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        kinds = " ".join(IMAGE_EXTENSIONS)
        raise UserError(
            f"--input {spec}: no images found (give a file, a folder or a glob of {kinds})"
        )
    return found


def output_names(paths: list[Path]) -> dict[Path, str]:
    """The name each input's outputs start with: its stem, made unique where stems repeat.

    Images that share a stem (photos/a/x.jpg and photos/b/x.jpg) keep their folders below the
    inputs' common folder (a/x, b/x); files that still collide (x.jpg and x.png) keep their
    extension too (x_jpg, x_png).
    """
    stems = Counter(p.stem for p in paths)
    root = Path(os.path.commonpath([p.parent.resolve() for p in paths]))
    names = {}
    for path in paths:
        names[path] = path.stem
        if stems[path.stem] > 1:
            names[path] = path.resolve().relative_to(root).with_suffix("").as_posix()
    repeats = Counter(names.values())
    for path, name in names.items():
        if repeats[name] > 1:
            names[path] = f"{name}_{path.suffix.lstrip('.').lower()}"
    return names


def read_batches(paths: list[Path], predictor: Predictor, batch: int):
    """Yield (paths, images, resized batch, errors) groups; unreadable files become errors."""
    for start in range(0, len(paths), batch):
        ok, images, errors = [], [], []
        for path in paths[start : start + batch]:
            try:
                images.append(read_image(path))
                ok.append(path)
            except DataError as err:
                errors.append(str(err))
        resized = np.stack([predictor.resize(im) for im in images]) if images else None
        yield ok, images, resized, errors


def save_result(out_dir: Path, name: str, image, mask, predictor: Predictor, alpha: float) -> None:
    with atomic_path(out_dir / f"{name}_mask.png") as tmp:
        Image.fromarray(mask).save(tmp, format="PNG")
    with atomic_path(out_dir / f"{name}_overlay.jpg") as tmp:
        Image.fromarray(predictor.overlay(image, mask, alpha)).save(tmp, format="JPEG", quality=92)


def main(args: argparse.Namespace) -> None:
    check_inference_args(args)
    device = pick_device(args.device)
    paths = find_images(args.input)
    names = output_names(paths)
    check_writable(args.out_dir, needed_bytes=2**20)  # before the model loads, not after it ran
    predictor = predictor_from_args(args, device)
    failures, done = [], 0
    writer = OrderedWriter()
    start = time.perf_counter()
    for ok, images, resized, errors in prefetch(read_batches(paths, predictor, args.batch)):
        failures += errors
        if not images:
            continue
        masks = predictor.predict_resized(resized, [im.shape[:2] for im in images])
        for path, image, mask in zip(ok, images, masks, strict=True):
            writer.submit(
                save_result, args.out_dir, names[path], image, mask, predictor, args.alpha
            )
            if args.show:
                overlay = predictor.overlay(image, mask, args.alpha)
                args.show = show("infer_image", overlay, 0)  # q or Esc stops showing
        done += len(images)
    writer.finish()
    elapsed = time.perf_counter() - start
    if done:
        model_fps = predictor.model_fps()
        print(f"Segmented {done} image(s) into {args.out_dir}")
        print(f"model: {1000 / model_fps:.1f} ms per image ({model_fps:.2f} FPS) on {device}")
        print(f"end to end: {done / elapsed:.2f} images per second (reading, model, writing)")
    if failures:
        lines = "\n".join(f"  - {f}" for f in failures)
        raise UserError(f"{len(failures)} of {len(paths)} image(s) could not be read:\n{lines}")


if __name__ == "__main__":
    run_script(lambda: main(get_args_parser().parse_args()))
