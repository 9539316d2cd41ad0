"""The DINOv2 backbone (torch.hub or timm), the BatchNorm head, the segmentor and its checkpoints.

Run ``python model.py`` for a summary of the model: layers, parameter counts, output shapes and
FLOPs per image.
"""

import argparse
import errno
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from config import (
    BACKBONES,
    BEST_CHECKPOINT,
    DEFAULT_CLASSES,
    DEFAULT_IMGSZ,
    DEFAULT_LAYERS,
    DEFAULT_SOURCE,
    HUB_REPO,
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAST_CHECKPOINT,
    PATCH_SIZE,
    WEIGHTS_BASE_URL,
    ClassConfig,
    add_imgsz_flag,
    add_layers_flag,
    backbone_flags,
    check_imgsz,
    official_weights_name,
)
from utils import (
    UserError,
    atomic_path,
    check_int8_cpu,
    check_memory,
    check_utf8,
    is_utf8,
    memory_advice,
    network_timeout,
    new_folder,
    run_script,
    torch_save,
    torch_version,
    warn_on_main_process,
)

log = logging.getLogger("dinoseg")

CHECKPOINT_FORMAT = "dinov2-segmentation/1"
# what every script reads from a checkpoint; train.py adds its TRAINING_KEYS (optimizer, epoch...)
CHECKPOINT_KEYS = (
    "model",
    "backbone",
    "backbone_source",
    "layers",
    "fine_tune",
    "classes",
    "imgsz",
)


INT8_MIN_TORCH = (2, 11)  # torchao's floor


def int8_quantizer():
    """torchao's ``quantize_`` and its int8 dynamic-quantization config class, or a UserError
    that says what to install."""
    if torch_version() < INT8_MIN_TORCH:
        floor = ".".join(map(str, INT8_MIN_TORCH))
        raise UserError(
            f"--int8 needs torch {floor} or later (torchao); this is {torch.__version__}"
        )
    # torchao logs a warning of torch's own while it registers its types
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except Exception as err:  # missing, too old, or built for another PyTorch
        raise UserError(
            f"--int8 needs torchao, which did not load ({type(err).__name__}: {err}); "
            "run: pip install -U -r requirements.txt"
        ) from err
    finally:
        pytree_log.setLevel(level)
    return quantize_, Int8DynamicActivationInt8WeightConfig


