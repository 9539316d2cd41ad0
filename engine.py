"""Running the model: one training epoch, one evaluation, test-time augmentation, the Predictor
for inference, the frozen-feature cache, and the benchmarks' timing (warm_up, best_seconds)."""

import contextlib
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from config import (
    IGNORE_INDEX,
    OVERLAY_ALPHA,
    PATCH_SIZE,
    ClassConfig,
    Slide,
    slide_setting,
    tta_setting,
)
from datasets import (
    RESIZE_VERSION,
    Pair,
    read_image,
    resize_image,
    slide_input_size,
    unrepeated,
)
from metrics import ConfusionMatrix
from model import (
    OnnxSegmentor,
    Segmentor,
    check_backbone,
    check_size_fits,
    int8_quantizer,
    load_checkpoint,
    log_input_size,
    token_grid,
)
from utils import (
    LEGEND_HEIGHT,
    UserError,
    all_reduce_sum,
    amp_advice,
    amp_dtype,
    atomic_path,
    check_compiler,
    class_pixels,
    draw_legend,
    draw_overlay,
    is_main_process,
    prefetch,
    torch_save,
)

log = logging.getLogger("dinoseg")

# the most class scores Predictor resizes to the images' sizes at once (float32: 256 MB)
UPSAMPLE_ELEMENTS = 2**26
# --slide's stride as a fraction of the window: away from the image's edges each pixel lies in
# one or two windows along each side, so the border of a window (where its context is cut off)
# is also seen well inside its neighbour, for about 1.5 times the windows along a side where
# half a window (a pixel in two windows everywhere) would take twice as many
SLIDE_STRIDE = 2 / 3
# the averaged probabilities' floor in the --tta loss, where a log of 0 would be infinite
PROB_FLOOR = 1e-12


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``, copied asynchronously only to CUDA.

    CUDA reads a pageable source before the call returns, and does not reuse a pinned one (the
    DataLoader's) until its copy is done. A CPU-to-MPS copy with non_blocking=True may read the
    source after it was freed, as it is when ``x`` is rebound to the copy: silently wrong
    images and masks (pytorch/pytorch#139550, #189690).
    """
    return x.to(device, non_blocking=device.type == "cuda")


def _progress(loader, desc: str):
    """A progress bar over ``loader``, on rank 0 alone, cleared when done."""
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not is_main_process())


def class_ids(scores: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """(B, K, H, W) logits or probabilities -> (B, H, W) class ids as ``dtype``: those of
    max(1), the first maximum, NaN counting as the highest.

    max(1).indices rather than argmax(1): on the CPU, argmax over the class dimension took 40
    times longer (602 vs 15 ms for 8 x 2 x 640 x 640 logits), more than the whole training step
    of the head from cached features. Two classes (the default) are compared instead, 2.7-3.9
    times faster again on one CPU thread (1920x1080 scores: 5.6 vs 22 ms; 8 x 640 x 640, as
    int64: 12 vs 32 ms), as max(1) also writes every maximum and an int64 index.
    """
    if scores.shape[1] != 2:
        return scores.max(1).indices.to(dtype)
    first, second = scores[:, 0], scores[:, 1]
    # class 1 where class 0 is not at least as high (a tie keeps 0), unless class 0 is NaN
    ids = torch.ge(first, second).logical_not_().logical_and_(first == first)
    return ids.view(torch.uint8) if dtype == torch.uint8 else ids.to(dtype)


def _class_ids_in_chunks(
    scores: torch.Tensor,
    size: tuple[int, int],
    visit: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """(K, h, w) scores -> the (H, W) uint8 class ids of class_ids on all K resized to ``size``
    at once, without holding the K resized classes.

    Bilinear resizing treats channels apart, so each class is resized on its own, as many at a
    time as fit UPSAMPLE_ELEMENTS, and a running maximum keeps the first class of the highest
    score (NaN counting as highest, as in max). An 8000x6000 photo with 21 classes held 4 GB of
    float32 scores, 6.2 GB resident in all, for one mask of 48 MB. The maximum is taken class by
    class, also within a chunk: max(0) over one made a float32 maximum and int64 indices of the
    image's size (144 MB at 4000x3000) and took longer on the CPU than comparing class by class.

    Args:
        visit: called as ``visit(first, up)`` with each chunk of resized scores, (k, H, W) for
            classes ``first`` to ``first + k - 1``, which it must not change.
    """
    k, pixels = scores.shape[0], size[0] * size[1]
    step = max(1, UPSAMPLE_ELEMENTS // pixels)
    finite = bool(scores.isfinite().all())  # then so are the resized scores: no NaN checks
    running = _FirstMaximum(size, scores.device, finite)
    for first in range(0, k, step):
        up = F.interpolate(
            scores[None, first : first + step], size=size, mode="bilinear", align_corners=False
        )[0]
        if visit is not None:
            visit(first, up)
        for i, value in enumerate(up):
            # the first class copied where the chunk holds others, so that it is freed after them
            running.add(first + i, value, copy=len(up) > 1)
        del up, value  # before the next chunk is resized, which would make two of them
    return running.ids


def _class_ids_in_place(scores: torch.Tensor, finite: bool) -> torch.Tensor:
    """(B, K, H, W) scores -> the (B, H, W) uint8 class ids of class_ids, compared class by
    class, which overwrites class 0's scores with the highest. max(1) made a float32 maximum and
    int64 indices of the scores' size, 12 bytes a pixel beside their 4 a class.

    Args:
        finite: whether all scores are finite, which spares the NaN checks.
    """
    running = _FirstMaximum(scores[:, 0].shape, scores.device, finite)
    for i in range(scores.shape[1]):
        running.add(i, scores[:, i])
    return running.ids


class _FirstMaximum:
    """A running maximum over classes given one at a time, from class 0 on: ``ids`` holds the
    uint8 id of the first class of the highest score so far, NaN counting as the highest, as
    max(dim).indices gives it.

    Args:
        shape: of each class's scores and of ``ids``.
        finite: whether all scores are finite, which spares the NaN checks.
    """

    def __init__(self, shape: Sequence[int], device: torch.device, finite: bool):
        self.ids = torch.zeros(tuple(shape), dtype=torch.uint8, device=device)
        self.finite = finite
        self.best = self.better = None

    def add(self, index: int, value: torch.Tensor, copy: bool = False) -> None:
        """Compare class ``index``'s scores with the best so far. The first class's become the
        best, changed in place later: a copy with ``copy``, else ``value`` itself."""
        if self.best is None:
            self.best = value.clone() if copy else value
            return
        self.better = torch.gt(value, self.best, out=self.better)
        if not self.finite:
            self.better |= value.isnan() & ~self.best.isnan()
        self.ids.masked_fill_(self.better, index)
        if self.finite:
            torch.maximum(self.best, value, out=self.best)
        else:
            self.best = torch.where(self.better, value, self.best)


def _scores_in_chunks(
    output: torch.Tensor,
    mask: torch.Tensor,
    probs: bool,
    dtype: torch.dtype,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What _score_image computes from all K classes resized to the mask's size at once, a few
    classes at a time (see _class_ids_in_chunks). With 21 classes, a 4000x3000 mask's 1 GB of
    float32 scores and their log-softmax raised evaluate's peak memory by 2.0 GB (3.0 GB with
    TTA); a few classes at a time, by 0.7 GB (0.4 GB).

    Args:
        output: (K, h, w) float32 logits, or probabilities with ``probs``.
        mask: (H, W) integer class ids, 255 ignored.
        dtype: of the loss's sum over the pixels.
        class_weights: (K,) float32 weights of the classes' pixels in the loss, or None.

    Returns:
        The loss summed over labelled pixels as a ``dtype`` scalar: the cross-entropy of the
        logits, or with ``probs`` the negative log of the probabilities clamped at PROB_FLOOR,
        each pixel's times its class's weight with ``class_weights``; and the (H, W) uint8 class
        ids.
    """
    picked = torch.zeros(mask.shape, device=output.device)  # each pixel's score of its class
    # each pixel's class weight, 0 where ignored; filled from Python numbers, as a GPU tensor's
    # element would be read back (a wait for the device) class by class
    weights = None if class_weights is None else torch.zeros_like(picked)
    values = None if class_weights is None else class_weights.tolist()
    total = None  # the log of the sum of exp(score) over the classes so far

    def visit(first: int, up: torch.Tensor) -> None:
        nonlocal total
        # class by class rather than by gather, whose int64 indices take 8 bytes a pixel
        for i, scores in enumerate(up):
            is_class = mask == first + i
            torch.where(is_class, scores, picked, out=picked)
            if weights is not None:
                weights.masked_fill_(is_class, values[first + i])
        if not probs:
            # logaddexp rather than a running maximum and sum: a chunk whose scores are all
            # -inf would subtract -inf from -inf
            chunk = up.logsumexp(0)
            total = chunk if total is None else torch.logaddexp(total, chunk)

    ids = _class_ids_in_chunks(output, mask.shape, visit)
    losses = -picked.clamp_(min=PROB_FLOOR).log_() if probs else total - picked
    losses.masked_fill_(mask == IGNORE_INDEX, 0)
    if weights is not None:
        losses.mul_(weights)
    return losses.sum(dtype=dtype), ids


class _SplitScores:
    """The loss per labelled pixel and the confusion matrix of one pass over a split, summed
    over every process at the end (the same for training and evaluation).

    Args:
        class_weights: (K,) weights of the classes' pixels in the loss (--class-weights), or
            None. With them the loss is the weighted sum over the split divided by the summed
            weight of its labelled pixels, as F.cross_entropy(weight=...) averages one batch.
    """

    def __init__(
        self, num_classes: int, device: torch.device, class_weights: torch.Tensor | None = None
    ):
        self.device = device
        self.class_weights = class_weights
        self.cm = ConfusionMatrix(num_classes)
        # float64 sums, or float32 on MPS, which has no float64
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.loss_sum = torch.zeros((), device=device, dtype=self.dtype)

    def update(self, loss_sum: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a batch: its loss summed over labelled pixels (cross-entropy, or with TTA the
        negative log of the averaged probabilities), and its predicted and true class ids (same
        shape, 255 ignored)."""
        self.loss_sum += loss_sum.detach()
        self.cm.update(pred, mask)

    def compute(self) -> dict:
        """{"loss", "acc", "miou", "iou", "precision", "recall", "pixels", "matrix"} of the
        whole split (see ConfusionMatrix.compute)."""
        self.cm.all_reduce(self.device)
        all_reduce_sum(self.loss_sum)
        scores = self.cm.compute()
        # every labelled pixel is counted once in the matrix, in the row of its class
        pixels = torch.tensor(scores["pixels"], dtype=torch.float64)  # (K,) on the CPU
        if self.class_weights is not None:
            pixels *= self.class_weights.cpu()
        pixels = pixels.sum()
        # nan without a labelled pixel (of a weight above 0), as the accuracy and mIoU are: 0
        # would read as a perfect fit
        loss = (self.loss_sum / pixels).item() if pixels else float("nan")
        return {
            "loss": loss,
            "acc": scores["pixel_accuracy"],
            "miou": scores["miou"],
            **{key: scores[key] for key in ("iou", "precision", "recall", "pixels", "matrix")},
        }


def _groups(batches: Iterable, size: int) -> Iterator[list]:
    """``batches`` in lists of ``size``; the last list holds what is left."""
    batches = iter(batches)
    while group := list(itertools.islice(batches, size)):
        yield group


def _stop_if_diverged(loss: torch.Tensor, masks: torch.Tensor, batch: int) -> None:
    """Raise TrainingDiverged if the batch's summed ``loss`` is NaN or infinite here or in any
    other process: under torchrun every process stops at the same batch, as one that went on
    would wait forever for the others' gradients.

    Args:
        masks: the batch's (B, H, W) class ids, for the mean loss per labelled pixel.
        batch: the batch's 1-based number in the epoch (not the optimizer step's: with
            --accum a step spans several batches).
    """
    here = ~torch.isfinite(loss)
    diverged = here.to(torch.int32)
    all_reduce_sum(diverged)
    if diverged:
        mean = loss / (masks != IGNORE_INDEX).sum().clamp(min=1)
        where = f"became {mean.item()}" if here else "diverged in another process"
        raise TrainingDiverged(f"the training loss {where} at batch {batch}")


def _labelled_weight(masks: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """The labelled pixels of (B, H, W) class ids (255 ignored) as the loss counts them: their
    int64 number, or with (K,) float64 ``class_weights`` the float32 sum of their classes'
    weights (summed in float64 from each class's pixel count)."""
    if class_weights is None:
        return (masks != IGNORE_INDEX).sum()
    counts = torch.bincount(masks.flatten(), minlength=IGNORE_INDEX + 1)[: len(class_weights)]
    return (counts.double() @ class_weights.to(counts.device)).float()


def dice_loss(
    logits: torch.Tensor, masks: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The soft Dice loss of one batch: 1 minus the mean over its classes of
    2 * sum(p * t) / (sum(p) + sum(t)), p the class's softmax probabilities and t its one-hot
    truth over the labelled pixels (255 ignored).

    The mean is over the classes present in the batch's truth, each counted by its class weight
    where there are ``class_weights``: an absent class has no overlap to score, and its
    predicted pixels already lower the present classes' scores.

    Args:
        logits: (B, K, H, W) scores at the masks' size.
        masks: (B, H, W) int64 class ids.
        class_weights: (K,) weights of the classes in the mean (--class-weights), or None.

    Returns:
        A float32 scalar on the graph; 0 where no present class weighs above 0.
    """
    k = logits.shape[1]
    probs = logits.float().softmax(1)
    labelled = masks != IGNORE_INDEX
    ids = masks.where(labelled, 0)
    picked = probs.gather(1, ids[:, None]).squeeze(1) * labelled  # (B, H, W): p of the truth
    overlap = probs.new_zeros(k).index_add(0, ids.flatten(), picked.flatten())
    predicted = torch.einsum("bkhw,bhw->k", probs, labelled.to(probs.dtype))
    true = torch.bincount(ids[labelled], minlength=k).to(probs.dtype)
    # a present class has sum(t) >= 1, so the clamp changes only absent ones, which weigh 0
    dice = 2 * overlap / (predicted + true).clamp(min=1)
    weights = (true > 0).to(probs.dtype)
    if class_weights is not None:
        weights = weights * class_weights
    return (weights * (1 - dice)).sum() / weights.sum().clamp(min=torch.finfo(probs.dtype).tiny)


def train_one_epoch(
    model: Segmentor,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    num_classes: int,
    autocast_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    desc: str = "train",
    accum: int = 1,
    from_features: bool = False,
    class_weights: torch.Tensor | None = None,
    loss: str = "ce",
) -> dict:
    """Train over ``loader`` once with pixel-wise cross-entropy, the Dice loss or their sum
    (255 ignored).

    Args:
        accum: accumulate gradients over this many batches per optimizer step; each step
            follows the mean loss over the labelled pixels of its batches (of every process
            under DDP), as one batch of them all would, BatchNorm's batch statistics aside.
        from_features: the loader yields cached backbone features instead of images.
        class_weights: (K,) float32 weights of the classes' pixels in the loss, on ``device``
            (--class-weights), or None for 1 each. Each pixel's loss is then multiplied by its
            class's weight and the mean is taken over the labelled pixels' summed weight, as
            F.cross_entropy(weight=..., reduction="mean") takes it over one batch. They also
            weigh the classes in the Dice loss's mean.
        loss: what the updates follow (--loss): "ce", "dice" (dice_loss, of each batch on its
            own: an update follows the mean over its group's batches, in every process) or
            "ce+dice", the sum of the two.

    Raises:
        TrainingDiverged: at the first NaN or infinite loss, before the optimizer uses it.

    Returns:
        {"loss": mean cross-entropy per labelled pixel (whatever ``loss`` is), "acc": pixel
        accuracy, "miou": mIoU, "iou": per class}, as evaluate gives them, of the augmented
        training crops.
    """
    model.train()
    scores = _SplitScores(num_classes, device, class_weights)
    # for the group's summed weight, from the loader's masks on the CPU
    cpu_weights = None if class_weights is None else class_weights.detach().cpu().double()
    use_scaler = scaler is not None and scaler.is_enabled()
    # DistributedDataParallel averages the processes' gradients: each process's share is
    # multiplied by their number, so that the average is a sum over all of them.
    ddp = hasattr(model, "no_sync")  # a DistributedDataParallel wrapper
    world = dist.get_world_size() if ddp else 1
    optimizer.zero_grad(set_to_none=True)
    batch = 0
    # A DistributedSampler ends a process's share with repeats of images other processes train
    # on (so that all shares are equally long): the updates follow them, the scores skip them,
    # so that every image counts once, as in evaluation.
    share = unrepeated(getattr(loader, "sampler", None))
    left = math.inf if share is None else share
    for group in _groups(_progress(loader, desc), accum):
        # An update follows the mean loss over every labelled pixel of its group (the --accum
        # batches of every process), as one batch of them all would: each batch's summed loss
        # is divided by the group's labelled pixels, so the group is read before its first
        # backward. Dividing by each batch's own count would weigh a pixel of a mostly ignored
        # batch many times over one of a fully labelled batch. With class weights the pixels
        # count by their weights.
        labelled = sum(_labelled_weight(masks, cpu_weights) for _, masks, _ in group)
        labelled = to_device(labelled, device)
        all_reduce_sum(labelled)
        # (a group without a labelled pixel, or with none of weight above 0, makes no step)
        weight = world / torch.where(labelled > 0, labelled, torch.ones_like(labelled))
        for position, (images, masks, _) in enumerate(group, start=1):
            batch += 1
            images = to_device(images, device)
            # uint8 from the loader (8x fewer bytes), widened for the loss; the confusion
            # matrix counts the narrow ids, which is 3x faster
            target = to_device(masks, device)
            masks = target.long()
            update = position == len(group)
            # Under DDP, gradients are averaged across processes only on the batch that updates.
            no_sync = model.no_sync() if ddp and not update else None
            with no_sync or contextlib.nullcontext():
                with _autocast(device, autocast_dtype):
                    logits = model(images, size=masks.shape[-2:], from_features=from_features)
                ce = F.cross_entropy(
                    logits.float(),
                    masks,
                    weight=class_weights,
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
                _stop_if_diverged(ce, masks, batch)
                if position == 1:
                    # No step where every mask pixel of the group is 255 (in every process:
                    # the count is summed, so they all agree), or where all of them weigh 0:
                    # it has no gradient to follow, but
                    # AdamW would still step by its momentum and weight decay. Read here, where
                    # _stop_if_diverged has just waited for the device, so that it stalls nothing.
                    learn = bool(labelled)
                # DDP averages the processes' gradients, so each batch's Dice counts once in
                # the mean over the group's batches of every process
                objective = ce * weight if loss != "dice" else 0
                if loss != "ce":
                    objective = objective + dice_loss(logits, masks, class_weights) / len(group)
                (scaler.scale(objective) if use_scaler else objective).backward()
            if update:
                if learn and use_scaler:
                    scaler.step(optimizer)
                    scaler.update()
                elif learn:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scored = min(len(masks), left)
            left -= scored
            if scored < len(masks):
                logits, masks, target = logits[:scored], masks[:scored], target[:scored]
                ce = F.cross_entropy(
                    logits.detach().float(),
                    masks,
                    weight=class_weights,
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
            scores.update(ce, class_ids(logits.detach(), torch.uint8), target)
    return scores.compute()


def tta_probs(
    model: Segmentor, images: torch.Tensor, scales: Sequence[float], flip: bool = True
) -> torch.Tensor:
    """Multi-scale and flip test-time augmentation.

    Each view's patch logits are resized, softmaxed and added to the sum a few images at a
    time, as many as fit UPSAMPLE_ELEMENTS: resized for the whole batch at once, a view's
    logits, their softmax, its flipped copy and the sums before and after the addition were
    up to four (B, K, H, W) float32 tensors at once (with 150 classes at 644x644, 2 GB each
    at --batch 8); now the sum and two chunks.

    Args:
        images: (B, 3, H, W) RGB in 0..255.
        scales: factors applied to H and W (each view is then aligned to the patch size).
        flip: also run the horizontally flipped views (and flip their outputs back).

    Returns:
        (B, K, H, W) float32 class probabilities: each view's logits resized to (H, W),
        softmaxed, averaged.
    """
    h, w = images.shape[-2:]
    total, views = None, 0
    for scale in scales:
        size = (max(PATCH_SIZE, round(h * scale)), max(PATCH_SIZE, round(w * scale)))
        x = images.float()
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            # what model(view, size=(h, w)) returns, resized a few images at a time
            logits = model.patch_logits(x.flip(-1) if flipped else x)
            if total is None:
                total = logits.new_empty((len(logits), logits.shape[1], h, w), dtype=torch.float32)
            step = max(1, UPSAMPLE_ELEMENTS // (logits.shape[1] * h * w))
            for first in range(0, len(logits), step):
                chunk = logits[first : first + step]
                up = F.interpolate(chunk, size=(h, w), mode="bilinear", align_corners=False)
                probs = up.float().softmax(1)
                del up  # so that at most two chunks of scores are held, here and below
                probs = probs.flip(-1) if flipped else probs
                if views == 0:
                    total[first : first + step] = probs
                else:
                    total[first : first + step] += probs
                del probs
            views += 1
    return total.div_(views)


def window_starts(length: int, window: int) -> list[int]:
    """The first pixels of --slide's windows along a side of ``length`` pixels: one every
    SLIDE_STRIDE of a ``window``, the last moved back to end at the edge (no padding); a single
    one at 0 where the window covers the side."""
    if length <= window:
        return [0]
    stride = max(1, round(window * SLIDE_STRIDE))
    count = math.ceil((length - window) / stride) + 1
    return [min(i * stride, length - window) for i in range(count)]


def slide_probs(
    model: Segmentor,
    image: torch.Tensor,
    window: tuple[int, int],
    batch: int,
    tta: tuple[Sequence[float], bool] | None = None,
) -> torch.Tensor:
    """Sliding-window inference over one image (--slide).

    Windows of ``window`` (W, H) pixels (cut to the image's side where it is shorter) start every
    SLIDE_STRIDE of a window, those at the right and bottom edges moved inward (window_starts).
    They run ``batch`` at a time; each one's logits are resized to the window and softmaxed (or,
    with ``tta``, its tta_probs), and every pixel gets the mean of its windows' probabilities.

    Args:
        image: (3, H, W) RGB in 0..255, at the size to segment it at (see
            datasets.slide_input_size).
        tta: (scales, flip) for test-time augmentation of each window, or None.

    Returns:
        (K, H, W) float32 class probabilities.
    """
    _, h, w = image.shape
    ww, wh = min(window[0], w), min(window[1], h)
    corners = [(top, left) for top in window_starts(h, wh) for left in window_starts(w, ww)]
    total = count = None
    for first in range(0, len(corners), batch):
        group = corners[first : first + batch]
        x = torch.stack([image[:, top : top + wh, left : left + ww] for top, left in group])
        scores = model.patch_logits(x) if tta is None else tta_probs(model, x, *tta)
        if total is None:
            total = scores.new_zeros((scores.shape[1], h, w), dtype=torch.float32)
            count = scores.new_zeros((h, w), dtype=torch.float32)
        for (top, left), score in zip(group, scores, strict=True):
            # one window's probabilities at a time: (K, wh, ww), not --batch of them
            if tta is None:
                up = F.interpolate(score[None], size=(wh, ww), mode="bilinear", align_corners=False)
                score = up[0].float().softmax(0)
            total[:, top : top + wh, left : left + ww] += score
            count[top : top + wh, left : left + ww] += 1
        del x, scores
    return total.div_(count)


@torch.no_grad()
def evaluate(
    model: Segmentor,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    autocast_dtype: torch.dtype | None = None,
    desc: str = "valid",
    from_features: bool = False,
    tta: tuple[Sequence[float], bool] | None = None,
    slide: tuple[tuple[int, int], int] | None = None,
    class_weights: torch.Tensor | None = None,
) -> dict:
    """Score a split against each mask at its original resolution.

    The patch-grid logits are resized straight to each mask's size (as the official evaluation
    does), so resizing never changes the ground truth. Under torchrun each process scores its
    shard and the counts are summed once, so the metrics are those of the whole split.

    Args:
        loader: yields (images, masks, indices) as collated by datasets.collate_eval; with
            ``from_features``, cached features in place of the images.
        tta: (scales, flip) for test-time augmentation (see tta_probs); the loss is then the
            negative log of the averaged probabilities.
        slide: (window, batch) for --slide (see slide_probs), the loader's images at the size
            to segment them at, a list where their sizes differ; the loss is then the negative
            log of the averaged probabilities, as with ``tta`` (which then augments each window).
        class_weights: (K,) float32 weights of the classes' pixels in the loss, on ``device``, as
            train_one_epoch takes them (with ``tta`` or ``slide`` too), or None. The accuracy,
            IoU, precision and recall do not depend on them.

    Returns:
        {"loss", "acc", "miou", "iou", "precision", "recall", "pixels", "matrix"}: per class
        lists, NaN where undefined (iou: a class absent from both prediction and ground truth;
        precision: never predicted; recall: in no mask), the pixels of each class in the ground
        truth, and the (K, K) counts (rows = ground truth, cols = prediction), as
        ConfusionMatrix.compute gives them.
    """
    model.eval()
    scores = _SplitScores(num_classes, device, class_weights)
    probs = tta is not None or slide is not None
    for images, masks, _ in _progress(loader, desc):
        if slide is not None:  # one image at a time: (K, H, W) probabilities
            outputs = (
                _slide_in_eval(model, image, device, autocast_dtype, slide, tta) for image in images
            )
        else:
            images = to_device(images, device)
            with _autocast(device, autocast_dtype):
                if tta is None:
                    outputs = model.patch_logits(images, from_features).float()  # logits
                else:
                    outputs = tta_probs(model, images, *tta)  # probabilities
        for output, target in zip(outputs, masks, strict=True):
            target = to_device(target, device)
            loss, pred = _score_image(output, target, probs, scores.dtype, class_weights)
            scores.update(loss, pred[None], target[None])
    return scores.compute()


def _slide_in_eval(
    model: Segmentor,
    image: torch.Tensor,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    slide: tuple[tuple[int, int], int],
    tta: tuple[Sequence[float], bool] | None,
) -> torch.Tensor:
    """evaluate's slide_probs of one (3, H, W) image: (K, H, W) probabilities on ``device``."""
    with _autocast(device, autocast_dtype):
        return slide_probs(model, to_device(image, device), *slide, tta)


def _score_image(
    output: torch.Tensor,
    mask: torch.Tensor,
    probs: bool,
    dtype: torch.dtype,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's scores resized to its mask: (K, h, w) float32 logits, or probabilities with
    ``probs``, and the (H, W) integer mask (255 ignored) -> the loss summed over labelled pixels
    (cross-entropy, or with ``probs`` the negative log of the probabilities clamped at PROB_FLOOR;
    each pixel's times its class's weight with (K,) ``class_weights``) and the (H, W) uint8 class
    ids.

    All K classes are resized at once unless they pass UPSAMPLE_ELEMENTS: then a few at a time
    (_scores_in_chunks, whose sum is a ``dtype`` scalar).
    """
    if output.shape[0] * mask.numel() > UPSAMPLE_ELEMENTS:
        return _scores_in_chunks(output, mask, probs, dtype, class_weights)
    target = mask.long()[None]
    up = F.interpolate(output[None], size=mask.shape, mode="bilinear", align_corners=False)
    if probs:
        log_probs = up.clamp(min=PROB_FLOOR).log()
        loss = F.nll_loss(
            log_probs, target, class_weights, ignore_index=IGNORE_INDEX, reduction="sum"
        )
    else:
        loss = F.cross_entropy(
            up, target, class_weights, ignore_index=IGNORE_INDEX, reduction="sum"
        )
    return loss, class_ids(up, torch.uint8)[0]


def to_model_input(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) uint8 on ``device``, contiguous NCHW as the
    DataLoader collates it: channels-last input picks other kernels on CUDA."""
    return to_device(torch.from_numpy(batch), device).permute(0, 3, 1, 2).contiguous()


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """``model`` in eval mode for the block (BatchNorm on its running statistics), then back in
    the mode it was in: a Predictor may serve a model that is being trained."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read afterwards measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def warm_up(run: Callable[[], object], device: torch.device, seconds: float = 0.5) -> None:
    """Call ``run()`` once, and on CUDA again until ``seconds`` have passed: an idle GPU clocks
    down (an H200 to a fifth of its speed) and takes a while of steady work to clock up, so a
    timing right after one call measures the clock, not the code (for the benchmarks)."""
    run()
    synchronize(device)
    end = time.perf_counter() + seconds
    while device.type == "cuda" and time.perf_counter() < end:
        run()
        synchronize(device)


def best_seconds(
    run: Callable[[], object], device: torch.device, reps: int, calls: int = 1
) -> float:
    """Seconds of the fastest of ``reps`` timings of ``calls`` calls of ``run()`` in a row, with
    ``device`` synchronized before and after each: other work on the machine only slows one."""
    best = float("inf")
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            run()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def _with_frozen_weights(compiled):
    """A compiled CPU function run with Inductor's "freezing": the weights become constants of
    the graph, packed once for MKL's matrix multiplies (644 px, 2-core CPU: 691 -> 672 ms per
    frame in float32). Dynamo reads the setting while it traces, so it must be on at every call
    that may compile; ``torch.compile(options=...)`` would reach Inductor only after tracing.

    The graph keeps the weights it was compiled with: changing them later in place gives results
    that match neither the old weights nor the new ones.
    """

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch._inductor.config.patch(freezing=True):
            return compiled(x)

    return run


def _conversion(image) -> str:
    """How to turn a common near miss of an (H, W, 3) uint8 RGB array into one, for messages.

    A float image in 0..1 matters most: cast with astype(np.uint8) alone, it turns black.
    """
    if isinstance(image, str | Path):
        return ": read the file with datasets.read_image(path)"
    if isinstance(image, torch.Tensor):
        return ": pass tensor.cpu().numpy(), a (3, H, W) tensor permuted to (H, W, 3) first"
    if type(image).__module__.startswith("PIL."):
        return ': pass np.asarray(image.convert("RGB"))'
    if not isinstance(image, np.ndarray) or not image.size or image.ndim not in (2, 3):
        return ""
    # booleans (a thresholded image) are 0 and 1: cast alone they give a black image
    scale = " * 255" if image.dtype == bool else ""
    if image.ndim == 2 or image.shape[2] == 1:
        gray = f"image.astype(np.uint8){scale}" if scale else "image"
        return f": grayscale, pass cv2.cvtColor({gray}, cv2.COLOR_GRAY2RGB)"
    if image.shape[0] in (1, 3, 4) and image.shape[2] not in (3, 4):
        return ": channels first, pass image.transpose(1, 2, 0)"
    if image.shape[2] == 4:
        return ": RGBA, pass image[..., :3]"
    if image.shape[2] != 3 or image.dtype == np.uint8:
        return ""
    if image.dtype.kind == "f" and image.min() >= 0 and image.max() <= 1:
        return ": floats in 0..1, pass (image * 255).round().astype(np.uint8)"
    if scale:
        return f": booleans, pass image.astype(np.uint8){scale}"
    return ": values 0..255, pass image.astype(np.uint8)"


def _input_size(imgsz) -> tuple[int, int]:
    """``imgsz`` as a (W, H) tuple of ints, or a ValueError: an int failed in tuple(), a size
    of 0 or 56.5 at the first image in OpenCV's resize, and one under a patch is what --imgsz
    refuses."""
    size = tuple(imgsz) if isinstance(imgsz, Sequence | np.ndarray) else ()
    if len(size) != 2 or any(not float(v).is_integer() or v < PATCH_SIZE for v in size):
        raise ValueError(
            f"imgsz is the model's input size (W, H), two integers of at least {PATCH_SIZE}, "
            f"not {imgsz!r}"
        )
    return int(size[0]), int(size[1])


def _tta_views(tta) -> tuple[list[float], bool] | None:
    """``tta`` as (scales, flip), or a ValueError: a bare list of scales or True would fail at
    the first image, a scale of 0 or less would run every view at one patch and an infinite one
    overflow (config.tta_setting refuses both for --tta-scales)."""
    if tta is None:
        return None
    try:
        scales, flip = tta
        scales = [float(scale) for scale in scales]
    except (TypeError, ValueError):
        scales, flip = [], None
    if not scales or not all(0 < scale < math.inf for scale in scales) or flip not in (True, False):
        raise ValueError(
            f"tta is (scales, flip), positive finite scales and a bool such as "
            f"([0.75, 1.0, 1.25], True), not {tta!r}"
        )
    return scales, bool(flip)


def _slide_windows(slide) -> Slide | None:
    """``slide`` as a config.Slide, or a ValueError: a batch under 1 failed at the first image,
    and a short side under a patch would segment every image at one patch."""
    if slide is None:
        return None
    size, batch = slide if isinstance(slide, tuple) and len(slide) == 2 else (None, 0)
    size_ok = size is None or (isinstance(size, int) and size >= PATCH_SIZE)
    if not (size_ok and isinstance(batch, int) and batch >= 1):
        raise ValueError(
            f"slide is Slide(size, batch): a short side of at least {PATCH_SIZE} pixels or None, "
            f"and at least 1 window at a time, not {slide!r}"
        )
    return Slide(size, batch)


def _compile_failures_named(compiled, device_type: str):
    """A compiled function whose failure to compile is a UserError that says to run uncompiled.

    Such a failure is PyTorch's, not the input's: Inductor's MPS backend, a prototype in torch
    2.x, has emitted Metal shaders that fail to build for some reductions, and Triton refuses
    GPUs older than it supports. Running without compiling is the fix the user has; the error's
    first line stays in the message.
    """

    def run(x: torch.Tensor) -> torch.Tensor:
        try:
            return compiled(x)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            inner = err.inner_exception
            first = next(iter(str(inner).strip().splitlines()), "")
            raise UserError(
                f"torch.compile could not compile the network for {device_type} "
                f"({type(inner).__name__}: {first}): drop --compile (or --int8, which compiles)"
            ) from err

    return run


class Predictor:
    """Segments images with a trained model: the one inference path of every script.

    Input contract: (H, W, 3) uint8 RGB arrays, any size. Each is resized to ``imgsz`` exactly
    as in validation, and the logits are resized straight back to the image's own size, so the
    masks are the ones ``train.py --eval-only`` scores. The backbone runs in its weights' dtype
    (see from_checkpoint's ``amp``), its final norm and the head in float32. With ``compile`` on
    the CPU the weights are frozen into the compiled graph: do not change the model's weights
    afterwards. With ``slide`` (--slide) each image is resized to datasets.slide_input_size's
    size instead and segmented in windows of ``imgsz`` (slide_probs), as ``--eval-only --slide``
    scores it.
    """

    def __init__(
        self,
        model: Segmentor,
        classes: ClassConfig,
        imgsz: tuple[int, int],
        compile: bool = False,
        tta: tuple[Sequence[float], bool] | None = None,
        slide: Slide | None = None,
    ):
        if compile and tta is not None:
            # tta_probs runs the model at several sizes, each of which would compile anew
            raise ValueError("compile and tta do not go together")
        if compile and slide is not None:
            # an image smaller than a window runs one window of its own size, compiled anew
            raise ValueError("compile and slide do not go together")
        self.model = model.eval()
        self.tta = _tta_views(tta)  # (scales, flip) for test-time augmentation, or None
        self.classes = classes
        self.imgsz = _input_size(imgsz)
        self.slide = _slide_windows(slide)  # sliding windows of imgsz (--slide), or None
        self.device = model.device
        # The network on a (B, 3, H, W) uint8 batch, compiled if asked.
        self.patch_logits = model.patch_logits
        self._compiled_batch = None  # the batch size compiled for, once compiled
        if compile:
            self.patch_logits = torch.compile(model.patch_logits)
            if self.device.type == "cpu":
                self.patch_logits = _with_frozen_weights(self.patch_logits)
            self.patch_logits = _compile_failures_named(self.patch_logits, self.device.type)
            self._compiled_batch = 0
            log.info(
                "the first batch compiles the model (tens of seconds, longer on a CPU); the "
                "model FPS reported at the end leaves it out unless it is the only batch"
            )
        # Time spent in the network (see predict_resized), GPU work included: the first call
        # (CUDA start-up, compilation) apart from the rest.
        self.model_seconds = 0.0
        self.model_frames = 0
        self._largest_batch = 0  # of the calls in model_seconds
        self._first_call: tuple[float, int] | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: Path,
        device: torch.device | str,
        imgsz: Sequence[int] | None = None,
        amp: str = "off",
        compile: bool = False,
        int8: bool = False,
        backbone: str | None = None,
        backbone_source: str | None = None,
        hub_dir: Path | None = None,
        tta: tuple[Sequence[float], bool] | None = None,
        slide: Slide | None = None,
    ) -> "Predictor":
        """Load a checkpoint.

        Args:
            path: a checkpoint written by train.py (str or Path).
            device: where the model runs ("cpu", "cuda", "cuda:1", "mps" or a torch.device).
            imgsz: the model's input size (W, H), as --imgsz; by default the training size.
            amp: "bf16" or "fp16" casts the backbone once (faster than autocast, which
                re-casts the frozen weights on every call; its final norm and the head stay
                float32, see Segmentor.cast); "off" keeps float32.
            int8: quantize the backbone's linear layers to int8 (a CPU fast path, with
                ``amp="off"``); the model is then compiled, as only compiled int8 is fast.
            backbone: if given, the backbone the caller expects; a checkpoint of another
                backbone is refused.
            tta: (scales, flip) for test-time augmentation (see tta_probs), or None.
            slide: sliding windows of ``imgsz`` over each image (see slide_probs), or None.
        """
        device = torch.device(device)
        if imgsz is not None:
            imgsz = _input_size(imgsz)  # before the model loads
        tta = _tta_views(tta)
        slide = _slide_windows(slide)
        # before the model loads (seconds, a download): bf16 on MPS, fp16 on the CPU are refused
        dtype = amp_dtype(amp, device)
        model, ckpt = load_checkpoint(path, device, backbone_source, hub_dir, backbone)
        imgsz = tuple(imgsz or ckpt["imgsz"])
        log_input_size(imgsz)
        classes = ClassConfig.from_dict(ckpt["classes"], source=str(path))
        if dtype is not None:
            model = model.cast(dtype)
        if int8:
            if device.type != "cpu" or dtype is not None:
                raise ValueError("int8 quantization is for float32 models on the CPU")
            model = model.quantize_int8()
        return cls(model, classes, imgsz, compile or int8, tta, slide)

    @staticmethod
    def check_image(image: np.ndarray) -> None:
        """Refuse anything but the input contract, a non-empty (H, W, 3) uint8 RGB array, with
        the conversion where the image is a common near miss."""
        if not isinstance(image, np.ndarray):
            kind = f"{type(image).__module__}.{type(image).__qualname__}"
            raise TypeError(
                f"expected an (H, W, 3) uint8 RGB NumPy array, got a {kind}{_conversion(image)}"
            )
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or not image.size:
            raise ValueError(
                f"expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}{_conversion(image)}"
            )

    def resize(self, image: np.ndarray) -> np.ndarray:
        """The model input for one image, at ``imgsz`` or with ``slide`` at the size its windows
        cover; thread-safe, so decoding threads can do it."""
        self.check_image(image)
        if self.slide is None:
            return resize_image(image, self.imgsz)
        height, width = image.shape[:2]
        short_side = self.slide.short_side(self.imgsz)
        return resize_image(image, slide_input_size(width, height, short_side))

    def resize_batch(self, images: Sequence[np.ndarray]) -> np.ndarray | list:
        """predict_resized's batch of ``images``: a (B, h, w, 3) array, or with ``slide`` a list
        of (h, w, 3) arrays (their sizes follow the images')."""
        resized = [self.resize(image) for image in images]
        return resized if self.slide is not None else np.stack(resized)

    @torch.inference_mode()
    def predict_resized(self, batch: np.ndarray | list, sizes: Sequence[tuple[int, int]]) -> list:
        """(B, h, w, 3) uint8 resized images (with ``slide``, a list of them, see resize_batch)
        + their original (H, W) -> B (H, W) uint8 masks."""
        if self.slide is not None:  # an image's windows are the batch
            masks = []
            for image, size in zip(batch, sizes, strict=True):
                probs = self._timed_network(to_model_input(image[None], self.device))
                masks += self._masks(probs, [size])
            return masks
        n = len(batch)
        x = to_model_input(self._pad_to_compiled_batch(batch), self.device)
        # An int8 ONNX graph runs one image per call (OnnxSegmentor.per_image): each call is
        # timed as a batch of its own, so that model_fps leaves out the first image's start-up
        # alone, and "one batch only" is said only where one image ran
        step = 1 if getattr(self.model, "per_image", False) else len(x)
        parts = [self._timed_network(x[i : i + step]) for i in range(0, len(x), step)]
        scores = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self._masks(scores[:n].float(), sizes)

    def _timed_network(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) uint8 on the device -> (B, K, h', w') patch-grid logits (or, with TTA,
        probabilities; with ``slide``, B = 1 and the (1, K, h, w) probabilities of its windows),
        the network's time counted for model_fps."""
        # The clock covers the network alone, from the batch on the device to its patch-grid
        # scores: the upload before and the full-size masks after are the end-to-end figure's.
        synchronize(self.device)
        start = time.perf_counter()
        with _eval_mode(self.model):  # the running statistics, even mid-training
            if self.slide is not None:
                scores = slide_probs(self.model, x[0], self.imgsz, self.slide.batch, self.tta)[None]
            elif self.tta is None:
                scores = self.patch_logits(x)
            else:
                scores = tta_probs(self.model, x, *self.tta)
        synchronize(self.device)
        # A padded batch counts at the size the network ran: its time is that of len(x) images,
        # and per real image the network would look up to --batch times slower than it runs
        self._count_time(time.perf_counter() - start, len(x))
        return scores

    def _pad_to_compiled_batch(self, batch: np.ndarray) -> np.ndarray:
        """A compiled model's (B, h, w, 3) ``batch`` with its last image repeated up to the
        largest batch size compiled for: a new size would recompile (tens of seconds)."""
        if self._compiled_batch is None:
            return batch
        self._compiled_batch = max(self._compiled_batch, len(batch))
        pad = np.repeat(batch[-1:], self._compiled_batch - len(batch), 0)
        return np.concatenate([batch, pad])

    def _count_time(self, seconds: float, frames: int) -> None:
        """Add one call's network time to model_fps's: the first call's (CUDA start-up,
        compilation) kept apart."""
        if self._first_call is None:
            self._first_call = (seconds, frames)
        else:
            self.model_seconds += seconds
            self.model_frames += frames
            self._largest_batch = max(self._largest_batch, frames)

    def model_fps(self) -> float:
        """Images per second through the network alone (a batch already on the device to its
        patch-grid scores; not the upload, the resizing to full size, the argmax or the copy
        back), without the first call (CUDA start-up, compilation) unless it was the only one.
        A short batch padded for a compiled model counts at its padded size."""
        if self.model_frames:
            return self.model_frames / self.model_seconds
        if self._first_call is None:
            raise RuntimeError("model_fps() before any prediction")
        seconds, frames = self._first_call
        return frames / seconds

    def timed_batch(self) -> int:
        """The largest batch in model_fps()'s figure: less than --batch where no full batch was
        timed (fewer inputs than --batch, or a short last batch the only one after the first)."""
        if self.model_frames:
            return self._largest_batch
        if self._first_call is None:
            raise RuntimeError("timed_batch() before any prediction")
        return self._first_call[1]

    def runs_on(self) -> str:
        """Where the network runs, for the speed lines: the model's device type, or where ONNX
        Runtime runs an exported graph."""
        return getattr(self.model, "runs_on", None) or self.device.type

    def work_device(self) -> str:
        """The device type the network's work runs on ("cpu", "cuda", "mps"): for ONNX Runtime
        its provider's, not ``device``, the host where inputs and outputs live."""
        return getattr(self.model, "device_type", self.device.type)

    def model_fps_note(self) -> str:
        """What the scripts add to model_fps() where it includes the start-up."""
        return "" if self.model_frames else " (one batch only: start-up included)"

    @torch.inference_mode()
    def predict_features(self, features: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list:
        """Cached (B, N*D, h, w) features + the images' (H, W) -> B (H, W) uint8 masks."""
        with _eval_mode(self.model):
            logits = self.model.patch_logits(features.to(self.device), from_features=True)
        return self._masks(logits.float(), sizes)

    @staticmethod
    def _masks(logits: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list:
        """(B, K, h, w) logits or probabilities -> B class-id masks at the given sizes.

        Images of one size are resized together (video frames), as many at a time as keep the
        resized scores under UPSAMPLE_ELEMENTS: a batch of 4 photos of 4000x3000 with 21 classes
        held 4 GB of them at once. An image whose K classes alone exceed it is resized a few
        classes at a time (see _class_ids_in_chunks).
        """
        masks, start, k = [], 0, logits.shape[1]
        finite = bool(logits.isfinite().all())  # then so are the resized scores
        while start < len(sizes):
            size = sizes[start]
            if k * size[0] * size[1] > UPSAMPLE_ELEMENTS:
                masks.append(_class_ids_in_chunks(logits[start], size).cpu().numpy())
                start += 1
                continue
            end = start + 1
            room = UPSAMPLE_ELEMENTS // max(1, k * size[0] * size[1])
            while end < len(sizes) and sizes[end] == size and end - start < room:
                end += 1
            up = F.interpolate(logits[start:end], size=size, mode="bilinear", align_corners=False)
            ids = class_ids(up, torch.uint8) if k <= 2 else _class_ids_in_place(up, finite)
            masks += list(ids.cpu().numpy())
            del up, ids  # before the next group is resized, which would make two of them
            start = end
        return masks

    def predict(self, images: np.ndarray | Sequence[np.ndarray]):
        """Segment one image or several.

        Args:
            images: one (H, W, 3) uint8 RGB array (cv2.imread gives BGR: convert it with
                cv2.cvtColor(image, cv2.COLOR_BGR2RGB)), or a list, another iterable, or an
                (N, H, W, 3) array of them; sizes may differ.

        Returns:
            One (H, W) uint8 mask of class ids, or a list of them, each at its image's size.
        """
        # Arrays and tensors are one image unless 4-D: a grayscale array is refused as it is,
        # not row by row.
        if isinstance(images, np.ndarray | torch.Tensor):
            many = images.ndim == 4
        else:
            many = isinstance(images, Iterable) and not isinstance(images, str)
        if not many:
            return self.predict([images])[0]
        images = list(images)
        if not images:
            return []
        return self.predict_resized(self.resize_batch(images), [im.shape[:2] for im in images])

    def overlay(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        alpha: float = OVERLAY_ALPHA,
        legend: bool | np.ndarray = False,
        legend_height: float = LEGEND_HEIGHT,
    ) -> np.ndarray:
        """Blend the classes' VIS_LABEL_MAP colours over an (H, W, 3) uint8 RGB image.

        Args:
            image: (H, W, 3) uint8 RGB, as predict takes it.
            mask: (H, W) integer class ids, as predict returns them; class 0 in black
                (background) and ids outside the palette (255, ignore) are drawn as in
                draw_overlay.
            alpha: weight of the colours, 0 to 1.
            legend: --legend's key of classes in the top-left corner (draw_legend): True for
                the classes ``mask`` holds, or (256,) pixel counts of the classes to key (a
                video's frames so far), the largest kept where not all fit; False for none.
            legend_height: the share of the image's height the key may cover (draw_legend's
                max_height).

        Returns:
            (H, W, 3) uint8 RGB.
        """
        self.check_image(image)
        out = draw_overlay(image, mask, self.classes.vis_colors, alpha)
        if legend is False:
            return out
        names, colors = self.classes.names, self.classes.vis_colors
        pixels = class_pixels(mask) if legend is True else legend
        classes = np.flatnonzero(pixels).tolist()
        return draw_legend(out, classes, names, colors, legend_height, pixels)


class FeatureCache:
    """Frozen-backbone features, computed once per image and view and stored as float16.

    A key covers the backbone, a fingerprint of all its weights, its source and dtype, the
    autocast dtype, the image size, the blocks that feed the head, and the image file's path,
    size, mtime and inode: a changed or renamed file, model or precision never meets a stale
    entry. Entries live in RAM ("memory") or as one file each under ``folder`` ("disk", reused
    by later runs).
    """

    def __init__(
        self,
        model: Segmentor,
        imgsz,
        mode: str,
        folder: Path | None = None,
        autocast_dtype: torch.dtype | None = None,
    ):
        if mode not in ("memory", "disk"):
            raise ValueError(f"unknown cache mode {mode!r}")
        self.mode = mode
        self.folder = folder
        self.imgsz = tuple(imgsz)
        self.autocast_dtype = autocast_dtype
        self.channels = model.backbone.embed_dim * len(model.backbone.blocks)
        self.memory: dict[str, torch.Tensor] = {}
        # (image path, view) -> the key it was checked or stored under in this run: training
        # loads by it, without a stat() per item and epoch, and a file touched mid-run keeps
        # its entry instead of failing with a KeyError.
        self._keys: dict[tuple[Path, str], str] = {}
        digest = hashlib.sha1()
        backbone = model.backbone
        # RESIZE_VERSION: entries of images resized another way (an older resize_image) are
        # other features
        digest.update(f"{RESIZE_VERSION}|".encode())
        digest.update(f"{backbone.name}|{backbone.source}|{backbone.blocks}|{self.imgsz}|".encode())
        digest.update(f"{model.dtype}|{autocast_dtype}|".encode())
        for key, value in sorted(backbone.official_state_dict().items()):
            digest.update(key.encode())
            # the raw bytes, wherever the weights live (the model may already be on the GPU)
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        self.fingerprint = digest.hexdigest()
        self.computed = 0
        self.reused = 0

    def key(self, image_path: Path, view: str) -> str:
        stat = Path(image_path).stat()
        # The inode follows a file through a rename: files unpacked from an archive share one
        # mtime, and uncompressed ones of one resolution one size, so two swapped by renaming
        # would otherwise keep each other's entries.
        text = f"{self.fingerprint}|{Path(image_path).resolve()}|{stat.st_size}|"
        text += f"{stat.st_mtime_ns}|{stat.st_ino}|{view}"
        # surrogateescape: a path that is not UTF-8 (a Latin-1 name on Linux) hashes as its bytes
        return hashlib.sha1(text.encode(errors="surrogateescape")).hexdigest()

    def _has(self, key: str) -> bool:
        if self.mode == "memory":
            return key in self.memory
        return (self.folder / f"{key}.pt").is_file()

    def _run_key(self, image_path: Path, view: str) -> str:
        if (image_path, view) not in self._keys:
            self._keys[image_path, view] = self.key(image_path, view)
        return self._keys[image_path, view]

    def load(self, image_path: Path, view: str) -> torch.Tensor:
        """The (N*D, h, w) float16 features of one image view."""
        key = self._run_key(image_path, view)
        if self.mode == "memory":
            return self.memory[key]
        file = self.folder / f"{key}.pt"
        try:
            return torch.load(file, weights_only=True)
        except FileNotFoundError as err:
            # not an OSError: train.fit would report it as a failed write to --out-dir
            raise UserError(
                f"the feature cache entry {err.filename} of {image_path} ({view}) is gone: was "
                f"{self.folder} cleared while training? Run again to recompute the missing entries"
            ) from err
        except Exception as err:  # cut off by a copy or a disk fault: entries are written whole
            raise UserError(
                f"the feature cache entry {file} of {image_path} ({view}) is damaged "
                f"({type(err).__name__}): delete it, and the next run computes it again"
            ) from err

    def _store(self, key: str, features: torch.Tensor) -> None:
        """Keep ``features``, one row of a batch, as a copy of its own: torch.save writes the
        whole storage of a view, the batch's."""
        features = features.clone()
        if self.mode == "memory":
            self.memory[key] = features
            return
        try:
            with atomic_path(self.folder / f"{key}.pt") as tmp:
                torch_save(features, tmp)
        except OSError as err:
            raise UserError(
                f"could not write the feature cache to {self.folder} ({err}); the entries "
                "written so far are kept for the next run: free some space there, or pass "
                "another --cache-dir"
            ) from err

    def missing(self, pairs: Sequence[Pair], views: Sequence[str] = ("orig",)) -> list:
        """The (image path, view) entries not cached yet (their files' state read anew)."""
        todo = []
        for path, _ in pairs:
            for view in views:
                self._keys[path, view] = key = self.key(path, view)
                if not self._has(key):
                    todo.append((path, view))
        return todo

    def view_bytes(self) -> int:
        """The size of one cached view: float16 features of the blocks at the token grid."""
        w, h = token_grid(self.imgsz)
        return 2 * self.channels * h * w

    def file_bytes(self) -> int:
        """The disk space of one "disk" entry: its view, the zip format's headers around it, and
        block rounding."""
        return self.view_bytes() + 4096

    @torch.inference_mode()
    def fill(
        self,
        model: Segmentor,
        pairs: Sequence[Pair],
        views: Sequence[str],
        batch: int,
        desc: str = "caching features",
    ) -> None:
        """Compute the features of every (image, view) not cached yet."""
        todo = self.missing(pairs, views)
        self.reused += len(pairs) * len(views) - len(todo)
        if not todo:
            return
        model.eval()
        device = model.device

        def batches():
            for start in range(0, len(todo), batch):
                chunk = todo[start : start + batch]
                images = []
                for path, view in chunk:
                    image = resize_image(read_image(path), self.imgsz)
                    images.append(np.ascontiguousarray(image[:, ::-1] if view == "flip" else image))
                yield chunk, np.stack(images)

        # closed on the way out of a stop too: else the stop's message went onto the bar's line
        with tqdm(total=len(todo), desc=desc, leave=False, disable=not is_main_process()) as bar:
            for chunk, images in prefetch(batches()):
                x = to_model_input(images, device)
                with _autocast(device, self.autocast_dtype):
                    features = model.features(x)
                for (path, view), f in zip(chunk, features.half().cpu(), strict=True):
                    self._store(self._run_key(path, view), f)
                    self.computed += 1  # one by one: an interrupted fill says how many it kept
                bar.update(len(chunk))

    @torch.inference_mode()
    def share(self, pairs: Sequence[Pair], views: Sequence[str], batch: int, device) -> None:
        """Under torchrun, once each process has filled ``pairs[rank::world]`` in RAM: give every
        process the entries the others computed, so the backbone sees each image only once.

        Entries travel by position, in ``batch``-sized broadcasts from their owner through the
        process group (on ``device``: GPU tensors for NCCL, CPU tensors for gloo); each process
        stores them under its own keys.
        """
        rank, world = dist.get_rank(), dist.get_world_size()
        w, h = token_grid(self.imgsz)
        for source in range(world):
            entries = [(path, view) for path, _ in pairs[source::world] for view in views]
            for start in range(0, len(entries), batch):
                chunk = entries[start : start + batch]
                if source == rank:
                    buffer = torch.stack([self.load(path, view) for path, view in chunk])
                    buffer = buffer.to(device)
                else:
                    shape = (len(chunk), self.channels, h, w)
                    buffer = torch.empty(shape, dtype=torch.float16, device=device)
                dist.broadcast(buffer, source)
                if source != rank:
                    for (path, view), f in zip(chunk, buffer.cpu(), strict=True):
                        self._store(self._run_key(path, view), f)

    def _make_shared_folder(self) -> None:
        """Under torchrun, make ``folder`` before this process writes into it. Made by an entry's
        write (atomic_path), it was removed again if that write failed and left it empty, while
        another process may have been about to write its own entry there: that write then failed
        as well, "No such file or directory", reported as a full disk. Made here, each process
        finds it there, and a failed write removes none. (A run stopped before its first entry
        then leaves the folder empty, for the next run to fill.)"""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"could not make the feature cache folder {self.folder} ({err}): pass another "
                "--cache-dir"
            ) from err

    def fill_splits(
        self, model: Segmentor, pairs: dict, views: Sequence[str], batch: int, rank=0, world=1
    ) -> None:
        """Compute what is not cached yet of ``pairs`` ({"train": ..., "valid": ...}): the
        ``views`` of each train image and each valid image as it is; log what it took.

        Under torchrun each process computes its share, then reads the others' from the shared
        folder (disk) or receives them through the process group (memory).
        """
        t0 = time.perf_counter()
        if world == 1:
            self.fill(model, pairs["train"], views, batch, "caching train features")
            self.fill(model, pairs["valid"], ("orig",), batch, "caching valid features")
            others = ""
        else:
            if self.mode == "disk":
                self._make_shared_folder()
            self.fill(model, pairs["train"][rank::world], views, batch, "caching train")
            self.fill(model, pairs["valid"][rank::world], ("orig",), batch, "caching valid")
            mine = self.computed + self.reused
            if self.mode == "disk":
                dist.barrier()
                # On several machines --cache-dir may not be one folder they all see: compute here
                # what this machine cannot find.
                computed, reused = self.computed, self.reused
                self.fill(model, pairs["train"], views, batch, "caching train features")
                self.fill(model, pairs["valid"], ("orig",), batch, "caching valid features")
                if self.computed > computed:
                    log.warning(
                        "%d feature cache entries of other processes were not in %s and were "
                        "computed again here: give torchrun's processes on every machine one "
                        "shared --cache-dir",
                        self.computed - computed,
                        self.folder,
                    )
                self.reused = reused
            else:
                self.share(pairs["train"], views, batch, model.device)
                self.share(pairs["valid"], ("orig",), batch, model.device)
            total = len(pairs["train"]) * len(views) + len(pairs["valid"])
            others = f", {total - mine} from the other processes"
        log.info(
            "feature cache (%s): %d views computed in %.1f s, %d reused%s; %.2f MB per view "
            "(float16), %.2f MB per training image",
            self.mode,
            self.computed,
            time.perf_counter() - t0,
            self.reused,
            others,
            self.view_bytes() / 2**20,
            len(views) * self.view_bytes() / 2**20,
        )


def predictor_from_args(args, device: torch.device) -> Predictor:
    """The Predictor the inference scripts' shared flags describe (config.inference_flags)."""
    tta = tta_setting(args)
    slide = slide_setting(args)
    if args.backend == "torch":
        if args.int8:
            if device.type != "cpu":
                raise UserError(
                    f"--int8 is a CPU fast path; this run uses {device.type}: use "
                    f"{amp_advice(device.type, 'off')} there, or --device cpu"
                )
            int8_quantizer()  # torchao loads, before the checkpoint does
        if args.compile or args.int8:
            check_compiler("--int8" if args.int8 else "--compile", device)
        predictor = Predictor.from_checkpoint(
            args.model,
            device,
            imgsz=args.imgsz,
            amp=args.amp,
            compile=args.compile,
            int8=args.int8,
            backbone=args.backbone,
            backbone_source=args.backbone_source,
            hub_dir=args.hub_dir,
            tta=tta,
            slide=slide,
        )
        backbone = predictor.model.backbone
        check_size_fits(backbone, predictor.imgsz, args.batch, device, tta=predictor.tta)
        return predictor
    used = {
        "--amp": args.amp != "off",
        "--compile": args.compile,
        "--int8": args.int8,
        "--tta": tta is not None,
        "--slide": slide is not None,
        "--imgsz": args.imgsz is not None,
        "--backbone-source": args.backbone_source is not None,
        "--hub-dir": args.hub_dir is not None,
    }
    unsupported = [flag for flag, on in used.items() if on]
    if unsupported:
        raise UserError(
            f"{', '.join(unsupported)} {'is' if len(unsupported) == 1 else 'are'} PyTorch-only: "
            "--backend onnxruntime runs the graph as export.py wrote it (its precision, size "
            "and backbone)"
        )
    network = OnnxSegmentor.load(args.model, device)
    check_backbone(args.model, network.backbone, args.backbone)
    log_input_size(network.imgsz)
    return Predictor(network, network.classes, network.imgsz)


def batch_label(predictor: Predictor, args) -> str:
    """The batch of the "model:" line's figure: ``batch N``, with --batch where it was more (the
    figure of a short batch is several times lower than a full one's on a GPU)."""
    batch = predictor.timed_batch()
    if batch >= args.batch:
        return f"batch {args.batch}"
    return f"batch {batch} (--batch {args.batch}: no full batch was timed)"


def speed_line(predictor: Predictor, args, unit: str, fps: float) -> str:
    """The inference scripts' "model:" line: ``fps``, ``predictor``'s model_fps(), with what
    changes it: where it ran, the batch, the precision and compilation (the flags of
    config.inference_flags in ``args``).

    Args:
        unit: what one input is called, "image" or "frame".
    """
    if args.backend == "onnxruntime":
        # ONNX Runtime runs an int8 graph one input at a time, whatever --batch (OnnxSegmentor);
        # export.py writes the other graph in float32
        if predictor.model.per_image:
            setup = f"batch 1 (one {unit} per call: an int8 graph)"
        else:
            setup = f"{batch_label(predictor, args)}, float32"
    else:
        precision = (
            "int8 linear layers" if args.int8 else {"off": "float32"}.get(args.amp, args.amp)
        )
        compiled = ", compiled" if args.compile or args.int8 else ""
        # with --slide the network's batch is an image's windows, --batch at a time
        batch = f"--slide: windows {args.batch} at a time" if predictor.slide is not None else None
        setup = f"{batch or batch_label(predictor, args)}, {precision}{compiled}"
    if predictor.tta is not None:  # each view is a pass of the network, all in the figure
        scales, flip = predictor.tta
        setup += f", --tta: {len(scales) * (2 if flip else 1)} views per {unit}"
    return (
        f"model: {1000 / fps:.1f} ms per {unit} ({fps:.2f} FPS), the network alone, on "
        f"{predictor.runs_on()}, {setup}{predictor.model_fps_note()}"
    )
