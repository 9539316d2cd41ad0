"""Checks that need a CUDA GPU; skipped without one. On a GPU machine:

    python -m pytest tests/test_cuda.py -v

Each compares the GPU with the CPU in float32, the reference the rest of the suite checks.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from config import DEFAULT_CLASSES, IGNORE_INDEX
from conftest import FAKE_HUB, ROOT
from engine import Predictor, class_ids, train_one_epoch
from model import DinoBackbone, Segmentor, _hub_load, load_backbone, load_checkpoint
from synthetic import learnable_batch, make_dataset, write_clip
from utils import amp_dtype, read_csv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU = torch.device("cuda")
CPU = torch.device("cpu")


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    x, reference = x.float().cpu(), reference.float().cpu()
    return ((x - reference).norm() / reference.norm()).item()


def test_official_and_fused_attention_agree_on_the_gpu(weights_file):
    fused = load_backbone("dinov2_vits14", "hub", str(weights_file), FAKE_HUB)
    vit = _hub_load("dinov2_vits14", FAKE_HUB, fused=False)
    vit.load_state_dict(torch.load(weights_file, weights_only=True))
    official = DinoBackbone(vit, "dinov2_vits14", "hub", fused.blocks).eval()
    x = torch.randn(2, 3, 112, 84, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = official(x)[-1]
        for dtype, tolerance in ((torch.float32, 1e-3), (torch.bfloat16, 3e-2)):
            fused.to(GPU, dtype)
            error = relative_error(fused(x.to(GPU, dtype))[-1], reference)
            assert error < tolerance, f"{dtype}: {error:.2e}"


def test_two_class_ids_on_the_gpu_are_those_of_max():
    # engine.class_ids compares two classes instead of max(1): the GPU's max must agree on ties,
    # infinities and NaN (the highest, the first of two) as the CPU's does
    special = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.0, -1.0]
    pairs = torch.tensor([(a, b) for a in special for b in special]).T[None, :, :, None]
    noise = torch.randn(2, 2, 61, 67, generator=torch.Generator().manual_seed(1))
    noise[noise.abs() < 0.05] = float("nan")
    noise[:, 1, ::3] = noise[:, 0, ::3]
    for scores in (pairs.to(GPU), noise.to(GPU)):
        assert torch.equal(class_ids(scores), scores.max(1).indices)
        assert torch.equal(class_ids(scores).cpu(), class_ids(scores.cpu()))


# "off" is not exact either: cuDNN's float32 convolutions (the patch embedding) run in TF32 by
# PyTorch's default, with 10-bit mantissas, a quarter of bf16's rounding error.
@pytest.mark.parametrize(("amp", "tolerance"), [("off", 5e-3), ("bf16", 3e-2), ("fp16", 1e-2)])
def test_predictor_on_the_gpu_matches_the_cpu(checkpoint, amp, tolerance):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((66, 90), (101, 75))]
    cpu = Predictor.from_checkpoint(checkpoint, CPU)
    gpu = Predictor.from_checkpoint(checkpoint, GPU, amp=amp)
    batch = torch.from_numpy(np.stack([cpu.resize(im) for im in images])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        error = relative_error(gpu.model.patch_logits(batch.to(GPU)), cpu.model.patch_logits(batch))
    assert error < tolerance
    agree = [(a == b).mean() for a, b in zip(gpu.predict(images), cpu.predict(images), strict=True)]
    assert min(agree) > 0.99


def trained_loss(weights_file, device: torch.device, amp: str, fine_tune: bool) -> float:
    """The fp32 loss on a batch after 20 training steps on it in ``amp``, from fixed weights."""
    torch.manual_seed(0)
    backbone = load_backbone("dinov2_vits14", "timm", str(weights_file))
    model = Segmentor(backbone, DEFAULT_CLASSES.num_classes, fine_tune=fine_tune).to(device)
    optimizer = torch.optim.AdamW(model.param_groups(1e-3, 1e-5))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    images, masks = learnable_batch(4, (112, 112), device)
    loader = [(images, masks, None)] * 20
    classes = DEFAULT_CLASSES.num_classes
    train_one_epoch(model, loader, optimizer, device, classes, amp_dtype(amp, device), scaler)
    model.eval()
    with torch.no_grad():
        logits = model(images)
    return F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX).item()


@pytest.mark.parametrize("fine_tune", [False, True], ids=["frozen", "fine-tune"])
def test_mixed_precision_training_on_the_gpu_matches_float32_on_the_cpu(weights_file, fine_tune):
    reference = trained_loss(weights_file, CPU, "off", fine_tune)
    assert reference < 0.5  # it learned: an untrained head starts near ln 2
    for amp in ("off", "bf16", "fp16"):
        loss = trained_loss(weights_file, GPU, amp, fine_tune)
        assert loss == pytest.approx(reference, rel=0.05), amp


def tensors(value) -> list[torch.Tensor]:
    """Every tensor in nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value
    if isinstance(value, dict | list | tuple):
        return [t for item in items for t in tensors(item)]
    return []


