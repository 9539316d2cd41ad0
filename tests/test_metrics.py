import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import engine
import metrics
import utils
from engine import class_ids, evaluate
from metrics import ConfusionMatrix


def test_hand_computed_case():
    # target: 0 0 1 1 2 2 ; pred: 0 1 1 1 2 0
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    out = cm.compute()
    # class 0: tp 1, fp 1 (a 2 predicted 0), fn 1 -> 1/3
    # class 1: tp 2, fp 1, fn 0 -> 2/3 ; class 2: tp 1, fp 0, fn 1 -> 1/2
    assert out["iou"] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert out["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert out["pixel_accuracy"] == pytest.approx(4 / 6)


def test_precision_and_recall_by_hand_with_classes_never_predicted_or_in_no_mask():
    # target: 0 0 0 1 1 2 2 255 ; pred: 0 0 3 1 0 0 0 1 (the 1 under 255 is not counted)
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2, 255])
    pred = torch.tensor([0, 0, 3, 1, 0, 0, 0, 1])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    out = cm.compute()
    assert out["matrix"] == [[2, 0, 0, 1], [1, 1, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]]
    assert all(type(n) is int for row in out["matrix"] for n in row)  # JSON-ready
    # predicted pixels per class: 5, 1, 0, 1 -> class 2 never predicted has no precision,
    # class 3 predicted once, wrongly, has 0
    assert out["precision"][:2] == pytest.approx([2 / 5, 1.0]) and out["precision"][3] == 0.0
    assert math.isnan(out["precision"][2])
    # ground-truth pixels per class: 3, 2, 2, 0 -> class 3 in no mask has no recall, class 2
    # never found has 0
    assert out["recall"][:3] == pytest.approx([2 / 3, 1 / 2, 0.0]) and math.isnan(out["recall"][3])
    assert out["pixels"] == [3, 2, 2, 0]


def test_ignore_index_is_skipped():
    target = torch.tensor([[0, 255], [1, 255]])
    pred = torch.tensor([[0, 1], [1, 0]])
    cm = ConfusionMatrix(2)
    cm.update(pred, target)
    out = cm.compute()
    assert out["pixel_accuracy"] == 1.0
    assert out["miou"] == 1.0


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        ([3, 1], [0, 1], r"pred holds class ids 1 to 3; the matrix counts 3 classes, 0 to 2$"),
        ([0, -1], [0, 1], "pred holds class ids -1 to 0"),
        ([0, 1], [0, 3], r"target holds class ids 0 to 3; .* 0 to 2 \(or 255, ignored\)"),
        ([0, 1], [254, 255], "target holds class ids 254 to 254"),
    ],
)
def test_class_ids_outside_the_matrix_are_refused(pred, target, message):
    # a prediction 3 of class 0 was counted as a 0 of class 1, and -1 of class 1 as a 1 of
    # class 0; a target 3 failed in a reshape
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=message):
        cm.update(torch.tensor(pred), torch.tensor(target))


@pytest.mark.parametrize("target", [[0, 255], [255, 255]])
def test_a_prediction_outside_the_classes_under_an_ignored_pixel_is_refused(target):
    # with every pixel ignored, naming the range of the kept ones failed in torch.aminmax
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="pred holds class ids outside 0 to 1 where target is ig"):
        cm.update(torch.tensor([0, 7]), torch.tensor(target))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_counts_equal_a_count_of_the_kept_pairs(dtype):
    # the matrix counts ignored pixels in a row of their own and drops it: check it against
    # counting the kept (target, pred) pairs one by one
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 17, 23), generator=gen).to(dtype)
    target[torch.rand(target.shape, generator=gen) < 0.2] = 255
    pred = torch.randint(0, 4, target.shape, generator=gen)
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if t != 255:
            expected[t, p] += 1
    assert torch.equal(cm.mat, expected)


def test_scores_are_refused_as_class_ids():
    # a binary model's probabilities of the same shape were truncated: 0.7 counted as class 0
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match=r"pred \(torch\.float32\) and target \(torch\.int64\)"):
        cm.update(torch.tensor([0.7, 0.2]), torch.tensor([1, 0]))


