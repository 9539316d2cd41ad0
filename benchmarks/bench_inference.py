"""Inference speed: the optimized pipeline against a naive baseline, and against the FLOP floor.

    python benchmarks/bench_inference.py                       # this device, 644x644, fp32
    python benchmarks/bench_inference.py --device cpu --amp bf16  # CPU with AVX-512 BF16 / AMX
    python benchmarks/bench_inference.py --device cpu --int8   # CPU with VNNI, no bf16
    python benchmarks/bench_inference.py --device cuda --amp bf16 --batch 32 --frames 512

Prints, for the same size and device, in one run:
- model-only milliseconds per frame and FPS (the network on a ready batch, synchronized);
- at batch 1, the latency of one predict() call on a video frame (resize, upload, network,
  upsampling, class ids, download);
- end-to-end FPS on a generated video through infer_video.py's pipeline;
- peak memory, each row's with its own model alone (the fast one is built after the naive row);
- the FLOP floor: FLOPs per frame / the best matrix-multiply rate measured here, in the dtype
  the model runs in (with --int8, the linear layers' FLOPs at the int8 rate, the rest at fp32's);
- how many mask pixels the fast path changes against the naive fp32 model;
- the same figures for a naive baseline (frame by frame, eager, fp32, decode -> infer ->
  encode in sequence), and the ratios;
- the pipeline's rate without the model (decode, resize, draw, encode): the end-to-end ceiling;
- with --onnx, ONNX Runtime on the CPU (fp32 with and without graph optimizations, int8 from
  onnxruntime 1.24): the graph's milliseconds per frame at batch 1, and how many mask pixels
  equal PyTorch fp32's; run last, so that the export is in no row's peak memory.

Without --model the network has official-layout random weights with roughly trained statistics:
speed does not depend on the values, and the ONNX rows' mask agreement is not flattered by
near-identity blocks. Its backbone is timm's implementation, or with --backbone-source hub (or
--hub-dir) the official code's.
"""

import argparse
import copy
import gc
import logging
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# MPS reads this once, when torch loads: ops it lacks then run on the CPU instead of failing.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

import cv2
import numpy as np
import torch

from config import (
    DEFAULT_BACKBONE,
    DEFAULT_CLASSES,
    OVERLAY_ALPHA,
    ClassConfig,
    add_amp_flag,
    add_device_flag,
    add_imgsz_flag,
    backbone_flags,
    check_at_least,
    check_imgsz,
    path_arg,
)
from engine import Predictor, best_seconds, synchronize, warm_up
from infer_video import open_video, segment_video
from model import (
    OnnxSegmentor,
    Segmentor,
    check_size_fits,
    flops_by_op,
    int8_quantizer,
    load_backbone,
    load_checkpoint,
    token_grid,
)
from synthetic import trained_like
from utils import (
    UserError,
    amp_dtype,
    opencv_threads_for,
    peak_memory_mb,
    pick_device,
    run_script,
)

log = logging.getLogger("dinoseg")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[backbone_flags(inference=True)]
    )
    # inherited from the inference scripts, where a checkpoint is always given
    parser._option_string_actions["--backbone"].help = (
        "with --model, the checkpoint's backbone must be this one; without, the backbone of the "
        f"random weights (default {DEFAULT_BACKBONE})"
    )
    parser._option_string_actions["--backbone-source"].help = (
        "with --model, rebuild the checkpoint's backbone through this source; without, the "
        "implementation of the random backbone: timm (default, no download) or hub (the official "
        "code, from --hub-dir or the torch.hub cache)"
    )
    add_imgsz_flag(parser, None, "input size (default: --model's, else 644 644)")
    add_device_flag(parser)
    add_amp_flag(parser, "the fast path's precision (default %(default)s)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="N",
        help="frames per model call of the fast path (default %(default)s)",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=16,
        metavar="N",
        help="length of the test video (default %(default)s)",
    )
    parser.add_argument(
        "--video-size",
        type=int,
        nargs=2,
        default=(640, 480),
        metavar=("W", "H"),
        help="size of the test video (default 640 480)",
    )
    parser.add_argument(
        "--model",
        type=path_arg,
        default=None,
        metavar="CKPT",
        help="a checkpoint (default: random)",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=3,
        metavar="N",
        help="timed repetitions of model-only runs (default %(default)s)",
    )
    parser.add_argument(
        "--int8", action="store_true", help="CPU: the fast path with int8 linear layers, compiled"
    )
    parser.add_argument(
        "--onnx", action="store_true", help="add ONNX Runtime rows: fp32 (optimized or not), int8"
    )
    return parser


