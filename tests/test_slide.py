"""Sliding-window inference (--slide) in evaluation and inference."""

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import engine
import infer_image
import infer_video
import train
from config import DEFAULT_CLASSES, Slide, parse_args
from datasets import read_mask, slide_input_size
from engine import Predictor, slide_probs, window_starts
from metrics import ConfusionMatrix
from model import load_checkpoint
from synthetic import write_clip
from utils import UserError


@pytest.fixture(scope="module")
def model(checkpoint):
    model, _ = load_checkpoint(checkpoint)
    return model.eval()


def reference_probs(model, image, window, tops, lefts):
    """The mean of each window's softmaxed logits, window by window: (K, H, W)."""
    (_, h, w), (ww, wh) = image.shape, window
    total, count = 0, torch.zeros(h, w)
    for top in tops:
        for left in lefts:
            crop = image[None, :, top : top + wh, left : left + ww]
            probs = model(crop).softmax(1)[0]  # logits resized to the window
            total = total + torch.nn.functional.pad(probs, (left, w - left - ww, top, h - top - wh))
            count[top : top + wh, left : left + ww] += 1
    return total / count


def test_windows_step_by_two_thirds_and_the_last_ends_at_the_edge():
    assert window_starts(84, 42) == [0, 28, 42]  # 28 = 2/3 of 42; 56 + 42 would pass 84
    assert window_starts(56, 28) == [0, 19, 28]
    assert window_starts(47, 42) == [0, 5]
    assert window_starts(42, 42) == window_starts(30, 42) == [0]


def test_one_window_over_the_whole_image_is_the_plain_path(model, checkpoint):
    classes = Predictor.from_checkpoint(checkpoint, "cpu").classes
    plain = Predictor(model, classes, (90, 66))
    sliding = Predictor(model, classes, (90, 66), slide=Slide(None, 4))
    images = list(np.random.default_rng(0).integers(0, 256, (3, 66, 90, 3), dtype=np.uint8))
    for got, want in zip(sliding.predict(images), plain.predict(images), strict=True):
        np.testing.assert_array_equal(got, want)
    x = torch.from_numpy(images[0]).permute(2, 0, 1)
    with torch.no_grad():
        torch.testing.assert_close(slide_probs(model, x, (90, 66), 4), model(x[None]).softmax(1)[0])


@pytest.mark.parametrize("batch", [1, 4, 9])
def test_windows_over_twice_their_size_average_their_probabilities(model, batch):
    # 9 windows of 42x28 over 84x56, run 1, 4 (4 + 4 + 1) or 9 at a time; the last of each
    # side moved back to end at the edge (42, not 56; 28, not 38)
    image = torch.randint(0, 256, (3, 56, 84), dtype=torch.uint8)
    with torch.no_grad():
        got = slide_probs(model, image, (42, 28), batch)
        want = reference_probs(model, image, (42, 28), [0, 19, 28], [0, 28, 42])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(0), torch.ones(56, 84))


def test_odd_sizes_and_images_smaller_than_a_window(model, checkpoint):
    odd = torch.randint(0, 256, (3, 33, 47), dtype=torch.uint8)  # 2 x 2 windows of 42x28
    small = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)  # one window, its own size
    with torch.no_grad():
        torch.testing.assert_close(
            slide_probs(model, odd, (42, 28), 3),
            reference_probs(model, odd, (42, 28), [0, 5], [0, 5]),
        )
        torch.testing.assert_close(
            slide_probs(model, small, (42, 28), 3), model(small[None]).softmax(1)[0]
        )
    # never enlarged; larger images shrunk to the short side, keeping their aspect
    predictor = Predictor.from_checkpoint(checkpoint, "cpu", imgsz=(42, 28), slide=Slide(None, 2))
    assert predictor.resize(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30, 3)
    assert predictor.resize(np.zeros((100, 75, 3), np.uint8)).shape == (75, 56, 3)
    assert predictor.predict(np.zeros((100, 75, 3), np.uint8)).shape == (100, 75)
    assert slide_input_size(4000, 3000, 1280) == (1707, 1280)


