"""Training with the frozen-feature cache against training without it, at one image size.

    python benchmarks/bench_cache.py                  # 640x640 on this machine's device
    python benchmarks/bench_cache.py --train 136 --valid 34 --epochs 4

Trains the same generated dataset three times with augmentation off, each in its own process
(so peak memory is per run): without a cache, with --cache-features memory and with
--cache-features disk. Prints the epoch times, the speed-up of the epochs after the first (over
the uncached run's epochs after the first), the largest difference in validation metrics, the
cache size per image and the peak memory.
Official-layout random weights: speed does not depend on the values.
"""

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch

from config import add_device_flag, add_imgsz_flag, check_at_least, check_imgsz
from model import check_size_fits
from synthetic import PHOTO_SIZES, make_dataset, random_official_weights
from train import check_batch_statistics
from train import get_args_parser as train_args_parser
from utils import UserError, pick_device, read_csv, run_script, shell_quote

ROOT = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_imgsz_flag(parser, (640, 640), "training size (default 640 640)")
    parser.add_argument(
        "--train",
        type=int,
        default=24,
        metavar="N",
        help="generated training images (default %(default)s)",
    )
    parser.add_argument(
        "--valid",
        type=int,
        default=6,
        metavar="N",
        help="generated validation images (default %(default)s)",
    )
    parser.add_argument(
        "--epochs", type=int, default=3, metavar="N", help="at least 2 (default %(default)s)"
    )
    add_device_flag(parser)
    return parser


def train(data: Path, out: Path, weights: Path, args, *extra: str) -> tuple[list[dict], str]:
    """Run train.py with ``extra`` flags; returns its metrics.csv rows and its output."""
    cmd = [sys.executable, "train.py", "--data", str(data), "--out-dir", str(out),
           "--backbone-source", "timm", "--weights", str(weights), "--imgsz", *map(str, args.imgsz),
           "--epochs", str(args.epochs), "--no-augment", "--num-vis", "0", "--workers", "2",
           "--device", args.device, *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        # its advice names train.py's flags (--batch, --workers), which this script sets itself:
        # the command shows what they were
        raise SystemExit(
            f"{proc.stderr[-2000:].rstrip()}\n(from train.py, which bench_cache.py ran as: "
            f"{' '.join(map(shell_quote, cmd))})"
        )
    return read_csv(out / "metrics.csv"), proc.stdout + proc.stderr


def main(args: argparse.Namespace) -> None:
    # train.py would name the generated dataset's empty split, and the others only once the
    # dataset and the weights were generated
    check_at_least(args, {"train": 1, "valid": 1})
    check_imgsz(args.imgsz)
    # the runs keep train.py's --batch: only --train can give a batch more images
    batch = train_args_parser().get_default("batch")
    check_batch_statistics(batch, args.train, args.imgsz, more_images="--train 2 or more")
    device = pick_device(args.device)
    # train.py's own check would advise its --batch; the runs train ViT-S/14 in float32
    check_size_fits("dinov2_vits14", args.imgsz, batch, device)
    if args.epochs < 2:
        raise UserError(
            f"--epochs must be at least 2, not {args.epochs}: the speed-up is measured on the "
            "epochs after the first, once the cache is filled"
        )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp / "data", args.train, args.valid, sizes=PHOTO_SIZES, seed=5)
        weights = tmp / "dinov2_vits14_pretrain.pth"
        torch.save(random_official_weights(), weights)
        runs = {
            "uncached": train(data, tmp / "plain", weights, args),
            "memory cache": train(data, tmp / "mem", weights, args, "--cache-features", "memory"),
            "disk cache": train(data, tmp / "disk", weights, args, "--cache-features", "disk"),
        }
        cache_mb = sum(f.stat().st_size for f in (tmp / "disk/feature_cache").glob("*.pt")) / 2**20
    report(runs, cache_mb, args)


def report(runs: dict, cache_mb: float, args: argparse.Namespace) -> None:
    """Print the table: ``runs`` maps a row's name to its train() result, the uncached run's
    first; ``cache_mb`` is the disk cache's size."""
    w, h = args.imgsz
    print(
        f"{args.train} train + {args.valid} valid images at {w}x{h}, augmentation off, "
        f"{args.epochs} epochs"
    )
    base_rows = runs["uncached"][0]
    # like with like: the first epoch of every run carries its start-up
    uncached = later_epochs(base_rows)
    print(
        f"{'':14s}{'fill s':>8s}{'epoch 1 s':>11s}{'later epochs s':>16s}{'speed-up':>10s}"
        f"{'max |d valid mIoU|':>20s}{'peak MB':>9s}"
    )
    for name, (rows, log) in runs.items():
        later = later_epochs(rows)
        diff = max(
            abs(a["valid_miou"] - b["valid_miou"]) for a, b in zip(rows, base_rows, strict=True)
        )
        # "-": no cache to fill, or no peak memory where train.py cannot read it
        fill = logged(r"views computed in ([\d.]+) s", log, ".1f")
        peak = logged(r"peak memory (\d+) MB", log, ".0f")
        print(
            f"{name:14s}{fill:>8s}{rows[0]['seconds']:11.1f}"
            f"{later:16.2f}{uncached / later:9.1f}x{diff:20.2e}{peak:>9s}"
        )
    per_image = re.search(r"([\d.]+) MB per training image", runs["memory cache"][1]).group(1)
    print(
        f"cache size: {per_image} MB per training image (float16); "
        f"{cache_mb:.0f} MB on disk for {args.train + args.valid} images"
    )
    print(
        f"speed-up = uncached epochs after the first ({uncached:.2f} s) / the run's epochs after "
        "the first"
    )


def logged(pattern: str, log: str, spec: str) -> str:
    """The number ``pattern`` captures in train.py's output ``log``, formatted with ``spec``;
    "-" where the output does not hold it."""
    found = re.search(pattern, log)
    return format(float(found.group(1)), spec) if found else "-"


def later_epochs(rows: list[dict]) -> float:
    """Mean seconds of the epochs after the first (metrics.csv's ``seconds``)."""
    return sum(r["seconds"] for r in rows[1:]) / (len(rows) - 1)


if __name__ == "__main__":
    run_script(lambda: main(get_args_parser().parse_args()))