def test_numpy_masks_count_as_tensors_do():
    # Predictor.predict returns NumPy masks; update failed on them with an AttributeError
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, (5, 7), dtype=np.uint8)
    target = rng.integers(0, 3, (5, 7), dtype=np.uint8)
    target[0] = 255
    from_numpy, from_tensors = ConfusionMatrix(3), ConfusionMatrix(3)
    from_numpy.update(pred, target)
    from_tensors.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert torch.equal(from_numpy.mat, from_tensors.mat) and from_numpy.mat.sum() == 4 * 7


def test_absent_class_is_left_out_of_the_mean():
    # class 2 appears in neither prediction nor target: it must not count as IoU 0
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 0])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    out = cm.compute()
    assert math.isnan(out["iou"][2])
    assert out["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_a_class_predicted_but_absent_from_the_ground_truth_counts_as_0():
    # class 2 is only predicted (a false positive): its IoU is 0 and it stays in the mean,
    # unlike a class absent from both; the pixel predicted 2 under 255 is not counted at all
    target = torch.tensor([0, 0, 1, 1, 255])
    pred = torch.tensor([0, 2, 1, 1, 2])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    out = cm.compute()
    assert out["iou"][:3] == pytest.approx([1 / 2, 1.0, 0.0]) and math.isnan(out["iou"][3])
    assert out["miou"] == pytest.approx((1 / 2 + 1.0 + 0.0) / 3)
    assert out["pixel_accuracy"] == pytest.approx(3 / 4)


def test_an_empty_matrix_has_no_scores():
    out = ConfusionMatrix(3).compute()
    assert math.isnan(out["pixel_accuracy"]) and math.isnan(out["miou"])
    assert all(math.isnan(iou) for iou in out["iou"])


def test_split_level_accumulation_differs_from_batch_average():
    # batch A: a large image, all correct; batch B: one pixel, class 1 missed.
    cm = ConfusionMatrix(2)
    cm.update(torch.zeros(100, dtype=torch.long), torch.zeros(100, dtype=torch.long))
    cm.update(torch.tensor([0]), torch.tensor([1]))
    out = cm.compute()
    # dataset level: class 0 tp 100, fp 1 -> 100/101; class 1 tp 0, fn 1 -> 0
    assert out["iou"] == pytest.approx([100 / 101, 0.0])
    assert out["pixel_accuracy"] == pytest.approx(100 / 101)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ"):
        ConfusionMatrix(2).update(torch.zeros(3), torch.zeros(4))


def test_uint8_masks_of_many_classes_count_in_the_right_cells():
    # read_mask and the Predictor give uint8 ids; id * num_classes must not wrap around at 256
    # (19 * 20 + 19 = 399 would land in cell 143, class 7's row, without a widening cast)
    target = torch.tensor([19, 19, 7, 0], dtype=torch.uint8)
    pred = torch.tensor([19, 3, 7, 0], dtype=torch.uint8)
    cm = ConfusionMatrix(20)
    cm.update(pred, target)
    assert cm.mat[19, 19] == 1 and cm.mat[19, 3] == 1 and cm.mat[7, 7] == 1
    assert cm.mat.sum() == 4
    out = cm.compute()
    assert out["iou"][19] == pytest.approx(1 / 2) and out["iou"][7] == 1.0
    assert out["pixel_accuracy"] == pytest.approx(3 / 4)


def test_class_ids_are_the_first_maximum_like_argmax():
    # engine.class_ids replaces argmax(1), which was 40x slower on the CPU: same ids, ties too
    tied = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [0.0, -1.0, 0.0]]).T[None, :, :, None]
    assert class_ids(tied)[0, :, 0].tolist() == [1, 0, 0]
    scores = torch.randn(3, 5, 17, 23, generator=torch.Generator().manual_seed(0))
    assert torch.equal(class_ids(scores), scores.argmax(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_two_class_ids_are_those_of_max(dtype):
    # Two classes are compared rather than reduced by max(1): the same ids for every pair of
    # values, ties, infinities and NaN (the highest, the first of two NaN) included
    special = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.0, -1.0, 3e38]
    pairs = torch.tensor([(a, b) for a in special for b in special]).T[None, :, :, None]
    noise = torch.randn(2, 2, 31, 29, generator=torch.Generator().manual_seed(1))
    noise[noise.abs() < 0.05] = float("nan")
    noise[:, 1, ::3] = noise[:, 0, ::3]  # ties
    for scores in (pairs.to(dtype), noise.to(dtype)):
        want = scores.max(1).indices
        assert torch.equal(class_ids(scores), want)
        ids = class_ids(scores, torch.uint8)
        assert ids.dtype == torch.uint8 and torch.equal(ids.long(), want)


class _OnMps(torch.Tensor):
    """A CPU tensor that says it is on MPS, as far as ConfusionMatrix.update looks."""

    @property
    def device(self) -> torch.device:
        return torch.device("mps")

    def cpu(self, *args, **kwargs) -> torch.Tensor:
        return self.as_subclass(torch.Tensor)


def test_mps_pixels_are_counted_on_the_cpu(monkeypatch):
    # MPS's bincount serializes on the background's bin: seconds per batch of masks
    bincount = torch.bincount

    def cpu_only(idx, *args, **kwargs):
        assert not isinstance(idx, _OnMps), "bincount ran on MPS"
        return bincount(idx, *args, **kwargs)

    monkeypatch.setattr(torch, "bincount", cpu_only)
    target = torch.tensor([0, 0, 1, 1, 2, 255]).as_subclass(_OnMps)
    pred = torch.tensor([0, 1, 1, 1, 2, 0]).as_subclass(_OnMps)
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    cm.update(pred, target)
    assert cm.mat.tolist() == [[2, 2, 0], [0, 4, 0], [0, 0, 2]]


def test_a_process_that_scored_no_image_takes_part_with_zero_counts():
    # under torchrun a shard may be empty (fewer valid images than processes)
    cm = ConfusionMatrix(3)
    cm.all_reduce(torch.device("cpu"))
    assert cm.mat.dtype == torch.int64 and cm.mat.tolist() == [[0] * 3] * 3
    out = cm.compute()
    assert math.isnan(out["pixel_accuracy"]) and math.isnan(out["miou"])
    assert all(math.isnan(v) for v in out["iou"])


def test_split_scores_sum_the_loss_and_the_counts_of_every_process(monkeypatch):
    # Under torchrun each process scores its own shard: the loss per labelled pixel is every
    # process's summed loss over every process's pixels. The other process is faked here, its
    # shard 2 pixels of class 1, both predicted right, of summed loss 4.
    other = {torch.Size([]): torch.tensor(4.0, dtype=torch.float64),
             torch.Size([2, 2]): torch.tensor([[0, 0], [0, 2]])}  # fmt: skip

    def all_reduce_sum(tensor):
        tensor += other.pop(tensor.shape)  # each sum reduced once

    monkeypatch.setattr(engine, "all_reduce_sum", all_reduce_sum)
    monkeypatch.setattr(metrics, "all_reduce_sum", all_reduce_sum)
    scores = engine._SplitScores(2, torch.device("cpu"))
    # this process: 2 pixels of class 0, one predicted 1, of summed loss 2
    scores.update(torch.tensor(2.0), torch.tensor([0, 1]), torch.tensor([0, 0]))
    out = scores.compute()
    assert not other, "every sum is reduced"
    assert out["loss"] == pytest.approx((2 + 4) / 4)
    assert out["acc"] == pytest.approx(3 / 4) and out["pixels"] == [2, 2]
    assert out["iou"] == pytest.approx([1 / 2, 2 / 3])
    # the counts and the scores from them are the summed ones too
    assert out["matrix"] == [[1, 1], [0, 2]]
    assert out["precision"] == pytest.approx([1.0, 2 / 3])
    assert out["recall"] == pytest.approx([1 / 2, 1.0])


def _scores_at_once(output, mask, probs):
    """evaluate's loss and class ids from all classes of (K, h, w) scores resized at once."""
    up = F.interpolate(output[None], size=mask.shape, mode="bilinear", align_corners=False)
    if probs:
        loss = F.nll_loss(up.clamp(min=1e-12).log(), mask[None].long(), ignore_index=255,
                          reduction="sum")  # fmt: skip
    else:
        loss = F.cross_entropy(up, mask[None].long(), ignore_index=255, reduction="sum")
    return loss, class_ids(up, torch.uint8)[0]


@pytest.mark.parametrize("budget", [1, 2 * 50 * 70])  # one class at a time, then two
@pytest.mark.parametrize("k", [2, 3, 7])
@pytest.mark.parametrize("probs", [False, True])
def test_scores_of_a_few_classes_at_a_time_are_those_of_all_at_once(monkeypatch, budget, k, probs):
    # A large mask is scored resizing a few classes at a time: the same class ids, the first
    # maximum on ties and NaN as the highest, and the same loss. The last class ties the one
    # before on the right half, a NaN score spreads to the pixels around it, and class 0 is
    # -inf on the left half (a first chunk whose scores are all -inf); pixels whose loss is
    # NaN or infinite are left out of it, so that the sums can be compared.
    g = torch.Generator().manual_seed(k)
    output = torch.randn(k, 6, 8, generator=g) * 3
    output[k - 1, :, 4:] = output[k - 2, :, 4:]
    output[0, :, :4] = -float("inf")
    output[1, 2, 3] = float("nan")
    if probs:
        output = output.softmax(0)
    mask = torch.randint(0, k, (50, 70), generator=g, dtype=torch.uint8)
    mask[::7, ::3] = 255
    up = F.interpolate(output[None], size=mask.shape, mode="bilinear", align_corners=False)[0]
    true = up.gather(0, mask.long().clamp(max=k - 1)[None])[0]
    mask[up.isnan().any(0) | true.isneginf()] = 255
    want_loss, want_ids = _scores_at_once(output, mask, probs)
    assert want_loss.isfinite() and (mask == 255).float().mean() < 0.5
    assert up.isnan().any() and ((want_ids == k - 2) & (up[k - 1] == up[k - 2])).any()
    monkeypatch.setattr(engine, "UPSAMPLE_ELEMENTS", budget)
    loss, ids = engine._scores_in_chunks(output, mask, probs, torch.float64)
    assert torch.equal(ids, want_ids)
    assert loss.dtype == torch.float64 and loss.item() == pytest.approx(want_loss.item(), rel=1e-6)


class _FixedLogits(torch.nn.Module):
    """A stand-in Segmentor whose patch logits are the same whatever the images."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def patch_logits(self, images, from_features=False):
        return self.logits

    def forward(self, images, size=None, from_features=False):
        return F.interpolate(self.logits, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("tta", [None, ([1.0], True)])
def test_evaluation_resizes_a_few_classes_at_a_time_with_the_same_scores(monkeypatch, tta):
    # A 4000x3000 mask with 21 classes held 1 GB of resized scores, 3.2 GB in all: those of
    # a mask above UPSAMPLE_ELEMENTS are resized a few classes at a time (2 here), and the
    # metrics are those of resizing all of them at once
    g = torch.Generator().manual_seed(0)
    model = _FixedLogits(torch.randn(2, 5, 4, 5, generator=g))
    masks = [
        torch.randint(0, 5, size, generator=g, dtype=torch.uint8) for size in ((50, 70), (31, 45))
    ]
    masks[0][:5] = 255
    loader = [(torch.zeros(2, 3, 28, 28), masks, [0, 1])]
    want = evaluate(model, loader, torch.device("cpu"), 5, tta=tta)
    channels = []
    interpolate = F.interpolate
    monkeypatch.setattr(engine, "UPSAMPLE_ELEMENTS", 2 * 50 * 70)
    monkeypatch.setattr(
        engine.F, "interpolate", lambda x, **kw: channels.append(x.shape[1]) or interpolate(x, **kw)
    )
    got = evaluate(model, loader, torch.device("cpu"), 5, tta=tta)
    # tta_probs: two views' logits at the input size, one image at a time under this budget
    views = [] if tta is None else [5] * 4
    assert channels == [*views, 2, 2, 1, 5]  # the second mask, 5 x 31 x 45, fits at once
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert got["acc"] == want["acc"] and got["miou"] == want["miou"]
    np.testing.assert_array_equal(got["iou"], want["iou"])


def test_many_classes_score_as_a_numpy_confusion_matrix_does():
    # ADE20K's 150 classes: a few absent from the ground truth, some of them predicted
    rng = np.random.default_rng(5)
    k = 150
    target = rng.integers(0, 120, (4, 31, 29)).astype(np.uint8)
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, 140, target.shape).astype(np.uint8)
    cm = ConfusionMatrix(k)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    out = cm.compute()
    keep = target != 255
    mat = np.zeros((k, k), np.int64)
    np.add.at(mat, (target[keep].astype(int), pred[keep].astype(int)), 1)
    tp, truth, predicted = np.diag(mat), mat.sum(1), mat.sum(0)
    union = truth + predicted - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    np.testing.assert_allclose(out["iou"], iou, equal_nan=True)
    assert out["matrix"] == mat.tolist()
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(out["precision"], tp / predicted, equal_nan=True)
        np.testing.assert_allclose(out["recall"], tp / truth, equal_nan=True)
    assert out["miou"] == pytest.approx(np.nanmean(iou))
    assert out["pixel_accuracy"] == pytest.approx(tp.sum() / mat.sum())
    assert out["pixels"] == truth.tolist()
    assert out["iou"][130] == 0.0 and out["pixels"][130] == 0  # predicted, in no mask
    assert math.isnan(out["iou"][145])  # neither


def _tick_label_boxes(fig) -> list[list]:
    """The drawn extents (Bbox) of the first axes' x and y tick labels, in the axes' order."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    return [[label.get_window_extent(renderer) for label in labels]
            for labels in (ax.get_xticklabels(), ax.get_yticklabels())]  # fmt: skip