MATMUL_SECONDS = 10.0  # a CPU's timings of one shape in matmul_rate, where a product is slow


def matmul_rate(dtype: torch.dtype, device: torch.device, dim: int, tokens: int) -> float:
    """Best FLOP/s over the model's GEMM shapes and a large square, in ``dtype`` (int8: int8
    products summed in int32, as quantized linear layers run them).

    Each shape's rate is that of its fastest timed group of products, as model_seconds takes
    the network's fastest run: a mean over the groups is slowed by any other work on the
    machine, and a lower rate flatters the model's ratio to the floor.
    """
    shapes = [(tokens, dim, 3 * dim), (tokens, dim, 4 * dim), (tokens, 4 * dim, dim)]
    shapes.append((4096, 4096, 4096) if device.type == "cuda" else (2048, 2048, 2048))
    best = 0.0
    for i, (m, k, n) in enumerate(shapes):
        if dtype == torch.int8:
            a = torch.randint(-128, 128, (m, k), device=device, dtype=dtype)
            b = torch.randint(-128, 128, (k, n), device=device, dtype=dtype)
            matmul = torch._int_mm
        else:
            a = torch.randn(m, k, device=device, dtype=dtype)
            b = torch.randn(k, n, device=device, dtype=dtype)
            matmul = torch.matmul
        # a GPU's product takes about a millisecond: timed 50 at a time, past the
        # synchronization's own cost
        per_group, groups = (50, 3) if device.type != "cpu" else (1, 20)
        product = partial(matmul, a, b)
        start = time.perf_counter()
        product()
        synchronize(device)
        once = time.perf_counter() - start
        if device.type == "cpu":
            # timed fewer times where one product takes long: an int8 one of 2048 on a CPU
            # without VNNI instructions takes 10 s (1.8 GOP/s), and 20 of them minutes
            groups = max(3, min(groups, int(MATMUL_SECONDS / once)))
        else:
            for _ in range(2):
                product()
        if i == 0:  # the first timing would find the GPU clocked down
            warm_up(product, device)
        seconds = best_seconds(product, device, groups, calls=per_group)
        best = max(best, 2 * m * k * n * per_group / seconds)
    return best


@torch.inference_mode()
def model_seconds(predictor: Predictor, batch: int, reps: int) -> float:
    """Seconds per frame of the predictor's network alone on a ready uint8 batch (best of
    ``reps``), compiled or not as the predictor runs it."""
    w, h = predictor.imgsz
    device = predictor.device
    images = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, device=device)
    forward = predictor.patch_logits
    warm_up(lambda: forward(images), device)  # and compilation, once for the whole run
    return best_seconds(lambda: forward(images), device, reps) / batch


def predict_latency(predictor: Predictor, frame: np.ndarray, calls: int) -> tuple[float, float]:
    """Median seconds of ``predictor.predict(frame)`` on a warm predictor (one frame in, its
    mask back on the CPU, which waits for the GPU), and the median of the network's part of
    those same calls, as the predictor times it: a figure from other runs could exceed the
    calls' own on a busy machine."""
    times, network = [], []
    for _ in range(calls):
        before = predictor.model_seconds
        start = time.perf_counter()
        predictor.predict(frame)
        times.append(time.perf_counter() - start)
        network.append(predictor.model_seconds - before)
    return float(np.median(times)), float(np.median(network))


