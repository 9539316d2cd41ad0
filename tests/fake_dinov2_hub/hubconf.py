"""Minimal stand-in for the official ``facebookresearch/dinov2`` torch.hub repository.

For offline tests only; it is not the official code. Tests copy this folder to
``$TORCH_HOME/hub/facebookresearch_dinov2_main/`` or load it with ``source="local"``.

It reproduces, in plain PyTorch, the hub entry points ``dinov2_vit{s,b,l,g}14`` and
``dinov2_vit{s,b,l,g}14_reg``: the official parameter names and shapes (so the official
``<name>_pretrain.pth`` checkpoints load with ``strict=True``), the official download URLs
(so a pre-filled ``$TORCH_HOME/hub/checkpoints/`` is used without network), the token
layout ``[cls, registers..., patches]``, the positional-embedding interpolation (per-variant
offset/antialias settings) and ``get_intermediate_layers``. Training-only features
(drop path, xFormers, nested tensors, block chunking) are left out; attention runs the
official fallback math without xFormers.
"""

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

dependencies = ["torch"]

# the official layers modules warn like this when imported without xFormers, and record it in
# this flag, which MemEffAttention reads (as model.materializes_scores does)
warnings.warn("xFormers is not available (Attention)", stacklevel=1)
XFORMERS_AVAILABLE = False

_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
# letter -> (embed_dim, depth, num_heads)
_ARCHS = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "g": (1536, 40, 24)}
# the official register variants resample pos_embed to an output size, with antialiasing
_REG_CFG = {"num_register_tokens": 4, "interpolate_offset": 0.0, "interpolate_antialias": True}


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class Attention(nn.Module):
    """Attention as the official code runs it without xFormers: the full score matrix, then
    softmax. The names (and those of MemEffAttention) are what model.py recognizes."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        scores = (qkv[0] * self.scale) @ qkv[1].transpose(-2, -1)  # (B, heads, N, N)
        out = self.attn_drop(scores.softmax(dim=-1)) @ qkv[2]
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class MemEffAttention(Attention):
    def forward(self, x: torch.Tensor, attn_bias=None) -> torch.Tensor:
        assert attn_bias is None, "nested tensors need xFormers"
        return super().forward(x)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        # the official fused SwiGLU shrinks 4*dim to 2/3, rounded up to a multiple of 8
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, swiglu: bool):
        super().__init__()
        self.norm1, self.norm2 = _layer_norm(dim), _layer_norm(dim)
        self.ls1, self.ls2 = _LayerScale(dim), _LayerScale(dim)
        self.attn = MemEffAttention(dim, num_heads)
        self.mlp = (_SwiGLU if swiglu else _Mlp)(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/p * W/p, D), patches in row-major order."""
        p = self.proj.kernel_size[0]
        assert x.shape[-2] % p == 0 and x.shape[-1] % p == 0, f"H, W must be multiples of {p}"
        return self.proj(x).flatten(2).transpose(1, 2)


