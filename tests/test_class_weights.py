"""--class-weights: the weighted loss of training and validation, its flag and its resume."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import engine
import train
from config import DEFAULT_CLASSES, ClassConfig, parse_args
from conftest import PixelClassifier
from datasets import check_dataset_pixels
from engine import evaluate, train_one_epoch
from leftover_workers import leftover_workers_end_at_once  # noqa: F401 (autouse)
from model import peek_checkpoint
from utils import UserError

CPU = torch.device("cpu")


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the 1x1 convolution's gradient at each step (lr 0: the weights
    stay as they are, so every step is taken at the same point)."""

    def __init__(self, model: PixelClassifier):
        super().__init__(model.parameters(), lr=0.0)
        self.model, self.seen = model, []

    def step(self, closure=None):
        self.seen.append(self.model.conv.weight.grad.clone())
        return super().step(closure)


def batches(ignored_rows=(0, 5, 1, 3, 4), seed=1) -> list:
    """(images, masks, None) batches of two 6x6 images, classes 0 and 1, each with its own
    number of ignored (255) rows."""
    g = torch.Generator().manual_seed(seed)
    loader = []
    for rows in ignored_rows:
        masks = torch.randint(0, 2, (2, 6, 6), generator=g)
        masks[:, :rows] = 255
        loader.append((torch.rand(2, 3, 6, 6, generator=g), masks, None))
    return loader


def test_a_weighted_step_is_pytorchs_weighted_mean_over_one_batch():
    torch.manual_seed(0)
    model = PixelClassifier()
    weights = torch.tensor([0.3, 2.5])
    loader = batches(ignored_rows=(2,))
    images, masks, _ = loader[0]
    model.zero_grad()
    loss = F.cross_entropy(model(images, None), masks, weight=weights, ignore_index=255)
    loss.backward()
    expected = model.conv.weight.grad.clone()
    optimizer = RecordingSGD(model)
    stats = train_one_epoch(model, loader, optimizer, CPU, 2, class_weights=weights)
    torch.testing.assert_close(optimizer.seen[0], expected)
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-6)
    unweighted = train_one_epoch(model, loader, RecordingSGD(model), CPU, 2)
    assert unweighted["loss"] != pytest.approx(stats["loss"], rel=1e-3)


def group_gradients(model: PixelClassifier, loader: list, accum: int, group_loss) -> list:
    """The 1x1 convolution's gradient of ``group_loss(group)`` for each group of ``accum``
    batches of ``loader``: the updates train_one_epoch should make."""
    gradients = []
    for start in range(0, len(loader), accum):
        model.zero_grad()
        group_loss(loader[start : start + accum]).backward()
        gradients.append(model.conv.weight.grad.clone())
    return gradients


def one_batch_loss(model: PixelClassifier, group: list, weights: torch.Tensor) -> torch.Tensor:
    """The weighted cross-entropy of ``group``'s batches as one batch."""
    images, masks = (torch.cat([batch[i] for batch in group]) for i in (0, 1))
    return F.cross_entropy(model(images, None), masks, weight=weights, ignore_index=255)