@pytest.mark.parametrize(("k", "named"), [(3, 3), (150, 150), (255, 128)])
def test_the_confusion_plot_names_its_classes_without_overlap_and_leaves_a_row_blank(k, named):
    # ADE20K's 150 classes, and the most a config allows: the class names may not run into
    # one another, and a class in no mask has no row to normalize (NaN): none is drawn
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 9, (k, k)) + np.diag(rng.integers(50, 99, k))
    counts[1] = 0
    counts[0, -1] = 0  # written "0", where a share that rounds to 0 is "0.00"
    names = [f"class {i}" if i % 5 else f"a class with a long name, {i}" for i in range(k)]
    fig = utils.confusion_figure(counts.tolist(), names)
    ax = fig.axes[0]
    shares = ax.images[0].get_array()
    assert shares.mask[1].all() and not shares.mask[[0, *range(2, k)]].any()
    np.testing.assert_allclose(shares[0], counts[0] / counts[0].sum())
    figure = fig.bbox
    for boxes in _tick_label_boxes(fig):
        assert len(boxes) == named
        assert not any(a.overlaps(b) for a, b in itertools.pairwise(boxes))
        assert all(figure.contains(box.x0, box.y0) and figure.contains(box.x1, box.y1)
                   for box in boxes)  # fmt: skip
    # each cell's share written up to 20 classes, and the blank row said as blank
    texts = [t.get_text() for t in ax.texts]
    if k > 20:
        assert texts == []
    else:
        assert texts[:k] == [f"{share:.2f}" if share else "0" for share in shares[0]]
        assert texts[k] == "no ground-truth pixel" and len(texts) == k * (k - 1) + 1