def onnx_rows(
    base: Segmentor, classes: ClassConfig, imgsz, frames: list, folder: Path, reps: int
) -> list:
    """ONNX Runtime on the CPU, one row per graph and optimization level: (label, seconds per
    frame at batch 1 (best of ``reps``), share of the ``frames``' mask pixels equal to PyTorch
    fp32's)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export import export

    model = copy.deepcopy(base).cpu().float()
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    meta = {"classes": classes.to_dict(), "backbone": base.backbone.name}
    export(model, meta, imgsz, fp32)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    reference = Predictor(model, classes, imgsz).predict(frames)
    w, h = imgsz
    images = np.random.default_rng(0).integers(0, 256, (1, 3, h, w), dtype=np.uint8)
    rows = []
    level = ort.GraphOptimizationLevel
    for label, path, opt in (
        ("ORT fp32, no graph opts", fp32, level.ORT_DISABLE_ALL),
        ("ORT fp32, all graph opts", fp32, level.ORT_ENABLE_ALL),
        ("ORT int8 dynamic quant", int8, level.ORT_ENABLE_ALL),
    ):
        options = ort.SessionOptions()
        options.graph_optimization_level = opt
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except ort.capi.onnxruntime_pybind11_state.NotImplemented as err:
            if path != int8:
                raise
            # onnxruntime 1.18 to 1.23 have no ConvInteger for the int8 graph's weights, as
            # export.py --int8 says there: the float32 rows still tell the graph's speed
            log.warning(
                "ONNX Runtime %s cannot run the int8 graph (%s); its row is left out. The int8 "
                "graph needs onnxruntime 1.24 or later",
                ort.__version__,
                str(err)[:200],
            )
            continue
        run = partial(session.run, None, {"images": images})
        run()
        best = best_seconds(run, torch.device("cpu"), reps)
        # the int8 graph one frame at a time, as --backend onnxruntime runs it (OnnxSegmentor)
        network = OnnxSegmentor(session, classes, imgsz, base.backbone.name, per_image=path == int8)
        masks = Predictor(network, classes, imgsz).predict(frames)
        agree = sum((a == b).sum() for a, b in zip(masks, reference, strict=True))
        rows.append((label, best, agree / sum(m.size for m in masks)))
    return rows


def make_video(path: Path, frames: int, size) -> None:
    rng = np.random.default_rng(0)
    w, h = size
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
    if not video.isOpened():  # no frames to time: fail here, not at the first frame's look-up
        raise UserError(f"OpenCV's mp4v encoder refuses a {w}x{h} video: change --video-size")
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(frames):
        video.write(np.roll(base, 4 * i, axis=1))  # moving content, like a real clip
    video.release()


def first_frames(video: Path, n: int) -> list[np.ndarray]:
    """The first ``n`` frames of ``video`` (fewer if it is shorter), (H, W, 3) uint8 RGB."""
    capture, frames = cv2.VideoCapture(str(video)), []
    while len(frames) < n:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def naive_video(path: Path, out: Path, predictor: Predictor) -> float:
    """The baseline: one frame at a time, decode -> infer -> draw -> encode, in sequence."""
    capture = cv2.VideoCapture(str(path))
    w, h = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    video = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
    frames = 0
    start = time.perf_counter()
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        mask = predictor.predict(rgb)
        video.write(cv2.cvtColor(predictor.overlay(rgb, mask), cv2.COLOR_RGB2BGR))
        frames += 1
    elapsed = time.perf_counter() - start
    video.release()
    capture.release()
    return frames / elapsed


class NoModel(Predictor):
    """The fast pipeline with the network replaced by empty masks: the decode, resize, draw and
    encode rate alone, which bounds any end-to-end FPS on this machine."""

    def predict_resized(self, batch: np.ndarray, sizes) -> list:
        return [np.zeros(size, np.uint8) for size in sizes]

    def model_fps(self) -> float:
        return float("nan")  # no model


def pipeline_fps(video: Path, predictor: Predictor, out: Path, batch: int) -> float:
    """End-to-end FPS of infer_video.py's pipeline (decode, model, draw, encode on threads of
    their own) from ``video`` to ``out``, with OpenCV's threads set as infer_video.py sets them."""
    opts = argparse.Namespace(
        batch=batch, alpha=OVERLAY_ALPHA, legend=False, show=False, input=str(video)
    )
    with opencv_threads_for(predictor.work_device()):
        return segment_video(open_video(str(video)), predictor, out, opts)["fps"]


def io_ceiling(
    video: Path, out: Path, model: Segmentor, classes: ClassConfig, imgsz, batch: int
) -> float:
    """End-to-end FPS of infer_video.py's pipeline without the model."""
    return pipeline_fps(video, NoModel(model, classes, imgsz), out, batch)


def bench_model(
    args: argparse.Namespace, device: torch.device
) -> tuple[Segmentor, ClassConfig, tuple]:
    """The fp32 model to time, in eval mode on ``device`` (--model's, or one of trained-like
    synthetic weights), its classes (the checkpoint's, else the default two), and the (W, H) it
    runs at: --imgsz, else the checkpoint's, else 644."""
    if args.model:
        base, ckpt = load_checkpoint(
            args.model, device, args.backbone_source, args.hub_dir, args.backbone
        )
        classes = ClassConfig.from_dict(ckpt["classes"], source=str(args.model))
        # the size the inference scripts run it at: its mask agreement is the one to deploy on
        imgsz = tuple(args.imgsz or ckpt["imgsz"])
    else:
        # --hub-dir alone asks for the official code, as --backbone-source hub does
        source = args.backbone_source or ("hub" if args.hub_dir else "timm")
        backbone = load_backbone(args.backbone or DEFAULT_BACKBONE, source, None, args.hub_dir)
        backbone.load_official_state_dict(trained_like(backbone.official_shapes()))
        classes = DEFAULT_CLASSES
        base = Segmentor(backbone, classes.num_classes)
        imgsz = tuple(args.imgsz or (644, 644))
    return base.to(device).eval(), classes, imgsz