def patch_aligned(size: int) -> int:
    """The multiple of the patch size nearest to ``size`` (halves round up; at least one patch).

    Integer arithmetic only, so an exported graph can keep the size symbolic.
    """
    return max(PATCH_SIZE, (size + PATCH_SIZE // 2) // PATCH_SIZE * PATCH_SIZE)


def token_grid(imgsz) -> tuple[int, int]:
    """(w, h): the patch tokens across and down for an image size (W, H)."""
    w, h = imgsz
    return patch_aligned(w) // PATCH_SIZE, patch_aligned(h) // PATCH_SIZE


def log_input_size(imgsz: tuple[int, int]) -> None:
    """Say once how a requested (W, H) reaches the backbone (see Segmentor.features)."""
    w, h = imgsz
    aw, ah = patch_aligned(w), patch_aligned(h)
    if (aw, ah) != (w, h):
        log.info(
            "image size %dx%d is not a multiple of the patch size %d: the backbone sees %dx%d "
            "and predictions are resized back to %dx%d",
            w,
            h,
            PATCH_SIZE,
            aw,
            ah,
            w,
            h,
        )


def cached_weights(backbone: str) -> Path:
    """Where torch.hub keeps the official weights: TORCH_HOME/hub/checkpoints/NAME."""
    return Path(torch.hub.get_dir()) / "checkpoints" / official_weights_name(backbone)


def official_weights_url(backbone: str) -> str:
    """Where the official hub code downloads ``backbone``'s weights from."""
    return f"{WEIGHTS_BASE_URL}/{BACKBONES[backbone].arch}/{official_weights_name(backbone)}"


def download_official_weights(backbone: str, path: Path) -> None:
    """Download the official weights to ``path`` as torch.hub does (a temporary file, renamed
    when complete), or fail with the offline options."""
    url = official_weights_url(backbone)
    log.info("downloading %s to %s", url, path)
    try:
        with new_folder(path.parent), network_timeout():
            torch.hub.download_url_to_file(url, str(path))
    except OSError as err:  # URLError and HTTPError included
        check_cache_error(err)
        raise UserError(
            f"could not download the official {backbone} weights ({err}). " + offline_help(backbone)
        ) from err


# what an OSError of torch.hub's cache folder, not of the network, says: it cannot be written
CACHE_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.ENOSPC}


def check_cache_error(err: OSError) -> None:
    """Name a TORCH_HOME that torch.hub cannot write (a read-only home in a container), where
    ``err`` is the file system's rather than the network's, whose fix is the offline options."""
    if err.filename is not None and err.errno in CACHE_UNWRITABLE:
        raise UserError(
            f"torch.hub cannot write its cache folder {torch.hub.get_dir()} ({err}): set "
            "TORCH_HOME to a folder you can write, or load without the cache: --hub-dir DIR (a "
            f"local clone of {HUB_REPO}) with --weights FILE, or --backbone-source timm "
            "--weights FILE"
        ) from err


def damaged_cache_help(path: Path) -> str:
    return (
        f"The cached official weights {path} are damaged or not this model's (an interrupted "
        "copy, an error page saved under that name): delete it to download it again, or pass "
        "--weights FILE with the official file."
    )


def offline_help(backbone: str, weights: str | None = "pretrained") -> str:
    """The ways to run without a network, for the caller's --weights: None where the weights come
    from elsewhere (a checkpoint) and only the architecture is built, so there is no --weights
    to name; "random" where only the architecture is wanted."""
    if weights is None:
        return (
            "Offline options (no weights file is needed: only the architecture is built): "
            "--backbone-source timm, which builds the same architecture without a download; "
            f"or --hub-dir DIR, a local clone of {HUB_REPO}; or fill "
            "TORCH_HOME/hub/facebookresearch_dinov2_main on a machine with internet."
        )
    if weights == "random":
        # The hub source needs the official code even for untrained weights; timm has its own.
        return (
            f"--weights random needs no weights file, but the hub source still loads the code of "
            f"{HUB_REPO}. Offline, use --backbone-source timm --weights random, which builds the "
            f"same architecture without a download, or --hub-dir DIR, a local clone of {HUB_REPO}."
        )
    name = official_weights_name(backbone)
    return (
        "Offline options: fill the torch.hub cache on a machine with internet "
        f"(TORCH_HOME/hub/facebookresearch_dinov2_main and TORCH_HOME/hub/checkpoints/{name}); "
        f"or --hub-dir DIR (a local clone of {HUB_REPO}) with --weights FILE; or "
        f"--backbone-source timm --weights FILE, where FILE is the official {name} "
        f"({official_weights_url(backbone)}). "
        "--backbone-source timm --weights random trains on an untrained backbone (smoke tests "
        "only)."
    )


# The most bytes of attention scores, (B, heads, N, N), that one backbone call may make, by
# device type. MPS builds them as one Metal array, which may not pass 4 GiB: beyond it a failed
# Metal assertion ("total bytes of NDArray > 2**32") aborts the process, with no error to report.
# ViT-S/14 at 644x644 makes 108 MB of them per image: 39 images at a time.
ATTENTION_BYTES = {"mps": 2**32}


def materializes_scores(vit: nn.Module) -> bool:
    """Whether ``vit``'s attention computes each head's (N, N) score matrix: the official hub
    layers left as they are (bench_attention's baseline; MemEffAttention without xFormers falls
    back to them), or timm's with its fused path off; not FusedAttention nor fused timm."""
    for module in vit.modules():
        kind = type(module).__name__
        if kind == "Attention" and not getattr(module, "fused_attn", False):
            return True
        if kind == "MemEffAttention":
            # the flag of the module that defines it (torch.hub may not list that module)
            defined_in = getattr(type(module).forward, "__globals__", {})
            if not defined_in.get("XFORMERS_AVAILABLE", True):
                return True
    return False


def forward_bytes(
    name: str, blocks: int, imgsz, batch: int, item_bytes: int = 4, scores: bool = False
) -> int:
    """A lower bound of the bytes that one forward pass of ``batch`` images at (W, H) ``imgsz``
    through the backbone ``name``, its last ``blocks`` blocks read by the head, holds at once:
    the tensors that must coexist at the last block the head reads.

    There the outputs of the head's earlier blocks, the block's input (the residual) and the
    normalized images (which Segmentor.features holds) are alive, with at least one of: the
    MLP's hidden layer (4 D wide, SwiGLU's wider), or where the attention path materializes
    them (``scores``) the heads' (N, N) scores. Activations kept for a backward pass, the
    workers' batches and the weights come on top. ``item_bytes``: 4 for float32, 2 for a
    bfloat16 or float16 backbone or autocast.
    """
    spec = BACKBONES[name]
    w, h = token_grid(imgsz)
    tokens = w * h
    pixels = 3 * tokens * PATCH_SIZE**2
    attention = spec.num_heads * tokens**2 if scores else 0
    per_image = (
        pixels + blocks * tokens * spec.embed_dim + max(4 * tokens * spec.embed_dim, attention)
    )
    return batch * per_image * item_bytes


def check_size_fits(
    backbone: "DinoBackbone | str",
    imgsz,
    batch: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    argv: list[str] | None = None,
    tta: tuple[list[float], bool] | None = None,
) -> None:
    """Refuse an --imgsz (with --batch) whose forward pass cannot fit in ``device``'s memory
    (forward_bytes, utils.check_memory), before any work: on the CPU such a run was killed
    outright (SIGKILL), without a word.

    ``backbone`` is a built one (its blocks, weights' dtype and attention path), or the name of
    one to be built with its default blocks and FusedAttention. ``dtype``: the activations'
    where it is not the weights' (an autocast's; None where it is off). ``argv`` is the command
    line the advice speaks of (sys.argv by default); with ``tta`` (scales, flip) the largest
    scale's view is what runs.
    """
    if isinstance(backbone, str):
        name, blocks, scores, weights = backbone, BACKBONES[backbone].head_blocks, False, None
    else:
        name, blocks = backbone.name, backbone.blocks
        scores = materializes_scores(backbone.vit)
        weights = backbone.vit.patch_embed.proj.weight.dtype
    item_bytes = (dtype or weights or torch.float32).itemsize
    w, h = imgsz
    scale = max(tta[0]) if tta else 1.0
    # sized as engine.tta_probs sizes a view
    view = (max(PATCH_SIZE, round(w * scale)), max(PATCH_SIZE, round(h * scale)))
    needed = forward_bytes(name, len(blocks), view, batch, item_bytes, scores)
    grid = token_grid(view)
    at = f"its --tta-scales {scale:g} view {view[0]}x{view[1]}: " if scale != 1 else ""
    what = (
        f"--imgsz {w} {h} ({at}{grid[0]}x{grid[1]} patches through {name}) at {batch} "
        f"image{'s' if batch > 1 else ''} a batch"
    )
    check_memory(needed, device, what, memory_advice(sys.argv if argv is None else argv))


class DinoBackbone(nn.Module):
    """A DINOv2 ViT (official hub model or timm's copy) returning the head's feature maps.

    Its weights are exchanged in the official checkpoint layout whatever the source, so a
    checkpoint trained through one source loads through the other.
    """

    def __init__(self, vit: nn.Module, name: str, source: str, blocks: tuple[int, ...]):
        super().__init__()
        self.vit = vit
        self.name = name
        self.source = source
        self.blocks = blocks
        self.embed_dim = BACKBONES[name].embed_dim

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalized, H and W multiples of 14 -> len(blocks) x (B, D, H/14, W/14).

        A batch whose attention scores would pass the device's ATTENTION_BYTES runs a few images
        at a time.
        """
        # Both sources implement DINOv2's get_intermediate_layers: final norm applied, class
        # and register tokens dropped.
        step = self.images_per_call(x)
        # unsplit unless limited: an exported graph keeps its batch size symbolic
        parts = [x] if step is None else x.split(step)
        runs = [
            self.vit.get_intermediate_layers(part, n=list(self.blocks), reshape=True, norm=True)
            for part in parts
        ]
        if len(runs) == 1:
            return list(runs[0])
        return [torch.cat(block) for block in zip(*runs, strict=True)]

    def images_per_call(self, x: torch.Tensor) -> int | None:
        """How many of the (B, 3, H, W) images ``x`` one pass of the ViT may take where the
        device has an ATTENTION_BYTES limit: as many as keep one layer's attention scores under
        it (counted in float32, the widest; at least one image). None (all) elsewhere."""
        limit = ATTENTION_BYTES.get(x.device.type)
        if limit is None:
            return None
        spec = BACKBONES[self.name]
        tokens = 1 + spec.registers + (x.shape[-2] // PATCH_SIZE) * (x.shape[-1] // PATCH_SIZE)
        return max(1, (limit - 1) // (spec.num_heads * tokens**2 * 4))

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights with the official key names and shapes (dinov2_*_pretrain.pth layout)."""
        sd = {k: v.detach().to("cpu", copy=True) for k, v in self.vit.state_dict().items()}
        if self.source == "hub":
            return sd
        return _timm_to_official(sd, self.name)

    def official_shapes(self) -> dict[str, torch.Size]:
        """official_state_dict's key -> shape, without copying the weights."""
        sd = self.vit.state_dict()
        if self.source == "timm":
            sd = _timm_to_official(sd, self.name)
        return {key: value.shape for key, value in sd.items()}

    def load_official_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load official-layout weights strictly."""
        if self.source == "timm":
            from timm.models.vision_transformer import checkpoint_filter_fn

            sd = checkpoint_filter_fn(dict(sd), self.vit)
        self.vit.load_state_dict(sd, strict=True)


def _timm_to_official(sd: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """Invert timm's DINOv2 conversion (timm.models.vision_transformer._convert_dinov2)."""
    out = {}
    for key, value in sd.items():
        if BACKBONES[name].swiglu:
            key = key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        out[key] = value
    if "reg_token" in out:
        # timm folds the class token's position into cls_token and keeps patch positions only;
        # a zero class position with that cls_token computes the same tokens.
        out["register_tokens"] = out.pop("reg_token")
        pos = out["pos_embed"]
        out["pos_embed"] = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)
    out["mask_token"] = out["cls_token"].new_zeros(1, out["cls_token"].shape[-1])
    return out