@pytest.mark.parametrize("accum", [2, 3])
def test_a_weighted_accumulated_update_is_that_of_one_batch_of_its_group(accum):
    # each update divides by the summed weight of the group's labelled pixels: dividing by their
    # count, or by each batch's own summed weight, gives another gradient
    torch.manual_seed(0)
    model = PixelClassifier()
    weights = torch.tensor([0.2, 3.0])
    loader = batches()
    expected = group_gradients(model, loader, accum, lambda g: one_batch_loss(model, g, weights))
    optimizer = RecordingSGD(model)
    train_one_epoch(model, loader, optimizer, CPU, 2, accum=accum, class_weights=weights)
    assert len(optimizer.seen) == len(expected) == math.ceil(len(loader) / accum)
    for got, want in zip(optimizer.seen, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_the_pixels_of_a_class_of_weight_0_add_nothing_to_the_gradient():
    torch.manual_seed(0)
    model = PixelClassifier()
    loader = batches()
    # the same batches with class 0's pixels ignored, without weights
    only_ones = [(im, m.masked_fill(m == 0, 255), i) for im, m, i in loader]
    runs = []
    for data, weights in ((loader, torch.tensor([0.0, 1.0])), (only_ones, None)):
        optimizer = RecordingSGD(model)
        stats = train_one_epoch(model, data, optimizer, CPU, 2, accum=2, class_weights=weights)
        runs.append((optimizer.seen, stats["loss"]))
    (weighted, loss), (ignored, loss_ignored) = runs
    assert len(weighted) == len(ignored) == 3
    for got, want in zip(weighted, ignored, strict=True):
        torch.testing.assert_close(got, want)
    assert loss == pytest.approx(loss_ignored, rel=1e-6)


def test_a_group_whose_labelled_pixels_all_weigh_0_makes_no_step():
    # no gradient to follow (0 / 0 would be NaN), but AdamW would still step by weight decay
    model = PixelClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = [(torch.rand(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), None)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    stats = train_one_epoch(
        model, loader, optimizer, CPU, 2, class_weights=torch.tensor([0.0, 1.0])
    )
    assert not optimizer.state, "nothing to learn from: no step"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert math.isnan(stats["loss"])


class PoolClassifier(torch.nn.Module):
    """patch_logits of three classes on a grid a quarter of the image's size: for evaluate."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def patch_logits(self, images, from_features=False):
        return self.conv(F.avg_pool2d(images.float() / 255, 4))


def split_of_three_classes() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Three (3, 28, 28) uint8 images with masks of other sizes, of classes 0-2, 255 in a row."""
    g = torch.Generator().manual_seed(3)
    images, masks = [], []
    for h, w in ((20, 24), (28, 28), (36, 30)):
        mask = torch.randint(0, 3, (h, w), generator=g)
        mask[:2] = 255
        masks.append(mask)
        images.append(torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8, generator=g))
    return images, masks


@pytest.mark.parametrize("mode", ["plain", "in chunks", "tta", "slide"])
def test_the_weighted_validation_loss_weighs_each_classs_loss_by_its_summed_weight(
    mode, monkeypatch
):
    # The weighted mean (sum over classes of w * loss sum) / (sum of w * pixels), from the
    # unweighted losses of each class's pixels alone: the same for every way evaluate scores
    # (logits resized at once or a class at a time, TTA's and --slide's averaged probabilities)
    if mode == "in chunks":
        monkeypatch.setattr(engine, "UPSAMPLE_ELEMENTS", 1)  # one class at a time
    torch.manual_seed(0)
    model = PoolClassifier().eval()
    images, masks = split_of_three_classes()
    kwargs = {"tta": ([1.0, 1.5], True)} if mode == "tta" else {}
    if mode == "slide":
        kwargs = {"slide": ((16, 16), 2)}

    def scored(split_masks, weights=None) -> dict:
        batch = images if mode == "slide" else torch.stack(images)
        loader = [(batch, split_masks, None)]
        return evaluate(model, loader, CPU, 3, class_weights=weights, **kwargs)

    sums, pixels = [], []
    for c in range(3):
        alone = [m.masked_fill(m != c, 255) for m in masks]
        pixels.append(sum(int((m == c).sum()) for m in masks))
        sums.append(scored(alone)["loss"] * pixels[-1])
    weights = [0.5, 2.0, 0.0]
    expected = sum(w * s for w, s in zip(weights, sums, strict=True)) / sum(
        w * n for w, n in zip(weights, pixels, strict=True)
    )
    got = scored(masks, torch.tensor(weights))
    assert got["loss"] == pytest.approx(expected, rel=1e-5)
    plain = scored(masks)
    assert plain["loss"] != pytest.approx(expected, rel=1e-3)
    for key in ("acc", "miou", "iou", "pixels", "matrix"):  # the weights change the loss alone
        assert got[key] == plain[key], key


def classes_of_three() -> ClassConfig:
    return ClassConfig.from_dict({"ALL_CLASSES": ["background", "road", "car"]})


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, 5.0], "takes one weight per class, 3 for the 3 classes (0 background, 1 road, "
                     "2 car) in class-id order, not 2 (1 5)"),
        ([1.0, 2.0, 3.0, 4.0], "not 4 (1 2 3 4)"),
        ([1.0, -1.0, 2.0], "finite numbers of 0 or more, at least one above 0, one for each of "
                           "the 3 classes (0 background, 1 road, 2 car) in class-id order; not "
                           "1 -1 2"),
        ([1.0, math.nan, 2.0], "not 1 nan 2"),
        ([1.0, math.inf, 2.0], "not 1 inf 2"),
        ([0.0, 0.0, 0.0], "at least one above 0"),
        (["auto", 1.0, 2.0], "takes auto alone or 3 numbers, not auto 1 2"),
    ],
)  # fmt: skip
def test_class_weights_need_one_finite_weight_per_class_and_one_above_0(weights, message):
    with pytest.raises(UserError, match=r"^--class-weights ") as err:
        train.check_class_weights(weights, classes_of_three())
    assert message in str(err.value)
    for fitting in ([1.0, 0.0, 2.5], ["auto"], None):
        train.check_class_weights(fitting, classes_of_three())