class _DinoVisionTransformer(nn.Module):
    def __init__(
        self,
        embed_dim,
        depth,
        num_heads,
        swiglu=False,
        num_register_tokens=0,
        interpolate_offset=0.1,
        interpolate_antialias=False,
        img_size=518,
        patch_size=14,
    ):
        super().__init__()
        self.num_features = self.embed_dim = embed_dim
        self.n_blocks, self.num_heads, self.patch_size = depth, num_heads, patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        n_patches = (img_size // patch_size) ** 2
        self.patch_embed = _PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 1e-6)
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, embed_dim) * 0.02)
        if num_register_tokens:
            regs = torch.randn(1, num_register_tokens, embed_dim) * 1e-6
            self.register_tokens = nn.Parameter(regs)
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, swiglu) for _ in range(depth))
        self.norm = _layer_norm(embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

    def interpolate_pos_encoding(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Positional embedding (1, 1 + h/p * w/p, D) for tokens x of an h x w image."""
        n = self.pos_embed.shape[1] - 1
        if x.shape[1] - 1 == n and h == w:
            return self.pos_embed
        m, dim = math.isqrt(n), x.shape[-1]
        h0, w0 = h // self.patch_size, w // self.patch_size
        pos = self.pos_embed.float()
        grid = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            # the official non-register models resample by a scale factor with a small offset
            # (not by output size); the two give different weights, so keep the offset path
            off = self.interpolate_offset
            size_kw = {"scale_factor": ((h0 + off) / m, (w0 + off) / m)}
        else:
            size_kw = {"size": (h0, w0)}
        grid = F.interpolate(grid, mode="bicubic", antialias=self.interpolate_antialias, **size_kw)
        assert grid.shape[-2:] == (h0, w0)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim)
        return torch.cat((pos[:, :1], grid), dim=1).to(x.dtype)

    def prepare_tokens_with_masks(self, x: torch.Tensor, masks=None) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + R + H/p * W/p, D) tokens [cls, registers..., patches]."""
        h, w = x.shape[-2:]
        t = self.patch_embed(x)
        if masks is not None:
            t = torch.where(masks.unsqueeze(-1), self.mask_token.to(t.dtype).unsqueeze(0), t)
        t = torch.cat((self.cls_token.expand(t.shape[0], -1, -1), t), dim=1)
        t = t + self.interpolate_pos_encoding(t, h, w)
        if self.num_register_tokens:
            # registers carry no positional embedding, hence inserted after it is added
            regs = self.register_tokens.expand(t.shape[0], -1, -1)
            t = torch.cat((t[:, :1], regs, t[:, 1:]), dim=1)
        return t

    def forward_features(self, x: torch.Tensor, masks=None) -> dict:
        t = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks:
            t = blk(t)
        tn, r = self.norm(t), self.num_register_tokens
        return {
            "x_norm_clstoken": tn[:, 0],
            "x_norm_regtokens": tn[:, 1 : r + 1],
            "x_norm_patchtokens": tn[:, r + 1 :],
            "x_prenorm": t,
            "masks": masks,
        }

    def forward(self, x: torch.Tensor, masks=None, is_training: bool = False):
        """(B, 3, H, W) -> normed cls token (B, D), or the feature dict if is_training."""
        feats = self.forward_features(x, masks)
        return feats if is_training else feats["x_norm_clstoken"]

    def get_intermediate_layers(self, x, n=1, reshape=False, return_class_token=False, norm=True):
        """Outputs of the last n blocks (int) or of the listed block indices, in block order.

        Each is (B, H/p * W/p, D), or (B, D, H/p, W/p) with reshape; with return_class_token
        each entry is a (patch_tokens, cls_token (B, D)) pair. Returns a tuple.
        """
        take = range(self.n_blocks - n, self.n_blocks) if isinstance(n, int) else n
        t, outs = self.prepare_tokens_with_masks(x), []
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i in take:
                outs.append(self.norm(t) if norm else t)
        assert len(outs) == len(take), f"only {len(outs)} / {len(take)} blocks found"
        cls_tokens = [o[:, 0] for o in outs]
        outs = [o[:, 1 + self.num_register_tokens :] for o in outs]
        if reshape:
            b, (h, w) = x.shape[0], x.shape[-2:]
            hp, wp = h // self.patch_size, w // self.patch_size
            outs = [o.reshape(b, hp, wp, -1).permute(0, 3, 1, 2).contiguous() for o in outs]
        return tuple(zip(outs, cls_tokens, strict=True)) if return_class_token else tuple(outs)


def _make(arch: str, reg: bool, pretrained: bool, weights="LVD142M", **kwargs):
    assert str(getattr(weights, "value", weights)) == "LVD142M", f"Unsupported weights: {weights}"
    dim, depth, heads = _ARCHS[arch]
    kwargs = {**_REG_CFG, **kwargs} if reg else kwargs
    model = _DinoVisionTransformer(dim, depth, heads, swiglu=arch == "g", **kwargs)
    if pretrained:
        base = f"dinov2_vit{arch}14"
        full = f"{base}_reg4" if reg else base
        url = f"{_BASE_URL}/{base}/{full}_pretrain.pth"
        model.load_state_dict(torch.hub.load_state_dict_from_url(url, map_location="cpu"))
    return model


def _entry(arch: str, reg: bool, doc: str):
    def entry(*, pretrained: bool = True, **kwargs):
        return _make(arch, reg, pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = f"dinov2_vit{arch}14" + ("_reg" if reg else "")
    entry.__doc__ = doc
    return entry


dinov2_vits14 = _entry("s", False, "DINOv2 ViT-S/14: 384-d, 12 blocks, 6 heads.")
dinov2_vitb14 = _entry("b", False, "DINOv2 ViT-B/14: 768-d, 12 blocks, 12 heads.")
dinov2_vitl14 = _entry("l", False, "DINOv2 ViT-L/14: 1024-d, 24 blocks, 16 heads.")
dinov2_vitg14 = _entry("g", False, "DINOv2 ViT-g/14: 1536-d, 40 blocks, 24 heads, SwiGLU FFN.")
dinov2_vits14_reg = _entry("s", True, "DINOv2 ViT-S/14 with 4 register tokens.")
dinov2_vitb14_reg = _entry("b", True, "DINOv2 ViT-B/14 with 4 register tokens.")
dinov2_vitl14_reg = _entry("l", True, "DINOv2 ViT-L/14 with 4 register tokens.")
dinov2_vitg14_reg = _entry("g", True, "DINOv2 ViT-g/14 (SwiGLU FFN) with 4 register tokens.")
