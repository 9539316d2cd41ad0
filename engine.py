"""One training epoch and one evaluation over a split."""

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from config import IGNORE_INDEX
from metrics import ConfusionMatrix
from model import Segmentor


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(
    model: Segmentor,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    desc: str = "train",
) -> dict:
    """Train over ``loader`` once with pixel-wise cross-entropy (255 ignored).

    Returns:
        {"loss": mean loss per labelled pixel, "acc": pixel accuracy, "miou": mIoU}, the metrics
        being those of the augmented training crops.
    """
    model.train()
    cm = ConfusionMatrix(num_classes)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    pixels = torch.zeros((), device=device, dtype=torch.int64)
    for images, masks, _ in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(images)
        # Sum over pixels, then divide by this batch's labelled pixels: the usual mean loss for
        # the step, and an exact per-pixel mean for the epoch.
        loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX, reduction="sum")
        labelled = (masks != IGNORE_INDEX).sum()
        step_loss = loss / labelled.clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(step_loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            step_loss.backward()
            optimizer.step()
        loss_sum += loss.detach()
        pixels += labelled
        cm.update(logits.detach().argmax(1), masks)
    scores = cm.compute()
    loss = (loss_sum / pixels.clamp(min=1)).item()
    return {"loss": loss, "acc": scores["pixel_accuracy"], "miou": scores["miou"]}


@torch.no_grad()
def evaluate(
    model: Segmentor,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    keep: int = 0,
    desc: str = "valid",
) -> tuple[dict, dict[int, np.ndarray]]:
    """Score a split against each mask at its original resolution.

    The patch-grid logits are resized straight to each mask's size (as the official evaluation
    does), so resizing never changes the ground truth.

    Args:
        loader: yields (images, masks, indices) as collated by datasets.collate_eval.
        keep: also return the predictions of the items with index < keep.

    Returns:
        (metrics, kept): metrics has "loss", "acc", "miou" and "iou" (per class, NaN where a
        class is absent from both prediction and ground truth); kept maps index -> (h, w) uint8
        predicted class ids.
    """
    model.eval()
    cm = ConfusionMatrix(num_classes)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    pixels = torch.zeros((), device=device, dtype=torch.int64)
    kept = {}
    for images, masks, indices in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        with _autocast(device, amp_dtype):
            logits = model.patch_logits(images.to(device, non_blocking=True))
        for logit, mask, index in zip(logits.float(), masks, indices, strict=True):
            mask = mask.to(device, non_blocking=True)[None]
            up = F.interpolate(
                logit[None], size=mask.shape[-2:], mode="bilinear", align_corners=False
            )
            loss_sum += F.cross_entropy(up, mask, ignore_index=IGNORE_INDEX, reduction="sum")
            pixels += (mask != IGNORE_INDEX).sum()
            pred = up.argmax(1)
            cm.update(pred, mask)
            if index < keep:
                kept[index] = pred[0].to(torch.uint8).cpu().numpy()
    scores = cm.compute()
    metrics = {
        "loss": (loss_sum / pixels.clamp(min=1)).item(),
        "acc": scores["pixel_accuracy"],
        "miou": scores["miou"],
        "iou": scores["iou"],
    }
    return metrics, kept
