"""Generated test data: tiny segmentation datasets (a bright blob, "person", on a noisy scene)
and official-layout DINOv2 weights with random values."""

import contextlib
import functools
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import cv2
import numpy as np
import torch
from PIL import Image

# (W, H) of generated images for the benchmarks, like Penn-Fudan's photos
PHOTO_SIZES = ((559, 536), (455, 414), (380, 311))


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


class Official(NamedTuple):
    """An official checkpoint's architecture."""

    embed_dim: int
    depth: int
    num_heads: int
    hidden: int  # the MLP's hidden width
    registers: int = 0
    swiglu: bool = False  # mlp.w12 (both halves, 2 x hidden wide) and mlp.w3, not fc1 and fc2


# The official checkpoints (dinov2_*_pretrain.pth), typed from shared/dinov2_checkpoint_layout.txt
# rather than derived from our code, so the tests check our table and conversions against the
# real layout.
OFFICIAL_MODELS = {
    "dinov2_vits14": Official(384, 12, 6, 1536),
    "dinov2_vitb14": Official(768, 12, 12, 3072),
    "dinov2_vitl14": Official(1024, 24, 16, 4096),
    "dinov2_vitg14": Official(1536, 40, 24, 4096, swiglu=True),
    "dinov2_vits14_reg": Official(384, 12, 6, 1536, registers=4),
    "dinov2_vitb14_reg": Official(768, 12, 12, 3072, registers=4),
    "dinov2_vitl14_reg": Official(1024, 24, 16, 4096, registers=4),
    "dinov2_vitg14_reg": Official(1536, 40, 24, 4096, registers=4, swiglu=True),
}
POS_TOKENS = 1 + 37 * 37  # the class token and the 37 x 37 patch grid of a 518 x 518 image


def official_layout(name: str = "dinov2_vits14") -> dict[str, tuple[int, ...]]:
    """The key -> shape table of the official ``name`` checkpoint, in its order."""
    model = OFFICIAL_MODELS[name]
    d, hidden = model.embed_dim, model.hidden
    layout = {"cls_token": (1, 1, d), "pos_embed": (1, POS_TOKENS, d)}
    if model.registers:
        layout["register_tokens"] = (1, model.registers, d)
    layout.update(
        {
            "mask_token": (1, d),
            "patch_embed.proj.weight": (d, 3, 14, 14),
            "patch_embed.proj.bias": (d,),
        }
    )
    if model.swiglu:
        mlp = {
            "w12.weight": (2 * hidden, d),
            "w12.bias": (2 * hidden,),
            "w3.weight": (d, hidden),
            "w3.bias": (d,),
        }
    else:
        mlp = {
            "fc1.weight": (hidden, d),
            "fc1.bias": (hidden,),
            "fc2.weight": (d, hidden),
            "fc2.bias": (d,),
        }
    block = {
        "norm1.weight": (d,),
        "norm1.bias": (d,),
        "attn.qkv.weight": (3 * d, d),
        "attn.qkv.bias": (3 * d,),
        "attn.proj.weight": (d, d),
        "attn.proj.bias": (d,),
        "ls1.gamma": (d,),
        "norm2.weight": (d,),
        "norm2.bias": (d,),
        **{f"mlp.{k}": shape for k, shape in mlp.items()},
        "ls2.gamma": (d,),
    }
    for i in range(model.depth):
        layout.update({f"blocks.{i}.{k}": shape for k, shape in block.items()})
    layout.update({"norm.weight": (d,), "norm.bias": (d,)})
    return layout


def random_official_weights(registers: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """dinov2_vits14(_reg4)_pretrain.pth's layout, filled by ``trained_like``."""
    return trained_like(
        official_layout("dinov2_vits14_reg" if registers else "dinov2_vits14"), seed
    )


@contextlib.contextmanager
def meta_device() -> Iterator[None]:
    """Build models on the meta device: shapes without values, so that ViT-g/14 costs no memory.

    timm before 1.0.21 takes its drop-path rates with ``.item()`` from a ``torch.linspace`` on the
    default device, and a meta tensor has no value to give: those rates, plain numbers, are taken
    on the CPU here."""
    cpu_linspace = functools.partial(torch.linspace, device="cpu")
    with torch.device("meta"), mock.patch("torch.linspace", cpu_linspace):
        yield


def meta_official_weights(name: str) -> dict[str, torch.Tensor]:
    """The official ``name`` checkpoint's layout as meta tensors: shapes without values, so that
    ViT-g/14 (1.1 billion values) loads in no memory on a model built on the meta device."""
    return {key: torch.empty(shape, device="meta") for key, shape in official_layout(name).items()}


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
