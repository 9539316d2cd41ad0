"""Segmentation metrics from one confusion matrix accumulated over a whole split."""

from typing import NoReturn

import torch

from config import IGNORE_INDEX
from utils import all_reduce_sum


class ConfusionMatrix:
    """Counts (target, prediction) pixel pairs over a split; metrics are derived once at the end.

    Averaging per-batch IoUs is biased (small batches weigh as much as large ones, and a class
    missing from a batch scores 0), so only counts are accumulated. Target pixels of
    ``IGNORE_INDEX`` (255, above every class id) are skipped.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.mat: torch.Tensor | None = None  # (K, K) int64, rows = target, cols = prediction

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch.

        Args:
            pred: predicted class indices 0 to K-1, any shape: a tensor, or a NumPy array such
                as Predictor.predict's masks.
            target: ground-truth class indices 0 to K-1, same shape; ``IGNORE_INDEX`` pixels
                are skipped.
        """
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if pred.is_floating_point() or target.is_floating_point():
            # .long() would truncate scores: a probability 0.7 would count as class 0
            raise ValueError(
                f"pred ({pred.dtype}) and target ({target.dtype}) must be integer class ids: take "
                "the argmax of scores over the classes first"
            )
        k = self.num_classes
        if not target.numel():
            counts = torch.zeros(k, k, dtype=torch.int64, device=target.device)
        else:
            # One pass for the bounds, one for the counts: ignored pixels are counted in row
            # IGNORE_INDEX and dropped, 2.5 times faster on the CPU than selecting the kept pixels
            # first (41 vs 102 ms for 8 x 640 x 640 masks, the README's medians on the Intel
            # Xeon: 0.2 s of a cached epoch there).
            bounds = torch.stack([v.long() for v in (*torch.aminmax(target), *torch.aminmax(pred))])
            t_min, t_max, p_min, p_max = bounds.tolist()
            if t_min < 0 or p_min < 0 or p_max >= k or (t_max >= k and t_max != IGNORE_INDEX):
                self._refuse(pred, target)
            rows = max(t_max + 1, k)
            # Bins in int32, as config allows at most 255 classes (so 256 x 255 bins): from the
            # uint8 ids training and evaluation pass, 3x faster than in int64 (16 vs 47 ms for
            # 8 x 640 x 640 masks, one CPU thread)
            idx = torch.add(pred, target.to(torch.int32), alpha=k)  # target * k + pred
            if idx.device.type == "mps":
                # MPS counts with one graph scatter-add that serializes on the bins most pixels
                # fall in (background): seconds per batch of masks, where the CPU takes
                # milliseconds (pytorch/pytorch#184779). The matrix then stays on the CPU.
                idx = idx.cpu()
            counts = torch.bincount(idx.flatten(), minlength=rows * k).reshape(rows, k)
            if rows > k and counts[k:IGNORE_INDEX].any():  # ids between K-1 and the ignore index
                self._refuse(pred, target)
            counts = counts[:k]
        self.mat = counts if self.mat is None else self.mat + counts.to(self.mat.device)

    def _refuse(self, pred: torch.Tensor, target: torch.Tensor) -> NoReturn:
        """Raise for class ids outside 0..K-1, naming the range of the pixels not ignored. Such
        an id would be counted in another pair's bin (a prediction K of class 0 as a 0 of class
        1), or fail in a reshape with a message naming neither."""
        keep = target != IGNORE_INDEX
        k = self.num_classes
        for name, ids in (("target", target[keep]), ("pred", pred[keep])):
            if not ids.numel():  # every pixel ignored: aminmax has no range to give
                continue
            low, high = (int(v) for v in torch.aminmax(ids))
            if low < 0 or high >= k:
                ignored = f" (or {IGNORE_INDEX}, ignored)" if name == "target" else ""
                raise ValueError(
                    f"{name} holds class ids {low} to {high}; the matrix counts {k} classes, "
                    f"0 to {k - 1}{ignored}"
                )
        raise ValueError(f"pred holds class ids outside 0 to {k - 1} where target is ignored")

    def all_reduce(self, device: torch.device) -> None:
        """Sum the counts of every process (a no-op in a single process)."""
        if self.mat is None:  # a process whose shard was empty still takes part
            self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self.mat = self.mat.to(device)
        all_reduce_sum(self.mat)

    def compute(self) -> dict:
        """Pixel accuracy, per-class IoU, precision and recall, mIoU and the counts.

        A class absent from both the predictions and the ground truth has no IoU (NaN) and is
        left out of the mean rather than counted as 0. Precision (correct / predicted pixels of
        the class) is NaN for a class never predicted, recall (correct / ground-truth pixels of
        the class) for one in no mask: 0 would read as a class the model gets wrong.

        Returns:
            {"pixel_accuracy": float, "miou": float, "iou", "precision", "recall": list[float]
            (NaN where undefined), "pixels": list[int], each class's pixels in the ground
            truth, "matrix": list[list[int]], the (K, K) counts, rows = ground truth, cols =
            prediction, in class-id order}
        """
        k = self.num_classes
        counts = self.mat if self.mat is not None else torch.zeros(k, k, dtype=torch.int64)
        counts = counts.cpu()
        mat = counts.double()
        tp = mat.diag()
        truth, predicted = mat.sum(1), mat.sum(0)
        union = truth + predicted - tp
        nan = torch.full_like(tp, float("nan"))
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), nan)
        recall = torch.where(truth > 0, tp / truth.clamp(min=1), nan)
        total = mat.sum()
        acc = (tp.sum() / total).item() if total > 0 else float("nan")
        valid = ~iou.isnan()
        miou = iou[valid].mean().item() if valid.any() else float("nan")
        return {
            "pixel_accuracy": acc,
            "miou": miou,
            "iou": iou.tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "pixels": counts.sum(1).tolist(),
            "matrix": counts.tolist(),
        }
