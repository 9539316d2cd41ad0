"""Generated test data: tiny segmentation datasets (a bright blob, "person", on a noisy scene)
and official-layout DINOv2 weights with random values."""

import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image


def make_sample(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) uint8 mask (0 background, 1 person)."""
    image = rng.integers(40, 140, size=(height, width, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.1, 0.25) * width
    mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
    color = np.array([230, 60, 40]) + rng.integers(-20, 20, size=3)
    image[mask == 1] = np.clip(color + rng.integers(-15, 15, size=(int(mask.sum()), 3)), 0, 255)
    return image, mask


def make_dataset(
    root: Path,
    n_train: int = 8,
    n_valid: int = 4,
    sizes: tuple[tuple[int, int], ...] = ((96, 72), (84, 112)),
    seed: int = 0,
) -> Path:
    """Write train/valid images (JPEG and PNG) with class-index PNG masks under ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("valid", n_valid)):
        (root / f"{split}_images").mkdir(parents=True, exist_ok=True)
        (root / f"{split}_masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            width, height = sizes[i % len(sizes)]
            image, mask = make_sample(rng, width, height)
            ext = ".jpg" if i % 2 else ".png"
            Image.fromarray(image).save(root / f"{split}_images" / f"img{i:03d}{ext}", quality=95)
            Image.fromarray(mask).save(root / f"{split}_masks" / f"img{i:03d}.png")
    return root


def learnable_batch(batch: int, imgsz, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable batch: noise with one bright rectangle per image, the rectangle is class 1.

    Returns (B, 3, H, W) uint8 images and (B, H, W) int64 masks, on ``device``.
    """
    w, h = imgsz
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 128, (batch, 3, h, w), dtype=torch.uint8, generator=g)
    masks = torch.zeros(batch, h, w, dtype=torch.int64)
    for i in range(batch):
        y0, x0 = (int(torch.randint(0, s // 2, (1,), generator=g)) for s in (h, w))
        y1, x1 = y0 + h // 3, x0 + w // 4
        images[i, :, y0:y1, x0:x1] += 100
        masks[i, y0:y1, x0:x1] = 1
    return images.to(device), masks.to(device)


def write_clip(path: Path, frames: int = 13, size=(96, 72), fps: float = 30000 / 1001) -> Path:
    """An mp4 of random frames at a fractional frame rate (29.97 by default)."""
    rng = np.random.default_rng(0)
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for _ in range(frames):
        video.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    video.release()
    return path


def penn_fudan_zip(path, n=10):
    """A zip with the structure of PennFudanPed.zip: PNGImages, PedMasks with instance ids."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("PennFudanPed/readme.txt", "test fixture")
        for i in range(n):
            stem = f"FudanPed{i + 1:05d}" if i < n // 2 else f"PennPed{i + 1:05d}"
            image = rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)
            masks = np.zeros((20, 16), np.uint8)
            masks[2:8, 2:6], masks[10:18, 8:14] = 1, 2  # two people
            files = {f"PNGImages/{stem}.png": image, f"PedMasks/{stem}_mask.png": masks}
            for name, arr in files.items():
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="PNG")
                zf.writestr(f"PennFudanPed/{name}", buf.getvalue())
            zf.writestr(f"PennFudanPed/Annotation/{stem}.txt", "boxes")
    return path


# The official checkpoint layout of ViT-S/14 (key -> shape), typed from
# shared/dinov2_checkpoint_layout.txt rather than derived from our code, so the tests check our
# conversions against the real layout. Blocks 1..11 repeat block 0.
VITS14_TOP = {
    "cls_token": (1, 1, 384),
    "pos_embed": (1, 1370, 384),
    "mask_token": (1, 384),
    "patch_embed.proj.weight": (384, 3, 14, 14),
    "patch_embed.proj.bias": (384,),
    "norm.weight": (384,),
    "norm.bias": (384,),
}
VITS14_BLOCK = {
    "norm1.weight": (384,),
    "norm1.bias": (384,),
    "attn.qkv.weight": (1152, 384),
    "attn.qkv.bias": (1152,),
    "attn.proj.weight": (384, 384),
    "attn.proj.bias": (384,),
    "ls1.gamma": (384,),
    "norm2.weight": (384,),
    "norm2.bias": (384,),
    "mlp.fc1.weight": (1536, 384),
    "mlp.fc1.bias": (1536,),
    "mlp.fc2.weight": (384, 1536),
    "mlp.fc2.bias": (384,),
    "ls2.gamma": (384,),
}


def official_layout(registers: bool = False) -> dict[str, tuple[int, ...]]:
    layout = dict(VITS14_TOP)
    if registers:
        layout["register_tokens"] = (1, 4, 384)
    for i in range(12):
        layout.update({f"blocks.{i}.{k}": shape for k, shape in VITS14_BLOCK.items()})
    return layout


def random_official_weights(registers: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """dinov2_vits14(_reg4)_pretrain.pth's layout, filled by ``trained_like``."""
    return trained_like(official_layout(registers), seed)


def trained_like(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values with roughly the statistics of trained weights, so activations stay sane.

    LayerScale gammas in particular are about 0.1, not timm's initial 1e-5: with those every
    block would be nearly the identity, and any comparison of outputs (another precision, a
    quantized model) would look better than it is with real weights.
    """
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith(("norm1.weight", "norm2.weight")) or key == "norm.weight":
            value = 1 + 0.1 * torch.randn(shape, generator=g)
        elif "gamma" in key:
            value = 0.1 + 0.05 * torch.rand(shape, generator=g)
        else:
            value = 0.02 * torch.randn(shape, generator=g)
        sd[key] = value
    return sd