def _build_vit(
    name: str, source: str, hub_dir: Path | None, weights: str | None = "pretrained"
) -> nn.Module:
    """The backbone architecture with untrained weights (``weights``: see offline_help)."""
    if source == "timm":
        import timm

        return timm.create_model(
            BACKBONES[name].timm_name,
            pretrained=False,
            img_size=518,
            num_classes=0,
            dynamic_img_size=True,
        )
    return _hub_load(name, hub_dir, weights=weights)


def _hub_load(
    name: str, hub_dir: Path | None, fused: bool = True, weights: str | None = "pretrained"
) -> nn.Module:
    """The official architecture through torch.hub, with untrained weights (``weights``: see
    offline_help); ``fused`` swaps in FusedAttention (see there).

    The official code could load the weights too, but torch.hub unpickles them without
    weights_only: load_backbone reads the same cache file itself.
    """
    entry = BACKBONES[name].hub_name  # a row may feed the head other blocks of an official model
    if hub_dir is not None and not hub_dir.is_dir():
        what = "is a file, not a folder" if hub_dir.exists() else "does not exist"
        raise UserError(f"--hub-dir {hub_dir} {what}: point it at a clone of {HUB_REPO}")
    if hub_dir is not None and not (hub_dir / "hubconf.py").is_file():
        raise UserError(f"--hub-dir {hub_dir} has no hubconf.py: point it at a clone of {HUB_REPO}")
    repo, source = (str(hub_dir), "local") if hub_dir is not None else (HUB_REPO, "github")
    where = f"--hub-dir {hub_dir}" if hub_dir is not None else f"the cached {HUB_REPO} code"
    try:
        with warnings.catch_warnings(), network_timeout():  # github: the code's download
            # The official modules warn about xFormers on import; FusedAttention replaces the
            # layers those warnings are about.
            warnings.filterwarnings("ignore", message="xFormers is ")
            vit = torch.hub.load(repo, entry, source=source, pretrained=False)
    except ImportError as err:  # hubconf.py imports the repository's modules and what they need
        raise UserError(
            f"could not load {entry} through torch.hub: {where} failed to import "
            f"({type(err).__name__}: {err}). Install the missing package, point --hub-dir at "
            f"a complete clone of {HUB_REPO}, or use --backbone-source timm"
        ) from err
    except (OSError, RuntimeError) as err:  # no network and no cache, no such entry point...
        if f"Cannot find callable {entry}" in str(err):  # an old clone or cache: no _reg models
            raise UserError(
                f"{where} has no {entry}: it predates that model. Update it (git pull, or delete "
                "the cached copy to download it again), or use --backbone-source timm"
            ) from err
        if isinstance(err, OSError):
            check_cache_error(err)
        raise UserError(
            f"could not load {entry} through torch.hub ({err}). " + offline_help(entry, weights)
        ) from err
    return _with_fused_attention(vit) if fused else vit


class FusedAttention(nn.Module):
    """DINOv2's multi-head self-attention computed by F.scaled_dot_product_attention.

    Without xFormers the official ``Attention`` materializes the (N, N) score matrix of every
    head: at 644x644 (2117 tokens) that is 1.7 GB per layer for a batch of 32 in bfloat16, and
    the whole backbone runs 2x slower on a CPU in float32. PyTorch's fused kernels (flash,
    memory-efficient, or the CPU flash kernel) compute the same softmax(q k^T / sqrt(d)) v
    without it. It reuses the official ``qkv`` and ``proj`` layers, so parameter names,
    checkpoints and results stay the same.
    """

    def __init__(self, official: nn.Module):
        super().__init__()
        self.num_heads = official.num_heads
        self.qkv = official.qkv
        self.proj = official.proj
        self.attn_drop = getattr(official.attn_drop, "p", 0.0)
        self.proj_drop = official.proj_drop

    def forward(self, x: torch.Tensor, attn_bias=None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        if attn_bias is not None:
            raise NotImplementedError("attention biases (xFormers nested tensors) are unsupported")
        b, n, d = x.shape
        # (B, N, 3D) -> 3 x (B, heads, N, D/heads)
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        dropout = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, d)))


def _with_fused_attention(vit: nn.Module) -> nn.Module:
    """Swap the official hub model's attention layers (Attention, MemEffAttention) for
    FusedAttention, in place; a model with other attention layers is left as it is."""
    swapped = 0
    for block in list(vit.modules()):
        attn = getattr(block, "attn", None)
        official = type(attn).__name__ in ("Attention", "MemEffAttention")
        if official and all(hasattr(attn, a) for a in ("num_heads", "qkv", "proj", "proj_drop")):
            block.attn = FusedAttention(attn)
            swapped += 1
    if swapped == 0:
        log.warning("the hub model's attention layers were not recognized; they run unchanged")
    return vit


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values())


def _layout_problem(
    sd: dict[str, torch.Tensor], expected: dict[str, torch.Size], name: str
) -> str | None:
    """How official-layout weights ``sd`` fail to fit ``name``, whose official key -> shape
    table is ``expected`` (DinoBackbone.official_shapes); None if they fit."""
    missing = sorted(expected.keys() - sd.keys())
    unexpected = sorted(sd.keys() - expected.keys())
    wrong = [k for k in expected.keys() & sd.keys() if sd[k].shape != expected[k]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} keys of the wrong shape (e.g. {k}: file {list(sd[k].shape)}, "
            f"{name} {list(expected[k])})"
        )
    return "; ".join(parts) or None