def test_train_and_infer_scripts_on_the_gpu(tmp_path, weights_file, checkpoint):
    data = make_dataset(tmp_path / "data", n_train=4, n_valid=2, seed=2)
    for i, extra in enumerate((["--amp", "fp16", "--cache-features", "memory", "--loss", "dice"],
                               ["--amp", "bf16", "--fine-tune", "--loss", "ce+dice"])):  # fmt: skip
        out = tmp_path / f"out{i}"
        cmd = [sys.executable, "train.py", "--data", str(data), "--out-dir", str(out),
               "--backbone-source", "timm", "--weights", str(weights_file), "--device", "cuda",
               "--imgsz", "56", "56", "--epochs", "2", "--batch", "2", "--workers", "0",
               *extra]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert [row["epoch"] for row in read_csv(out / "metrics.csv")] == [1, 2]
        # a checkpoint written on the GPU holds CPU tensors: it loads anywhere, as it is
        ckpt = torch.load(out / "last_model.pth", weights_only=True)
        assert {t.device for t in tensors(ckpt)} == {CPU}
        load_checkpoint(out / "best_model_iou.pth", CPU)

    video = write_clip(tmp_path / "clip.mp4", frames=10)
    cmd = [sys.executable, "infer_video.py", "--model", str(checkpoint), "--input", str(video),
           "--out-dir", str(tmp_path / "video"), "--device", "cuda", "--amp", "bf16",
           "--batch", "4"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ": 10 frames, 96x72" in proc.stdout


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs a process per GPU, 2+")
@pytest.mark.parametrize("cache", ["off", "memory"])  # memory: features shared through NCCL
def test_torchrun_with_nccl(tmp_path, weights_file, cache):
    data = make_dataset(tmp_path / "data", n_train=4, n_valid=3, seed=4)
    gpus = torch.cuda.device_count()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(gpus), "train.py", "--data", str(data), "--out-dir", str(tmp_path / "out"),
           "--backbone-source", "timm", "--weights", str(weights_file), "--device", "cuda",
           "--imgsz", "56", "56", "--epochs", "1", "--batch", "1", "--workers", "0",
           "--num-vis", "0", "--cache-features", cache]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Best valid mIoU") == 1


def test_torchrun_with_more_processes_than_gpus_is_refused(tmp_path, weights_file):
    data = make_dataset(tmp_path / "data", n_train=4, n_valid=2, seed=4)
    gpus = torch.cuda.device_count()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(gpus + 1), "train.py", "--data", str(data), "--out-dir", str(tmp_path / "out"),
           "--backbone-source", "timm", "--weights", str(weights_file),
           "--device", "cuda"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert f"has only {gpus} CUDA GPU(s): pass --nproc_per_node {gpus}" in proc.stderr