def test_class_weights_parse_from_the_command_line_and_a_config_file(tmp_path):
    parser = train.get_args_parser()
    assert parse_args(parser, [])[0].class_weights is None
    assert parse_args(parser, ["--class-weights", "1", "0.5"])[0].class_weights == [1.0, 0.5]
    assert parse_args(parser, ["--class-weights", "auto"])[0].class_weights == ["auto"]
    (tmp_path / "c.yaml").write_text("class_weights: [1, 4]\n")
    args, _ = parse_args(parser, ["--config", str(tmp_path / "c.yaml")])
    assert args.class_weights == [1.0, 4.0]
    assert (
        parse_args(parser, ["--config", str(tmp_path / "c.yaml"), "--no-class-weights"])[
            0
        ].class_weights
        is None
    )
    (tmp_path / "bad.yaml").write_text("class_weights: [1, heavy]\n")
    with pytest.raises(UserError, match="class_weights: 'heavy' is not a valid value"):
        parse_args(parser, ["--config", str(tmp_path / "bad.yaml")])


def test_auto_weighs_each_class_by_the_median_frequency_over_its_own():
    pixels = np.zeros(256, np.int64)
    pixels[:4] = 900, 90, 9, 0  # class 3 in no train mask
    pixels[255] = 5000  # ignored: no class's
    # frequencies 900/999, 90/999, 9/999: the median class weighs 1, one ten times rarer 10
    assert train.auto_class_weights(pixels, ClassConfig.from_dict({"ALL_CLASSES": list("abcd")})
                                    ) == [0.1, 1.0, 10.0, 1.0]  # fmt: skip
    pixels[:2] = 950, 50
    assert train.auto_class_weights(pixels, DEFAULT_CLASSES) == [0.5263, 10.0]


def run(data: Path, out: Path, weights_file: Path, *flags: str) -> None:
    argv = ["--data", str(data), "--out-dir", str(out), "--backbone-source", "timm",
            "--weights", str(weights_file), "--imgsz", "56", "56", "--workers", "0",
            "--batch", "2", "--num-vis", "0", *flags]  # fmt: skip
    train.main(*parse_args(train.get_args_parser(), argv))


def test_a_wrong_count_is_refused_before_the_run_writes_anything(
    tmp_path, fresh_data, weights_file
):
    with pytest.raises(UserError, match=r"2 for the 2 classes \(0 background, 1 person\) .*not 3"):
        run(fresh_data, tmp_path / "out", weights_file, "--class-weights", "1", "2", "3")
    assert not (tmp_path / "out").exists()


