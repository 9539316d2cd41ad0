"""Training speed and memory: images per second and peak memory per setup and precision.

    python benchmarks/bench_train.py                                  # this device, 640x640
    python benchmarks/bench_train.py --device cuda --batch 32 --steps 30
    python benchmarks/bench_train.py --setups frozen --amp off bf16   # a subset

For each setup (frozen backbone, --fine-tune) and precision (--amp off, bf16, fp16 as the device
supports them) it runs train.py's training step (engine.train_one_epoch with AdamW, and a
GradScaler for fp16) on one generated batch that stays on the device, and prints:
- images per second over --steps steps after --warmup steps, timed with the device synchronized;
- peak memory (CUDA: allocated by PyTorch; CPU: resident), each run in a process of its own;
- the loss: every run starts from the same weights and sees the same batch, so a precision that
  trains wrongly shows up as a loss far from fp32's. "final loss" is measured afterwards in
  fp32, on the weights that run trained.

It also times the data pipeline alone (train.py's augmented loader over generated images with
--workers), to show whether the device would wait for data. Random weights (timm's
initialization): speed does not depend on the values.
"""

import argparse
import contextlib
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# MPS reads this once, when torch loads: ops it lacks then run on the CPU instead of failing.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

import torch
import torch.nn.functional as F

from config import (
    AMP_CHOICES,
    BACKBONES,
    DEFAULT_BACKBONE,
    DEFAULT_CLASSES,
    IGNORE_INDEX,
    add_device_flag,
    add_imgsz_flag,
    check_at_least,
    check_imgsz,
    check_learning_rates,
)
from datasets import SegmentationDataset, find_pairs
from engine import synchronize, train_one_epoch
from model import Segmentor, check_size_fits, load_backbone
from synthetic import PHOTO_SIZES, learnable_batch, make_dataset
from train import check_batch_statistics, make_loader
from utils import AMP_DTYPES, UserError, amp_dtype, peak_memory_mb, pick_device, run_script


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_imgsz_flag(parser, (640, 640), "training size (default 640 640)")
    add_device_flag(parser)
    parser.add_argument(
        "--backbone",
        choices=list(BACKBONES),
        default=DEFAULT_BACKBONE,
        help="the backbone, with random weights (default %(default)s)",
    )
    parser.add_argument(
        "--batch", type=int, default=8, metavar="N", help="batch size (default %(default)s)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=5,
        metavar="N",
        help="timed training steps per run (default %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        metavar="N",
        help="untimed steps before them (default %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        metavar="LR",
        help="head learning rate (default %(default)s)",
    )
    parser.add_argument(
        "--backbone-lr",
        type=float,
        default=1e-5,
        metavar="LR",
        help="backbone learning rate of the fine-tune setup (default %(default)s)",
    )
    parser.add_argument(
        "--setups",
        nargs="+",
        choices=["frozen", "fine-tune"],
        default=["frozen", "fine-tune"],
        help="frozen backbone, --fine-tune, or both (default frozen fine-tune)",
    )
    parser.add_argument(
        "--amp",
        nargs="+",
        choices=AMP_CHOICES,
        default=None,
        help="precisions to run (default: every one the device supports)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=4,
        metavar="N",
        help="data loader processes (default %(default)s)",
    )
    parser.add_argument(
        "--data-images",
        type=int,
        default=None,
        metavar="N",
        help="generated images for the data pipeline (default: 2 batches per worker, at least 32)",
    )
    return parser