def flop_floor(base: Segmentor, imgsz, args, device: torch.device, dtype: torch.dtype) -> tuple:
    """Print a frame's FLOPs at ``imgsz`` (W, H) and the matmul rates; returns (FLOPs per frame,
    the float32 rate in FLOP/s, the fast model's FLOP floor in seconds per frame)."""
    w, h = imgsz
    by_op = flops_by_op(copy.deepcopy(base).cpu(), torch.zeros(1, 3, h, w))
    flops = sum(by_op.values())
    grid_w, grid_h = token_grid(imgsz)
    tokens = grid_w * grid_h
    dim = base.backbone.embed_dim
    rate32 = matmul_rate(torch.float32, device, dim, tokens)
    print(
        f"device {device} ({torch.get_num_threads()} CPU threads), input {w}x{h}, "
        f"{flops / 1e9:.1f} GFLOPs per frame"
    )
    print(f"matmul rate {rate32 / 1e12:.3f} TFLOP/s (float32)")
    if args.int8:
        # The backbone's linear layers (addmm) run in int8; attention, the patch embedding and
        # the head stay float32.
        rate8 = matmul_rate(torch.int8, device, dim, tokens)
        linear = by_op.get("aten.addmm", 0)
        floor = linear / rate8 + (flops - linear) / rate32
        print(
            f"matmul rate {rate8 / 1e12:.3f} TOP/s (int8) -> FLOP floor {floor * 1e3:.1f} ms per "
            f"frame ({linear / 1e9:.1f} GFLOPs at the int8 rate, the rest at the float32 rate)"
        )
    else:
        rate = rate32 if dtype == torch.float32 else matmul_rate(dtype, device, dim, tokens)
        floor = flops / rate
        if dtype != torch.float32:
            print(f"matmul rate {rate / 1e12:.3f} TFLOP/s ({str(dtype).removeprefix('torch.')})")
        print(f"FLOP floor {floor * 1e3:.1f} ms per frame")
    return flops, rate32, floor


def bench_row(
    name: str,
    model: Segmentor,
    classes: ClassConfig,
    imgsz,
    batch: int,
    compile: bool,
    reps: int,
    video: Path,
    sample,
) -> tuple:
    """Time one row: "naive" (frame by frame, in sequence) or "fast" (the pipeline) of ``model``
    at ``imgsz`` (W, H), on ``video``; its outputs, drawn in ``classes``' colours, go beside it.

    Returns ((model seconds per frame, end-to-end FPS, peak memory in MB), (batch-1 latency as
    predict_latency gives it, calls) or None at another batch, the ``sample`` frames' masks).
    """
    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    predictor = Predictor(model, classes, imgsz, compile=compile)
    seconds = model_seconds(predictor, batch, reps)
    if name == "naive":
        fps = naive_video(video, video.with_name("naive.mp4"), predictor)
    else:
        w, h = imgsz
        predictor.predict([np.zeros((h, w, 3), np.uint8)] * batch)  # warm-up, compile
        fps = pipeline_fps(video, predictor, video.with_name("f.mp4"), batch)
    row = (seconds, fps, peak_memory_mb(device))
    latency = None
    if batch == 1:
        calls = 10 * reps if device.type == "cuda" else reps
        latency = (predict_latency(predictor, sample[0], calls), calls)
    # in batches of the timed size: another size would compile another graph
    masks = [
        m for i in range(0, len(sample), batch) for m in predictor.predict(sample[i : i + batch])
    ]
    return row, latency, masks