def test_a_run_with_auto_weights_records_the_numbers_it_computed_from_the_train_masks(
    tmp_path, fresh_data, weights_file, caplog
):
    with caplog.at_level("INFO", logger="dinoseg"):
        run(fresh_data, tmp_path / "out", weights_file, "--class-weights", "auto", "--epochs", "1")
    pixels = check_dataset_pixels(fresh_data, DEFAULT_CLASSES)[1]["train"]
    counts = pixels[:2].astype(float)
    frequency = counts / counts.sum()
    median = (frequency[0] + frequency[1]) / 2
    expected = [float(f"{median / f:.4g}") for f in frequency]
    assert expected[0] < 1 < expected[1] or expected[1] < 1 < expected[0]
    recorded = yaml.safe_load((tmp_path / "out" / "args.yaml").read_text())["class_weights"]
    assert recorded == expected
    assert peek_checkpoint(tmp_path / "out" / "last_model.pth")["args"]["class_weights"] == expected
    shown = " ".join(map(str, expected))
    assert f"--class-weights auto: {shown} (background, person), by median-frequency" in caplog.text


def test_a_weighted_run_records_its_weights_and_a_resume_keeps_or_changes_them(
    tmp_path, fresh_data, weights_file, caplog
):
    # from cached features, the frozen backbone's fast path
    run(fresh_data, tmp_path, weights_file, "--class-weights", "1", "4", "--epochs", "1",
        "--cache-features", "memory")  # fmt: skip
    assert yaml.safe_load((tmp_path / "args.yaml").read_text())["class_weights"] == [1.0, 4.0]
    last = tmp_path / "last_model.pth"
    assert peek_checkpoint(last)["args"]["class_weights"] == [1.0, 4.0]
    # a best valid loss no epoch can beat: only a loss of other weights starts it anew
    ckpt = torch.load(last, weights_only=True)
    ckpt["best_loss"] = -1.0
    torch.save(ckpt, last)
    saved = tmp_path / "epoch1.pth"
    saved.write_bytes(last.read_bytes())

    with caplog.at_level("INFO", logger="dinoseg"):
        run(fresh_data, tmp_path, weights_file, "--resume", str(last), "--epochs", "2")
    assert "continuing" in caplog.text and "--class-weights 1.0 4.0" in caplog.text
    assert "changes the loss" not in caplog.text
    assert peek_checkpoint(last)["args"]["class_weights"] == [1.0, 4.0]
    assert peek_checkpoint(tmp_path / "best_model_loss.pth")["epoch"] == 1

    caplog.clear()
    last.write_bytes(saved.read_bytes())
    run(fresh_data, tmp_path, weights_file, "--resume", str(last), "--epochs", "2",
        "--class-weights", "1", "1")  # fmt: skip
    assert (
        "--resume: --class-weights 1.0 1.0 (was --class-weights 1.0 4.0) changes the loss: the "
        "valid losses of metrics.csv before epoch 2 are of the earlier weights, and "
        "best_model_loss.pth is picked among the epochs from 2 on"
    ) in caplog.text
    # said once, above, not among the other changed settings
    assert "apply from epoch 2: --epochs 2 (was 1)\n" in caplog.text
    assert yaml.safe_load((tmp_path / "args.yaml").read_text())["class_weights"] == [1.0, 1.0]
    best = peek_checkpoint(tmp_path / "best_model_loss.pth")
    assert best["epoch"] == 2 and best["best_loss"] == best["metrics"]["valid_loss"]

    caplog.clear()
    last.write_bytes(saved.read_bytes())
    run(fresh_data, tmp_path, weights_file, "--resume", str(last), "--epochs", "2",
        "--no-class-weights")  # fmt: skip
    assert "--no-class-weights (was --class-weights 1.0 4.0) changes the loss" in caplog.text
    assert yaml.safe_load((tmp_path / "args.yaml").read_text())["class_weights"] is None
