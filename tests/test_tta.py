"""Multi-scale and flip test-time augmentation in evaluation and inference."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

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
