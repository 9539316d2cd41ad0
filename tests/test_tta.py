"""Multi-scale and flip test-time augmentation in evaluation and inference."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import engine
import infer_image
import train
from config import DEFAULT_CLASSES, parse_args
from datasets import read_mask
from engine import tta_probs
from metrics import ConfusionMatrix
from model import load_checkpoint


def test_tta_probs_are_averaged_probabilities(checkpoint):
    model, _ = load_checkpoint(checkpoint)
    images = torch.randint(0, 256, (2, 3, 66, 90), dtype=torch.uint8)
    with torch.no_grad():
        probs = tta_probs(model, images, [0.75, 1.0, 1.25], flip=True)
        single = tta_probs(model, images, [1.0], flip=False)
        plain = model(images).softmax(1)
        flipped = model(images.flip(-1)).softmax(1).flip(-1)
        both = tta_probs(model, images, [1.0], flip=True)
    assert probs.shape == (2, 2, 66, 90)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 66, 90))
    torch.testing.assert_close(single, plain)
    torch.testing.assert_close(both, (plain + flipped) / 2)


def test_tta_scales_each_side_of_a_non_square_image_and_flips_every_view_back(checkpoint):
    # a reference written out view by view: the 90x66 input at 0.75 and 1.25 is 68x50 and
    # 112x82 (Python's round), each also mirrored, its logits resized to 90x66 and mirrored back
    model, _ = load_checkpoint(checkpoint)
    images = torch.randint(0, 256, (2, 3, 66, 90), dtype=torch.uint8)
    views = []
    with torch.no_grad():
        for h, w in ((50, 68), (82, 112)):
            x = F.interpolate(images.float(), size=(h, w), mode="bilinear", align_corners=False)
            mirrored = torch.from_numpy(x.numpy()[..., ::-1].copy())
            for view, back in ((x, False), (mirrored, True)):
                logits = F.interpolate(
                    model.patch_logits(view), size=(66, 90), mode="bilinear", align_corners=False
                )
                probs = logits.softmax(1).numpy()
                views.append(torch.from_numpy(probs[..., ::-1].copy() if back else probs))
        got = tta_probs(model, images, [0.75, 1.25], flip=True)
    torch.testing.assert_close(got, sum(views) / 4)


@pytest.fixture
def one_thread():
    """PyTorch on one thread for the test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _PooledLogits(torch.nn.Module):
    """A stand-in Segmentor: 1x1-convolved 14x14 means of the image, (B, 5, h/14, w/14)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 1)

    def patch_logits(self, images, from_features=False):
        return self.conv(F.avg_pool2d(images.float() / 32, 14, ceil_mode=True))

    def forward(self, images, size=None, from_features=False):
        size = images.shape[-2:] if size is None else size
        return F.interpolate(self.patch_logits(images), size=size, mode="bilinear")


def test_tta_resizes_a_few_images_at_a_time_to_the_same_probabilities(monkeypatch, one_thread):
    # With 150 classes at 644x644, --tta held five (B, K, H, W) float32 tensors at once (2 GB
    # each at --batch 8): each view is resized one image at a time here (a budget of one
    # image's scores), and the probabilities are those of resizing the whole batch at once.
    # On one thread: softmax's kernel splits the batch among its threads, and where the split
    # falls changes the last bit of some probabilities (as another thread count does).
    torch.manual_seed(0)
    model = _PooledLogits()
    images = torch.randint(0, 256, (3, 3, 42, 56), dtype=torch.uint8)
    with torch.no_grad():
        views = [
            model(view, size=(42, 56)).float().softmax(1)
            for size in ((32, 42), (52, 70))  # 0.75 and 1.25 of 42x56, by Python's round
            for view in [F.interpolate(images.float(), size=size, mode="bilinear")]
            for view in (view, view.flip(-1))
        ]
        views[1], views[3] = views[1].flip(-1), views[3].flip(-1)
        want = (views[0] + views[1] + views[2] + views[3]) / 4
        resized = []
        interpolate = F.interpolate
        monkeypatch.setattr(engine, "UPSAMPLE_ELEMENTS", 5 * 42 * 56)
        monkeypatch.setattr(
            engine.F,
            "interpolate",
            lambda x, **kw: resized.append(len(x)) or interpolate(x, **kw),
        )
        got = tta_probs(model, images, [0.75, 1.25], flip=True)
    assert torch.equal(got, want)
    # each scale resizes the batch of images once, then each view its logits image by image
    assert resized == [3, 1, 1, 1, 1, 1, 1] * 2


def test_eval_only_reports_with_and_without_tta(tmp_path, checkpoint, tiny_data):
    def evaluate(out, *extra):
        train.main(*parse_args(train.get_args_parser(), [
            "--eval-only", "--model", str(checkpoint), "--data", str(tiny_data), "--workers",
            "0", "--out-dir", str(out), *extra]))  # fmt: skip
        return json.loads((out / "eval_metrics.json").read_text())

    plain = evaluate(tmp_path / "plain")
    both = evaluate(tmp_path / "tta", "--tta", "--tta-scales", "0.8", "1.0")
    assert "tta" not in plain
    assert both["miou"] == plain["miou"]  # the plain numbers stay where they were
    assert both["tta"]["scales"] == [0.8, 1.0] and both["tta"]["flip"] is True
    assert 0 <= both["tta"]["miou"] <= 1 and set(both["tta"]["per_class_iou"]) == {
        "background",
        "person",
    }

    # the inference script's TTA masks score exactly what --eval-only --tta reports
    out = tmp_path / "masks"
    infer_image.main(infer_image.get_args_parser().parse_args([
        "--input", str(tiny_data / "valid_images"), "--model", str(checkpoint),
        "--out-dir", str(out), "--tta", "--tta-scales", "0.8", "1.0"]))  # fmt: skip
    cm = ConfusionMatrix(2)
    for truth_path in sorted((tiny_data / "valid_masks").iterdir()):
        pred = np.array(Image.open(out / f"{truth_path.stem}_mask.png"))
        cm.update(torch.from_numpy(pred), torch.from_numpy(read_mask(truth_path, DEFAULT_CLASSES)))
    assert cm.compute()["miou"] == pytest.approx(both["tta"]["miou"], abs=1e-12)
    assert cm.compute()["matrix"] == both["tta"]["confusion_matrix"]
    assert both["confusion_matrix"] == plain["confusion_matrix"]
    # a plot of each run's matrix; a plain run into the folder leaves no --tta plot beside its own
    plots = ["confusion_matrix.png", "confusion_matrix_tta.png"]
    assert [(tmp_path / "tta" / name).is_file() for name in plots] == [True, True]
    assert [(tmp_path / "plain" / name).is_file() for name in plots] == [True, False]
    with Image.open(tmp_path / "tta" / plots[1]) as image:
        assert image.format == "PNG"
    evaluate(tmp_path / "tta")
    assert [(tmp_path / "tta" / name).is_file() for name in plots] == [True, False]


# nan and inf were tracebacks where the scaled size was rounded
@pytest.mark.parametrize("scale", ["0", "-1", "nan", "inf"])
def test_non_positive_or_infinite_tta_scales_are_refused(tmp_path, checkpoint, tiny_data, scale):
    from utils import UserError

    with pytest.raises(UserError, match="--tta-scales must be positive and finite"):
        train.main(*parse_args(train.get_args_parser(), [
            "--eval-only", "--model", str(checkpoint), "--data", str(tiny_data),
            "--out-dir", str(tmp_path), "--tta", "--tta-scales", scale, "1"]))  # fmt: skip


def test_tta_scales_without_tta_are_refused_by_eval_only(tmp_path, checkpoint, tiny_data):
    # ignored before: eval_metrics.json held the plain scores alone, with no tta entry
    from utils import UserError

    with pytest.raises(UserError, match="--tta-scales applies only with --tta: add --tta"):
        train.main(*parse_args(train.get_args_parser(), [
            "--eval-only", "--model", str(checkpoint), "--data", str(tiny_data),
            "--out-dir", str(tmp_path), "--tta-scales", "1.0", "1.32"]))  # fmt: skip
    assert not (tmp_path / "eval_metrics.json").exists()