def run_alone(context, args, setup: str, amp: str) -> dict:
    """train_run in a new process of ``context``'s; a Ctrl-C or SIGTERM here ends that one too.

    SIGTERM (and a Ctrl-C sent to this process alone) reaches this process only: leaving the
    pool then waited, silent, for the run to train every step, minutes on a CPU.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        pid = pool.submit(os.getpid).result()  # the one process the pool runs both in
        try:
            return pool.submit(train_run, args, setup, amp).result()
        except KeyboardInterrupt:  # utils.Terminated too
            with contextlib.suppress(ProcessLookupError):  # gone: a Ctrl-C reaches it too
                os.kill(pid, signal.SIGTERM)
            raise


def supported_amp(device: torch.device) -> list[str]:
    """The --amp values this device trains with: "off", and "bf16" and "fp16" where supported."""
    modes = ["off"]
    for amp in AMP_DTYPES:
        try:
            amp_dtype(amp, device, training=True)
        except UserError:  # this device (or its PyTorch) has no such precision
            continue
        modes.append(amp)
    return modes


def train_run(args, setup: str, amp: str) -> dict:
    """Train the start weights for warmup + steps steps; time the last ``steps``.

    Runs in a process of its own, so that peak memory is this run's alone.
    """
    device = pick_device(args.device)
    torch.manual_seed(0)  # the same start weights in every run
    backbone = load_backbone(args.backbone, "timm", None)
    num_classes = DEFAULT_CLASSES.num_classes
    model = Segmentor(backbone, num_classes, fine_tune=setup == "fine-tune")
    model.to(device)
    optimizer = torch.optim.AdamW(model.param_groups(args.lr, args.backbone_lr))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    dtype = amp_dtype(amp, device)
    images, masks = learnable_batch(args.batch, args.imgsz, device)

    def steps(n: int, desc: str) -> dict:
        loader = [(images, masks, None)] * n
        return train_one_epoch(model, loader, optimizer, device, num_classes, dtype, scaler, desc)

    steps(args.warmup, "warm-up")
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    timed = steps(args.steps, f"{setup} {amp}")
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = peak_memory_mb(device)  # before the fp32 check below, which is not training
    model.eval()
    with torch.no_grad():
        logits = model(images, size=masks.shape[-2:])
        final = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX).item()
    return {
        "images_per_s": args.steps * images.shape[0] / seconds,
        "peak_mb": peak,
        "train_loss": timed["loss"],
        "final_loss": final,
        "scale": scaler.get_scale() if scaler.is_enabled() else None,
    }


def data_images(args) -> int:
    """Enough images for every worker to load two batches: one batch would time one worker."""
    return args.data_images or max(32, 2 * args.batch * max(args.workers, 1))


def data_rate(args, folder: Path) -> float:
    """Images per second from train.py's augmented training loader over generated files."""
    make_dataset(folder, data_images(args), 0, sizes=PHOTO_SIZES, seed=3)
    pairs, _ = find_pairs(folder / "train_images", folder / "train_masks")
    dataset = SegmentationDataset(pairs, DEFAULT_CLASSES, tuple(args.imgsz), train=True)
    opts = argparse.Namespace(batch=args.batch, workers=args.workers, cache_features="off", seed=0)
    loader = make_loader(dataset, opts, torch.device("cpu"), True)
    for _ in loader:  # the first pass starts the workers, which the loader keeps
        pass
    start, count = time.perf_counter(), 0
    for images, _, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - start)


def main(args: argparse.Namespace) -> None:
    check_imgsz(args.imgsz)
    check_at_least(args, {"batch": 1, "steps": 1, "warmup": 0, "workers": 0})
    check_learning_rates(args, ("lr", "backbone_lr"), weight_decay=0.01)  # AdamW's default
    check_batch_statistics(args.batch, args.batch, args.imgsz, more_images="--batch 2 or more")
    if args.data_images is not None and args.data_images < 1:
        raise UserError("--data-images must be at least 1")
    device = pick_device(args.device)
    modes = args.amp or supported_amp(device)
    for amp in modes:
        amp_dtype(amp, device, training=True)  # refuse an unsupported precision before any run
    # the float32 run, where there is one, holds the most
    widest = torch.float32 if "off" in modes else torch.bfloat16
    check_size_fits(args.backbone, args.imgsz, args.batch, device, widest)
    w, h = args.imgsz
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(
        f"device {name} ({torch.get_num_threads()} CPU threads), {args.backbone}, {w}x{h}, "
        f"batch {args.batch}, {args.steps} timed steps after {args.warmup}"
    )
    print()
    print(
        f"{'setup':10s}{'amp':>6s}{'images/s':>10s}{'peak MB':>10s}{'train loss':>12s}"
        f"{'final loss':>12s}{'vs fp32':>9s}"
    )
    rows = []
    spawn = multiprocessing.get_context("spawn")
    for setup in args.setups:
        for amp in modes:
            r = run_alone(spawn, args, setup, amp)
            rows.append((setup, amp, r))
            # Each row as its run ends: a run stopped by a time limit keeps the rows before it.
            ref = next((x for s, a, x in rows if s == setup and a == "off"), None)
            compared = ref is not None and amp != "off"
            rel = f"{r['final_loss'] / ref['final_loss'] - 1:+8.1%}" if compared else f"{'-':>8s}"
            scale = f"  (GradScaler scale {r['scale']:g})" if r["scale"] is not None else ""
            print(
                f"{setup:10s}{amp:>6s}{r['images_per_s']:10.2f}{r['peak_mb']:10.0f}"
                f"{r['train_loss']:12.4f}{r['final_loss']:12.4f} {rel}{scale}",
                flush=True,
            )
    kind = "allocated by PyTorch on the GPU" if device.type == "cuda" else "resident memory"
    print(f"peak MB: {kind}, each run in a process of its own")

    with tempfile.TemporaryDirectory() as tmp:
        rate = data_rate(args, Path(tmp))
    print()
    (w0, h0), (w1, h1) = min(PHOTO_SIZES), max(PHOTO_SIZES)
    print(
        f"data pipeline: {rate:.1f} images/s from the augmented loader with {args.workers} "
        f"workers ({data_images(args)} generated images of {w0}x{h0} to {w1}x{h1}, half JPEG, "
        "half PNG)"
    )


if __name__ == "__main__":
    run_script(lambda: main(get_args_parser().parse_args()))