def test_eval_only_slide_scores_what_infer_image_slide_writes(tmp_path, checkpoint, tiny_data):
    # images of 96x72 and 84x112 shrunk to a short side of 60 (80x60, 60x80), windows of 42x28
    flags = ["--slide", "--slide-size", "60", "--imgsz", "42", "28", "--batch", "3"]
    out = tmp_path / "eval"
    train.main(*parse_args(train.get_args_parser(), [
        "--eval-only", "--model", str(checkpoint), "--data", str(tiny_data), "--workers",
        "0", "--out-dir", str(out), *flags]))  # fmt: skip
    metrics = json.loads((out / "eval_metrics.json").read_text())
    assert "tta" not in metrics
    slide = metrics["slide"]
    assert (out / "confusion_matrix_slide.png").is_file()
    assert not (out / "confusion_matrix_tta.png").exists()
    assert (slide["short_side"], slide["window"], slide["tta"]) == (60, [42, 28], None)
    assert slide["miou"] != metrics["miou"]

    masks = tmp_path / "masks"
    infer_image.main(infer_image.get_args_parser().parse_args([
        "--input", str(tiny_data / "valid_images"), "--model", str(checkpoint),
        "--out-dir", str(masks), *flags]))  # fmt: skip
    cm = ConfusionMatrix(2)
    for truth_path in sorted((tiny_data / "valid_masks").iterdir()):
        pred = np.array(Image.open(masks / f"{truth_path.stem}_mask.png"))
        truth = read_mask(truth_path, DEFAULT_CLASSES)
        assert pred.shape == truth.shape
        cm.update(torch.from_numpy(pred), torch.from_numpy(truth))
    assert cm.compute()["miou"] == pytest.approx(slide["miou"], abs=1e-12)
    assert cm.compute()["matrix"] == slide["confusion_matrix"]
    recall = cm.compute()["recall"]
    assert list(slide["per_class_recall"].values()) == pytest.approx(recall, abs=1e-12)


def test_eval_only_slide_with_tta_augments_each_window(tmp_path, checkpoint, tiny_data):
    out = tmp_path / "eval"
    train.main(*parse_args(train.get_args_parser(), [
        "--eval-only", "--model", str(checkpoint), "--data", str(tiny_data), "--workers", "0",
        "--out-dir", str(out), "--slide", "--imgsz", "42", "28", "--tta", "--tta-scales",
        "1.0", "1.5"]))  # fmt: skip
    metrics = json.loads((out / "eval_metrics.json").read_text())
    assert metrics["slide"]["tta"] == {"scales": [1.0, 1.5], "flip": True}
    assert metrics["slide"]["short_side"] == 56  # twice the window's short side
    assert 0 <= metrics["slide"]["miou"] <= 1 and "tta" in metrics


def test_video_with_slide_keeps_frame_count_and_size(tmp_path, checkpoint):
    clip = write_clip(tmp_path / "clip.mp4", frames=5)
    out = tmp_path / "out"
    infer_video.main(infer_video.get_args_parser().parse_args([
        "--input", str(clip), "--model", str(checkpoint), "--out-dir", str(out), "--slide",
        "--imgsz", "42", "28", "--batch", "2"]))  # fmt: skip
    result = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(result.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    assert (result.get(cv2.CAP_PROP_FRAME_WIDTH), result.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (96, 72)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--slide-size", "600"], "--slide-size applies only with --slide: add --slide"),
        (["--slide", "--slide-size", "10"], "--slide-size must be at least 14 pixels"),
        (["--slide", "--compile"], "--compile does not apply to --slide"),
    ],
)
def test_slide_mistakes_are_refused_by_infer_image(tmp_path, checkpoint, flags, message):
    args = infer_image.get_args_parser().parse_args(
        ["--input", str(tmp_path), "--model", str(checkpoint), *flags]
    )
    with pytest.raises(UserError, match=message):
        infer_image.main(args)


@pytest.mark.parametrize("slide", [Slide(None, 0), Slide(5, 2), (640,), True])
def test_a_slide_setting_that_is_not_a_size_and_batch_is_refused_before_the_model_loads(
    monkeypatch, slide
):
    # a batch of 0 failed at the first image in range(); a short side of 5 ran one patch
    monkeypatch.setattr(engine, "load_checkpoint", no_model)
    with pytest.raises(ValueError, match=r"slide is Slide\(size, batch\)"):
        Predictor.from_checkpoint("model.pth", "cpu", slide=slide)


def no_model(*args):
    raise AssertionError("the model was loaded before the slide setting was checked")


def test_slide_without_eval_only_is_refused_by_train(tmp_path, tiny_data):
    with pytest.raises(UserError, match="--slide applies to --eval-only"):
        train.main(*parse_args(train.get_args_parser(), [
            "--data", str(tiny_data), "--out-dir", str(tmp_path), "--slide"]))  # fmt: skip