def _torch_load_weights(path: Path, name: str, cached: bool) -> object:
    """torch.load(path) with weights_only=True, its failures as UserErrors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a file that is not a checkpoint
        if cached:
            raise UserError(
                f"--weights pretrained: cannot read {path} ({type(err).__name__}). "
                + damaged_cache_help(path)
            ) from err
        # PyTorch's own message is long and suggests weights_only=False, which we never do.
        raise UserError(
            f"--weights {path} is not a readable PyTorch weights file: PyTorch cannot load it "
            f"safely ({type(err).__name__}). Is it damaged, or a whole pickled model "
            "(torch.save(model))? Pass the official "
            f"{official_weights_name(name)}, or a state_dict() under its key names"
        ) from err


def _read_weights_file(
    path: Path, expected: dict[str, torch.Size], name: str, cached: bool = False
) -> dict:
    """Read an official-format checkpoint (.pth, or .safetensors) and check it fits ``name`` key
    by key.

    ``expected``: the official key -> shape table of ``name``.
    ``cached``: ``path`` is the torch.hub cache file that --weights pretrained reads.
    """
    if path.is_dir():  # "does not exist" would send the user hunting for the wrong problem
        raise UserError(
            f"--weights {path} is a folder; pass the weights file in it, such as "
            f"{path / official_weights_name(name)}"
        )
    if not path.is_file():
        raise UserError(f"--weights {path} does not exist. {offline_help(name)}")
    if path.suffix.lower() == ".safetensors":  # timm's Hugging Face weights come as these
        # safetensors comes with timm; older PyTorch's torch.load cannot read the format
        from safetensors.torch import load, load_file

        try:
            # load_file takes the path to Rust, which takes none that is not UTF-8 (a Latin-1
            # name on Linux): such a file is read here, and its bytes parsed
            sd = load_file(path, device="cpu") if is_utf8(path) else load(path.read_bytes())
        except Exception as err:  # SafetensorError, or an OSError from the memory map
            raise UserError(
                f"--weights {path} is not a readable safetensors file ({type(err).__name__}: "
                f"{err}). Is it truncated? Download it again, or pass the official "
                f"{official_weights_name(name)}"
            ) from err
    else:
        sd = _torch_load_weights(path, name, cached)
    if cached:  # a file the user did not name: the fix is the cache's, not a flag
        state_dict = _is_state_dict(sd)
        problem = _layout_problem(sd, expected, name) if state_dict else "not a state dict"
        if problem:
            raise UserError(
                f"--weights pretrained: {path} does not fit {name} ({problem}). "
                + damaged_cache_help(path)
            )
        return sd
    found = sd.get("format") if isinstance(sd, dict) else None
    if found == CHECKPOINT_FORMAT or _other_version(found, CHECKPOINT_FORMAT):
        # one of another version is no state dict either: the flag is what the user got wrong
        raise UserError(
            f"--weights {path} is a checkpoint written by train.py, not backbone weights: "
            f"continue its training with --resume {path}, score it with --eval-only --model "
            f"{path}, or run it with the inference scripts' --model. --weights takes the "
            f"official {official_weights_name(name)}."
        )
    if not _is_state_dict(sd):
        # Training frameworks wrap the weights: {"model": ...}, {"state_dict": ...}, DINOv2's
        # own {"teacher": ...} with prefixed keys. Name the entry; unwrapping is the user's call.
        inner = [k for k, v in sd.items() if _is_state_dict(v)] if isinstance(sd, dict) else []
        hint = (
            f" It holds state dicts under {inner}: save the backbone's weights on their own, "
            "under the official key names, and pass that file."
            if inner
            else ""
        )
        raise UserError(
            f"--weights {path} is not a state dict of tensors like "
            f"{official_weights_name(name)}.{hint}"
        )
    if _is_transformers_layout(sd):
        raise UserError(
            f"--weights {path} has the key names of Hugging Face transformers' Dinov2Model "
            "(embeddings.*, encoder.layer.*), which --weights does not read. Pass the official "
            f"{official_weights_name(name)} (or --weights pretrained), or timm's own state dict "
            f"of {BACKBONES[name].timm_name} (the model.safetensors of its Hugging Face "
            "repository, or timm.create_model(..., pretrained=True).state_dict() saved with "
            "torch.save)."
        )
    if "cls_token" in sd and "mask_token" not in sd:
        # timm's own DINOv2 state dict (timm.create_model(...).state_dict(), or its Hugging Face
        # files): the official weights less mask_token, which segmentation never uses, under
        # timm's register and SwiGLU names.
        sd = _timm_to_official(sd, name)
        log.info(
            "--weights %s has no mask_token (timm's layout, or official weights without it): "
            "read as the official layout, with a zero mask_token, which segmentation never uses",
            path,
        )
    problem = _layout_problem(sd, expected, name)
    if problem:
        guess = _guess_backbone(sd)
        # ``name`` itself is guessed for files that fit it but for a key or two
        hint = f" It looks like {guess} weights: pass --backbone {guess}."
        hint = hint if guess not in (None, name) else ""
        raise UserError(
            f"--weights {path} does not fit {name}: {problem}.{hint} The file must have "
            f"the official layout of {official_weights_name(name)}, or timm's own of "
            f"{BACKBONES[name].timm_name}."
        )
    return sd


def _is_transformers_layout(sd: dict[str, torch.Tensor]) -> bool:
    """Whether ``sd`` has the keys of Hugging Face transformers' Dinov2Model: embeddings.* and
    encoder.layer.*, under dinov2.* where a task model (Dinov2ForImageClassification) saved it."""
    keys = [k.removeprefix("dinov2.") for k in sd]
    return any(k.startswith("embeddings.") for k in keys) and any(
        k.startswith("encoder.layer.") for k in keys
    )


def _guess_backbone(sd: dict[str, torch.Tensor]) -> str | None:
    if "cls_token" not in sd:
        return None
    dim = sd["cls_token"].shape[-1]
    numbers = (k.split(".")[1] for k in sd if k.startswith("blocks."))
    depth = 1 + max((int(n) for n in numbers if n.isdigit()), default=-1)
    reg = "register_tokens" in sd or "reg_token" in sd  # official layout, or timm's
    # the official models' own rows first: a row of other head blocks shares their weights
    for name, spec in sorted(BACKBONES.items(), key=lambda row: row[0] != row[1].hub_name):
        if (spec.embed_dim, spec.depth, spec.registers > 0) == (dim, depth, reg):
            return name
    return None


def _check_row(backbone: "DinoBackbone") -> None:
    """Refuse a model that its BACKBONES row does not describe (a row added with the timm_name
    or hub_name of another architecture): the head would be sized by the row, and the weights
    converted by it."""
    spec = BACKBONES[backbone.name]
    shapes = backbone.official_shapes()
    block = backbone.vit.blocks[0]
    mlp = {key: value.shape for key, value in block.mlp.state_dict().items()}
    built = {
        "embed_dim": shapes["cls_token"][-1],
        "depth": len(backbone.vit.blocks),
        "num_heads": getattr(block.attn, "num_heads", spec.num_heads),
        "registers": shapes.get("register_tokens", torch.Size([1, 0]))[1],
        # official w12/w3; timm calls them fc1/fc2, the first twice as wide as the second's input
        "swiglu": "w12.weight" in mlp
        or ("fc1.weight" in mlp and mlp["fc1.weight"][0] == 2 * mlp["fc2.weight"][1]),
    }
    wrong = [
        f"{k} {getattr(spec, k)} there, {v} built"
        for k, v in built.items()
        if v != getattr(spec, k)
    ]
    if wrong:
        made = spec.timm_name if backbone.source == "timm" else f"the hub's {spec.hub_name}"
        raise UserError(
            f"the BACKBONES row {backbone.name} in config.py does not describe {made} "
            f"({'; '.join(wrong)}): fix the row"
        )


def load_backbone(
    name: str,
    source: str,
    weights: str | None,
    hub_dir: Path | None = None,
    layers: int = DEFAULT_LAYERS,
    blocks: tuple[int, ...] | None = None,
) -> DinoBackbone:
    """Build a DINOv2 backbone and load its weights.

    Args:
        name: an official hub name, a key of config.BACKBONES.
        source: "hub" (torch.hub.load of the official repository) or "timm".
        weights: "pretrained" (official weights: hub downloads them or reads its cache; timm reads
            the torch.hub cache file), a path to a .pth or .safetensors file (official or timm
            layout), "random" (untrained, with a warning), or None (untrained, silently: the
            caller loads weights next).
        hub_dir: a local clone of the official repository, for source "hub" (with "timm", a
            warning says it has no effect).
        layers: how many of the row's last head blocks feed the head.
        blocks: the blocks that feed the head, where given (a checkpoint's own): ``layers`` is
            then not used.
    """
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if source not in ("hub", "timm"):
        # reached from Python only (the flag has choices): _build_vit takes anything but
        # "timm" for "hub"
        raise UserError(f"unknown backbone source {source!r}; choose hub or timm")
    blocks = BACKBONES[name].blocks(layers) if blocks is None else tuple(blocks)
    if source == "timm" and hub_dir is not None:
        warn_on_main_process(
            "--hub-dir %s has no effect with --backbone-source timm, which builds the "
            "architecture itself: drop --hub-dir, or pass --backbone-source hub to load the "
            "official code from it",
            hub_dir,
        )
    vit = _build_vit(name, source, hub_dir, weights)
    backbone = DinoBackbone(vit, name, source, blocks)
    _check_row(backbone)
    cached = weights == "pretrained"
    if cached:
        # The file torch.hub caches, read here with weights_only=True and checked key by key:
        # the official code would unpickle it (torch.hub.load_state_dict_from_url).
        path = cached_weights(name)
        if not path.is_file() and source == "timm":
            raise UserError(
                f"--backbone-source timm found no official weights at {path}. " + offline_help(name)
            )
        if not path.is_file():
            download_official_weights(name, path)
        weights = str(path)
    if weights == "random":
        warn_on_main_process(  # every process under torchrun builds the same backbone
            "WARNING: --weights random: the %s backbone is UNTRAINED. Use this for smoke tests "
            "only; results mean nothing.",
            name,
        )
    elif weights is not None:
        sd = _read_weights_file(Path(weights), backbone.official_shapes(), name, cached)
        backbone.load_official_state_dict(sd)
        log.info("loaded %s weights from %s", name, weights)
    return _frozen(backbone)


def _frozen(backbone: DinoBackbone) -> DinoBackbone:
    backbone.requires_grad_(False)
    return backbone.eval()


class BNHead(nn.Module):
    """Concatenate block feature maps, BatchNorm them and classify each patch with a 1x1 conv.

    This is the official DINOv2 linear segmentation head: with one block it is the "linear"
    protocol, with four the "+ms" head's decoder.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N*D, h, w) concatenated block features -> (B, num_classes, h, w) logits."""
        return self.classifier(self.bn(features))


def _float32_input(module: nn.Module, args: tuple) -> tuple:
    """A forward pre-hook: ``module`` gets its tensor input as float32."""
    return (args[0].float(), *args[1:])


class Segmentor(nn.Module):
    """DINOv2 backbone + BNHead, taking RGB pixels and returning per-pixel class logits.

    It owns the ImageNet normalization (as buffers) and the patch-size alignment, so callers
    pass plain images of any size.
    """

    def __init__(self, backbone: DinoBackbone, num_classes: int, fine_tune: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = BNHead(backbone.embed_dim * len(backbone.blocks), num_classes)
        self.fine_tune = fine_tune
        backbone.requires_grad_(fine_tune)
        # The official model's mask_token serves masked-image pre-training only: it never gets
        # a gradient here, and DistributedDataParallel refuses parameters that never do.
        for name, param in backbone.vit.named_parameters():
            if name == "mask_token":
                param.requires_grad_(False)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self._float32_norm = False  # whether the final norm is fed float32 (see cast)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's weights' dtype, which its input is cast to: float32, or
        bfloat16/float16 when cast for inference (its final norm and the head are float32 either
        way)."""
        return self.backbone.vit.patch_embed.proj.weight.dtype

    def cast(self, dtype: torch.dtype) -> "Segmentor":
        """Cast the backbone to ``dtype`` for inference, in place, but for its final norm; the
        norm and the head stay float32.

        Some of DINOv2's feature channels have means large next to their spread (100 next to
        1), and bfloat16 holds a value near 100 in steps of 0.5. The final LayerNorm makes the
        features of every block the head reads: cast, it would hand such channels over in those
        steps where its weight and bias make the large mean. The head's BatchNorm would round
        its running mean of such a channel by up to a quarter of the spread (100.3 to 100.5), a
        shift of every pixel alike, and the logits to 8 significant bits. Both cost next to
        nothing beside the blocks. Unlike ``.to(dtype)`` this also keeps the pixel
        normalization in float32: in bfloat16 the mean 123.675 would become 123.5.
        """
        norm = self.backbone.vit.norm
        kept = {key: value.clone() for key, value in norm.state_dict().items()}
        self.backbone.to(dtype)
        norm.float().load_state_dict(kept)  # cast to bfloat16 and back, 100.3 would stay 100.5
        if dtype != torch.float32 and not self._float32_norm:
            norm.register_forward_pre_hook(_float32_input)
            self._float32_norm = True
        return self

    def quantize_int8(self) -> "Segmentor":
        """Quantize the backbone's linear layers to int8 for CPU inference, in place.

        torchao's dynamic scheme: weights per output channel, activations per token at run time,
        int8 products summed in int32 (``torch._int_mm``). Attention's own products and the head
        stay float32. Only a compiled graph is fast: compiling fuses the per-token quantization
        around each product, which run eagerly makes int8 slower than float32.
        """
        if self.dtype != torch.float32:
            raise ValueError("int8 quantization starts from float32 weights")
        check_int8_cpu()
        quantize, config = int8_quantizer()
        quantize(self.backbone, config())
        return self

    def train(self, mode: bool = True) -> "Segmentor":
        super().train(mode)
        if not self.fine_tune:
            self.backbone.eval()  # a frozen backbone always runs in inference mode
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in 0..255 (uint8 or float) -> (B, N*D, h, w) block features.

        H and W need not be multiples of 14: this is the one place where images are resized to
        the nearest multiple (e.g. 640 -> 644) before the backbone.
        """
        x = (images.float() - self.pixel_mean.float()) / self.pixel_std.float()
        x = x.to(self.dtype)
        h, w = x.shape[-2:]
        aligned = (patch_aligned(h), patch_aligned(w))
        if aligned != (h, w):
            x = F.interpolate(x, size=aligned, mode="bilinear", align_corners=False)
        with torch.set_grad_enabled(self.fine_tune and torch.is_grad_enabled()):
            return torch.cat(self.backbone(x), dim=1)

    def patch_logits(self, x: torch.Tensor, from_features: bool = False) -> torch.Tensor:
        """Images (B, 3, H, W), or features from ``features`` -> (B, K, h, w) patch logits,
        float32 but where autocast runs the head's convolution in its dtype."""
        features = x if from_features else self.features(x)
        return self.head(features.float())  # cached float16 ones too: the head is float32

    def forward(
        self, x: torch.Tensor, size: tuple[int, int] | None = None, from_features: bool = False
    ) -> torch.Tensor:
        """Images (B, 3, H, W) RGB in 0..255, or cached features -> (B, K, *size) logits.

        ``size`` defaults to the images' (H, W); with features it must be given.
        """
        if from_features and size is None:
            raise ValueError("Segmentor(features, from_features=True) needs the output size")
        logits = self.patch_logits(x, from_features)
        size = tuple(x.shape[-2:]) if size is None else size
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def param_groups(self, lr: float, backbone_lr: float) -> list[dict]:
        """Optimizer groups: the head at ``lr``; the backbone at ``backbone_lr`` if fine-tuned."""
        groups = [{"params": list(self.head.parameters()), "lr": lr, "name": "head"}]
        if self.fine_tune:
            params = [p for p in self.backbone.parameters() if p.requires_grad]
            groups.append({"params": params, "lr": backbone_lr, "name": "backbone"})
        return groups


def _on_cpu(value):
    """``value`` with every tensor in it (nested in dicts, lists, tuples) on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(v) for v in value)
    return value


def save_checkpoint(path: Path, model: Segmentor, **meta) -> None:
    """Write a self-describing checkpoint atomically.

    The backbone is stored in the official layout and the head as its state dict, with the
    backbone's name and source, the layers and fine-tuning taken from ``model``, next to
    ``meta``: classes, image size, arguments, and for training also optimizer, scheduler,
    scaler, epoch, metrics and best scores. Everything is CPU tensors and plain Python values,
    so it loads with ``torch.load(weights_only=True)`` on any machine.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": {
            "backbone": model.backbone.official_state_dict(),
            "head": _on_cpu(model.head.state_dict()),
        },
        "backbone": model.backbone.name,
        "backbone_source": model.backbone.source,
        "layers": len(model.backbone.blocks),
        "blocks": list(model.backbone.blocks),  # as trained, should the BACKBONES row change
        "fine_tune": model.fine_tune,
        **_on_cpu(meta),
    }
    with atomic_path(path) as tmp:
        torch_save(payload, tmp)