def main(args: argparse.Namespace) -> None:
    check_imgsz(args.imgsz)
    check_at_least(args, {"batch": 1, "frames": 1, "reps": 1})
    if min(args.video_size) < 2:  # mp4v writes no video of one pixel a side
        raise UserError("--video-size must be at least 2 2")
    device = pick_device(args.device)
    dtype = amp_dtype(args.amp, device) or torch.float32
    if args.int8 and (device.type != "cpu" or args.amp != "off"):
        raise UserError("--int8 is a CPU fast path from float32: use it with --amp off on the CPU")
    if args.int8:
        int8_quantizer()  # torchao missing: say so now, not after the naive row's minutes
    torch.manual_seed(0)
    model, classes, imgsz = bench_model(args, device)  # the naive model; the fast one replaces it
    check_size_fits(model.backbone, imgsz, 1, device)  # the naive row's float32 batch of one
    check_size_fits(model.backbone, imgsz, args.batch, device, dtype)
    weights = args.model or "random weights (no --model)"
    print(f"model {model.backbone.name} via {model.backbone.source}, {weights}")
    flops, rate32, floor = flop_floor(model, imgsz, args, device, dtype)

    rows, latency, masks = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "bench.mp4"
        make_video(video, args.frames, args.video_size)
        sample = first_frames(video, 4)  # for the latency and the mask agreement
        rows["naive"], latency["naive"], masks["naive"] = bench_row(
            "naive", model, classes, imgsz, 1, False, args.reps, video, sample
        )
        # The fast model is built from the naive one only now, and replaces it: each row's peak
        # memory then holds its own model's weights alone (on CUDA a bf16 ViT-g copy is 2.2 GB)
        model = copy.deepcopy(model).cast(dtype)
        if args.int8:
            model.quantize_int8()
        gc.collect()
        compile = args.compile or args.int8
        rows["fast"], latency["fast"], masks["fast"] = bench_row(
            "fast", model, classes, imgsz, args.batch, compile, args.reps, video, sample
        )
        latency = {name: value for name, value in latency.items() if value is not None}
        ceiling = io_ceiling(video, Path(tmp) / "io.mp4", model, classes, imgsz, args.batch)
        ort_rows = []
        if args.onnx:
            # Last: on the CPU peak memory is a high-water mark, which the export and the
            # sessions would raise for the rows above. The naive fp32 model is built again, on
            # the same seed: it was replaced by the fast one.
            del model
            gc.collect()
            torch.manual_seed(0)
            fp32, _, _ = bench_model(args, torch.device("cpu"))
            ort_rows = onnx_rows(fp32, classes, imgsz, sample, Path(tmp), args.reps)

    print()
    print(
        f"{'':28s}{'model ms/frame':>16s}{'model FPS':>12s}{'end-to-end FPS':>16s}{'peak MB':>10s}"
    )
    precision = "int8" if args.int8 else {"off": "fp32"}.get(args.amp, args.amp)
    compiled = ", compiled" if args.compile or args.int8 else ""
    labels = {
        "naive": "naive (fp32, batch 1, eager)",
        "fast": f"fast ({precision}, batch {args.batch}{compiled})",
    }
    for name, (seconds, fps, mem) in rows.items():
        print(f"{labels[name]:28s}{seconds * 1e3:16.1f}{1 / seconds:12.2f}{fps:16.2f}{mem:10.0f}")
    fast_s, fast_fps, _ = rows["fast"]
    naive_s, naive_fps, _ = rows["naive"]
    print(f"{'I/O only (no model)':28s}{'-':>16s}{'-':>12s}{ceiling:16.2f}")
    vw, vh = args.video_size
    print(
        f"model: the network alone on a ready batch, fastest of {args.reps} runs; end to end: "
        f"{args.frames} frames of a {vw}x{vh} video from decoding to encoding"
    )
    print()
    print(f"end to end: fast / naive = {fast_fps / naive_fps:.2f}x")
    print(f"model: fast / naive = {naive_s / fast_s:.2f}x faster")
    print(
        f"model time / FLOP floor = {fast_s / floor:.2f} (fast), "
        f"{naive_s * rate32 / flops:.2f} (naive, against the fp32 floor)"
    )
    for name, ((seconds, network), calls) in latency.items():
        print(
            f"batch-1 latency, {labels[name]}: {seconds * 1e3:.2f} ms per predict() call on one "
            f"{vw}x{vh} frame (median of {calls}), {network * 1e3:.2f} ms of it the network "
            "(median of the same calls)"
        )
    equal = sum((a == b).sum() for a, b in zip(masks["fast"], masks["naive"], strict=True))
    print(
        f"masks equal to the naive fp32 ones: {equal / sum(m.size for m in masks['naive']):.4%} "
        f"of the pixels of {len(sample)} video frames"
    )
    if ort_rows:
        print()
        print(
            f"{'ONNX Runtime (CPU), batch 1':28s}{'model ms/frame':>16s}{'vs naive':>10s}"
            f"{'masks = PyTorch fp32':>22s}"
        )
        for label, seconds, agree in ort_rows:
            print(f"{label:28s}{seconds * 1e3:16.1f}{naive_s / seconds:9.2f}x{agree:21.4%}")
        if device.type != "cpu":
            print(f"vs naive: the naive model's time on {device} over ONNX Runtime's on the CPU")
    if device.type == "cuda":
        print(f"peak GPU memory is torch.cuda.max_memory_allocated; {torch.cuda.get_device_name()}")
    else:
        print("peak MB is the process's resident high-water mark so far (naive ran first)")


if __name__ == "__main__":
    run_script(lambda: main(get_args_parser().parse_args()))
