"""The official hub model's attention against FusedAttention: time, memory and agreement.

    python benchmarks/bench_attention.py                          # torch.hub cache, 644x644
    python benchmarks/bench_attention.py --hub-dir ~/dinov2 --amp bf16 --batch 4
    python benchmarks/bench_attention.py --hub-dir tests/fake_dinov2_hub   # offline stand-in

Loads one DINOv2 model through torch.hub twice with the same official-layout weights: as the
official code builds it (without xFormers, its attention materializes every score matrix) and as
model.load_backbone returns it (FusedAttention). Prints the backbone's milliseconds per batch for
both, peak memory on CUDA, and the largest difference between their features.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# MPS reads this once, when torch loads: ops it lacks then run on the CPU instead of failing.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

import torch

from config import (
    BACKBONES,
    HUB_REPO,
    add_amp_flag,
    add_device_flag,
    add_imgsz_flag,
    check_at_least,
    check_imgsz,
    path_arg,
)
from engine import best_seconds, warm_up
from model import DinoBackbone, _hub_load, check_size_fits, load_backbone
from synthetic import random_official_weights
from utils import UserError, amp_dtype, peak_memory_mb, pick_device, run_script


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_imgsz_flag(parser, (644, 644), "input size (default 644 644)")
    add_device_flag(parser)
    add_amp_flag(parser, "the precision both models run in (default %(default)s)")
    parser.add_argument(
        "--batch", type=int, default=1, metavar="N", help="images per call (default %(default)s)"
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=3,
        metavar="N",
        help="timed repetitions, the best kept (default %(default)s)",
    )
    parser.add_argument(
        "--hub-dir",
        type=path_arg,
        default=None,
        metavar="DIR",
        help="a local clone of facebookresearch/dinov2 to load the hub code from (default: "
        "the torch.hub cache)",
    )
    return parser


@torch.inference_mode()
def backbone_seconds(backbone: DinoBackbone, x: torch.Tensor, reps: int) -> float:
    """Seconds of the backbone's fastest of ``reps`` forward passes over the batch ``x``."""
    # the official attention runs first: without this its figure would be the idle GPU's
    warm_up(lambda: backbone(x), x.device)
    return best_seconds(lambda: backbone(x), x.device, reps)


def main(args: argparse.Namespace) -> None:
    check_imgsz(args.imgsz)
    check_at_least(args, {"batch": 1, "reps": 1})
    device = pick_device(args.device)
    dtype = amp_dtype(args.amp, device) or torch.float32
    name = "dinov2_vits14"
    hub_code = Path(torch.hub.get_dir()) / "facebookresearch_dinov2_main"
    try:
        vit = _hub_load(name, args.hub_dir, fused=False, weights=None)
    except UserError as err:
        if args.hub_dir is not None or hub_code.is_dir():
            raise
        # _hub_load's offline options name train.py's --weights and --backbone-source: this
        # script times the official code itself, and takes only --hub-dir
        raise UserError(
            f"could not get the {HUB_REPO} code through torch.hub ({err.__cause__}); this "
            "benchmark times that code's attention. Offline, pass --hub-dir DIR, a local clone "
            f"of it (or tests/fake_dinov2_hub, its test stand-in), or fill {hub_code} on a "
            "machine with internet"
        ) from err
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pth"
        torch.save(random_official_weights(), weights)
        fused = load_backbone(name, "hub", str(weights), args.hub_dir)
        vit.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    official = DinoBackbone(vit, name, "hub", fused.blocks).eval()
    # the official attention's scores take the most
    check_size_fits(official, args.imgsz, args.batch, device, dtype)
    w, h = args.imgsz
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, h, w, generator=g).to(device, dtype)
    print(
        f"device {device}, {name} ({BACKBONES[name].depth} blocks), batch {args.batch}, "
        f"{w}x{h}, {str(dtype).removeprefix('torch.')}"
    )
    results = {}
    for label, backbone in (("official attention", official), ("FusedAttention", fused)):
        backbone = backbone.to(device, dtype)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = backbone_seconds(backbone, x, args.reps)
        with torch.inference_mode():
            features = backbone(x)[-1].float().cpu()
        results[label] = (seconds, peak_memory_mb(device), features)
        backbone.cpu()
    (t0, m0, f0), (t1, m1, f1) = results.values()
    memory = device.type == "cuda"
    for label, (seconds, mb, _) in results.items():
        extra = f", peak {mb:.0f} MB" if memory else ""
        print(
            f"{label:20s}{seconds * 1e3:10.1f} ms per batch through the backbone (best of "
            f"{args.reps}){extra}"
        )
    print(f"speed-up {t0 / t1:.2f}x" + (f", memory {m0 / m1:.2f}x less" if memory else ""))
    print(
        f"last-block features: max abs difference {(f0 - f1).abs().max().item():.2e}, "
        f"relative L2 {((f0 - f1).norm() / f0.norm()).item():.2e}"
    )


if __name__ == "__main__":
    run_script(lambda: main(get_args_parser().parse_args()))