def checkpoint_bytes(model: Segmentor) -> int:
    """About the size of one checkpoint: the model plus AdamW's two moments per trainable value."""
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return state + 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)


def peek_checkpoint(path: Path) -> dict:
    """A checkpoint's contents for a quick look at its plain values (epoch, args), memory-mapped
    so that its tensors are not read; {} for any file that is not one (read_checkpoint names
    the problem where it matters)."""
    try:
        # torch's mmap opens the file in C++, which takes no path that is not UTF-8: such a
        # file is read whole
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=is_utf8(path))
    except Exception:  # any unreadable file
        return {}
    return ckpt if isinstance(ckpt, dict) else {}


def read_checkpoint(path: Path, flag: str = "--model") -> dict:
    """Read one of our checkpoints safely (weights_only), or fail with a readable message.

    Args:
        flag: the command-line flag that named ``path``, for the messages.
    """
    path = Path(path)
    if path.is_dir():
        # a run continues from its last epoch: best_model_iou.pth would repeat the ones after it
        name = LAST_CHECKPOINT if flag == "--resume" else BEST_CHECKPOINT
        raise UserError(
            f"{flag} {path} is a folder; pass a checkpoint in it, such as {path / name}"
        )
    if not path.is_file():
        fix = (
            "pass the last_model.pth of an earlier run"
            if flag == "--resume"
            else "train one with train.py, or pass --model"
        )
        raise UserError(f"checkpoint {path} ({flag}) does not exist; {fix}")
    if path.suffix.lower() == ".onnx":
        # Only the inference scripts have --backend: train.py and export.py need the .pth.
        raise UserError(
            f"{flag} {path} is an ONNX model, not a .pth checkpoint written by train.py: only "
            "infer_image.py and infer_video.py run it, with --backend onnxruntime"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a text file, an image, a truncated download, pickled objects...
        # PyTorch's own message is long and suggests weights_only=False, which we never do.
        raise UserError(
            f"{flag} {path} is not a readable checkpoint: PyTorch cannot load it safely "
            f"({type(err).__name__}). Is it damaged, or another kind of file? Pass a "
            "best_model_iou.pth, best_model_loss.pth or last_model.pth written by train.py"
        ) from err
    backbone = _is_state_dict(ckpt) and _guess_backbone(ckpt)
    if backbone:
        raise UserError(
            f"{flag} {path} holds the weights of a {backbone} backbone, not a segmentation "
            f"model: train one on them with train.py --backbone {backbone} --weights {path}, "
            "then pass its best_model_iou.pth"
        )
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else None
        if _other_version(found, CHECKPOINT_FORMAT):
            raise UserError(
                f"{flag} {path} has checkpoint format {found!r}, and this version of the "
                f"repository reads {CHECKPOINT_FORMAT!r}: use the version that wrote it"
            )
        raise UserError(
            f"{flag} {path} is not a checkpoint of this repository (no format "
            f"{CHECKPOINT_FORMAT!r}); "
            "pass a best_model_iou.pth, best_model_loss.pth or last_model.pth written by train.py"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    model = ckpt.get("model")
    if "model" in ckpt and not (isinstance(model, dict) and {"backbone", "head"} <= model.keys()):
        missing.append("model.backbone and model.head")
    if missing:
        raise UserError(
            f"{flag} {path} is damaged or was edited: it lacks {', '.join(missing)}; "
            "use a checkpoint exactly as train.py wrote it"
        )
    if ckpt["backbone"] not in BACKBONES:
        raise UserError(
            f"{flag} {path} holds a {ckpt['backbone']!r} model, a backbone this version of the "
            f"repository does not build (it builds {', '.join(BACKBONES)}): use the version "
            "that wrote it, or a checkpoint exactly as train.py wrote it"
        )
    return ckpt


def _other_version(found, current: str) -> bool:
    """Whether a file's format tag ``found`` has the name of ``current`` ("NAME/VERSION") and
    another version: a file of another version of this repository."""
    name = current.split("/")[0]
    return isinstance(found, str) and found != current and found.startswith(f"{name}/")


def _are_blocks(blocks, layers: int, backbone: str) -> bool:
    """Whether a checkpoint's ``blocks`` are ``layers`` increasing indices of ``backbone``'s
    blocks (the order the backbone returns them in, and the head's channels hold them in)."""
    depth = BACKBONES[backbone].depth
    return (
        isinstance(blocks, list | tuple)
        and len(blocks) == layers
        and all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < depth for b in blocks)
        and list(blocks) == sorted(set(blocks))
    )


def check_backbone(path: Path, holds: str, requested: str | None) -> None:
    """Refuse a model file whose backbone is not the one asked for with --backbone."""
    if requested is not None and requested != holds:
        raise UserError(
            f"{path} holds a {holds} model, not the requested --backbone {requested}; "
            "drop --backbone or pick the matching file"
        )


def load_checkpoint(
    path: Path,
    device: torch.device | str = "cpu",
    backbone_source: str | None = None,
    hub_dir: Path | None = None,
    backbone: str | None = None,
    flag: str = "--model",
    ckpt: dict | None = None,
) -> tuple[Segmentor, dict]:
    """Rebuild a Segmentor from a checkpoint: the one loader every script uses.

    Args:
        path: a checkpoint written by save_checkpoint.
        device: where to put the model.
        backbone_source: rebuild the backbone through "hub" or "timm" instead of the source it was
            trained with; the weights are the checkpoint's either way.
        hub_dir: a local clone of the official repository, for source "hub".
        backbone: if given, the backbone the caller expects; a checkpoint of another is refused.
        flag: the command-line flag that named ``path``, for the messages.
        ckpt: ``read_checkpoint(path)`` where the caller has read it already.

    Returns:
        (model in eval mode, the checkpoint dict)
    """
    ckpt = read_checkpoint(path, flag) if ckpt is None else ckpt
    check_backbone(path, ckpt["backbone"], backbone)
    classes = ClassConfig.from_dict(ckpt["classes"], source=str(path))
    source = backbone_source or ckpt["backbone_source"]
    if source == "timm" and hub_dir is not None and backbone_source is None:
        warn_on_main_process(
            "--hub-dir %s has no effect: %s was trained through timm, which rebuilds it without "
            "the official code; drop --hub-dir, or pass --backbone-source hub to rebuild it "
            "from that clone",
            hub_dir,
            path,
        )
        hub_dir = None  # said once, here, where the source came from the checkpoint
    built = _checkpoint_backbone(path, ckpt, source, hub_dir)
    model = Segmentor(built, classes.num_classes, fine_tune=ckpt["fine_tune"])
    _load_weights(model, path, ckpt)
    return model.to(device).eval(), ckpt


def _edited(path: Path, ckpt: dict, problem: str, changed: str = "") -> UserError:
    """The error for a checkpoint that no longer fits its own model: ``problem`` says how,
    ``changed`` what was changed where known."""
    return UserError(
        f"checkpoint {path} does not fit its {ckpt['backbone']} model: {problem}. It was "
        f"changed after train.py wrote it{changed}: use a checkpoint exactly as train.py wrote it"
    )


def _checkpoint_backbone(path: Path, ckpt: dict, source: str, hub_dir: Path | None) -> DinoBackbone:
    """A checkpoint's backbone architecture, untrained, built through ``source`` and feeding the
    head the blocks it was trained on."""
    # The blocks the head was trained on, kept should the BACKBONES row change (checkpoints
    # written before they were recorded have the row's).
    blocks = ckpt.get("blocks")
    if blocks is not None and not _are_blocks(blocks, ckpt["layers"], ckpt["backbone"]):
        raise _edited(
            path,
            ckpt,
            f"its blocks {blocks!r} are not {ckpt['layers']} increasing block indices of its "
            f"{BACKBONES[ckpt['backbone']].depth}",
        )
    try:
        return load_backbone(ckpt["backbone"], source, None, hub_dir, ckpt["layers"], blocks)
    except UserError as err:
        # --hub-dir is never taken from the checkpoint (it may name a folder of another machine,
        # and it is code that would run), but a run trained with it most likely needs it again.
        trained = (ckpt.get("args") or {}).get("hub_dir")
        if source != "hub" or hub_dir is not None or not trained:
            raise
        raise UserError(
            f"{err} {path} was trained with --hub-dir {trained}: pass --hub-dir {trained} "
            "again (a checkpoint does not keep it)"
        ) from err


def _load_weights(model: Segmentor, path: Path, ckpt: dict) -> None:
    """Load a checkpoint's backbone and head weights into ``model``, built for it."""
    weights = ckpt["model"]["backbone"]
    # Checked here, as --weights files are: timm converts the official layout itself and fails
    # with a KeyError or a reshape error for a missing or odd key, not load_state_dict's list.
    if _is_state_dict(weights):
        problem = _layout_problem(weights, model.backbone.official_shapes(), ckpt["backbone"])
    else:
        problem = "model.backbone is not a state dict of tensors"
    if problem:
        raise _edited(path, ckpt, problem)
    try:
        model.backbone.load_official_state_dict(weights)
        model.head.load_state_dict(ckpt["model"]["head"])
    except RuntimeError as err:
        detail = " ".join(str(err).split()).rstrip(".")  # load_state_dict's list, on one line
        raise _edited(path, ckpt, detail, " (its classes, or its head)") from err


ONNX_FORMAT = "dinov2-segmentation-onnx/1"


class OnnxSegmentor:
    """A model exported by export.py, run by ONNX Runtime, behind the Segmentor methods the
    Predictor uses (patch_logits on uint8 images at the exported size)."""

    def __init__(
        self, session, classes: ClassConfig, imgsz, backbone: str, per_image: bool = False
    ):
        self.session = session  # an onnxruntime.InferenceSession
        self.classes = classes
        self.imgsz = tuple(imgsz)
        self.backbone = backbone
        self.device = torch.device("cpu")  # inputs and outputs live on the host
        # Run one image at a time: ONNX Runtime's dynamic quantization (export.py --int8) scales
        # the activations by their range over the whole input, so in a batch an image's logits
        # depended on the images beside it (by up to 0.03, 13 of 38,583 mask pixels in a batch
        # of 6 test images) and its mask on --batch.
        self.per_image = per_image

    @classmethod
    def load(cls, path: Path, device: torch.device) -> "OnnxSegmentor":
        """Open a file written by export.py, on CUDA when asked for and available."""
        import onnx

        path = Path(path)
        graph = "pass the .onnx file export.py wrote (python export.py --model CKPT --output FILE)"
        if path.is_dir():
            raise UserError(f"--model {path} is a folder; {graph}")
        if not path.is_file():
            raise UserError(f"--model {path} does not exist; {graph}")
        with path.open("rb") as f:
            checkpoint = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip; ONNX, a protobuf
        if checkpoint:  # the default --model is one, so a forgotten --model lands here
            raise UserError(
                f"--model {path} is a PyTorch checkpoint from train.py, not an ONNX model: drop "
                "--backend onnxruntime to run it with PyTorch, or export it first with "
                f"python export.py --model {path} --output model.onnx"
            )
        check_utf8(path, "--model", "ONNX Runtime", "rename the graph, or the folders above it")
        session = _onnx_session(path, device)
        classes, imgsz, backbone = _export_metadata(session, path)
        # the graph's nodes without its weights, which may be gigabytes beside it
        nodes = onnx.load(str(path), load_external_data=False).graph.node
        per_image = any(node.op_type == "DynamicQuantizeLinear" for node in nodes)
        return cls(session, classes, imgsz, backbone, per_image)

    training = False  # a graph for inference only: eval() and train() change nothing

    @property
    def device_type(self) -> str:
        """Where ONNX Runtime runs the graph, "cuda" or "cpu": not ``device`` (the host, where
        inputs and outputs live), nor always the one --device asked for."""
        cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        return "cuda" if cuda else "cpu"

    @property
    def runs_on(self) -> str:
        """Where ONNX Runtime runs the graph, for the speed lines."""
        return f"{self.device_type} (ONNX Runtime)"

    def eval(self) -> "OnnxSegmentor":
        return self

    def train(self, mode: bool = True) -> "OnnxSegmentor":
        return self

    def patch_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 at the exported size -> (B, K, h, w) float32 logits."""
        images = images.cpu().numpy()
        batches = [images[i : i + 1] for i in range(len(images))] if self.per_image else [images]
        logits = [self.session.run(None, {"images": batch})[0] for batch in batches]
        return torch.from_numpy(logits[0] if len(logits) == 1 else np.concatenate(logits))


def _onnx_session(path: Path, device: torch.device):
    """An onnxruntime.InferenceSession of the graph at ``path``, on CUDA where ``device`` is and
    onnxruntime can; a warning where it falls back to the CPU."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as err:  # ONNX Runtime raises its own types for unreadable models
        missing = _missing_external_data(path)
        if missing is not None:
            raise UserError(
                f"{path} keeps its weights in {missing}, which does not exist: copy the "
                f"{missing.name} that export.py wrote beside the graph, under that name (the "
                "graph names it: rename the .onnx file if you like, never the .data file)"
            ) from err
        hint = (
            ": this onnxruntime lacks an operator the graph uses (an --int8 graph's "
            "ConvInteger with int8 weights needs onnxruntime 1.24 or later); update it"
            if "NOT_IMPLEMENTED" in str(err)
            else ""
        )
        raise UserError(
            f"{path} is not an ONNX model ONNX Runtime {ort.__version__} can load ({err}){hint}"
        ) from err
    if device.type != "cpu" and session.get_providers()[0] != "CUDAExecutionProvider":
        # --device auto picks CUDA or MPS for PyTorch, and the speed line names that device;
        # the onnxruntime package runs on the CPU only (onnxruntime-gpu adds CUDA)
        if device.type != "cuda":
            why = "--backend onnxruntime runs on CUDA or the CPU"
        elif "CUDAExecutionProvider" in providers:
            why = (
                "its CUDA provider did not start (see ONNX Runtime's message above: the CUDA "
                "and cuDNN versions this onnxruntime-gpu was built for)"
            )
        else:
            why = "this onnxruntime has no CUDA provider: install onnxruntime-gpu in its place"
        log.warning("--device %s: ONNX Runtime runs %s on the CPU; %s", device.type, path, why)
    return session


def _export_metadata(session, path: Path) -> tuple[ClassConfig, list[int], str]:
    """The classes, input size [W, H] and backbone name export.py stored in the graph."""
    meta = session.get_modelmeta().custom_metadata_map
    found = meta.get("format")
    if found != ONNX_FORMAT:
        if _other_version(found, ONNX_FORMAT):
            raise UserError(
                f"{path} has graph format {found!r}, and this version of the repository "
                f"reads {ONNX_FORMAT!r}: use the version that exported it"
            )
        raise UserError(f"{path} was not written by export.py (no {ONNX_FORMAT} metadata)")
    try:
        classes = ClassConfig.from_dict(json.loads(meta["classes"]), source=str(path))
        imgsz = json.loads(meta["imgsz"])
        backbone = meta["backbone"]
        if not (
            isinstance(imgsz, list)
            and len(imgsz) == 2
            and all(isinstance(v, int) and v >= PATCH_SIZE for v in imgsz)
        ):
            raise ValueError(f"imgsz {imgsz!r}")
    except (KeyError, TypeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise UserError(
            f"{path} has damaged or edited export.py metadata ({type(err).__name__}: {err}): "
            "export the checkpoint again"
        ) from err
    return classes, imgsz, backbone


def _missing_external_data(path: Path) -> Path | None:
    """The first weights file an ONNX graph names beside it (export.py's NAME.data) that does not
    exist, or None (also for a file that is no ONNX graph)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and others: ONNX Runtime's message says more
        return None
    for tensor in proto.graph.initializer:
        if uses_external_data(tensor):
            data = Path(path).parent / ExternalDataInfo(tensor).location
            if not data.is_file():
                return data
    return None


def count_flops(model: nn.Module, images: torch.Tensor) -> int:
    """Floating-point operations of one forward pass (a multiply-add counts as 2)."""
    return sum(flops_by_op(model, images).values())


def flops_by_op(model: nn.Module, images: torch.Tensor) -> dict[str, int]:
    """count_flops per operator, e.g. {"aten.addmm": ..., "aten.convolution": ...}."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    # PyTorch's registry knows the CUDA attention kernels but not the CPU one.
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    mapping = {cpu_attention: cpu_attention_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.no_grad():
        model(images)
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Print a summary of the segmentation model. It loads no weights unless "
        "--weights is given: the summary needs only the architecture.",
        parents=[backbone_flags(weights=None)],
    )
    add_layers_flag(parser)
    parser.add_argument(
        "--num-classes",
        type=int,
        default=DEFAULT_CLASSES.num_classes,
        metavar="N",
        help="classes the head predicts (default %(default)s)",
    )
    add_imgsz_flag(
        parser,
        DEFAULT_IMGSZ,
        f"input size of the summary (default {DEFAULT_IMGSZ[0]} {DEFAULT_IMGSZ[1]})",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    check_imgsz(args.imgsz)
    if not 2 <= args.num_classes <= IGNORE_INDEX:  # as ALL_CLASSES allows
        raise UserError(
            f"--num-classes must be between 2 and {IGNORE_INDEX}, not {args.num_classes}"
        )
    args.backbone_source = args.backbone_source or DEFAULT_SOURCE
    backbone = load_backbone(
        args.backbone, args.backbone_source, args.weights, args.hub_dir, args.layers
    )
    check_size_fits(backbone, args.imgsz, 1, torch.device("cpu"))
    model = Segmentor(backbone, args.num_classes).eval()
    w, h = args.imgsz
    images = torch.zeros(1, 3, h, w)
    log_input_size((w, h))
    with torch.no_grad():
        blocks = model.features(images).split(backbone.embed_dim, dim=1)
        head_logits = model.patch_logits(images)
        logits = model(images)
    # The hub model holds the official weights' mask_token (masked pre-training only), timm's
    # has none: left out, both sources count the network that runs here.
    counted = [p for n, p in model.named_parameters() if n != "backbone.vit.mask_token"]
    frozen = sum(p.numel() for p in counted if not p.requires_grad)
    trainable = sum(p.numel() for p in counted if p.requires_grad)
    flops = count_flops(model, images)
    weights = args.weights or "not loaded (the summary needs only the architecture)"
    print(f"Backbone: {args.backbone} via {args.backbone_source}, weights {weights}")
    print(backbone.vit)
    print(f"Head (blocks {list(backbone.blocks)}):")
    print(model.head)
    print(
        f"Parameters: {frozen:,} frozen (backbone; the unused mask_token of the official weights "
        f"left out), {trainable:,} trainable (head)"
    )
    print(f"Input: {tuple(images.shape)}")
    for block, f in zip(backbone.blocks, blocks, strict=True):
        print(f"  block {block} features: {tuple(f.shape)}")
    print(f"  head logits: {tuple(head_logits.shape)}")
    print(f"  output logits: {tuple(logits.shape)}")
    print(f"FLOPs per {w}x{h} image: {flops / 1e9:.1f} GFLOPs")


if __name__ == "__main__":
    run_script(lambda: main(get_args_parser().parse_args()))
