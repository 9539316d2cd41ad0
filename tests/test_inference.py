import _thread
import contextlib
import functools
import gc
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, TiffImagePlugin

import engine
import infer_image
import infer_video
import train
import utils
import video_container
from config import DEFAULT_CLASSES, ClassConfig, distinct_colors, parse_args
from conftest import (
    FAKE_HUB,
    ORT_RUNS_INT8,
    ROOT,
    load_benchmark,
    needs_mount_namespace,
    run_bind_mounted,
    small_memory,
)
from datasets import read_image, read_mask
from engine import Predictor
from metrics import ConfusionMatrix
from model import (
    INT8_MIN_TORCH,
    Segmentor,
    check_size_fits,
    load_backbone,
    load_checkpoint,
    save_checkpoint,
    torch_version,
)
from synthetic import make_sample, write_clip
from utils import UserError, check_gui, draw_overlay, opencv_threads_for


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, torch.device("cpu"))


def cli(parser, **flags) -> Namespace:
    """Parse flags given as keywords; True stands for a bare switch."""
    argv = []
    for key, value in flags.items():
        flag = f"--{key.replace('_', '-')}"
        argv += [flag] if value is True else [flag, str(value)]
    return parser.parse_args(argv)


def image_args(**flags) -> Namespace:
    return cli(infer_image.get_args_parser(), **flags)


def video_args(**flags) -> Namespace:
    return cli(infer_video.get_args_parser(), **flags)


def no_model(*args):
    """Stands in for predictor_from_args where a check must fail before the model loads."""
    raise AssertionError("the model was loaded before the arguments were checked")


# --- the predictor -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(75, 101, 3), (300, 20, 3), (66, 90, 3), (14, 14, 3)])
def test_predictor_returns_masks_at_each_input_size(predictor, shape):
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    mask = predictor.predict(image)
    assert mask.shape == shape[:2] and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}


def test_predictor_batches_mixed_sizes(predictor):
    images = [np.zeros((50, 70, 3), np.uint8), np.full((33, 21, 3), 200, np.uint8)]
    masks = predictor.predict(images)
    assert [m.shape for m in masks] == [(50, 70), (33, 21)]
    # batching must not change results
    assert all((m == predictor.predict(im)).all() for m, im in zip(masks, images, strict=True))


def test_masks_are_the_argmax_of_bilinearly_resized_logits(predictor):
    # one image, a batch of one size (video frames) and a batch of mixed sizes take different
    # paths; all must resize the patch-grid logits as evaluation does
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((75, 101), (40, 50))]
    images[0][20:60, 30:70] = (230, 60, 40)  # a person-coloured blob, so both classes appear

    def expected(image):
        x = torch.from_numpy(predictor.resize(image)).permute(2, 0, 1)[None]
        with torch.no_grad():
            logits = predictor.model.patch_logits(x)
        up = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
        return up.argmax(1)[0].numpy()

    want = [expected(im) for im in images]
    assert len(np.unique(want[0])) == 2, "both classes must appear, or this proves nothing"
    for got, w in zip(predictor.predict(images), want, strict=True):  # mixed sizes
        assert (got == w).all()
    assert (predictor.predict(images[0]) == want[0]).all()  # one image
    for got in predictor.predict([images[0]] * 2):  # one size
        assert (got == want[0]).all()


def test_images_of_one_size_are_resized_in_groups_that_fit_the_budget(monkeypatch):
    # 2 classes x 30 x 40 = 2400 scores per image: two images per group under a budget of 5000;
    # the groups' masks are those of resizing each image alone
    sizes = [(30, 40)] * 5 + [(12, 7), (30, 40)]
    logits = torch.randn(len(sizes), 2, 4, 5, generator=torch.Generator().manual_seed(0))
    calls = []
    interpolate = F.interpolate
    monkeypatch.setattr(engine, "UPSAMPLE_ELEMENTS", 5000)
    monkeypatch.setattr(
        engine.F, "interpolate", lambda x, **kw: calls.append(len(x)) or interpolate(x, **kw)
    )
    masks = Predictor._masks(logits, sizes)
    assert calls == [2, 2, 1, 1, 1]
    for mask, lg, size in zip(masks, logits, sizes, strict=True):
        up = interpolate(lg[None], size=size, mode="bilinear", align_corners=False)
        assert np.array_equal(mask, up.max(1).indices[0].to(torch.uint8).numpy())


def test_an_image_whose_classes_exceed_the_budget_is_resized_a_few_classes_at_a_time(monkeypatch):
    # 5 classes x 30 x 40 = 6000 scores: two classes at a time under a budget of 2400. Class 3
    # ties class 1 everywhere (the first must win, as in max) and NaNs count as highest.
    logits = torch.randn(2, 5, 4, 5, generator=torch.Generator().manual_seed(0))
    logits[:, 3] = logits[:, 1]
    logits[1, 4, 0, 0] = logits[1, 2, 3, 4] = float("nan")
    calls = []
    interpolate = F.interpolate
    monkeypatch.setattr(engine, "UPSAMPLE_ELEMENTS", 2400)
    monkeypatch.setattr(
        engine.F, "interpolate", lambda x, **kw: calls.append(x.shape[1]) or interpolate(x, **kw)
    )
    masks = Predictor._masks(logits, [(30, 40)] * 2)
    assert calls == [2, 2, 1] * 2
    for mask, lg in zip(masks, logits, strict=True):
        up = interpolate(lg[None], size=(30, 40), mode="bilinear", align_corners=False)
        assert np.array_equal(mask, up.max(1).indices[0].to(torch.uint8).numpy())
    assert masks[1][0, 0] == 4 and (masks[0] != 3).all()


def _new_tensor_bytes(pixels: int, before: set[int]) -> int:
    """The bytes of the tensors of at least ``pixels`` elements that Python holds, each storage
    counted once, but for the storages at the addresses in ``before``."""
    storages = {}
    for obj in gc.get_objects():
        if type(obj) is torch.Tensor and obj.numel() >= pixels:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(n for ptr, n in storages.items() if ptr not in before)


def _record_held_at_resizes(monkeypatch, pixels: int) -> tuple[list[int], object]:
    """Make engine's F.interpolate record, at each call, the bytes of tensors of ``pixels``
    elements or more made since this call (_new_tensor_bytes); returns that (growing) list and
    the real interpolate."""
    held = []
    before = {t.untyped_storage().data_ptr() for t in gc.get_objects() if type(t) is torch.Tensor}
    interpolate = F.interpolate

    def recorded(x, **kw):
        held.append(_new_tensor_bytes(pixels, before))
        return interpolate(x, **kw)

    monkeypatch.setattr(engine.F, "interpolate", recorded)
    return held, interpolate


def test_resizing_a_few_classes_at_a_time_holds_no_chunk_when_it_resizes_the_next(monkeypatch):
    # 7 classes of 30x40, two at a time: when a chunk is resized, what is held at the mask's
    # size is the running maximum (4 bytes a pixel), the class ids and the comparison (1 each).
    # The last chunk was held too, and max(0)'s maximum and int64 indices (12 bytes a pixel)
    logits = torch.randn(7, 4, 5, generator=torch.Generator().manual_seed(0))
    pixels = 30 * 40
    monkeypatch.setattr(engine, "UPSAMPLE_ELEMENTS", 2 * pixels)
    held, interpolate = _record_held_at_resizes(monkeypatch, pixels)
    ids = engine._class_ids_in_chunks(logits, (30, 40))
    assert len(held) == 4 and max(held) <= 6 * pixels, held
    up = interpolate(logits[None], size=(30, 40), mode="bilinear", align_corners=False)[0]
    assert torch.equal(ids, up.max(0).indices.to(torch.uint8))


def test_images_resized_in_groups_hold_no_group_when_the_next_is_resized(monkeypatch):
    # 4 frames of 30x40 with 2 classes, two frames a group: when the second group is resized,
    # what is held at the frames' size is the first group's masks (1 byte a pixel), not also
    # its resized scores (4 bytes a pixel and class: 265 MB for 4 frames at 4K, the default)
    logits = torch.randn(4, 2, 4, 5, generator=torch.Generator().manual_seed(0))
    pixels = 30 * 40
    monkeypatch.setattr(engine, "UPSAMPLE_ELEMENTS", 2 * 2 * pixels)
    held, interpolate = _record_held_at_resizes(monkeypatch, pixels)
    masks = Predictor._masks(logits, [(30, 40)] * 4)
    assert len(held) == 2 and held[1] <= 2 * pixels, held
    up = interpolate(logits, size=(30, 40), mode="bilinear", align_corners=False)
    assert np.array_equal(np.stack(masks), up.max(1).indices.to(torch.uint8).numpy())


def test_a_group_of_more_than_two_classes_is_compared_class_by_class(monkeypatch):
    # 3 frames of 30x40 with 4 classes, resized at once: what is held at the frames' size
    # while their ids are taken is the resized scores (16 bytes a pixel), the ids and the
    # comparison (1 each). max(1) added a float32 maximum and int64 indices (12 bytes a pixel).
    # The ids are max(1)'s: class 3 ties class 1 (the first wins), and NaNs count as highest.
    logits = torch.randn(3, 4, 4, 5, generator=torch.Generator().manual_seed(0))
    logits[:, 3] = logits[:, 1]
    pixels, held = 3 * 30 * 40, []
    before = {t.untyped_storage().data_ptr() for t in gc.get_objects() if type(t) is torch.Tensor}

    def recorded(method):
        def call(self, *args, **kwargs):
            held.append(_new_tensor_bytes(30 * 40, before))
            return method(self, *args, **kwargs)

        return call

    for name in ("to", "masked_fill_"):
        monkeypatch.setattr(torch.Tensor, name, recorded(getattr(torch.Tensor, name)))
    masks = Predictor._masks(logits, [(30, 40)] * 3)
    monkeypatch.undo()
    assert held and max(held) <= 18 * pixels, held
    for nan in (False, True):
        if nan:
            logits[1, 2, 0, 0] = logits[2, 0, 3, 4] = float("nan")
            masks = Predictor._masks(logits, [(30, 40)] * 3)
        up = F.interpolate(logits, size=(30, 40), mode="bilinear", align_corners=False)
        assert np.array_equal(np.stack(masks), up.max(1).indices.to(torch.uint8).numpy())
    assert up.isnan().any() and (np.stack(masks) != 3).all()


@pytest.mark.parametrize("imgsz", [518, (56, 42, 3), (0, 0), (13, 42), (56.5, 42)])
def test_an_input_size_that_is_not_w_h_is_refused_before_the_model_loads(monkeypatch, imgsz):
    # an int failed in tuple(), and a size of 0 or 56.5 at the first image, in OpenCV's resize
    monkeypatch.setattr(engine, "load_checkpoint", no_model)
    with pytest.raises(ValueError, match=r"imgsz is the model's input size \(W, H\), two integ"):
        Predictor.from_checkpoint("model.pth", "cpu", imgsz=imgsz)


@pytest.mark.parametrize(("device", "amp"), [("mps", "bf16"), ("cpu", "fp16")])
def test_a_precision_the_device_lacks_is_refused_before_the_model_loads(monkeypatch, device, amp):
    # infer_image.py --device mps --amp bf16 loaded the model (a download, the first time) first
    monkeypatch.setattr(engine, "load_checkpoint", no_model)
    with pytest.raises(UserError, match=f"--amp {amp} needs a .* device; this run uses {device}"):
        Predictor.from_checkpoint("model.pth", device, amp=amp)


def test_an_input_size_of_whole_floats_or_numpy_ints_is_taken(checkpoint):
    for imgsz in ((56.0, 42.0), np.array([56, 42])):
        predictor = Predictor.from_checkpoint(checkpoint, "cpu", imgsz=imgsz)
        assert predictor.imgsz == (56, 42) and all(type(v) is int for v in predictor.imgsz)
        assert predictor.predict(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30)


@pytest.mark.parametrize(
    "tta",
    [True, [0.75, 1.0], ([0.0, 1.0], True), ([1.0], "no"), ([float("inf")], True)],
)
def test_a_tta_setting_that_is_not_scales_and_flip_is_refused_before_the_model_loads(
    monkeypatch, tta
):
    # True and a bare list failed at the first image; a scale of 0 ran its views at one patch,
    # and an infinite one raised OverflowError at the first image
    monkeypatch.setattr(engine, "load_checkpoint", no_model)
    with pytest.raises(ValueError, match=r"tta is \(scales, flip\), positive finite scales and"):
        Predictor.from_checkpoint("model.pth", "cpu", tta=tta)


def test_model_fps_leaves_out_the_first_call(checkpoint, monkeypatch):
    predictor = Predictor.from_checkpoint(checkpoint, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="before any prediction"):
        predictor.model_fps()
    # a clock on which the first call takes 100 s and the next one 1 s
    clock = iter([0.0, 100.0, 100.0, 101.0])
    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    image = np.zeros((66, 90, 3), np.uint8)
    predictor.predict([image] * 3)  # warm-up: on a GPU, start-up and compilation
    assert predictor.model_frames == 0
    assert predictor.model_fps() == 3 / 100.0  # the first call is all there is
    assert predictor.model_fps_note() == " (one batch only: start-up included)"  # and is said
    predictor.predict([image] * 2)
    assert (predictor.model_frames, predictor.model_seconds) == (2, 1.0)
    assert predictor.model_fps() == 2.0 and predictor.model_fps_note() == ""


def test_model_fps_times_the_network_alone(checkpoint, monkeypatch):
    # The "model" line is the network's speed: the upload, the resizing of the scores to full
    # size, the argmax and the copy back were timed with it. On this clock only work advances
    # time: the network 1 s a batch, the upload 10 s, the masks 100 s.
    predictor = Predictor.from_checkpoint(checkpoint, torch.device("cpu"))
    now = [0.0]
    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def taking(seconds, work):
        def run(*args, **kwargs):
            now[0] += seconds
            return work(*args, **kwargs)

        return run

    monkeypatch.setattr(predictor, "patch_logits", taking(1.0, predictor.patch_logits))
    monkeypatch.setattr(engine, "to_model_input", taking(10.0, engine.to_model_input))
    monkeypatch.setattr(predictor, "_masks", taking(100.0, predictor._masks))
    image = np.zeros((66, 90, 3), np.uint8)
    predictor.predict([image] * 2)  # the first call, apart
    assert predictor.model_fps() == 2.0
    predictor.predict([image] * 2)
    assert (predictor.model_frames, predictor.model_seconds) == (2, 1.0)


def test_model_fps_counts_a_padded_batch_at_the_size_the_network_ran(checkpoint, monkeypatch):
    # A compiled model runs a short last batch padded to the compiled size: 1 image of a batch
    # of 3 took the network the time of 3, and the "model" line gave it as 1 image in that
    # time, 3x slower than the network runs (4 photos at --batch 3 --compile reported that)
    predictor = Predictor.from_checkpoint(checkpoint, torch.device("cpu"))
    predictor._compiled_batch = 0  # what compile=True sets, without paying for compilation
    now = [0.0]
    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    real = predictor.patch_logits

    def patch_logits(x):  # the network: 1 s per image it is given
        now[0] += len(x)
        return real(x)

    predictor.patch_logits = patch_logits
    image = np.zeros((66, 90, 3), np.uint8)
    predictor.predict([image] * 3)  # the first call, apart: "compiles" for batch 3
    assert len(predictor.predict([image])) == 1  # padded to 3
    assert predictor.model_fps() == 1.0


def test_predictor_rejects_non_rgb_arrays(predictor):
    # a grayscale array is named as it is, not as one of its rows
    with pytest.raises(ValueError, match=r"expected \(H, W, 3\) uint8 RGB, got \(10, 12\) uint8"):
        predictor.predict(np.zeros((10, 12), np.uint8))
    with pytest.raises(ValueError, match=r"got \(0, 12, 3\)"):
        predictor.predict(np.zeros((0, 12, 3), np.uint8))
    with pytest.raises(TypeError, match=r"NumPy array, got a PIL\.Image\.Image"):
        predictor.predict(Image.new("RGB", (12, 10)))
    with pytest.raises(TypeError, match=r"NumPy array, got a torch\.Tensor"):
        predictor.predict(torch.zeros(10, 12, 3, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("image", "conversion"),
    [
        (np.full((4, 5, 3), 0.5, np.float32), r"\(image \* 255\)\.round\(\)\.astype\(np\.uint8\)"),
        (np.full((4, 5, 3), 128.0), r"values 0\.\.255, pass image\.astype\(np\.uint8\)"),
        (np.zeros((3, 4, 5), np.uint8), r"channels first, pass image\.transpose\(1, 2, 0\)"),
        (np.zeros((4, 5, 1), np.uint8), r"grayscale, pass cv2\.cvtColor\(image, "),
        # a thresholded image: its 0 and 1 cast alone would be a black image
        (np.zeros((4, 5, 3), bool), r"booleans, pass image\.astype\(np\.uint8\) \* 255$"),
        (np.zeros((4, 5), bool), r"cv2\.cvtColor\(image\.astype\(np\.uint8\) \* 255, cv2"),
        (np.zeros((4, 5, 4), np.uint8), r"RGBA, pass image\[\.\.\., :3\]"),
        (torch.zeros(3, 4, 5), r"tensor\.cpu\(\)\.numpy\(\)"),
        (Image.new("RGBA", (5, 4)), r'np\.asarray\(image\.convert\("RGB"\)\)'),
        ("photo.jpg", r"got a builtins\.str: read the file with datasets\.read_image\(path\)"),
        (Path("photo.jpg"), r"Path: read the file with"),
    ],
)
def test_predictor_names_the_conversion_of_near_miss_images(predictor, image, conversion):
    # a float image in 0..1 cast with astype(np.uint8) alone would be segmented as black; a
    # path was read character by character
    with pytest.raises((ValueError, TypeError), match=conversion):
        predictor.predict(image)


def test_predictor_takes_any_list_of_images_the_empty_one_too(predictor):
    images = [np.zeros((10, 12, 3), np.uint8), np.zeros((8, 6, 3), np.uint8)]
    assert predictor.predict([]) == []
    for many in (tuple(images), iter(images), np.stack([images[0]] * 2)):
        assert len(predictor.predict(many)) == 2


def test_bf16_on_the_cpu_casts_the_network_once_and_keeps_the_masks(checkpoint, predictor):
    # --amp bf16 is offered for recent CPUs: the weights are cast, not autocast on every call
    half = Predictor.from_checkpoint(checkpoint, "cpu", amp="bf16")
    assert half.model.dtype == torch.bfloat16
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (66, 90, 3), dtype=np.uint8) for _ in range(3)]
    for want, got in zip(predictor.predict(images), half.predict(images), strict=True):
        assert got.shape == want.shape and got.dtype == np.uint8
        assert (got == want).mean() > 0.9


def test_overlay_refuses_a_mask_of_another_size(predictor):
    with pytest.raises(ValueError, match=r"the mask is \(3, 4\), its image \(4, 4\)"):
        predictor.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((3, 4), np.uint8))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), r"expected \(H, W, 3\) uint8 RGB, got \(4, 4, 3\) f"),
        (np.zeros((4, 4, 4), np.uint8), r"got \(4, 4, 4\) uint8"),  # RGBA
        (np.zeros((4, 4), np.uint8), r"got \(4, 4\) uint8"),  # grayscale
        (np.zeros((3, 4, 4), np.uint8), r"got \(3, 4, 4\) uint8"),  # channels first
        (torch.zeros(4, 4, 3, dtype=torch.uint8), r"NumPy array, got a torch\.Tensor"),
    ],
)
def test_overlay_refuses_the_images_predict_refuses(predictor, image, message):
    # OpenCV's own errors named neither the image nor the contract, and a channels-first image
    # was reported as a mask of the wrong size
    with pytest.raises((ValueError, TypeError), match=message):
        predictor.overlay(image, np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize(
    ("mask", "alpha", "message"),
    [
        (np.full((4, 4), 257), 0.5, "values 257 to 257: class ids are 0 to 255"),  # was class 1
        (np.full((4, 4), -1), 0.5, "values -1 to -1"),
        (np.full((4, 4), 0.7, np.float32), 0.5, "float32 values: pass integer class ids"),
        (np.ones((4, 4), np.uint8), 1.5, "alpha must be between 0 and 1, not 1.5"),
        (np.ones((4, 4), np.uint8), float("nan"), "not nan"),
    ],
)
def test_overlay_refuses_what_it_would_draw_wrongly(predictor, mask, alpha, message):
    # colorize reads ids as uint8 (257 drew class 1, -1 ignore), and cv2.addWeighted
    # extrapolates any alpha outside 0..1, as the scripts' --alpha refuses
    with pytest.raises(ValueError, match=message):
        predictor.overlay(np.zeros((4, 4, 3), np.uint8), mask, alpha)


def test_amp_names_its_choices():
    with pytest.raises(ValueError, match=r"'off' or one of \['bf16', 'fp16'\], not 'fp32'"):
        utils.amp_dtype("fp32", torch.device("cpu"))


@pytest.mark.parametrize(
    ("device", "asynchronous"), [("cuda", True), ("mps", False), ("cpu", False)]
)
def test_copies_to_the_device_are_asynchronous_only_on_cuda(monkeypatch, device, asynchronous):
    # CPU-to-MPS copies with non_blocking=True may read their source after it was freed
    # (pytorch/pytorch#139550): the training loop rebinds each batch to its copy
    seen = []

    def to(self, *args, **kwargs):
        seen.append(kwargs.get("non_blocking", False))
        return self

    monkeypatch.setattr(torch.Tensor, "to", to)
    engine.to_model_input(np.zeros((1, 4, 4, 3), np.uint8), torch.device(device))
    engine.to_device(torch.zeros(2), torch.device(device))
    assert seen == [asynchronous] * 2


def test_overlay_uses_the_checkpoint_colours(predictor):
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0] = 1
    out = predictor.overlay(image, mask, alpha=1.0)
    assert out[0, 0].tolist() == [0, 255, 0]  # VIS_LABEL_MAP of person
    assert out[1, 1].tolist() == [100, 100, 100]  # background untouched


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_overlay_blends_class_colours_like_the_formula(alpha):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (33, 47)).astype(np.int64)  # any integer type
    colors = [(0, 0, 0), (255, 0, 0), (10, 200, 30)]
    out = draw_overlay(image[:, ::-1], mask.T.copy().T, colors, alpha)  # non-C-ordered arrays
    image = image[:, ::-1]
    want = (1 - alpha) * image + alpha * np.asarray(colors, dtype=np.float64)[mask]
    want = np.where((mask > 0)[..., None], want, image)  # background keeps the image
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.abs(out.astype(np.float64) - want).max() <= 0.5 + 1e-9


def test_a_class_0_given_a_colour_is_drawn_like_the_others():
    # Cityscapes' training ids make road class 0: its VIS_LABEL_MAP colour was never drawn
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (9, 11)).astype(np.uint8)
    colors = [(128, 64, 128), (255, 0, 0), (10, 200, 30)]
    want = 0.5 * image + 0.5 * np.asarray(colors, dtype=np.float64)[mask]
    out = draw_overlay(image, mask, colors, 0.5)
    assert np.abs(out.astype(np.float64) - want).max() <= 0.5 + 1e-9


def test_mask_pngs_hold_every_class_id_as_written(tmp_path):
    # infer_image.py writes masks with OpenCV's PNG encoder (4-5x faster than Pillow's): an
    # 8-bit grayscale file that Pillow reads back pixel for pixel
    mask = np.random.default_rng(3).permutation(np.arange(37 * 53) % 256).astype(np.uint8)
    mask = mask.reshape(37, 53)
    utils.write_png(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as read:
        assert read.mode == "L" and read.format == "PNG"
        assert np.array_equal(np.asarray(read), mask)
    for wrong in (mask.astype(np.int64), np.dstack([mask] * 3)):  # no silent wrap or colour
        with pytest.raises(ValueError, match=r"\(H, W\) uint8"):
            utils.write_png(tmp_path / "w.png", wrong)


# --- infer_image.py ------------------------------------------------------------------------


def test_written_masks_are_the_predicted_ones(tmp_path, checkpoint, predictor):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(4)
    images = {}
    for name, (h, w) in (("a.png", (67, 101)), ("b.jpg", (120, 45)), ("c.png", (66, 90))):
        image, _ = make_sample(rng, w, h)
        Image.fromarray(image).save(src / name, quality=95)
        images[Path(name).stem] = np.asarray(Image.open(src / name).convert("RGB"))
    infer_image.main(image_args(input=src, model=checkpoint, out_dir=out, batch=2))
    both = False  # a mask of one class alone would test little of the file
    for stem, image in images.items():
        want = predictor.predict(image)
        both |= 0 < want.sum() < want.size
        with Image.open(out / f"{stem}_mask.png") as written:
            assert written.mode == "L" and np.array_equal(np.asarray(written), want)
    assert both


@pytest.mark.parametrize(
    ("amp", "tta", "setup"),
    [
        ("off", False, "batch 2, float32"),
        ("bf16", False, "batch 2, bf16"),
        ("off", True, "batch 2, float32, --tta: 6 views per (image|frame)"),
    ],
)
def test_the_speed_lines_of_both_scripts_name_the_batch_and_precision(
    tmp_path, checkpoint, capsys, amp, tta, setup
):
    # infer_image's line named neither the batch nor --amp, which change the figure several
    # fold, nor either script --tta's views, each a pass of the network
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):  # two full batches: the figure leaves out the first
        Image.fromarray(make_sample(np.random.default_rng(i), 60, 40)[0]).save(src / f"{i}.png")
    clip = write_clip(tmp_path / "clip.mp4", frames=4)
    flags = {"model": checkpoint, "batch": 2, "amp": amp, **({"tta": True} if tta else {})}
    infer_image.main(image_args(input=src, out_dir=tmp_path / "i", **flags))
    infer_video.main(video_args(input=clip, out_dir=tmp_path / "v", **flags))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("model:")]
    pattern = r"model: [\d.]+ ms per (image|frame) \([\d.]+ FPS\), the network alone, on cpu, "
    assert len(lines) == 2 and all(re.fullmatch(pattern + setup, line) for line in lines), lines


SHORT_BATCHES = "(--batch 4: no full batch was timed)"


@pytest.mark.parametrize(
    ("frames", "batch"),
    [(3, f"batch 3 {SHORT_BATCHES}"), (5, f"batch 1 {SHORT_BATCHES}"), (9, "batch 4,")],
)
def test_the_video_speed_line_names_the_batches_its_figure_timed(
    tmp_path, checkpoint, capsys, frames, batch
):
    # The figure leaves out the first batch: of 5 frames at --batch 4 it timed the last one
    # alone, and of 3 frames a batch of 3, each called "batch 4" (several fold off on a GPU)
    clip = write_clip(tmp_path / "clip.mp4", frames=frames)
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=tmp_path / "v", batch=4))
    line = next(line for line in capsys.readouterr().out.splitlines() if "model:" in line)
    assert f"on cpu, {batch}" in line, line


def test_infer_image_handles_odd_files_and_names_failures(tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    rgb = np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("L").save(src / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(src / "rgba.png")
    Image.fromarray(rgb).convert("P").save(src / "palette.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(src / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: displayed 40 wide, 60 high
    Image.fromarray(rgb).save(src / "rotated.jpg", exif=exif)
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"1 of 6 image\(s\) could not be read:\n.*broken\.jpg"):
        infer_image.main(image_args(input=src, model=checkpoint, out_dir=out, batch=4))
    for stem in ("gray", "rgba", "palette", "deep16"):
        assert Image.open(out / f"{stem}_mask.png").size == (60, 40)
        assert Image.open(out / f"{stem}_overlay.jpg").size == (60, 40)
    assert Image.open(out / "rotated_mask.png").size == (40, 60)
    assert not (out / "broken_mask.png").exists()


def test_images_of_several_frames_are_named_as_segmented_at_their_first(
    tmp_path, checkpoint, predictor, caplog
):
    # an animated GIF or a multi-page TIFF gave the mask of its first frame alone, without a
    # word; a camera's MPO JPEG holds a preview, and a GeoTIFF its reduced-resolution overviews:
    # no frames, not counted
    rng = np.random.default_rng(2)
    first, other = (rng.integers(0, 255, (40, 60, 3), dtype=np.uint8) for _ in range(2))
    src = tmp_path / "in"
    src.mkdir()
    frames = [Image.fromarray(first), Image.fromarray(other), Image.fromarray(255 - first)]
    frames[0].save(src / "pages.tiff", save_all=True, append_images=frames[1:])
    frames[0].save(src / "photo.jpg", format="MPO", save_all=True, append_images=frames[1:2])
    frames[0].save(src / "still.png")
    with open(src / "aerial.tif", "w+b") as fp, TiffImagePlugin.AppendingTiffWriter(fp) as tiff:
        for frame, kind in ((frames[0], 0), (frames[1].reduce(2), 1), (frames[2], 2)):
            frame.save(tiff, format="TIFF", tiffinfo={254: kind})  # NewSubfileType
            tiff.newFrame()
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:2])
    out = tmp_path / "out"
    infer_image.main(image_args(input=src, model=checkpoint, out_dir=out))
    named = re.findall(r"only the first of each was segmented: (.*) \(", caplog.text)
    assert named == [f"{src / 'aerial.tif'} (2 frames), {src / 'pages.tiff'} (3 frames)"]
    mask = np.array(Image.open(out / "pages_mask.png"))
    assert (mask == predictor.predict(first)).all(), "the first page's mask"
    caplog.clear()
    infer_image.main(image_args(input=tmp_path / "anim.gif", model=checkpoint, out_dir=out))
    gif = "1 image(s) hold several frames or pages, and only the first of each was segmented: "
    assert f"{gif}{tmp_path / 'anim.gif'} (2 frames)" in caplog.text


def test_infer_image_of_one_file_reads_it_even_with_glob_characters_in_its_name(
    tmp_path, checkpoint
):
    # "shot[1].png" as a glob matches shot1.png: a file that exists is taken as named
    Image.fromarray(np.full((30, 50, 3), 90, np.uint8)).save(tmp_path / "shot[1].png")
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(tmp_path / "shot1.png")
    out = tmp_path / "out"
    infer_image.main(image_args(input=tmp_path / "shot[1].png", model=checkpoint, out_dir=out))
    assert sorted(p.name for p in out.iterdir()) == ["shot[1]_mask.png", "shot[1]_overlay.jpg"]
    assert Image.open(out / "shot[1]_mask.png").size == (50, 30)


def test_a_leading_tilde_is_the_home_folder_where_the_shell_leaves_it(tmp_path, monkeypatch):
    # the shell expands ~ in --out-dir ~/runs but not in --out-dir=~/runs: results went to a
    # folder named "~" below the current one, while the closing line named ~/runs
    monkeypatch.setenv("HOME", str(tmp_path))
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(tmp_path / "a.png")
    args = image_args(input="~/a.png", out_dir="~/runs", model="~/best.pth")
    assert (args.out_dir, args.model) == (tmp_path / "runs", tmp_path / "best.pth")
    assert infer_image.find_images(args.input) == [tmp_path / "a.png"]
    assert infer_image.find_images("~") == [tmp_path / "a.png"]
    assert infer_image.find_images("~/*.png") == [tmp_path / "a.png"]
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    source = infer_video.open_video("~/clip.mp4")
    source.capture.release()
    assert source.path == clip


def test_infer_image_of_a_video_points_to_infer_video_before_the_model_loads(tmp_path, monkeypatch):
    # it said "unreadable or corrupt image (cannot identify image file)" of a good video, once
    # the model had loaded: infer_video.py refuses a photo, naming infer_image.py, likewise
    clip = write_clip(tmp_path / "Clip.MOV", frames=2)
    monkeypatch.setattr(infer_image, "predictor_from_args", no_model)
    with pytest.raises(UserError, match=r"Clip\.MOV is a video, not an image: .*infer_video\.py"):
        infer_image.main(image_args(input=clip, out_dir=tmp_path / "out"))


@pytest.mark.parametrize(
    ("name", "data"), [("notes.txt", b"buy milk\n"), ("photo.jpg", b""), ("scan.png", b"<html>")]
)
def test_infer_image_of_a_file_that_is_no_image_is_refused_before_the_model_loads(
    tmp_path, monkeypatch, name, data
):
    # a text file, an empty or failed download: "unreadable or corrupt image" came only once the
    # model had loaded
    path = tmp_path / name
    path.write_bytes(data)
    monkeypatch.setattr(infer_image, "predictor_from_args", no_model)
    with pytest.raises(UserError, match=rf"--input {re.escape(str(path))} is not an image"):
        infer_image.main(image_args(input=path, out_dir=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_unreadable_images_after_the_last_full_batch_are_named_and_the_rest_written(
    tmp_path, checkpoint
):
    # the last group then holds no image to segment, only the failure
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(src / "a.png")
    (src / "z_broken.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"1 of 2 image\(s\) could not be read:\n.*z_broken\.png"):
        infer_image.main(image_args(input=src, model=checkpoint, out_dir=out, batch=1))
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.jpg"]


def test_infer_image_accepts_a_glob(tmp_path, checkpoint, tiny_data):
    out = tmp_path / "out"
    pattern = str(tiny_data / "valid_images" / "*.jpg")
    infer_image.main(image_args(input=pattern, model=checkpoint, out_dir=out))
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["img001_mask.png", "img003_mask.png"]


def test_a_glob_inside_a_folder_named_with_brackets_finds_its_images(tmp_path):
    # "Photos [2024]/*.jpg": glob reads [2024] as one character of 2, 0 or 4, so a folder named
    # so (common on Windows and macOS) gave "no images found" for every glob inside it
    folder = tmp_path / "Photos [2024]" / "day 1"
    folder.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.png"):
        Image.new("RGB", (4, 3)).save(folder / name)
    found = infer_image.find_images(f"{folder}/*.jpg")
    assert [p.name for p in found] == ["a.jpg", "b.jpg"]
    found = infer_image.find_images(f"{tmp_path}/Photos [2024]/**/*.png")
    assert [p.name for p in found] == ["c.png"]
    # a pattern that matches stays a pattern: [ab].jpg is a.jpg or b.jpg
    assert [p.name for p in infer_image.find_images(f"{folder}/[ab].jpg")] == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize("glob", [False, True])
def test_infer_image_names_images_of_formats_it_does_not_read(tmp_path, caplog, glob):
    # a folder of them had been left out without a word (an iPhone's HEIC photos too); Chrome's
    # .jfif JPEGs and WebP are read
    for name in ("a.png", "b.gif", "c.avif", ".d.gif", "e.webp", "f.jfif", "g.HEIC", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    spec = f"{tmp_path}/*" if glob else str(tmp_path)
    assert infer_image.find_images(spec) == [tmp_path / n for n in ("a.png", "e.webp", "f.jfif")]
    assert "3 files of other image formats are not read: b.gif, c.avif, g.HEIC" in caplog.text
    assert "d.gif" not in caplog.text and "notes.txt" not in caplog.text


def test_infer_image_leaves_out_the_label_masks_beside_their_images(tmp_path, caplog):
    # a Roboflow export keeps NAME_mask.png of class ids beside NAME.jpg: with --out-dir
    # elsewhere, the labels were segmented as if they were photos
    Image.new("RGB", (8, 6)).save(tmp_path / "a.jpg")
    Image.new("L", (8, 6)).save(tmp_path / "a_mask.png")  # a's labels
    Image.new("RGB", (8, 6)).save(tmp_path / "b.jpg")
    Image.new("RGB", (8, 6)).save(tmp_path / "b_mask.png")  # a colour photo of that name
    Image.new("L", (8, 6)).save(tmp_path / "c_mask.png")  # no c image beside it
    found = infer_image.find_images(str(tmp_path), tmp_path / "out")
    assert [p.name for p in found] == ["a.jpg", "b.jpg", "b_mask.png", "c_mask.png"]
    assert "1 label mask(s) beside their images are not read: a_mask.png (" in caplog.text
    # the glob the warning offers segments them
    masks = infer_image.find_images(f"{tmp_path}/*_mask.png")
    assert [p.name for p in masks] == ["a_mask.png", "b_mask.png", "c_mask.png"]


def test_infer_image_names_a_lone_heic_as_a_format_it_does_not_read(tmp_path, monkeypatch):
    # it was read after the model had loaded, and called unreadable or corrupt; a folder's
    # HEIC photos were already named as not read
    assert ".heic" not in Image.registered_extensions(), "the premise: no HEIC plug-in here"
    photo = tmp_path / "IMG_0001.HEIC"
    photo.write_bytes(b"\x00\x00\x00\x18ftypheic")
    monkeypatch.setattr(infer_image, "predictor_from_args", no_model)
    with pytest.raises(UserError, match=r"IMG_0001\.HEIC is a \.heic image, a format the"):
        infer_image.main(image_args(input=photo, out_dir=tmp_path / "out"))


@pytest.mark.parametrize(("script", "items"), [(infer_image, "images"), (infer_video, "frames")])
def test_batch_help_counts_what_each_script_segments(script, items):
    """infer_video.py --help spoke of the images of a batch: its batches are of frames."""
    batch = next(a for a in script.get_args_parser()._actions if "--batch" in a.option_strings)
    assert batch.help.startswith(f"{items} that go through the model together")


@pytest.mark.parametrize("name", ["clip.mp4", "phone.MOV", "screen.mkv"])
def test_infer_image_points_a_video_to_infer_video(tmp_path, name):
    """A video given as --input was read, after the model loaded, as an unreadable image."""
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(
        UserError, match=r"is a video, not an image: segment it with infer_video\.py"
    ):
        infer_image.find_images(str(tmp_path / name))


def test_infer_image_names_the_subfolders_a_folder_input_leaves_out(tmp_path, caplog):
    """A folder's subfolders are not read (the README says so): their photos were missing from
    the results without a word, where a glob would have read them."""
    for name in ("a.png", "trip/b.png", "trip/c.png", "results/a_mask.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert infer_image.find_images(str(tmp_path), out_dir=tmp_path / "results") == [
        tmp_path / "a.png"
    ]
    assert "1 subfolder is not read: trip/" in caplog.text
    assert f"{tmp_path}/**/*.jpg" in caplog.text
    assert "results" not in caplog.text  # --out-dir: this script's own outputs
    caplog.clear()
    infer_image.find_images(f"{tmp_path}/**/*.png")  # a glob reads what it matches
    assert "not read" not in caplog.text


def test_infer_image_keeps_images_that_share_a_stem_apart(tmp_path, checkpoint):
    sizes = {"a/x.png": (40, 30), "b/x.png": (50, 70), "a/x.jpg": (60, 20), "b/y.png": (30, 30)}
    for name, (w, h) in sizes.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(tmp_path / name)
    out = tmp_path / "out"
    infer_image.main(image_args(input=f"{tmp_path}/**/*.*", model=checkpoint, out_dir=out))
    written = {p.relative_to(out).as_posix(): p for p in out.rglob("*_mask.png")}
    expected = {"a/x_png_mask.png": "a/x.png", "b/x_mask.png": "b/x.png",
                "a/x_jpg_mask.png": "a/x.jpg", "y_mask.png": "b/y.png"}  # fmt: skip
    assert sorted(written) == sorted(expected)
    for mask, source in expected.items():
        w, h = sizes[source]
        assert Image.open(written[mask]).size == (w, h)


def test_infer_image_without_matches_is_a_user_error(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setattr(infer_image, "predictor_from_args", no_model)
    with pytest.raises(UserError, match="no images found"):
        infer_image.main(image_args(input=tmp_path / "*.png", model=checkpoint))
    with pytest.raises(UserError, match=r"--input .*photo.jpg does not exist"):
        infer_image.main(image_args(input=tmp_path / "photo.jpg", model=checkpoint))


def test_infer_image_checks_its_out_dir_before_running(
    tmp_path, checkpoint, tiny_data, monkeypatch
):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    monkeypatch.setattr(infer_image, "predictor_from_args", no_model)
    with pytest.raises(UserError, match=r"--out-dir .*file/out is not writable"):
        infer_image.main(image_args(input=tiny_data / "valid_images", model=checkpoint,
                                    out_dir=blocker / "out"))  # fmt: skip


@pytest.mark.parametrize("script", [infer_image, infer_video])
def test_compile_with_tta_is_refused_before_the_model_loads(
    tmp_path, checkpoint, script, monkeypatch
):
    # each scale of test-time augmentation would compile a graph of its own
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    monkeypatch.setattr(script, "predictor_from_args", no_model)
    args = cli(script.get_args_parser(), input=clip, model=checkpoint, compile=True, tta=True)
    with pytest.raises(UserError, match="--compile does not apply to --tta"):
        script.main(args)
    model, _ = load_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="compile and tta"):
        Predictor(model, DEFAULT_CLASSES, (56, 56), compile=True, tta=([1.0], True))


@pytest.mark.parametrize("script", [infer_image, infer_video])
@pytest.mark.parametrize(
    ("flags", "message"),
    [({"alpha": 1.5}, r"--alpha must be between 0 and 1, not 1.5"),
     ({"alpha": -0.1}, r"--alpha must be between 0 and 1, not -0.1"),
     ({"batch": 0}, r"--batch must be at least 1")],
)  # fmt: skip
def test_bad_alpha_or_batch_is_refused_before_the_model_loads(
    tmp_path, checkpoint, script, monkeypatch, flags, message
):
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    monkeypatch.setattr(script, "predictor_from_args", no_model)
    args = cli(script.get_args_parser(), input=clip, model=checkpoint, **flags)
    with pytest.raises(UserError, match=message):
        script.main(args)


@pytest.mark.parametrize("script", [infer_image, infer_video])
def test_an_onnx_model_without_its_backend_is_sent_to_it_before_the_model_loads(
    tmp_path, script, monkeypatch
):
    # the checkpoint loader's message, "only infer_image.py and infer_video.py run it", read
    # oddly from infer_image.py itself
    source = write_clip(tmp_path / "clip.mp4", frames=2)
    if script is infer_image:
        source = tmp_path / "a.png"
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(source)
    (tmp_path / "model.onnx").write_bytes(b"graph")
    monkeypatch.setattr(script, "predictor_from_args", no_model)
    args = cli(script.get_args_parser(), input=source, model=tmp_path / "model.onnx")
    with pytest.raises(UserError, match=r"model.onnx is an ONNX model: add --backend onnxruntime"):
        script.main(args)


@pytest.mark.parametrize("script", [infer_image, infer_video])
def test_tta_scales_without_tta_are_refused_before_the_model_loads(
    tmp_path, checkpoint, script, monkeypatch
):
    # as the README's "+ms" ratios are written; alone they would leave the masks as without TTA
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    monkeypatch.setattr(script, "predictor_from_args", no_model)
    args = cli(script.get_args_parser(), input=clip, model=checkpoint, tta_scales=1.32)
    with pytest.raises(UserError, match="--tta-scales applies only with --tta: add --tta"):
        script.main(args)


def test_written_masks_score_what_eval_only_scores(tmp_path, checkpoint, tiny_data):
    train.main(*parse_args(train.get_args_parser(), [
        "--eval-only", "--model", str(checkpoint), "--data", str(tiny_data),
        "--out-dir", str(tmp_path / "eval"), "--workers", "0"]))  # fmt: skip
    expected = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    out = tmp_path / "masks"
    infer_image.main(image_args(input=tiny_data / "valid_images", model=checkpoint, out_dir=out))
    cm = ConfusionMatrix(2)
    for truth_path in sorted((tiny_data / "valid_masks").iterdir()):
        pred = np.array(Image.open(out / f"{truth_path.stem}_mask.png"))
        truth = read_mask(truth_path, DEFAULT_CLASSES)
        cm.update(torch.from_numpy(pred), torch.from_numpy(truth))
    scores = cm.compute()
    assert scores["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    assert scores["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-12)
    # the matrix itself, counted again with NumPy: rows = ground truth, cols = prediction
    counts = np.zeros((2, 2), np.int64)
    for truth_path in sorted((tiny_data / "valid_masks").iterdir()):
        pred = np.array(Image.open(out / f"{truth_path.stem}_mask.png"))
        truth = read_mask(truth_path, DEFAULT_CLASSES)
        keep = truth != 255
        np.add.at(counts, (truth[keep].astype(int), pred[keep].astype(int)), 1)
    assert expected["confusion_matrix"] == counts.tolist()
    assert counts.sum() > 0 and counts.sum(0).all() and counts.sum(1).all()  # both classes
    names = ["background", "person"]
    precision = dict(zip(names, np.diag(counts) / counts.sum(0), strict=True))
    recall = dict(zip(names, np.diag(counts) / counts.sum(1), strict=True))
    assert expected["per_class_precision"] == pytest.approx(precision, abs=1e-12)
    assert expected["per_class_recall"] == pytest.approx(recall, abs=1e-12)


# --- infer_video.py ------------------------------------------------------------------------


def test_video_round_trip_keeps_frames_size_and_rate(tmp_path, checkpoint, capsys):
    clip = write_clip(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out, batch=4))
    result = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(result.get(cv2.CAP_PROP_FRAME_COUNT)) == 13
    assert (result.get(cv2.CAP_PROP_FRAME_WIDTH), result.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (96, 72)
    assert result.get(cv2.CAP_PROP_FPS) == pytest.approx(30000 / 1001, abs=1e-3)
    frames = 0
    while result.read()[0]:
        frames += 1
    assert frames == 13
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4"], "no temporary file may remain"
    printed = capsys.readouterr().out
    assert "13 frames" in printed and "model:" in printed and "end to end:" in printed
    assert "no sound (nor has the input)" in printed


@pytest.mark.parametrize("size", [(1, 48), (64, 1)])
def test_a_video_one_pixel_wide_or_high_is_written_two_pixels_wide_or_high(
    tmp_path, checkpoint, size
):
    # cropped to even sides it was 0 pixels wide, and refused
    clip = tmp_path / "thin.gif"  # OpenCV writes no videos of odd sizes, but reads a GIF
    images = [Image.new("RGB", size, (90 * i, 0, 0)) for i in range(3)]
    images[0].save(clip, save_all=True, append_images=images[1:], duration=100)
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))
    written = read_rgb_frames(out / "thin.mp4")
    assert [frame.shape for frame in written] == [
        (size[1] + size[1] % 2, size[0] + size[0] % 2, 3)
    ] * 3


def test_a_video_of_odd_size_is_padded_to_even_and_says_so(tmp_path, checkpoint, capsys, caplog):
    # OpenCV writes no videos of odd sizes (its writer drops the odd last column or row), but
    # reads them: an animated GIF stands in for one. It lost its last column and row; they are
    # kept, and repeated once. Smooth ramps, another per frame, survive mp4v's compression.
    y, x = np.mgrid[0:49, 0:65]
    frames = [
        np.stack([x * 3, y * 4, np.full_like(x, 80 * i)], -1).astype(np.uint8) for i in range(3)
    ]
    clip = tmp_path / "odd.gif"
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(clip, save_all=True, append_images=images[1:], duration=100)
    capture = cv2.VideoCapture(str(clip))
    size = capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)
    capture.release()
    assert size == (65, 49), "the premise: OpenCV reads the GIF at its odd size"
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out, alpha=0))
    written = read_rgb_frames(out / "odd.mp4")
    assert [frame.shape for frame in written] == [(50, 66, 3)] * 3
    for decoded, original in zip(written, frames, strict=True):
        assert np.abs(decoded[:49, :65].astype(int) - original).mean() < 8
        repeated = np.pad(original, ((0, 1), (0, 1), (0, 0)), mode="edge")
        assert np.abs(decoded[-1].astype(int) - repeated[-1]).mean() < 8  # the last row
        assert np.abs(decoded[:, -1].astype(int) - repeated[:, -1]).mean() < 8  # and column
    assert "odd.mp4: 3 frames, 66x50," in capsys.readouterr().out
    assert "stores even sizes only" in caplog.text
    assert "the 65x49 input with its last column and row repeated" in caplog.text


@pytest.mark.parametrize(("batch", "noted"), [(4, True), (1, False)])
def test_a_model_time_that_includes_the_first_batch_says_so(
    tmp_path, checkpoint, capsys, batch, noted
):
    # two images: with --batch 4 the first (compiling, warming up) call is the only one timed
    for i in range(2):
        Image.fromarray(np.zeros((66, 90, 3), np.uint8)).save(tmp_path / f"{i}.png")
    infer_image.main(
        image_args(input=tmp_path, model=checkpoint, out_dir=tmp_path / "out", batch=batch)
    )
    model_line = next(line for line in capsys.readouterr().out.splitlines() if "model:" in line)
    assert ("one batch only" in model_line) == noted


def test_opencv_runs_on_one_thread_while_the_model_runs_on_the_cpu(
    tmp_path, checkpoint, monkeypatch
):
    # on the CPU the model's threads use every core: OpenCV's pool would compete with them
    before = cv2.getNumThreads()
    assert before > 1 or os.cpu_count() == 1  # premise: OpenCV starts with a pool
    with opencv_threads_for("cpu"):
        assert cv2.getNumThreads() == 1
    assert cv2.getNumThreads() == before
    for gpu in ("cuda", "mps"):  # a GPU model leaves the cores to OpenCV
        with opencv_threads_for(gpu):
            assert cv2.getNumThreads() == before
    seen = []

    def segment_video(source, predictor, out_path, args) -> dict:
        seen.append(cv2.getNumThreads())
        predictor.predict(np.zeros((72, 96, 3), np.uint8))  # what the speed line reports
        return {
            "frames": 2,
            "size": (96, 72),
            "rate": 30.0,
            "seconds": 1.0,
            "model_fps": 2.0,
            "fps": 2.0,
            "in_time": True,
        }

    monkeypatch.setattr(infer_video, "segment_video", segment_video)
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=tmp_path / "out"))
    assert seen == [1] and cv2.getNumThreads() == before


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.mp4", "does not exist"),
        (lambda d: (d / "junk.mp4").write_bytes(b"\x00" * 2048) and d / "junk.mp4", "cannot open"),
        # OpenCV opens no MP4 without frames: "not a video OpenCV can read, or corrupt"
        (lambda d: write_clip(d / "empty.mp4", frames=0), r"--input .*empty\.mp4 holds no frames"),
        # a recording cut off before its header was written: not said to hold no frames
        (
            lambda d: (
                d.joinpath("cut.mp4").write_bytes(write_clip(d / "c.mp4").read_bytes()[:900])
                and d / "cut.mp4"
            ),
            r"cut\.mp4: not a video OpenCV can read, or corrupt",
        ),
        # OpenCV reads a photo as a video of one frame at 25 FPS: not what was meant
        (
            lambda d: Image.new("RGB", (64, 48)).save(d / "photo.JPG") or d / "photo.JPG",
            r"photo\.JPG is an image, not a video: segment it with infer_image\.py",
        ),
    ],
)
def test_bad_videos_fail_clearly_and_leave_nothing(tmp_path, checkpoint, make, message):
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message):
        infer_video.main(video_args(input=make(tmp_path), model=checkpoint, out_dir=out))
    assert not out.exists() or not any(out.iterdir())


def test_video_from_a_file_that_is_not_our_checkpoint(tmp_path, weights_file):
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    with pytest.raises(UserError, match="backbone, not a segmentation model: train one"):
        infer_video.main(video_args(input=clip, model=weights_file, out_dir=tmp_path / "o"))


def test_video_with_a_checkpoint_of_another_backbone(tmp_path, checkpoint):
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    with pytest.raises(UserError, match="holds a dinov2_vits14 model, not the requested"):
        infer_video.main(video_args(input=clip, model=checkpoint, out_dir=tmp_path / "o",
                                    backbone="dinov2_vitb14"))  # fmt: skip


def test_video_script_errors_exit_nonzero_without_traceback(tmp_path, checkpoint):
    cmd = [sys.executable, "infer_video.py", "--input", str(tmp_path / "nope.mp4"),
           "--model", str(checkpoint)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "does not exist" in proc.stderr


def ctrl_c_due(frame: int, first: int) -> bool:
    """Whether a fake capture should press Ctrl-C at its ``frame``-th read: at ``first``, and
    every 20 reads after, should the run still be reading.

    The reads run on the decoding thread; ``_thread.interrupt_main`` raises KeyboardInterrupt in
    the main thread at its next bytecode. Twice, under heavy load, a run read on past it (one
    test ran for 26 minutes); Python drops a KeyboardInterrupt raised inside a ``__del__`` the
    garbage collector runs, one possible cause. So the fakes press again, as a user would.
    """
    return frame >= first and (frame - first) % 20 == 0


class FakeCamera:
    """cv2.VideoCapture of a camera: 96x72 frames, no frame count, no stated rate.

    After ``interrupt_after`` frames it interrupts the main thread, as Ctrl-C would (see
    ctrl_c_due); the stream ends after 500 frames, so a test never runs forever. A path opens
    a real capture: the script reopens its output to count the frames stored.
    """

    real = cv2.VideoCapture  # kept before the test replaces it

    def __new__(cls, index, *args, **kwargs):
        return cls.real(index) if isinstance(index, str) else super().__new__(cls)

    def __init__(self, index, interrupt_after=12, signum=signal.SIGINT):
        assert index == 0
        self.frames, self.interrupt_after, self.signum = 0, interrupt_after, signum

    def isOpened(self):
        return True

    def get(self, prop):
        return {cv2.CAP_PROP_FRAME_WIDTH: 96, cv2.CAP_PROP_FRAME_HEIGHT: 72}.get(prop, 0.0)

    def read(self):
        self.frames += 1
        if self.frames > 500:
            return False, None
        if ctrl_c_due(self.frames, self.interrupt_after):
            _thread.interrupt_main(self.signum)
        time.sleep(0.01)  # a camera delivers frames at its own pace
        return True, np.full((72, 96, 3), self.frames % 256, np.uint8)

    def release(self):
        pass


def test_camera_stream_ends_with_ctrl_c_and_keeps_the_video(tmp_path, checkpoint, caplog):
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video.cv2, "VideoCapture", FakeCamera)
        infer_video.main(video_args(input=0, model=checkpoint, out_dir=out, batch=1))
    (video,) = out.iterdir()  # camera0_YYYYMMDD-HHMMSS.mp4: the next recording keeps this one
    assert re.fullmatch(r"camera0_\d{8}-\d{6}\.mp4", video.name), video.name
    result = cv2.VideoCapture(str(video))
    written = int(result.get(cv2.CAP_PROP_FRAME_COUNT))
    assert written >= 7  # of 12 read: the decoder runs at most a few frames ahead
    assert result.get(cv2.CAP_PROP_FPS) == pytest.approx(30)  # the camera stated none
    assert f"stopped by Ctrl-C: {video} holds the first {written} frames" in caplog.text


def test_ctrl_c_before_a_cameras_first_frame_is_written_is_an_interrupt(tmp_path, checkpoint):
    # nothing to keep: the run stops as any interrupted run does (exit 130), and leaves no file
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            infer_video.cv2, "VideoCapture", functools.partial(FakeCamera, interrupt_after=1)
        )
        with pytest.raises(KeyboardInterrupt):
            infer_video.main(video_args(input=0, model=checkpoint, out_dir=out, batch=4))
    assert not out.exists() or list(out.iterdir()) == []


class ClockRateCamera(FakeCamera):
    """An IP camera that states its stream's 90 kHz clock, doubled, as its frame rate."""

    def get(self, prop):
        return 180000.0 if prop == cv2.CAP_PROP_FPS else super().get(prop)


def test_a_camera_stating_a_rate_mp4v_cannot_store_is_recorded_at_30_fps(
    tmp_path, checkpoint, caplog
):
    # OpenCV reports 90000 or 180000 FPS for some cameras; mp4v stores at most 65535, and the
    # recording failed with "the encoder refuses" though nothing was wrong with it
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video.cv2, "VideoCapture", ClockRateCamera)
        infer_video.main(video_args(input=0, model=checkpoint, out_dir=out, batch=1))
    (video,) = out.iterdir()
    assert cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FPS) == pytest.approx(30)
    assert "0 states 180000 FPS, no frame rate a video can have; writing at 30 FPS" in caplog.text


def test_camera_stopped_by_sigterm_says_so(tmp_path, checkpoint, caplog):
    # kill, a scheduler or a container stop: the video is kept, as with Ctrl-C, and named so
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utils, "_stopping", threading.Event())  # the handler acts once per process
        previous = signal.signal(signal.SIGTERM, utils._terminate)  # as run_script sets it
        try:
            camera = functools.partial(FakeCamera, signum=signal.SIGTERM)
            mp.setattr(infer_video.cv2, "VideoCapture", camera)
            infer_video.main(video_args(input=0, model=checkpoint, out_dir=out, batch=1))
        finally:
            signal.signal(signal.SIGTERM, previous)
    assert f"stopped by SIGTERM: {next(out.iterdir())} holds the first" in caplog.text


class SlowEncoding:
    """A Predictor stand-in whose drawing is slow, so the model waits in the writer's queue."""

    imgsz = (96, 72)

    def resize_batch(self, frames):
        return np.stack(frames)

    def predict_resized(self, batch, sizes):
        return [np.zeros(size, np.uint8) for size in sizes]

    def overlay(self, frame, mask, alpha, legend=False):
        time.sleep(0.02)
        return frame

    def model_fps(self):
        return 1.0


def test_ctrl_c_while_the_encoder_is_behind_reports_the_frames_written(tmp_path, caplog):
    out = tmp_path / "camera0.mp4"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video.cv2, "VideoCapture", lambda i: FakeCamera(i, interrupt_after=40))
        source = infer_video.open_video("0")
        stats = infer_video.segment_video(
            source,
            SlowEncoding(),
            out,
            Namespace(input="0", batch=4, show=False, alpha=0.5, legend=False),
        )
    written = int(cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT))
    assert stats["frames"] == written
    assert f"holds the first {written} frames" in caplog.text


def test_show_stops_on_q_and_keeps_the_frames_so_far(tmp_path, checkpoint, caplog):
    clip = write_clip(tmp_path / "clip.mp4")
    shown = []

    def fake_show(title, overlay, wait_ms):
        shown.append(overlay.shape)
        return len(shown) < 3  # "q" on the third frame

    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video, "check_inference_args", lambda args: None)  # no GUI here
        mp.setattr(infer_video, "show", fake_show)
        infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out, show=True, batch=1))
    assert shown == [(72, 96, 3)] * 3
    assert int(cv2.VideoCapture(str(out / "clip.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert "stopped by q, Esc" in caplog.text and "the first 3 of 13 frames" in caplog.text


def test_infer_image_show_stops_showing_on_q_and_segments_every_image(tmp_path, checkpoint):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in "abcd":
        Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(src / f"{name}.png")
    shown = []

    def fake_show(title, overlay, wait_ms):
        shown.append((overlay.shape, wait_ms))
        return len(shown) < 2  # "q" at the second image

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_image, "check_inference_args", lambda args: None)  # no GUI here
        mp.setattr(infer_image, "show", fake_show)
        infer_image.main(image_args(input=src, model=checkpoint, out_dir=out, show=True, batch=4))
    assert shown == [((30, 40, 3), 0)] * 2  # each image waits for a key
    assert len(list(out.glob("*_mask.png"))) == 4


def test_infer_image_show_leaves_the_wait_for_keys_out_of_the_images_per_second(
    tmp_path, checkpoint, capsys
):
    # The end-to-end rate counted the time the user took to press a key. On this clock reading
    # an image takes 1 s and each shown image waits 1000 s for a key.
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in "ab":
        Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(src / f"{name}.png")
    now = [0.0]

    def slow_read(path):
        now[0] += 1.0
        return read_image(path)

    def slow_show(title, overlay, wait_ms):
        now[0] += 1000.0
        return True

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_image, "check_inference_args", lambda args: None)  # no GUI here
        mp.setattr(infer_image, "time", SimpleNamespace(perf_counter=lambda: now[0]))
        mp.setattr(infer_image, "read_image", slow_read)
        mp.setattr(infer_image, "show", slow_show)
        infer_image.main(image_args(input=src, model=checkpoint, out_dir=out, show=True, batch=2))
    printed = capsys.readouterr().out
    assert "end to end: 1.00 images per second" in printed
    assert "the 2000.0 s --show waited for keys left out" in printed


def test_show_without_a_gui_build_is_a_clear_error(tmp_path, checkpoint):
    try:
        check_gui()
    except UserError:
        pass
    else:
        pytest.skip("this OpenCV can open windows")
    with pytest.raises(UserError, match="--show needs an OpenCV build with windows"):
        infer_image.main(image_args(input=tmp_path, model=checkpoint, show=True))


def test_short_batches_are_padded_for_a_compiled_model_without_changing_results(checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    images = [
        np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8) for i in range(3)
    ]
    expected = predictor.predict(images[:1])
    expected_two = predictor.predict(images[1:])
    predictor._compiled_batch = 0  # what compile=True sets, without paying for compilation
    seen, real = [], predictor.patch_logits

    def patch_logits(x):  # records the batch sizes the "compiled" graph is given
        seen.append(len(x))
        return real(x)

    predictor.patch_logits = patch_logits
    predictor.predict(images)  # "compiles" for batch 3
    padded = predictor.predict(images[:1])  # a short last batch: padded to 3, trimmed back
    assert len(padded) == 1 and (padded[0] == expected[0]).all()
    # two different images padded with a copy of the last: the masks are the first two
    two = predictor.predict(images[1:])
    assert len(two) == 2 and all((a == b).all() for a, b in zip(two, expected_two, strict=True))
    assert not (expected_two[0] == expected_two[1]).all(), (
        "the images must differ, or this proves nothing"
    )
    assert predictor._compiled_batch == 3
    assert seen == [3, 3, 3], "a short batch must reach the compiled graph padded, not recompile it"


def compiled_code(predictor: Predictor, x: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The predictor's network on ``x``, and the code Inductor generated for it (compiled now,
    whatever the cache holds).

    The graph is the one ``predictor.predict`` then runs for a batch of x's shape: x is copied
    into an inference tensor, as predict makes its input, since Dynamo guards on the difference
    and a plain tensor would leave predict to compile a second graph (25 s on 2 CPU cores).
    """
    from torch._inductor.utils import run_and_get_code

    with torch.inference_mode(), torch._inductor.config.patch(fx_graph_cache=False):
        out, code = run_and_get_code(predictor.patch_logits, x.clone())
    return out, "".join(code)


def test_a_compiled_predictor_freezes_the_weights_and_gives_the_eager_masks(checkpoint, predictor):
    eager = predictor
    compiled = Predictor.from_checkpoint(checkpoint, "cpu", compile=True)
    images = [
        np.random.default_rng(i).integers(0, 255, (66, 90, 3), dtype=np.uint8) for i in range(2)
    ]
    x = engine.to_model_input(np.stack([eager.resize(image) for image in images]), eager.device)
    got, code = compiled_code(compiled, x)
    assert "_frozen_param" in code, "on the CPU the weights should be constants of the graph"
    with torch.inference_mode():
        torch.testing.assert_close(got, eager.patch_logits(x))
    for got, expected in zip(compiled.predict(images), eager.predict(images), strict=True):
        assert (got == expected).all()


def test_a_network_that_fails_to_compile_says_to_drop_compile(checkpoint, monkeypatch):
    # Inductor's MPS backend, a prototype in torch 2.x, fails to build the Metal shaders of some
    # reductions, raising its own traceback at the first batch; running uncompiled is the fix
    def compile(function):
        def fails(x):
            error = SyntaxError("failed to compile\n    kernel void generated_kernel(")
            raise torch._inductor.exc.InductorError(error, None)

        return fails

    monkeypatch.setattr(torch, "compile", compile)
    predictor = Predictor.from_checkpoint(checkpoint, "cpu", compile=True)
    message = (
        r"^torch.compile could not compile the network for cpu \(SyntaxError: failed to "
        r"compile\): drop --compile \(or --int8, which compiles\)$"
    )
    with pytest.raises(UserError, match=message):
        predictor.predict(np.zeros((66, 90, 3), np.uint8))


needs_torch_2_11 = pytest.mark.skipif(
    torch_version() < INT8_MIN_TORCH, reason="--int8 needs torch 2.11 or later (torchao)"
)


@pytest.fixture(scope="module")
def int8_benchmark(checkpoint) -> SimpleNamespace:
    """One run of benchmarks/bench_inference.py --int8 on ``checkpoint`` at its size, batch 4,
    read by test_int8_quantizes_the_backbone_and_keeps_the_masks_close and
    test_benchmark_int8_rows_report_their_floor_and_mask_agreement; do not modify.

    Compiling an int8 ViT-S takes about 20 s on 2 CPU cores, and Inductor's cache skips graphs
    with frozen weights: the two tests share the benchmark's compilation. Attributes: ``out``
    (what it printed), ``predictor`` (its fast row's compiled int8 Predictor, whose graph takes
    (4, 3, 66, 90) uint8 batches) and ``code`` (what Inductor generated in the run).
    """
    from torch._inductor.utils import run_and_get_code

    bench = load_benchmark("bench_inference")
    predictors, rate = [], bench.matmul_rate

    def recorded(*args, **kwargs):
        predictors.append(Predictor(*args, **kwargs))
        return predictors[-1]

    def int8_rate(dtype, *args):
        # the float32 rate is timed by test_benchmark_script_runs_and_reports_the_ratios
        return rate(dtype, *args) if dtype == torch.int8 else 1e12

    argv = ["--model", str(checkpoint), "--frames", "4", "--reps", "1", "--video-size", "64",
            "48", "--device", "cpu", "--int8", "--batch", "4"]  # fmt: skip
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(bench, "Predictor", recorded)
        mp.setattr(bench, "matmul_rate", int8_rate)
        # compiled now, whatever the cache holds (as compiled_code)
        with torch._inductor.config.patch(fx_graph_cache=False):
            _, code = run_and_get_code(bench.main, bench.get_args_parser().parse_args(argv))
    (fast,) = [p for p in predictors if p._compiled_batch is not None]
    return SimpleNamespace(out=out.getvalue(), predictor=fast, code="".join(code))


@needs_torch_2_11
def test_int8_quantizes_the_backbone_and_keeps_the_masks_close(
    checkpoint, predictor, int8_benchmark
):
    fp32 = predictor
    loaded = Predictor.from_checkpoint(checkpoint, "cpu", int8=True)
    linears = [m for m in loaded.model.backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m.weight) is not torch.nn.Parameter for m in linears), (
        "the backbone's linear layers should hold int8 weights"
    )
    assert loaded._compiled_batch == 0, "int8 is only fast compiled"
    # The compiled graph checked below is the benchmark's (int8_benchmark), of the same
    # checkpoint quantized the same way: the same int8 weights as from_checkpoint's.
    int8 = int8_benchmark.predictor
    ran = [m for m in int8.model.backbone.modules() if isinstance(m, torch.nn.Linear)]
    pairs = zip(linears, ran, strict=True)
    assert all(torch.equal(a.weight.dequantize(), b.weight.dequantize()) for a, b in pairs)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (66, 90, 3), dtype=np.uint8) for _ in range(4)]
    x = engine.to_model_input(np.stack([fp32.resize(image) for image in images]), fp32.device)
    assert "_int_mm" in int8_benchmark.code, (
        "int8 is only fast compiled, with int8 matrix multiplies"
    )
    with torch.inference_mode():
        got = int8.patch_logits(x.clone())  # an inference tensor, as the graph was compiled for
        expected = fp32.patch_logits(x)
    assert not torch.equal(got, expected), "int8 should change the logits a little"
    # about 0.6% of the largest logit here; 4-bit weights would be 10 times further off
    torch.testing.assert_close(got, expected, atol=0.02 * expected.abs().max().item(), rtol=0)
    masks = zip(int8.predict(images), fp32.predict(images), strict=True)
    agree = np.mean([(a == b).mean() for a, b in masks])
    assert agree >= 0.995, agree


def test_the_scripts_pass_int8_and_compile_on_to_the_predictor(checkpoint, monkeypatch):
    asked = []
    # no model: nothing to size
    loaded = SimpleNamespace(model=SimpleNamespace(backbone=None), imgsz=None, tta=None)
    monkeypatch.setattr(Predictor, "from_checkpoint", lambda *a, **kw: asked.append(kw) or loaded)
    monkeypatch.setattr(engine, "check_size_fits", lambda *a, **kw: None)
    monkeypatch.setattr(engine, "int8_quantizer", lambda: None)  # torchao itself not needed
    cpu = torch.device("cpu")
    for flags in ({"int8": True}, {"compile": True}, {}):
        engine.predictor_from_args(image_args(input=".", model=checkpoint, **flags), cpu)
    passed = [(kw["int8"], kw["compile"]) for kw in asked]
    assert passed == [(True, False), (False, True), (False, False)]


@needs_torch_2_11
def test_a_missing_compiler_or_torchao_is_reported_before_the_model_loads(checkpoint, monkeypatch):
    monkeypatch.setattr(Predictor, "from_checkpoint", no_model)
    # Inductor's own patch, not monkeypatch: its undo deleted the option from Inductor's config,
    # and every later compile in the session failed ("config.cpp.cxx does not exist")
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent-cxx",)}):
        for flag in ("compile", "int8"):
            args = image_args(input=".", model=checkpoint, **{flag: True})
            with pytest.raises(UserError, match=f"--{flag} compiles C.. kernels on the CPU"):
                engine.predictor_from_args(args, torch.device("cpu"))
    with monkeypatch.context() as mp:  # Triton's C launcher, on CUDA
        mp.delenv("CC", raising=False)
        mp.setattr(utils.shutil, "which", lambda name: None)
        args = image_args(input=".", model=checkpoint, compile=True)
        with pytest.raises(UserError, match="--compile on CUDA needs a C compiler"):
            engine.predictor_from_args(args, torch.device("cuda"))
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    args = image_args(input=".", model=checkpoint, int8=True)
    with pytest.raises(UserError, match="--int8 needs torchao, which did not load"):
        engine.predictor_from_args(args, torch.device("cpu"))
    monkeypatch.setattr("model.torch_version", lambda: (2, 4))  # torchao's int8 needs newer
    floor = ".".join(map(str, INT8_MIN_TORCH))
    with pytest.raises(UserError, match=rf"--int8 needs torch {floor} or later \(torchao\); this"):
        engine.predictor_from_args(args, torch.device("cpu"))


def test_triton_on_windows_finds_its_own_compiler(monkeypatch):
    # triton-windows builds its launcher with Visual Studio's compiler or the TinyCC it bundles,
    # neither on PATH: --compile on CUDA was refused there for want of gcc or clang
    build = pytest.importorskip("triton.runtime.build")
    monkeypatch.setattr(utils.sys, "platform", "win32")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(utils.shutil, "which", lambda name: None)
    bundled = r"C:\venv\Lib\site-packages\triton\runtime\tcc\tcc.exe"
    monkeypatch.setattr(build, "get_cc", lambda: bundled, raising=False)
    utils.check_compiler("--compile", torch.device("cuda"))

    def none_found():
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    monkeypatch.setattr(build, "get_cc", none_found)
    with pytest.raises(UserError, match=r"--compile on CUDA needs a C compiler.*Failed to find"):
        utils.check_compiler("--compile", torch.device("cuda"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"int8": True, "amp": "bf16", "device": "cpu"}, "--int8 replaces --amp bf16"),
        ({"int8": True, "tta": True}, "--int8 runs a compiled model"),
    ],
)
def test_int8_flag_conflicts_are_refused_before_the_model_loads(
    tmp_path, checkpoint, monkeypatch, flags, message
):
    monkeypatch.setattr(infer_image, "predictor_from_args", no_model)
    with pytest.raises(UserError, match=message):
        infer_image.main(image_args(input=tmp_path, model=checkpoint, **flags))


@pytest.mark.parametrize(
    ("machine", "capabilities", "warned"),
    [("x86_64", {"avx2": True, "avx512_f": True}, True), ("x86_64", {"avx512_vnni": True}, False),
     ("AMD64", {"avx_vnni": True}, False), ("x86_64", {"amx_int8": True}, False),
     ("arm64", {"neon": True}, True)],
)  # fmt: skip
def test_int8_on_a_cpu_without_int8_dot_products_warns(
    monkeypatch, caplog, machine, capabilities, warned
):
    monkeypatch.setattr(utils.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities, raising=False)
    with caplog.at_level("WARNING", logger="dinoseg"):
        utils.check_int8_cpu()
    assert ("no int8 dot-product instructions" in caplog.text) is warned


def test_a_predictor_quantizes_only_a_float32_model_to_int8(checkpoint):
    # Predictor's own contract, for callers that skip the scripts' flag checks
    with pytest.raises(ValueError, match="int8 quantization is for float32 models on the CPU"):
        Predictor.from_checkpoint(checkpoint, "cpu", amp="bf16", int8=True)


def test_int8_on_a_gpu_is_refused_before_the_model_loads(checkpoint, monkeypatch):
    monkeypatch.setattr(Predictor, "from_checkpoint", no_model)
    args = image_args(input=".", model=checkpoint, int8=True)
    with pytest.raises(UserError, match="--int8 is a CPU fast path; this run uses cuda"):
        engine.predictor_from_args(args, torch.device("cuda"))


def test_int8_on_mps_suggests_only_the_precision_mps_has(checkpoint, monkeypatch):
    # --amp bf16 is refused on MPS: suggesting it sent the user from one refusal to another
    monkeypatch.setattr(Predictor, "from_checkpoint", no_model)
    args = image_args(input=".", model=checkpoint, int8=True)
    with pytest.raises(UserError, match=r"uses mps: use --amp fp16 there, or --device cpu$"):
        engine.predictor_from_args(args, torch.device("mps"))


def test_benchmark_script_runs_and_reports_the_ratios():
    cmd = [sys.executable, "benchmarks/bench_inference.py", "--imgsz", "56", "56", "--frames", "3",
           "--reps", "1", "--video-size", "64", "48", "--device", "cpu", "--onnx"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for text in ("model dinov2_vits14 via timm, random weights", "FLOP floor",
                 "naive (fp32, batch 1, eager)", "end to end: fast / naive =",
                 "I/O only (no model)", "model time / FLOP floor =", "ORT fp32, all graph opts",
                 "batch-1 latency, fast (fp32, batch 1): "):  # fmt: skip
        assert text in proc.stdout
    # an onnxruntime without ConvInteger for int8 weights (before 1.24) leaves its row out
    if ORT_RUNS_INT8:
        assert "ORT int8 dynamic quant" in proc.stdout
    else:
        assert "ORT int8" not in proc.stdout, proc.stdout
        assert "cannot run the int8 graph" in proc.stderr, proc.stderr


def fixed_matmul_rate(monkeypatch, bench) -> None:
    """bench_inference's matmul rates, fixed at 1 TFLOP/s: timing its products takes 10 to 20 s
    on 2 CPU cores, for tests of other parts of its main (the float32 rate and floor are timed
    by test_benchmark_script_runs_and_reports_the_ratios, the int8 rate by int8_benchmark)."""
    monkeypatch.setattr(bench, "matmul_rate", lambda dtype, device, dim, tokens: 1e12)


def test_benchmark_latency_gives_the_network_share_of_the_calls_it_times(checkpoint, monkeypatch):
    # "X ms per predict() call, Y ms of it the network": Y was the best of other runs, of the
    # network alone, so on a busy machine it came out larger than X. On this clock the network
    # takes 1 s of each call and the rest of predict 100 s.
    bench = load_benchmark("bench_inference")
    predictor = Predictor.from_checkpoint(checkpoint, torch.device("cpu"))
    frame = np.zeros((48, 64, 3), np.uint8)
    predictor.predict(frame)  # warm, as the benchmark's predictors are
    now = [0.0]
    clock = SimpleNamespace(perf_counter=lambda: now[0])
    monkeypatch.setattr(engine, "time", clock)
    monkeypatch.setattr(bench, "time", clock)
    real_network, real_masks = predictor.patch_logits, predictor._masks

    def network(x):
        now[0] += 1.0
        return real_network(x)

    def masks(*args):
        now[0] += 100.0
        return real_masks(*args)

    monkeypatch.setattr(predictor, "patch_logits", network)
    monkeypatch.setattr(predictor, "_masks", masks)
    assert bench.predict_latency(predictor, frame, 3) == (101.0, 1.0)


def test_benchmark_of_a_checkpoint_draws_and_exports_the_checkpoints_classes(tmp_path, monkeypatch):
    # --model of 3 classes: the overlays (every Predictor) and the ONNX metadata took the
    # default 2 classes, whatever the checkpoint held
    import onnx

    import export

    three = ClassConfig(
        names=("background", "person", "car"),
        mask_colors=((0, 0, 0), (0, 255, 0), (255, 0, 0)),
        vis_colors=((0, 0, 0), (0, 200, 0), (200, 0, 0)),
    )
    backbone = load_backbone("dinov2_vits14", "timm", "random", layers=1)
    ckpt = tmp_path / "three.pth"
    save_checkpoint(ckpt, Segmentor(backbone, 3), classes=three.to_dict(), imgsz=[28, 28])
    drawn, exported = [], []
    real_init = Predictor.__init__

    def init(self, model, classes, *args, **kwargs):
        drawn.append(classes)
        real_init(self, model, classes, *args, **kwargs)

    def export_onnx(model, meta, imgsz, path, *args, **kwargs):
        # Tracing the model (5 s on 2 CPU cores) is what test_benchmark_script_runs_and_reports_
        # the_ratios runs for real; here a graph of the same contract stands in: uint8 images
        # -> 3 logits per 14x14 patch (the mean of each colour), which the ORT rows then run.
        exported.append(meta["classes"])
        assert model.head.classifier.out_channels == 3 and tuple(imgsz) == (28, 28)
        make = onnx.helper
        nodes = [make.make_node("Cast", ["images"], ["x"], to=onnx.TensorProto.FLOAT),
                 make.make_node("AveragePool", ["x"], ["logits"], kernel_shape=[14, 14],
                                strides=[14, 14])]  # fmt: skip
        graph = make.make_graph(
            nodes,
            "patch_means",
            [make.make_tensor_value_info("images", onnx.TensorProto.UINT8, ["B", 3, 28, 28])],
            [make.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["B", 3, 2, 2])],
        )
        onnx.save(make.make_model(graph, opset_imports=[make.make_opsetid("", 17)]), str(path))

    monkeypatch.setattr(Predictor, "__init__", init)
    monkeypatch.setattr(export, "export", export_onnx)
    bench = load_benchmark("bench_inference")
    fixed_matmul_rate(monkeypatch, bench)
    argv = ["--model", str(ckpt), "--frames", "1", "--reps", "1", "--video-size", "32", "24",
            "--device", "cpu", "--onnx"]  # fmt: skip
    bench.main(bench.get_args_parser().parse_args(argv))
    assert drawn and all(classes == three for classes in drawn), drawn
    assert exported == [three.to_dict()], exported


def test_benchmark_rows_peak_memory_holds_their_own_model_alone(monkeypatch):
    # The fast model was built before the naive row ran, and the naive one kept through the
    # fast row: each row's peak memory held both models' weights (on CUDA too, where both sat
    # on the GPU; a bf16 ViT-g copy is 2.2 GB)
    import gc

    from model import Segmentor

    bench = load_benchmark("bench_inference")
    alive = []

    def segmentors() -> list:
        # type(), not isinstance: the latter reads __class__, which deprecated modules' proxies
        # among gc's objects answer with a warning
        gc.collect()
        return [m for m in gc.get_objects() if issubclass(type(m), Segmentor)]

    # the models of earlier tests in this process (a fixture's, a cache's) are not the rows';
    # held here, so that no new model takes the id of one freed meanwhile
    earlier = segmentors()
    earlier_ids = {id(m) for m in earlier}

    def peak_memory_mb(device):
        models = [m for m in segmentors() if id(m) not in earlier_ids]
        alive.append(sorted(str(m.dtype) for m in models))
        return 0.0

    monkeypatch.setattr(bench, "peak_memory_mb", peak_memory_mb)
    fixed_matmul_rate(monkeypatch, bench)
    argv = ["--imgsz", "28", "28", "--frames", "1", "--reps", "1", "--video-size", "32", "24",
            "--device", "cpu", "--amp", "bf16"]  # fmt: skip
    bench.main(bench.get_args_parser().parse_args(argv))
    assert alive == [["torch.float32"], ["torch.bfloat16"]], alive


def test_benchmark_onnx_rows_run_after_the_rows_whose_peak_memory_they_would_raise(monkeypatch):
    """On the CPU the peak memory is the process's high-water mark: the ONNX export and its
    sessions ran first, so with --onnx the naive and fast rows showed theirs (982 -> 1354 MB at
    56x56), under a note that the naive row ran first."""
    bench = load_benchmark("bench_inference")
    order, exported = [], []

    def peak_memory_mb(device):
        order.append("row")
        return 0.0

    def onnx_rows(base, classes, imgsz, frames, folder, reps):
        order.append("onnx")
        exported.append(base)
        return []

    monkeypatch.setattr(bench, "peak_memory_mb", peak_memory_mb)
    monkeypatch.setattr(bench, "onnx_rows", onnx_rows)
    fixed_matmul_rate(monkeypatch, bench)
    argv = ["--imgsz", "28", "28", "--frames", "1", "--reps", "1", "--video-size", "32", "24",
            "--device", "cpu", "--amp", "bf16", "--onnx"]  # fmt: skip
    bench.main(bench.get_args_parser().parse_args(argv))
    assert order == ["row", "row", "onnx"]
    # the fp32 model of the naive row, rebuilt: the fast row's is bf16
    torch.manual_seed(0)
    naive, _, _ = bench.bench_model(bench.get_args_parser().parse_args(argv), torch.device("cpu"))
    (model,) = exported
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    pairs = zip(model.state_dict().values(), naive.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


@needs_torch_2_11
def test_benchmark_int8_rows_report_their_floor_and_mask_agreement(int8_benchmark):
    # In the test's process: test_benchmark_script_runs_and_reports_the_ratios runs the script
    # itself, and a second interpreter would import torch and start Inductor's compile workers
    # anew for this compilation.
    out = int8_benchmark.out
    assert "fast (int8, batch 4, compiled)" in out
    floor = re.search(r"\(int8\) -> FLOP floor ([\d.]+) ms per frame \(([\d.]+) GFLOPs", out)
    assert floor and float(floor[1]) > 0 and float(floor[2]) > 0, out
    agree = re.search(r"masks equal to the naive fp32 ones: ([\d.]+)% of the pixels of 4", out)
    assert agree and 95 <= float(agree[1]) <= 100, out


# --- later additions -----------------------------------------------------------------------


def mjpg_avi_bytes(path, frames=12) -> bytes:
    """The bytes of an MJPG .avi of ``frames`` random 64x48 frames at 10 FPS, written at
    ``path``."""
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        video.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    video.release()
    return path.read_bytes()


def truncated_avi(path, frames=12, keep=0.5):
    """An MJPG .avi whose header declares ``frames`` but whose end (index and later frames) is
    cut off. Returns (path, frames OpenCV decodes from it)."""
    data = mjpg_avi_bytes(path.with_name("full.avi"), frames)
    path.write_bytes(data[: int(len(data) * keep)])
    capture = cv2.VideoCapture(str(path))
    declared, decoded = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0
    while capture.read()[0]:
        decoded += 1
    capture.release()
    assert declared == frames and 0 < decoded < frames, (declared, decoded)  # the premise
    return path, decoded


def test_truncated_video_is_written_with_a_warning(tmp_path, checkpoint, caplog):
    clip, decoded = truncated_avi(tmp_path / "input.avi")
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out, batch=4))
    written = cv2.VideoCapture(str(out / "input.mp4"))
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == decoded
    assert (
        f"{clip} declares 12 frames but only {decoded} could be decoded; "
        f"the output holds those {decoded}" in caplog.text
    )


def test_whole_videos_and_early_stops_give_no_frame_count_warning(caplog):
    infer_video.check_frame_count("a.mp4", 13, 13)
    infer_video.check_frame_count("camera0", None, 40)
    assert "declares" not in caplog.text
    infer_video.check_frame_count("b.mkv", 10, 11)
    assert "b.mkv declares 10 frames but 11 were decoded" in caplog.text


@pytest.mark.skipif(not hasattr(os, "pathconf"), reason="POSIX: NAME_MAX in bytes")
def test_a_video_whose_output_name_is_too_long_fails_before_the_model_loads(tmp_path, checkpoint):
    # a name 2 bytes short of the limit, without an extension: valid, but "<name>.mp4" is not
    # (it ended in a traceback)
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    clip = write_clip(tmp_path / "clip.mp4", frames=2).rename(tmp_path / ("v" * (limit - 2)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video, "predictor_from_args", no_model)
        with pytest.raises(
            UserError, match=rf"longer than the {limit} bytes .* allows; rename the input"
        ):
            infer_video.main(video_args(input=clip, model=checkpoint, out_dir=tmp_path / "out"))


@pytest.mark.parametrize("below", ["file", "proc"])
def test_unwritable_video_out_dir_fails_before_the_model_loads(tmp_path, checkpoint, below):
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    (tmp_path / "file.txt").write_text("a regular file")
    out = tmp_path / "file.txt" / "out" if below == "file" else "/proc/dinoseg-out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video, "predictor_from_args", no_model)
        with pytest.raises(UserError, match=r"--out-dir .*out is not writable"):
            infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))


def test_cache_benchmark_refuses_a_single_epoch():
    cmd = [sys.executable, "benchmarks/bench_cache.py", "--epochs", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "--epochs must be at least 2, not 1" in proc.stderr


# train.py named the empty split of a temporary dataset, or printed its own usage
@pytest.mark.parametrize("flags", [["--train", "0"], ["--valid", "0"], ["--device", "gpu"]])
def test_cache_benchmark_refuses_bad_values_itself(flags, capsys):
    bench = load_benchmark("bench_cache")
    with pytest.raises((UserError, SystemExit)) as caught:
        bench.main(bench.get_args_parser().parse_args(flags))
    if caught.type is SystemExit:  # argparse's choices
        assert caught.value.code == 2 and "invalid choice: 'gpu'" in capsys.readouterr().err
    else:
        assert f"{flags[0]} must be at least 1" in str(caught.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--imgsz", "13", "13"], r"--imgsz must be at least 14 14"),
        (["--device", "mps"], r"--device mps was asked for"),
    ],
)
def test_cache_benchmark_refuses_a_size_or_device_before_generating_anything(
    flags, message, monkeypatch
):
    """Both were train.py's, after the dataset and the weights were generated: its stderr, and
    exit code 1."""
    bench = load_benchmark("bench_cache")
    monkeypatch.setattr(bench, "make_dataset", None)  # generating would call it
    with pytest.raises(UserError, match=message):
        bench.main(bench.get_args_parser().parse_args(flags))


@pytest.mark.parametrize("tta", [[], ["--tta", "--tta-scales", "1", "2"]], ids=["plain", "tta"])
def test_an_imgsz_that_cannot_fit_in_memory_is_refused_before_any_input(
    tmp_path, checkpoint, tiny_data, monkeypatch, tta
):
    """--imgsz 10000 10000 on the CPU: the process was killed outright (SIGKILL), without a word.
    With --tta its largest view counts: 5000 at scale 2 is 10000."""
    size = "5000" if tta else "10000"
    out = tmp_path / "out"
    argv = ["--input", str(tiny_data / "valid_images"), "--model", str(checkpoint),
            "--out-dir", str(out), "--imgsz", size, size, *tta]  # fmt: skip
    with pytest.MonkeyPatch.context() as refusing, pytest.raises(UserError) as caught:
        small_memory(refusing, 16)
        infer_image.main(infer_image.get_args_parser().parse_args(argv))
    view = "its --tta-scales 2 view 10000x10000: " if tta else ""
    assert re.fullmatch(
        rf"--imgsz {size} {size} \({view}714x714 patches through dinov2_vits14\) at 4 images a "
        r"batch needs at least \d+\.\d GB of memory, and this machine has 16\.0 GB free: lower "
        r"--batch or --imgsz(, or the largest of --tta-scales)?",
        str(caught.value),
    ), str(caught.value)
    assert not out.exists()
    # the same 16 GB take the sizes that fit: the checkpoint's, and the default's at --batch 4
    monkeypatch.setattr(utils, "free_memory", lambda device: 16 * 2**30)
    infer_image.main(infer_image.get_args_parser().parse_args(argv[:6]))
    assert len(list(out.glob("*_mask.png"))) == len(list((tiny_data / "valid_images").iterdir()))
    check_size_fits("dinov2_vitg14", (640, 640), 4, torch.device("cpu"))


def test_cache_benchmark_names_its_own_flags_for_a_batch_of_one_patch(monkeypatch):
    """train.py refused, after the dataset and the weights were generated, and its advice
    named --batch, which bench_cache.py does not have."""
    bench = load_benchmark("bench_cache")
    monkeypatch.setattr(bench, "make_dataset", None)  # generating would call it
    parser = bench.get_args_parser()
    with pytest.raises(UserError) as caught:
        bench.main(parser.parse_args(["--train", "1", "--imgsz", "14", "14"]))
    assert "use --train 2 or more, or an --imgsz of at least 21 21" in str(caught.value)
    named = set(re.findall(r"--[a-z][a-z-]*", str(caught.value)))
    assert named <= {action.option_strings[0] for action in parser._actions}, named


def test_cache_benchmark_refuses_a_size_that_cannot_fit_naming_only_its_flags(monkeypatch):
    """train.py refused it after the dataset and the weights were generated, advising its
    --batch and --accum, neither of which bench_cache.py has."""
    small_memory(monkeypatch, 16)
    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_cache.py"])
    bench = load_benchmark("bench_cache")
    monkeypatch.setattr(bench, "make_dataset", None)  # generating would call it
    with pytest.raises(UserError) as caught:
        bench.main(bench.get_args_parser().parse_args(["--imgsz", "10000", "10000"]))
    assert re.fullmatch(
        r"--imgsz 10000 10000 .* at 8 images a batch needs .*: lower --imgsz", str(caught.value)
    )


def test_video_without_decodable_frames_fails_and_writes_nothing(tmp_path, checkpoint):
    data = mjpg_avi_bytes(tmp_path / "full.avi", frames=6)
    clip = tmp_path / "headers.avi"
    clip.write_bytes(data[: data.index(b"movi") + 4])  # the headers, not one frame's data
    capture = cv2.VideoCapture(str(clip))
    # the premise: OpenCV opens it and believes the header, but decodes nothing
    assert capture.isOpened() and capture.get(cv2.CAP_PROP_FRAME_COUNT) == 6
    assert not capture.read()[0]
    capture.release()
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"--input .*headers\.avi has no frames OpenCV can decode"):
        infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))
    assert not out.exists(), "neither a video, a temporary file nor its folder may remain"


def scene_clip(path, frames=6, size=(96, 72)) -> Path:
    """An mp4 of synthetic scenes (a person blob on noise), as the checkpoint was trained on."""
    rng = np.random.default_rng(4)
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for _ in range(frames):
        image, _ = make_sample(rng, *size)
        video.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    video.release()
    return path


def read_rgb_frames(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            capture.release()
            return frames
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_video_frames_are_the_predictors_overlays(tmp_path, checkpoint, predictor):
    clip = scene_clip(tmp_path / "scenes.mp4")
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out, batch=4, alpha=0.5))
    inputs, written = read_rgb_frames(clip), read_rgb_frames(out / "scenes.mp4")
    assert len(written) == len(inputs) == 6
    for frame, result in zip(inputs, written, strict=True):
        mask = predictor.predict(frame)
        expected = predictor.overlay(frame, mask, alpha=0.5)
        person = mask == 1
        assert person.mean() > 0.02, "the frame must hold person pixels, or this proves nothing"
        # mp4v is lossy: the written frame must be far closer to the overlay than the overlay
        # is to the raw frame, where the colours were drawn
        error = np.abs(result.astype(np.int16) - expected)[person].mean()
        drawn = np.abs(expected.astype(np.int16) - frame)[person].mean()
        assert error < drawn / 4, (error, drawn)


class InterruptedFile:
    """cv2.VideoCapture of a file that interrupts the main thread after ``after`` frames, as
    Ctrl-C would (see ctrl_c_due)."""

    real = cv2.VideoCapture  # kept before the test replaces it

    def __init__(self, spec, after=5):
        self.capture, self.frames, self.after = self.real(spec), 0, after

    def read(self):
        self.frames += 1
        if ctrl_c_due(self.frames, self.after):
            _thread.interrupt_main()
        return self.capture.read()

    def __getattr__(self, name):
        return getattr(self.capture, name)


def test_ctrl_c_on_a_video_file_writes_nothing(tmp_path, checkpoint):
    clip = write_clip(tmp_path / "clip.mp4", frames=50)  # room to press Ctrl-C again
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video.cv2, "VideoCapture", InterruptedFile)
        with pytest.raises(KeyboardInterrupt):  # run_script turns it into exit code 130
            infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out, batch=1))
    assert not out.exists(), "neither a partial video nor its folder may remain"


def test_infer_image_stopped_midway_leaves_no_thread_behind(tmp_path, checkpoint, monkeypatch):
    # The reading thread (polling for room in its queue) and the writer's thread lived on
    # after a Ctrl-C or an error, for as long as the traceback was kept
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(src / f"{i}.png")
    predict, calls = Predictor.predict_resized, []

    def predict_then_interrupt(self, *args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return predict(self, *args)

    monkeypatch.setattr(Predictor, "predict_resized", predict_then_interrupt)
    before = set(threading.enumerate())
    with pytest.raises(KeyboardInterrupt) as interrupt:
        infer_image.main(image_args(input=src, model=checkpoint, out_dir=tmp_path / "out", batch=1))
    assert interrupt.value.__traceback__ is not None  # main's frame, and its locals, are kept
    assert set(threading.enumerate()) <= before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0_mask.png", "0_overlay.jpg"]


def test_infer_image_names_every_unreadable_file_and_exits_2(tmp_path, checkpoint):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a.png", "c.png", "e.jpg"):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(src / name)
    for name in ("b_broken.jpg", "d_broken.png"):
        (src / name).write_bytes(b"not an image")
    # batches of 2 readable images: [a, b_broken, c], [d_broken, e]; a failure in each batch
    cmd = [sys.executable, "infer_image.py", "--input", str(src), "--model", str(checkpoint),
           "--out-dir", str(out), "--batch", "2", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: 2 of 5 image(s) could not be read:" in proc.stderr
    assert "b_broken.jpg" in proc.stderr and "d_broken.png" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        f"{stem}_{kind}" for stem in "ace" for kind in ("mask.png", "overlay.jpg")
    ]


def test_output_names_of_a_symlink_that_shares_a_stem(tmp_path):
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "b").mkdir()
    (tmp_path / "elsewhere").mkdir()
    for path in (tmp_path / "in" / "a" / "x.png", tmp_path / "elsewhere" / "photo.png"):
        Image.new("RGB", (4, 3)).save(path)
    (tmp_path / "in" / "b" / "x.png").symlink_to(tmp_path / "elsewhere" / "photo.png")
    paths = infer_image.find_images(f"{tmp_path}/in/**/*.png")
    assert sorted(infer_image.output_names(paths).values()) == ["a/x", "b/x"]


def test_output_names_that_differ_only_in_case_stay_apart():
    # on macOS and Windows Photo_mask.png and photo_mask.png are one file
    paths = [Path("/p/Photo.jpg"), Path("/p/photo.png"), Path("/p/a/X.jpg"), Path("/p/b/x.jpg")]
    names = infer_image.output_names(paths)
    assert len({name.casefold() for name in names.values()}) == 4, names
    paths = [Path("/p/x.JPG"), Path("/p/X.jpg"), Path("/p/x_JPG.png")]
    names = infer_image.output_names(paths)
    assert len({name.casefold() for name in names.values()}) == 3, names


def test_output_names_never_repeat():
    paths = [Path("/p/x.jpg"), Path("/p/x.png"), Path("/p/x_png.bmp"), Path("/p/x_png_2.png")]
    names = infer_image.output_names(paths)
    assert len(set(names.values())) == 4, names
    assert names[Path("/p/x_png_2.png")] == "x_png_2"  # a file's own stem stays its name


def test_reruns_into_the_input_folder_do_not_read_their_own_outputs(tmp_path):
    (tmp_path / "photo.jpg").mkdir()  # a folder with an image's name is no image
    for name in ("a.png", "a_mask.png", "a_overlay.jpg", "b_mask.png"):
        Image.new("RGB", (4, 3)).save(tmp_path / name)
    (tmp_path / "._a.png").write_bytes(bytes(64))  # macOS's metadata beside a copied file
    found = infer_image.find_images(str(tmp_path), out_dir=tmp_path)
    assert [p.name for p in found] == ["a.png"]
    # elsewhere, a file named like an output is an input like any other
    found = infer_image.find_images(str(tmp_path), out_dir=tmp_path / "out")
    assert [p.name for p in found] == ["a.png", "a_mask.png", "a_overlay.jpg", "b_mask.png"]
    with pytest.raises(UserError, match="no images found"):  # the folder photo.jpg is none
        infer_image.find_images(f"{tmp_path}/*.jpg", out_dir=tmp_path)


def test_results_next_to_the_photos_never_replace_a_label_mask_beside_them(tmp_path, checkpoint):
    # A Roboflow export keeps each image beside its NAME_mask.png of class ids: results written
    # next to the photos replaced those labels with predictions. An earlier run writes a mask
    # and its overlay together, so a mask or overlay alone there is no earlier result.
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(tmp_path / name)
    label = np.zeros((30, 40), np.uint8)
    label[5:20, 5:25] = 1
    Image.fromarray(label).save(tmp_path / "b_mask.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "c_overlay.jpg")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = image_args(input=tmp_path, model=checkpoint, out_dir=tmp_path)
    with pytest.raises(UserError, match=r"b_mask\.png, c_overlay\.jpg.*choose another --out-dir"):
        infer_image.main(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (np.asarray(Image.open(tmp_path / "b_mask.png")) == label).all()
    # without them, results next to the photos are written, and written again by a rerun
    (tmp_path / "b_mask.png").unlink()
    (tmp_path / "c_overlay.jpg").unlink()
    infer_image.main(args)
    infer_image.main(args)
    assert len(list(tmp_path.glob("*_mask.png"))) == len(list(tmp_path.glob("*_overlay.jpg"))) == 3


@needs_mount_namespace
def test_out_dir_and_resume_folders_are_compared_as_folders_not_as_paths(tmp_path):
    """On macOS --out-dir Results is the folder results: a rerun segmented its own results
    there, and train.py took a run resumed from Outputs/ into outputs/ for one moved elsewhere.
    A bind mount shows the folder under a second name, as a case-insensitive disk does."""
    out, alias, other = tmp_path / "results", tmp_path / "Results", tmp_path / "other"
    for folder in (out, alias, other):
        folder.mkdir()
    check = (
        "import sys; from pathlib import Path; from infer_image import is_output; "
        "from utils import same_folder; out, alias, other = map(Path, sys.argv[1:]); "
        "print(is_output(alias / 'a_mask.png', out), same_folder(out, alias), "
        "is_output(other / 'a_mask.png', out), same_folder(out, other))"
    )
    proc = run_bind_mounted(out, alias, sys.executable, "-c", check, out, alias, other)
    assert proc.stdout.split() == ["True", "True", "False", "False"], proc.stderr


def test_images_whose_results_cannot_be_written_are_named_and_the_rest_go_on(
    tmp_path, checkpoint, capsys
):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    long_stem = "写真" * 39  # 234 bytes: its outputs' names fit in 255 bytes, barely
    Image.new("RGB", (65600, 2), (90, 90, 90)).save(src / "a_panorama.png")  # JPEG's limit: 65500
    for stem in ("b", long_stem, "c"):
        Image.new("RGB", (30, 20), (90, 90, 90)).save(src / f"{stem}.png")
    written = r"1 of 4 image\(s\) could not be written:\n.*a_panorama.*JPEG.*65500 pixels a side"
    with pytest.raises(UserError, match=written):
        infer_image.main(image_args(input=src, model=checkpoint, out_dir=out, batch=1))
    assert f"Segmented 3 image(s) into {out}" in capsys.readouterr().out  # not the panorama
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}_{kind}" for stem in ("b", long_stem, "c") for kind in ("mask.png", "overlay.jpg")
    ), "the panorama leaves neither a mask nor an overlay, nor a temporary file"


def test_video_into_its_own_folder_refuses_to_replace_the_input(tmp_path, checkpoint):
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    before = clip.read_bytes()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video, "predictor_from_args", no_model)
        with pytest.raises(UserError, match="is the file the output would replace"):
            infer_video.main(video_args(input=clip, model=checkpoint, out_dir=tmp_path))
    assert clip.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


@pytest.mark.parametrize("fps", [66.667, 70.007, 30000 / 1001, 120.3456])
def test_mp4v_rate_is_one_the_encoder_accepts(tmp_path, fps):
    rate = infer_video.mp4v_rate(fps)
    assert abs(rate - fps) < 0.01
    video = cv2.VideoWriter(
        str(tmp_path / "x.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), rate, (32, 24)
    )
    assert video.isOpened(), rate
    video.release()


def test_a_high_speed_rate_whose_tenths_mp4v_cannot_store_is_written_whole(tmp_path):
    # 300001/10 FPS reduces to a time base of 300001 ticks, past mp4v's 65535
    assert infer_video.mp4v_rate(30000.1) == 30000.0
    video = cv2.VideoWriter(
        str(tmp_path / "x.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30000.0, (32, 24)
    )
    assert video.isOpened()
    video.release()


@pytest.mark.parametrize(
    ("size", "named"),
    [((96, 72), "96x72"), ((97, 72), "98x72 (the 97x72 input padded to even sides)")],
)
def test_an_opencv_that_cannot_write_mp4v_is_named_and_leaves_nothing(
    tmp_path, checkpoint, size, named
):
    # an OpenCV built without FFmpeg, or whose encoder refuses the size or rate; the size named
    # is the one it was given
    class ClosedWriter:
        def __init__(self, *args):
            pass

        def isOpened(self):
            return False

        def release(self):
            pass

    if size[0] % 2:  # OpenCV writes no videos of odd sizes, but reads a GIF of one
        clip = tmp_path / "clip.gif"
        images = [Image.new("RGB", size, (9 * i, 0, 0)) for i in range(2)]
        images[0].save(clip, save_all=True, append_images=images[1:], duration=100)
    else:
        clip = write_clip(tmp_path / "clip.mp4", frames=2, size=size)
    out = tmp_path / "out"
    refuses = rf"refuses {re.escape(named)} at [0-9.]+ FPS \(or this OpenCV has none\)"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video.cv2, "VideoWriter", ClosedWriter)
        with pytest.raises(UserError, match=r"cannot write .*clip.mp4: OpenCV's mp4v encoder "
                           + refuses):  # fmt: skip
            infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))
    assert not out.exists()


def test_a_writer_that_does_not_open_releases_the_input(tmp_path, checkpoint, monkeypatch):
    # A camera stays busy until its capture is released: a run whose writer failed to open
    # kept it open for as long as the traceback was kept (a notebook, the next run's camera)
    opened, open_video = [], infer_video.open_video
    monkeypatch.setattr(
        infer_video, "open_video", lambda spec: opened.append(open_video(spec)) or opened[-1]
    )
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    writer = cv2.VideoWriter
    monkeypatch.setattr(infer_video.cv2, "VideoWriter", lambda *a: writer())  # not opened
    with pytest.raises(UserError, match="OpenCV's mp4v encoder refuses"):
        infer_video.main(video_args(input=clip, model=checkpoint, out_dir=tmp_path / "out"))
    assert not opened[0].capture.isOpened()


def test_video_at_a_rate_mp4v_cannot_store_exactly(tmp_path, checkpoint, caplog):
    clip = tmp_path / "fast.avi"  # 15 ms a frame: 66.667 FPS, as OpenCV gives it to mp4v
    video = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 66.667, (64, 48))
    for i in range(3):
        video.write(np.full((48, 64, 3), 60 * i, np.uint8))
    video.release()
    assert cv2.VideoCapture(str(clip)).get(cv2.CAP_PROP_FPS) == pytest.approx(66.667)
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))
    result = cv2.VideoCapture(str(out / "fast.mp4"))
    assert int(result.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert result.get(cv2.CAP_PROP_FPS) == pytest.approx(66.67, abs=1e-3)
    assert "runs at 66.67 FPS" in caplog.text


def test_video_input_that_is_a_device_or_a_folder_is_named_for_what_it_is(tmp_path, checkpoint):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video, "predictor_from_args", no_model)
        # /dev/null stands in for /dev/video0: a device exists, and is opened as a camera
        with pytest.raises(UserError, match="cannot open camera /dev/null"):
            infer_video.main(video_args(input="/dev/null", model=checkpoint, out_dir=tmp_path))
        with pytest.raises(UserError, match=r"--input .* is a folder; give a video file"):
            infer_video.main(video_args(input=tmp_path, model=checkpoint, out_dir=tmp_path))


def test_a_video_the_user_may_not_read_is_named_so_not_called_corrupt(tmp_path, monkeypatch):
    # OpenCV fails to open it as it fails on a damaged file: "not a video OpenCV can read, or
    # corrupt" sent the user looking for damage where a permission was missing
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    clip.chmod(0)  # enough where the tests run as a user; root reads it anyway, so also:
    real_open = Path.open

    def refuse(self, *args, **kwargs):
        if self == clip:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(UserError, match=r"clip\.mp4 cannot be read \(Permission denied\)"):
        infer_video.open_video(str(clip))


def test_a_stream_address_is_opened_as_a_camera(monkeypatch):
    # "does not exist" before: only files, indices and devices were taken
    url = "rtsp://192.0.2.1/live"

    def capture(spec, *timeouts):  # only url is on
        return SimpleNamespace(isOpened=lambda: spec == url, get=lambda prop: 0.0, spec=spec)

    monkeypatch.setattr(infer_video.cv2, "VideoCapture", capture)
    source = infer_video.open_video(url)
    assert source.capture.spec == url and source.camera and source.frames is None
    assert re.fullmatch(r"stream_192\.0\.2\.1-[0-9a-f]{6}_\d{8}-\d{6}", source.name), source.name
    with pytest.raises(UserError, match=r"cannot open the stream rtsp://192.0.2.1/x: is its"):
        infer_video.open_video("rtsp://192.0.2.1/x")


def test_a_stream_is_opened_with_timeouts_where_ffmpeg_reads_it(tmp_path, monkeypatch):
    # OpenCV's FFmpeg waits 30 s by default for a stream that does not answer or stalls, and
    # a Ctrl-C waits for the read under way; other backends refuse to open with these settings
    calls = []

    def capture(*args):
        calls.append(args)
        return SimpleNamespace(isOpened=lambda: True, get=lambda prop: 0.0, set=lambda *a: True)

    monkeypatch.setattr(infer_video.cv2, "VideoCapture", capture)
    infer_video.open_video("rtsp://192.0.2.1/live")
    spec, api, params = calls[-1]
    assert (spec, api) == ("rtsp://192.0.2.1/live", cv2.CAP_FFMPEG)
    settings = dict(zip(params[::2], params[1::2], strict=True))
    assert settings.keys() == {cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, cv2.CAP_PROP_READ_TIMEOUT_MSEC}
    assert all(0 < ms < 30_000 for ms in settings.values())
    infer_video.open_video("0")
    write_clip(tmp_path / "clip.mp4", frames=2)
    infer_video.open_video(str(tmp_path / "clip.mp4"))
    monkeypatch.setattr(infer_video.cv2.videoio_registry, "hasBackend", lambda api: False)
    infer_video.open_video("rtsp://192.0.2.1/live")
    assert calls[1:] == [(0,), (str(tmp_path / "clip.mp4"),), ("rtsp://192.0.2.1/live",)]


class StallingStream:
    """cv2.VideoCapture of a stream that sends ``frames`` frames, then none: OpenCV's read
    fails once its read timeout passes. A path opens a real capture."""

    real = cv2.VideoCapture  # kept before the test replaces it
    frames = 5

    def __new__(cls, spec, *args):
        return super().__new__(cls) if spec.startswith("rtsp://") else cls.real(spec, *args)

    def __init__(self, spec, *args):
        self.sent = 0

    def isOpened(self):
        return True

    def get(self, prop):
        return {cv2.CAP_PROP_FRAME_WIDTH: 96, cv2.CAP_PROP_FRAME_HEIGHT: 72}.get(prop, 25.0)

    def read(self):
        self.sent += 1
        if self.sent > self.frames:
            return False, None
        return True, np.full((72, 96, 3), self.sent, np.uint8)

    def release(self):
        pass


def test_a_stream_that_stalls_ends_the_run_with_a_message_naming_it(
    tmp_path, checkpoint, caplog, capsys, monkeypatch
):
    # it ended as if the recording were complete, without a word
    url, out = "rtsp://192.0.2.1/live", tmp_path / "out"
    monkeypatch.setattr(infer_video.cv2, "VideoCapture", StallingStream)
    infer_video.main(video_args(input=url, model=checkpoint, out_dir=out, batch=2))
    (video,) = out.iterdir()
    assert int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    assert f"{url} sent no more frames (it ended, or sent none for" in caplog.text
    assert f"{video} holds the 5 frames recorded" in caplog.text
    assert "Wrote " in capsys.readouterr().out
    monkeypatch.setattr(StallingStream, "frames", 0)
    with pytest.raises(UserError, match=rf"--input {url} sent no frame \(it ended, or sent none"):
        infer_video.main(video_args(input=url, model=checkpoint, out_dir=tmp_path / "out2"))


def test_streams_started_in_one_second_get_names_of_their_own():
    # an NVR's channels share a host; all were "stream_<time>", and the last recording to end
    # replaced the others. Credentials stay out of the name.
    names = {infer_video.stream_name(f"rtsp://admin:secret@192.0.2.7:554/ch{i}") for i in range(4)}
    assert len(names) == 4
    assert all(name.startswith("stream_192.0.2.7-") and "secret" not in name for name in names)


def test_predictions_mid_training_use_the_running_statistics():
    # a Predictor may outlive a mode switch of its model: train.py builds one before training,
    # and train_one_epoch puts the model back in train mode every epoch
    torch.manual_seed(0)
    model = Segmentor(load_backbone("dinov2_vits14", "timm", None, layers=1), 2)
    with torch.no_grad():
        model.head.bn.running_mean.uniform_(-1, 1)  # statistics unlike any one batch's
    predictor = Predictor(model, DEFAULT_CLASSES, (56, 42))
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    expected = predictor.predict(image)
    model.train()
    assert (predictor.predict(image) == expected).all()
    assert model.head.training, "the model is given back in the mode it was in"


def test_the_flop_floors_rate_is_its_fastest_product_not_a_mean(monkeypatch):
    """The model's time is its fastest run; the rate it is held against must be best-of too. A
    mean over products that some other work slowed gave a lower rate, so a flattering ratio."""
    bench = load_benchmark("bench_inference")
    calls, now = [], [0.0]

    def matmul(a, b):  # every fifth product 0.2 s late, the others 1 us, on best_seconds' clock
        calls.append(None)
        now[0] += 0.2 if len(calls) % 5 == 0 else 1e-6

    monkeypatch.setattr(torch, "matmul", matmul)
    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    rate = bench.matmul_rate(torch.float32, torch.device("cpu"), dim=8, tokens=16)
    # a mean over 5 products, one of them late, came to 2 * 2048**3 * 5 / 0.2
    assert rate > 2 * 2048**3 / 0.01, "a product without the delay sets the rate"


@pytest.mark.parametrize("imgsz, expected", [(None, (90, 66)), (["56", "42"], (56, 42))])
def test_benchmark_of_a_checkpoint_runs_at_its_size(monkeypatch, checkpoint, imgsz, expected):
    """--model CKPT measures the mask agreement of --int8 for that checkpoint: at 644x644, not
    the size it was trained for and is deployed at, the figure was another model's."""
    bench = load_benchmark("bench_inference")
    seen = []

    def counted(model, images):
        seen.append(tuple(images.shape[:1:-1]))  # (W, H)
        raise UserError("stop here")

    monkeypatch.setattr(bench, "flops_by_op", counted)
    argv = ["--model", str(checkpoint), "--device", "cpu"] + (["--imgsz", *imgsz] if imgsz else [])
    with pytest.raises(UserError, match="stop here"):
        bench.main(bench.get_args_parser().parse_args(argv))
    assert seen == [expected]


def test_benchmark_rebuilds_a_checkpoint_through_the_source_asked_for(monkeypatch, tmp_path):
    """Offline, a hub-trained --model failed with advice to pass --backbone-source timm, a flag
    the benchmark did not have."""
    bench = load_benchmark("bench_inference")
    seen = []

    def loaded(*args):
        seen.append(args)
        raise UserError("stop here")

    monkeypatch.setattr(bench, "load_checkpoint", loaded)
    argv = ["--model", "m.pth", "--backbone-source", "timm", "--hub-dir", str(tmp_path),
            "--imgsz", "56", "56", "--device", "cpu"]  # fmt: skip
    with pytest.raises(UserError, match="stop here"):
        bench.main(bench.get_args_parser().parse_args(argv))
    assert seen[0][2:] == ("timm", tmp_path, None)


@pytest.mark.parametrize("flags", [["--backbone-source", "hub"], []])
def test_benchmark_without_a_checkpoint_builds_the_backbone_source_asked_for(flags):
    """Without --model, --backbone-source hub and --hub-dir were ignored: the random model was
    always timm's implementation, so the figures were not those of the official code asked for."""
    bench = load_benchmark("bench_inference")
    argv = [*flags, "--hub-dir", str(FAKE_HUB), "--imgsz", "28", "28", "--device", "cpu"]
    model, classes, imgsz = bench.bench_model(
        bench.get_args_parser().parse_args(argv), torch.device("cpu")
    )
    assert model.backbone.source == "hub"
    assert not type(model.backbone.vit).__module__.startswith("timm")
    assert (classes, imgsz) == (DEFAULT_CLASSES, (28, 28))


def test_attention_benchmark_times_a_gpu_it_has_kept_busy(monkeypatch):
    """One warm-up call left the GPU clocked down for the official attention, which runs
    first, and so flattered FusedAttention's speed-up."""
    bench = load_benchmark("bench_attention")
    calls = []
    # a stand-in for the GPU's queue
    monkeypatch.setattr(engine, "synchronize", lambda device: time.sleep(0.01))
    x = SimpleNamespace(device=torch.device("cuda"))
    bench.backbone_seconds(lambda x: calls.append(time.perf_counter()), x, reps=3)
    # the 3 timed calls start after half a second of work (the last warm-up call itself may
    # start a sleep's overshoot before that)
    assert calls[-3] - calls[0] >= 0.5


@pytest.mark.parametrize(
    "flags",
    [["--batch", "0"], ["--frames", "0"], ["--imgsz", "0", "0"], ["--video-size", "1", "1"]],
)
def test_benchmark_refuses_empty_runs(flags):
    bench = load_benchmark("bench_inference")
    with pytest.raises(UserError, match=r"must be at least"):
        bench.main(bench.get_args_parser().parse_args(flags))


def cache_bench_run(seconds, cache: str | None = None, peak: bool = True) -> tuple:
    """What bench_cache.train returns for a run of epochs of ``seconds``: metrics.csv's rows
    and train.py's output."""
    rows = [{"seconds": s, "valid_miou": 0.5} for s in seconds]
    log = "epoch 1/3 done"
    if cache:
        log += f"\nfeature cache ({cache}): 30 views computed in 25.0 s, 0 reused; 6.20 MB per "
        log += "view (float16), 6.20 MB per training image"
    if peak:  # train.py leaves the figure out where it cannot read it (the CPU on Windows)
        log += "\ndone in 60 s; peak memory 1705 MB"
    return rows, log


def cache_bench_table(capsys, runs) -> dict:
    """bench_cache.report's rows for ``runs``, by name, as lists of their fields."""
    bench = load_benchmark("bench_cache")
    args = bench.get_args_parser().parse_args(["--epochs", "3"])
    bench.report(runs, 186.0, args)
    lines = capsys.readouterr().out.splitlines()
    return {
        name: line[len(name) :].split() for line in lines for name in runs if line.startswith(name)
    }


def test_cache_benchmark_speed_up_compares_later_epochs_with_later_epochs(capsys):
    """The uncached time was the mean of every uncached epoch, its slower first one included,
    against the cached epochs after the first: the uncached row itself showed a speed-up."""
    runs = {
        "uncached": cache_bench_run([30.0, 20.0, 20.0]),
        "memory cache": cache_bench_run([2.0, 1.0, 1.0], cache="memory"),
    }
    table = cache_bench_table(capsys, runs)
    assert table["uncached"][3] == "1.0x"
    assert table["memory cache"][3] == "20.0x"


def test_cache_benchmark_shows_a_figure_train_py_did_not_print_as_a_dash(capsys):
    """train.py prints no peak memory where it cannot read it (the CPU on Windows): the table
    ended in an AttributeError. The uncached run, which fills no cache, showed a 0.0 s fill."""
    runs = {
        "uncached": cache_bench_run([3.0, 2.0, 2.0], peak=False),
        "memory cache": cache_bench_run([2.0, 1.0, 1.0], cache="memory", peak=False),
    }
    table = cache_bench_table(capsys, runs)
    assert table["uncached"][0] == "-" and table["memory cache"][0] == "25.0"
    assert table["uncached"][-1] == table["memory cache"][-1] == "-"


def test_benchmark_io_ceiling_runs_opencv_as_the_pipeline_it_bounds(monkeypatch, tmp_path):
    """With the model on the CPU, infer_video.py's pipeline runs OpenCV on one thread; the
    I/O-only row ran it with its whole pool, a ceiling that pipeline could not reach."""
    bench = load_benchmark("bench_inference")
    threads = []

    def segment_video(source, predictor, out, opts):
        threads.append(cv2.getNumThreads())
        return {"fps": 1.0}

    monkeypatch.setattr(bench, "segment_video", segment_video)
    monkeypatch.setattr(bench, "open_video", lambda path: None)
    model = SimpleNamespace(device=torch.device("cpu"), patch_logits=None)
    model.eval = lambda: model
    before = cv2.getNumThreads()
    cv2.setNumThreads(4)
    try:
        bench.io_ceiling(
            tmp_path / "in.mp4", tmp_path / "out.mp4", model, DEFAULT_CLASSES, (28, 28), 1
        )
    finally:
        cv2.setNumThreads(before)
    assert threads == [1]


# tracebacks before (from torch or the DataLoader), or a row of 0 images/s
@pytest.mark.parametrize(
    "flags",
    [["--batch", "0"], ["--steps", "0"], ["--warmup", "-1"], ["--imgsz", "0", "0"],
     ["--workers", "-1"], ["--data-images", "-1"]],
)  # fmt: skip
def test_training_benchmark_refuses_empty_runs(flags):
    bench = load_benchmark("bench_train")
    with pytest.raises(UserError, match=r"must be at least"):
        bench.main(bench.get_args_parser().parse_args(["--device", "cpu", *flags]))


def test_image_results_on_a_full_disk_are_reported_not_left_truncated(tmp_path, checkpoint):
    # Pillow's encoders ignore a short write: a full disk once left a cut-off JPEG, and exit 0.
    # A file size limit (Python ignores SIGXFSZ) fails writes past 8 KB as a full disk would;
    # below it the script starts (torch 2.7 writes a 2.3 KB module of its own while importing).
    resource = pytest.importorskip("resource")  # POSIX

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(src / "noise.png")  # its overlay JPEG is well over 8 KB

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY))

    cmd = [sys.executable, "infer_image.py", "--input", str(src), "--model", str(checkpoint),
           "--out-dir", str(out), "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limit
    )
    assert proc.returncode == 2, proc.stderr
    assert "1 of 1 image(s) could not be written" in proc.stderr and "noise.png" in proc.stderr
    assert not out.exists(), "neither a truncated overlay, its mask nor their folder may remain"


class DroppingWriter:
    """cv2.VideoWriter that stops storing frames after ``keep`` of them, as on a full disk:
    ``write`` then returns ``dropped`` (OpenCV 5 returns False, OpenCV 4 None)."""

    real = cv2.VideoWriter  # kept before the test replaces it

    def __init__(self, *args, keep=3, dropped=None):
        self.writer, self.written, self.keep, self.dropped = self.real(*args), 0, keep, dropped

    def write(self, frame):
        self.written += 1
        return self.writer.write(frame) if self.written <= self.keep else self.dropped

    def __getattr__(self, name):
        return getattr(self.writer, name)


@pytest.mark.parametrize("dropped", [False, None])
def test_video_frames_the_encoder_drops_fail_the_run_and_leave_nothing(
    tmp_path, checkpoint, dropped
):
    clip = write_clip(tmp_path / "clip.mp4", frames=8)
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            infer_video.cv2, "VideoWriter", functools.partial(DroppingWriter, dropped=dropped)
        )
        with pytest.raises(UserError, match=r"cannot write .*clip\.mp4.*is the disk full"):
            infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out, batch=2))
    assert not out.exists(), "neither a partial video nor its folder may remain"


def test_video_output_open_in_another_program_fails_clearly(tmp_path, checkpoint):
    # Windows refuses to replace a file that a video player holds open, as os.replace does here
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.mp4").write_bytes(b"the last run's video")
    replace = os.replace

    def held_open(src, dst):
        if Path(dst) == out / "clip.mp4":
            raise PermissionError(13, "The process cannot access the file", str(src))
        replace(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utils.os, "replace", held_open)
        with pytest.raises(UserError, match=r"cannot replace .*clip\.mp4 .*open in another prog"):
            infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))
    assert [f.name for f in out.iterdir()] == ["clip.mp4"], "no temporary file may remain"
    assert (out / "clip.mp4").read_bytes() == b"the last run's video"


def test_a_video_path_outside_ascii_is_named_as_the_cause_on_windows(
    tmp_path, checkpoint, monkeypatch
):
    # OpenCV on Windows opens no path outside ASCII: "not a video OpenCV can read, or corrupt"
    # (or "the encoder refuses") alone sent the user looking for damage in a good file
    clip = write_clip(tmp_path / "café.mp4", frames=2)
    capture, writer = cv2.VideoCapture, cv2.VideoWriter
    monkeypatch.setattr(infer_video.cv2, "VideoCapture", lambda *a: capture())  # not opened
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(UserError, match=r"café\.mp4: not a .*OpenCV on Windows cannot use a pat"):
        infer_video.open_video(str(clip))
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(UserError, match=r"café\.mp4: not a video OpenCV can read, or corrupt$"):
        infer_video.open_video(str(clip))

    monkeypatch.setattr(infer_video.cv2, "VideoCapture", capture)
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    monkeypatch.setattr(infer_video.cv2, "VideoWriter", lambda *a: writer())  # not opened
    monkeypatch.setattr(sys, "platform", "win32")
    out = tmp_path / "résultats"
    with pytest.raises(UserError, match=r"refuses .*choose an --out-dir whose path is plain ASCII"):
        infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))


@pytest.mark.skipif(
    sys.platform != "linux", reason="a file name that is not UTF-8: Linux allows it"
)
def test_a_video_path_that_is_not_utf8_is_refused_before_opencv_crashes_on_it(tmp_path, checkpoint):
    # A Latin-1 name on Linux, which Python holds as surrogates: OpenCV's Python binding ended
    # the whole process with a segmentation fault, at the input's capture or the output's writer
    latin = os.fsdecode(b"caf\xe9")
    clip = write_clip(tmp_path / "clip.mp4", frames=2).rename(tmp_path / f"{latin}.mp4")
    for flags, message in (
        (["--input", str(clip), "--model", str(tmp_path / "unused.pth")], "--input"),
        (["--input", str(write_clip(tmp_path / "other.mp4", frames=2)), "--model",
          str(checkpoint), "--out-dir", str(tmp_path / latin)], "--out-dir"),
    ):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "infer_video.py", *flags], cwd=ROOT, capture_output=True, timeout=300
        )
        stderr = proc.stderr.decode(errors="replace")
        assert proc.returncode == 2, stderr
        assert f"error: {message} " in stderr and "is not UTF-8" in stderr, stderr
        assert "Traceback" not in stderr
    assert not (tmp_path / latin).exists()


def test_an_unreadable_image_does_not_shorten_a_batch(tmp_path, predictor):
    # a compiled model pads a short batch to the size it compiled for: a short first batch
    # made it compile again at the second (13 s an image reported as the model's speed)
    paths = []
    for name in ("a_broken.jpg", "b.png", "c.png", "d_broken.png", "e.png", "f.png"):
        paths.append(tmp_path / name)
        if "broken" in name:
            paths[-1].write_bytes(b"not an image")
        else:
            Image.new("RGB", (30, 20)).save(paths[-1])
    groups = list(infer_image.read_batches(paths, predictor, batch=2))
    assert [[p.name for p in ok] for ok, *_ in groups] == [["b.png", "c.png"], ["e.png", "f.png"]]
    assert [len(errors) for *_, errors in groups] == [1, 1]


def test_video_output_that_is_a_folder_is_refused_before_the_model_loads(tmp_path, checkpoint):
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    (tmp_path / "out" / "clip.mp4").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video, "predictor_from_args", no_model)
        with pytest.raises(UserError, match=r"out/clip\.mp4 is a folder, in the output's place"):
            infer_video.main(video_args(input=clip, model=checkpoint, out_dir=tmp_path / "out"))


def test_show_without_a_display_is_refused_without_opening_a_window(monkeypatch):
    # Qt, which opencv-python's Linux wheels use, aborts the process when it finds no display
    def abort(*args):
        raise AssertionError("a window was opened without a display")

    monkeypatch.setattr(utils.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  GUI:   QT5\n")
    monkeypatch.setattr(cv2, "namedWindow", abort)
    with pytest.raises(UserError, match="--show needs a display, and neither DISPLAY"):
        check_gui()
    monkeypatch.setenv("DISPLAY", ":0")
    with pytest.raises(AssertionError, match="a window was opened"):
        check_gui()


@pytest.mark.parametrize(
    ("key", "goes_on"),
    [(-1, True), (ord(" "), True), (ord("q"), False), (27, False), (0x100000 | ord("q"), False)],
)
def test_show_draws_bgr_and_stops_on_q_or_esc(monkeypatch, key, goes_on):
    # waitKey's code carries modifier bits above the low byte on some backends (GTK, Qt)
    drawn = []
    monkeypatch.setattr(cv2, "imshow", lambda title, image: drawn.append(image))
    monkeypatch.setattr(cv2, "waitKey", lambda ms: key)
    monkeypatch.setattr(cv2, "getWindowProperty", lambda title, prop: 1.0)  # stays open
    monkeypatch.setattr(cv2, "destroyAllWindows", lambda: None)
    overlay = np.zeros((2, 3, 3), np.uint8)
    overlay[..., 0] = 200  # red
    assert utils.show("infer_video", overlay, 1) is goes_on
    assert drawn[0][0, 0].tolist() == [0, 0, 200]  # OpenCV's windows take BGR


class FakeWindow:
    """cv2's window functions for --show, where this OpenCV has none: the window is visible
    until ``closes_after`` waitKey calls (its close button), which return ``keys`` in turn,
    then no key."""

    def __init__(self, monkeypatch, closes_after: int, visible: float = 1.0, keys=()):
        self.shown, self.waits, self.destroyed = 0, [], 0
        self.closes_after, self.visible, self.keys = closes_after, visible, list(keys)
        monkeypatch.setattr(cv2, "imshow", self.imshow)
        monkeypatch.setattr(cv2, "waitKey", self.wait_key)
        monkeypatch.setattr(cv2, "getWindowProperty", self.get_property)
        monkeypatch.setattr(cv2, "destroyAllWindows", self.destroy)

    def imshow(self, title, image):
        self.shown += 1

    def wait_key(self, ms):
        self.waits.append(ms)
        return self.keys.pop(0) if self.keys else -1

    def get_property(self, title, prop):
        assert prop == cv2.WND_PROP_VISIBLE
        return 0.0 if len(self.waits) >= self.closes_after else self.visible

    def destroy(self):
        self.destroyed += 1


@pytest.mark.parametrize("wait_ms", [1, 0])
def test_show_stops_when_its_window_is_closed(monkeypatch, wait_ms):
    # Only q and Esc stopped: the next imshow opened the window again. waitKey(0) may not
    # return when the window closes, so a wait for a key polls it.
    window = FakeWindow(monkeypatch, closes_after=3)
    overlay = np.zeros((2, 3, 3), np.uint8)
    if wait_ms:
        assert utils.show("infer_video", overlay, wait_ms) and window.waits == [1]
        assert utils.show("infer_video", overlay, wait_ms) and window.destroyed == 0
        assert not utils.show("infer_video", overlay, wait_ms)
    else:
        assert not utils.show("infer_image", overlay, wait_ms)
        assert len(window.waits) == 3 and 0 not in window.waits
    assert window.destroyed == 1


def test_show_goes_on_where_opencv_cannot_tell_whether_its_window_is_open(monkeypatch):
    # a backend without the property answers -1 from the start: no reason to stop
    window = FakeWindow(monkeypatch, closes_after=1, visible=-1.0)
    assert utils.show("infer_image", np.zeros((2, 3, 3), np.uint8), 0)
    assert window.waits == [0] and window.destroyed == 0


def test_closing_the_show_window_stops_a_video_and_keeps_the_frames_so_far(
    tmp_path, checkpoint, caplog, capsys, monkeypatch
):
    clip = write_clip(tmp_path / "clip.mp4")
    window = FakeWindow(monkeypatch, closes_after=3)
    out = tmp_path / "out"
    monkeypatch.setattr(infer_video, "check_inference_args", lambda args: None)  # no GUI here
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out, show=True, batch=1))
    assert window.shown == 3
    assert int(cv2.VideoCapture(str(out / "clip.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert "closing the window" in caplog.text and "the first 3 of 13 frames" in caplog.text
    assert "Wrote " in capsys.readouterr().out


def test_closing_the_show_window_of_infer_image_stops_showing_and_segments_every_image(
    tmp_path, checkpoint, capsys, monkeypatch
):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in "abcd":
        Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(src / f"{name}.png")
    # a key for the first image; the window closed while the second waits for one
    window = FakeWindow(monkeypatch, closes_after=3, keys=[ord(" ")])
    monkeypatch.setattr(infer_image, "check_inference_args", lambda args: None)  # no GUI here
    infer_image.main(image_args(input=src, model=checkpoint, out_dir=out, show=True, batch=4))
    assert window.shown == 2 and window.destroyed == 1
    assert len(list(out.glob("*_mask.png"))) == 4
    assert "Segmented 4 image(s)" in capsys.readouterr().out


def test_show_where_opencv_cannot_open_a_window_is_a_clear_error(monkeypatch):
    # a display is set, but the window fails (a Wayland session without XWayland, say)
    def fails(*args):
        raise cv2.error("Can't initialize GTK backend")

    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  GUI:   QT5\n")
    monkeypatch.setattr(cv2, "namedWindow", fails)
    with pytest.raises(UserError, match=r"--show needs an OpenCV build with windows .* a display"):
        check_gui()


def test_damaged_frames_mid_file_are_left_out_not_the_rest_of_the_video(
    tmp_path, checkpoint, caplog
):
    data = bytearray(mjpg_avi_bytes(tmp_path / "full.avi", frames=12))
    chunks = [m.start() for m in re.finditer(b"00dc", data[data.index(b"movi") :])]
    for start in chunks[3:5]:  # the 4th and 5th frames' JPEG data, zeroed
        at = data.index(b"movi") + start
        size = int.from_bytes(data[at + 4 : at + 8], "little")
        data[at + 8 : at + 8 + size] = bytes(size)
    clip = tmp_path / "damaged.avi"
    clip.write_bytes(bytes(data))
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out, batch=4))
    written = cv2.VideoCapture(str(out / "damaged.mp4"))
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == 10  # not the 3 before the damage
    assert f"{clip} declares 12 frames but only 10 could be decoded" in caplog.text
    # The frames after the gap came 0.2 s early, and the sound put back beside them with them:
    # they keep their times, the third frame shown through the gap
    shown = [0, 100, 200, *range(500, 1200, 100)]
    assert frame_times_ms(out / "damaged.mp4") == pytest.approx(shown, abs=0.1)


def rotated_mp4(path, degrees_matrix) -> tuple[Path, list[np.ndarray]]:
    """A 96x64 mp4 whose track header shows it turned (the display matrix phones write), and
    the RGB frames written into it, as stored (landscape). Smooth ramps survive mp4v."""
    y, x = np.mgrid[0:64, 0:96]
    frames = [np.stack([x * 2, y * 3, np.full_like(x, 60 * i)], -1).astype(np.uint8)
              for i in range(3)]  # fmt: skip
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (96, 64))
    for frame in frames:
        video.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    video.release()
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd")
    assert data[at + 4] == 0, "a version 0 track header"
    data[at + 44 : at + 80] = b"".join(v.to_bytes(4, "big", signed=True) for v in degrees_matrix)
    path.write_bytes(bytes(data))
    return path, frames


# the track header's matrix that ffmpeg writes for -metadata:s:v rotate=90; ffmpeg (and OpenCV)
# show such a video a quarter turn counterclockwise from its stored frames: np.rot90
TURNED_90 = (0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30)


def test_a_phone_video_turned_by_its_metadata_is_written_upright(tmp_path, checkpoint, capsys):
    # Phones store portrait video as landscape frames and a display matrix. OpenCV turns the
    # frames (CAP_PROP_ORIENTATION_AUTO) and states the turned size: the output must be the
    # portrait video the user sees, and carry no matrix of its own, or players turn it again.
    clip, stored = rotated_mp4(tmp_path / "phone.mp4", TURNED_90)
    capture = cv2.VideoCapture(str(clip))
    size = capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)
    capture.release()
    if size != (64, 96):
        pytest.skip(f"this OpenCV does not turn videos by their metadata (it reads {size})")
    shown = read_rgb_frames(clip)
    assert [f.shape for f in shown] == [(96, 64, 3)] * 3
    upright = [np.rot90(frame) for frame in stored]
    assert all(np.abs(a.astype(int) - b).mean() < 8 for a, b in zip(shown, upright, strict=True))
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out, alpha=0))
    assert "phone.mp4: 3 frames, 64x96," in capsys.readouterr().out
    result = cv2.VideoCapture(str(out / "phone.mp4"))
    assert result.get(cv2.CAP_PROP_ORIENTATION_META) == 0, "turned twice by a player"
    result.release()
    written = read_rgb_frames(out / "phone.mp4")
    assert len(written) == 3
    for decoded, expected in zip(written, upright, strict=True):
        assert decoded.shape == (96, 64, 3)
        assert np.abs(decoded.astype(int) - expected).mean() < 8


class UnturnedByDefault:
    """cv2.VideoCapture as OpenCV 4.11 opens a file: frames as stored, not turned by their
    rotation metadata, unless CAP_PROP_ORIENTATION_AUTO is set (opencv/opencv#26795)."""

    real = cv2.VideoCapture  # kept before the test replaces it

    def __init__(self, *args):
        self.capture = self.real(*args)
        self.capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)

    def __getattr__(self, name):
        return getattr(self.capture, name)


def test_a_phone_video_is_written_upright_where_opencv_does_not_turn_it_by_default(
    tmp_path, checkpoint, capsys
):
    # OpenCV 4.11, which requirements.txt allows, turns no frames unless asked: the portrait
    # video came out on its side, segmented sideways, with no word
    clip, stored = rotated_mp4(tmp_path / "phone.mp4", TURNED_90)
    if [f.shape for f in read_rgb_frames(clip)] != [(96, 64, 3)] * 3:
        pytest.skip("this OpenCV does not turn videos by their metadata")
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video.cv2, "VideoCapture", UnturnedByDefault)
        infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out, alpha=0))
    assert "phone.mp4: 3 frames, 64x96," in capsys.readouterr().out
    written = read_rgb_frames(out / "phone.mp4")
    assert len(written) == 3
    for decoded, expected in zip(written, stored, strict=True):
        assert decoded.shape == (96, 64, 3)
        assert np.abs(decoded.astype(int) - np.rot90(expected)).mean() < 8


class VariableRateFile:
    """cv2.VideoCapture of a Matroska screen recording at a variable frame rate: 12 frames,
    10 FPS stated, the first 6 at 100 ms intervals and the rest at 250 ms, so 2.1 s long, and
    the frame count OpenCV derives from that (21), as for a container that stores none."""

    real = cv2.VideoCapture  # kept before the test replaces it

    def __init__(self, spec):
        self.capture, self.frame = self.real(spec), -1

    def read(self):
        ok, bgr = self.capture.read()
        self.frame += ok
        return ok, bgr

    def get(self, prop):
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return 21.0
        if prop == cv2.CAP_PROP_POS_MSEC:
            return 100.0 * self.frame if self.frame <= 5 else 500.0 + 250 * (self.frame - 5)
        return self.capture.get(prop)

    def __getattr__(self, name):
        return getattr(self.capture, name)


def test_a_variable_frame_rate_is_named_not_taken_for_a_truncated_file(
    tmp_path, checkpoint, caplog, capsys
):
    # It was: "declares 21 frames but only 12 could be decoded" (nothing was missing), a
    # progress bar that ended at 12/21, and an output twice as fast as the input, unsaid; then
    # said, but still 1.8x as fast: the output is now retimed to the input's length.
    clip = write_clip(tmp_path / "screen.mkv.mp4", frames=12, fps=10)
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video.cv2, "VideoCapture", VariableRateFile)
        infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out, batch=4))
    written = cv2.VideoCapture(str(out / "screen.mkv.mp4"))
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert written.get(cv2.CAP_PROP_FPS) == pytest.approx(12 / 2.25, rel=1e-3)
    written.release()
    shown = [100 * i for i in range(6)] + [500 + 250 * i for i in range(1, 7)]  # the input's
    assert frame_times_ms(out / "screen.mkv.mp4") == pytest.approx(shown, abs=0.1)
    assert "declares" not in caplog.text
    assert (
        "has a variable frame rate: it states 10 FPS, but its 12 frames span 2.25 s, up to "
        "0.90 s from where that rate shows them; the output keeps each frame's time (5.33333 "
        "FPS on average)" in caplog.text
    )
    out, err = capsys.readouterr()
    assert "12/12" in err  # the bar ends full
    assert ", 5.333 FPS, " in out


# the ffmpeg infer_video runs: the PATH's, else imageio-ffmpeg's (requirements.txt)
FFMPEG = infer_video.find_ffmpeg()
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="needs ffmpeg (imageio-ffmpeg)")


@needs_ffmpeg
def test_variable_frame_rate_matroska_and_mp4_from_ffmpeg(tmp_path, checkpoint, caplog):
    # The real files: 60 frames, 30 at 30 FPS then 30 at 10 FPS. OpenCV states the MP4's average
    # rate, which kept its length but showed its middle a second late; the MKV's nominal 30 FPS,
    # which halved it (with a warning). Each output now shows each frame at the input's time.
    source = tmp_path / "source.avi"
    video = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
    for i in range(60):
        video.write(np.full((48, 64, 3), 4 * i, np.uint8))
    video.release()
    stretch = "setpts='if(lt(N,30),N/30/TB,(1+(N-30)/10)/TB)'"
    for name in ("vfr.mkv", "vfr.mp4"):
        cmd = [FFMPEG, "-loglevel", "error", "-i", str(source), "-vf", stretch, "-fps_mode",
               "vfr", "-c:v", "mpeg4", "-q:v", "5", str(tmp_path / name)]  # fmt: skip
        if subprocess.run(cmd, timeout=120).returncode:  # before ffmpeg 5.1: -vsync
            cmd[cmd.index("-fps_mode")] = "-vsync"
            subprocess.run(cmd, check=True, timeout=120)
        caplog.clear()
        out = tmp_path / name.replace(".", "_")
        infer_video.main(video_args(input=tmp_path / name, model=checkpoint, out_dir=out))
        shown = [1000 * (i / 30 if i < 30 else 1 + (i - 30) / 10) for i in range(60)]
        assert frame_times_ms(out / "vfr.mp4") == pytest.approx(shown, abs=1), name
        assert "declares" not in caplog.text, name
        assert ("plays" in caplog.text) is False, caplog.text


@needs_ffmpeg
@pytest.mark.parametrize(
    ("name", "video", "rate", "seconds", "declared"),
    [
        ("recording.mkv", ["-c:v", "mpeg4"], 60, 1, 61),
        ("stream.mp4", ["-c:v", "libx264", "-movflags", "+frag_keyframe+empty_moov"], 30, 2, 62),
    ],
)
def test_sound_that_outlasts_the_frames_is_not_taken_for_a_truncated_file(
    tmp_path, checkpoint, caplog, capsys, name, video, rate, seconds, declared
):
    # A screen recording's 1 s of frames at 60 FPS with AAC sound lasts 1.021 s, which OpenCV
    # counts as 61 frames: "declares 61 frames but only 60 could be decoded", its bar at 60/61.
    # A fragmented MP4 (a stream's) has no count in its header either. The same file cut in
    # half still says so.
    clip = tmp_path / name
    make = [FFMPEG, "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
            f"testsrc=size=64x48:rate={rate}:duration={seconds}", "-f", "lavfi", "-i",
            f"sine=sample_rate=48000:duration={seconds}", *video, "-c:a", "aac",
            str(clip)]  # fmt: skip
    subprocess.run(make, check=True, timeout=120)
    frames = rate * seconds
    capture = cv2.VideoCapture(str(clip))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == declared, "the premise: the estimate"
    capture.release()
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))
    assert "declares" not in caplog.text
    assert f"{frames}/{frames}" in capsys.readouterr().err  # the bar ends full
    assert len(read_rgb_frames(out / f"{clip.stem}.mp4")) == frames

    cut = tmp_path / f"cut{clip.suffix}"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    infer_video.main(video_args(input=cut, model=checkpoint, out_dir=out))
    decoded = len(read_rgb_frames(out / "cut.mp4"))
    assert decoded < frames - 5  # more than the sound's 0.1 s
    assert f"{cut} declares {declared} frames but only {decoded} could be decoded" in caplog.text


def test_a_video_beside_the_input_that_the_output_would_replace_is_refused(tmp_path, checkpoint):
    # clip.mov's output in its own folder is clip.mp4: the user's other video of that name was
    # replaced without a word
    clip = write_clip(tmp_path / "clip.avi", frames=2)
    other = tmp_path / "clip.mp4"
    other.write_bytes(b"another video of the user's")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video, "predictor_from_args", no_model)
        with pytest.raises(UserError, match=r"clip\.mp4, the output's name, is taken beside "):
            infer_video.main(video_args(input=clip, model=checkpoint, out_dir=tmp_path))
    assert other.read_bytes() == b"another video of the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi", "clip.mp4"]


def test_a_file_address_is_the_file_not_a_stream(tmp_path):
    # file:///... was read as a live stream: named stream_<time>, with no frame count
    clip = write_clip(tmp_path / "my clip.mp4", frames=3)
    source = infer_video.open_video(clip.as_uri())
    source.capture.release()
    assert not source.camera and source.name == "my clip" and source.frames == 3


def test_a_partial_video_left_by_a_killed_run_is_named_and_kept(tmp_path, checkpoint, caplog):
    # A run killed outright (SIGKILL, the out-of-memory killer) runs no clean-up: its hidden
    # partial video, which no player opens and which may take gigabytes, stayed unsaid
    clip = write_clip(tmp_path / "clip.mp4", frames=3)
    out = tmp_path / "out"
    # one run killed while writing two videos' partial files: one interpreter (and torch
    # import) fewer than a run per video, the same files left behind
    kill_midway = (
        "import os, signal, sys; from pathlib import Path; import utils\n"
        "with utils.atomic_path(Path(sys.argv[1]), suffix='.partial.mp4') as tmp:\n"
        "    tmp.write_bytes(bytes(2**20))\n"
        "    with utils.atomic_path(Path(sys.argv[2]), suffix='.partial.mp4') as other:\n"
        "        other.write_bytes(bytes(2**20)); os.kill(os.getpid(), signal.SIGKILL)"
    )
    cmd = [sys.executable, "-c", kill_midway, str(out / "clip.mp4"), str(out / "other.mp4")]
    assert subprocess.run(cmd, cwd=ROOT, timeout=300).returncode == -signal.SIGKILL
    left = sorted(out.iterdir())
    assert [p.name.endswith(".partial.mp4") for p in left] == [True, True]
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))
    assert f"{left[0]} (1.0 MB) is a partial video of {out / 'clip.mp4'}" in caplog.text
    assert str(left[1]) not in caplog.text, "another input's: a run may still be writing it"
    assert sorted(out.iterdir()) == sorted([*left, out / "clip.mp4"]), "kept: it may be in use"


def test_a_clip_cut_without_re_encoding_is_not_called_truncated(
    tmp_path, checkpoint, caplog, capsys
):
    # ffmpeg -ss 10 -c copy (and other cutters that do not re-encode) store the frames from the
    # key frame before the cut and hide them with an edit list: OpenCV declares them all. The run
    # said "declares 60 frames but only 50 could be decoded" of a whole clip, its bar at 50/60.
    clip = write_clip(tmp_path / "cut.mp4", frames=60, size=(64, 48), fps=30)
    data = bytearray(clip.read_bytes())
    at = data.index(b"elst") + 4  # the track's one edit: (1000ths of a second, media time)
    assert struct.unpack(">IIIi", data[at : at + 16])[1:] == (1, 2000, 0)
    timescale = struct.unpack(">I", data[data.index(b"mdhd") + 16 : data.index(b"mdhd") + 20])[0]
    data[at + 8 : at + 16] = struct.pack(">Ii", 1667, 10 * timescale // 30)  # from frame 10
    clip.write_bytes(bytes(data))
    capture = cv2.VideoCapture(str(clip))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 60
    capture.release()
    assert len(read_rgb_frames(clip)) == 50
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=tmp_path / "out"))
    out, err = capsys.readouterr()
    assert "cut.mp4: 50 frames" in out
    assert "declares" not in caplog.text
    assert "50/50" in err  # the bar ends full


def b_frame_like_mp4(path, offsets, version=0, edit=None) -> Path:
    """A 60-frame 64x48 mp4 at 30 FPS (512 ticks a frame) with a ctts box of ``version`` that
    shows frame i ``offsets[i]`` frames after its decoding time, as B-frames do, and one edit of
    (start frame, frames shown), by default (the first frame's offset, all 60), as libx264's."""
    clip = write_clip(path, frames=60, size=(64, 48), fps=30)
    data = bytearray(clip.read_bytes())
    runs = b"".join(struct.pack(">Ii", 1, 512 * offset) for offset in offsets)
    ctts = struct.pack(">I4sB3xI", 16 + len(runs), b"ctts", version, len(offsets)) + runs
    moov = data.rindex(b"moov") - 4  # after mdat, which the insertion then leaves in place
    stbl = data.index(b"stbl", moov) - 4
    end = stbl + int.from_bytes(data[stbl : stbl + 4], "big")
    data[end:end] = ctts  # stbl's last box
    for kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl"):  # the boxes that hold it grow
        at = data.index(kind, moov) - 4
        data[at : at + 4] = struct.pack(">I", int.from_bytes(data[at : at + 4], "big") + len(ctts))
    start, shown = edit or (offsets[0], 60)
    at = data.index(b"elst", moov) + 12  # (1000ths of a second, media time)
    data[at : at + 8] = struct.pack(">Ii", round(shown * 1000 / 30), 512 * start)
    clip.write_bytes(bytes(data))
    return clip


B_FRAMES = [2] * 60  # libx264's first frame, by default, shows 2 frames late: its edit starts there
NEGATIVE_B_FRAMES = [0, 2, -1, -1] * 15  # decoded I0 P3 B1 B2, shown in order from 0


@pytest.mark.parametrize(
    ("offsets", "version", "edit", "shown"),
    [
        (B_FRAMES, 0, None, 60),
        (NEGATIVE_B_FRAMES, 1, None, 60),  # read unsigned, the last frame would end in years
        (B_FRAMES, 0, (12, 50), 50),  # a B-frame clip cut 10 frames in
        (B_FRAMES, 0, (3, 59), 59),
        (B_FRAMES, 0, (2, 55), 55),  # the last 5
    ],
    ids=["b-frames", "negative-offsets", "cut", "one", "end"],
)
def test_an_edit_hides_frames_only_past_the_first_shown_or_the_last(
    tmp_path, offsets, version, edit, shown
):
    clip = b_frame_like_mp4(tmp_path / "clip.mp4", offsets, version, edit)
    assert len(read_rgb_frames(clip)) == shown  # OpenCV, which declares 60
    assert video_container.mp4_edits_hide_frames(clip) == (shown < 60)


def test_a_damaged_composition_offset_box_hides_nothing(tmp_path):
    clip = b_frame_like_mp4(tmp_path / "clip.mp4", B_FRAMES, edit=(12, 50))
    data = bytearray(clip.read_bytes())
    at = data.index(b"ctts", data.rindex(b"moov")) - 4
    data[at : at + 4] = struct.pack(">I", 2**31)  # runs past its stbl
    clip.write_bytes(bytes(data))
    assert not video_container.mp4_edits_hide_frames(clip)


@pytest.mark.parametrize(
    ("offsets", "version"), [(B_FRAMES, 0), (NEGATIVE_B_FRAMES, 1)], ids=["ctts0", "ctts1"]
)
def test_a_b_frame_video_that_lost_its_end_is_called_truncated(
    tmp_path, checkpoint, caplog, offsets, version
):
    # B-frames start a whole video's edit a frame or two in (its composition offset), which was
    # taken for a cut clip's edit hiding frames: a video whose end was lost (a download stopped
    # half way into a file of its full size), a third of its frames decoding, went unsaid.
    clip = b_frame_like_mp4(tmp_path / "clip.mp4", offsets, version)
    data = bytearray(clip.read_bytes())
    end = data.rindex(b"moov") - 4  # of mdat
    data[end // 2 : end] = bytes(end - end // 2)
    clip.write_bytes(bytes(data))
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=tmp_path / "out"))
    assert re.search(
        rf"{re.escape(str(clip))} declares 60 frames but only \d+ could be", caplog.text
    )


def box(kind: bytes, *parts: bytes, full: int | None = None) -> bytes:
    """An ISO media box of ``parts``; a full box (version 0, flags ``full``) where given."""
    body = (b"" if full is None else struct.pack(">I", full)) + b"".join(parts)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def with_sound(clip: Path, seconds: float = 1.0, rate: int = 8000) -> Path:
    """``clip``, an mp4 OpenCV wrote (its moov last), given a track of ``seconds`` of silent
    16-bit mono PCM ('twos', which MOV and FFmpeg's MP4 reader take), as a phone's sound track,
    its samples in an mdat of their own after the moov."""
    data = bytearray(clip.read_bytes())
    moov = data.rindex(b"moov") - 4
    assert moov + int.from_bytes(data[moov : moov + 4], "big") == len(data), "moov last"
    n = round(seconds * rate)
    entry = struct.pack(">4s6xH8xHH4xI", b"twos", 1, 1, 16, rate << 16)  # mono, 16-bit
    matrix = struct.pack(">9i", 1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)
    table = box(
        b"stbl",
        box(b"stsd", struct.pack(">II", 1, 4 + len(entry)), entry, full=0),
        box(b"stts", struct.pack(">III", 1, n, 1), full=0),
        box(b"stsc", struct.pack(">IIII", 1, 1, n, 1), full=0),
        box(b"stsz", struct.pack(">II", 2, n), full=0),
        box(b"stco", struct.pack(">II", 1, 0), full=0),  # the offset, set below
    )
    info = box(
        b"minf",
        box(b"smhd", bytes(4), full=0),
        box(b"dinf", box(b"dref", struct.pack(">I", 1), box(b"url ", full=1), full=0)),
        table,
    )
    media = box(
        b"mdia",
        box(b"mdhd", struct.pack(">IIIIHH", 0, 0, rate, n, 0x55C4, 0), full=0),
        box(b"hdlr", struct.pack(">I4s12x", 0, b"soun"), b"Sound\0", full=0),
        info,
    )
    header = struct.pack(">IIII4xI8xhhh2x", 0, 0, 2, 0, round(seconds * 1000), 0, 0, 0x100)
    trak = box(b"trak", box(b"tkhd", header, matrix, bytes(8), full=3), media)
    data[moov : moov + 4] = struct.pack(">I", len(data) - moov + len(trak))
    data += trak
    at = data.rindex(b"stco") + 12
    data[at : at + 4] = struct.pack(">I", len(data) + 8)  # the samples, in the mdat below
    data += box(b"mdat", bytes(2 * n))
    clip.write_bytes(bytes(data))
    return clip


def faststart(clip: Path) -> Path:
    """``clip``, an mp4 OpenCV wrote (ftyp, free, mdat, moov), with its moov moved before its
    media data, as ffmpeg -movflags +faststart and phones lay files out for streaming."""
    data = clip.read_bytes()
    moov = data.rindex(b"moov") - 4
    start = data.index(b"mdat") - 4
    header = bytearray(data[moov : moov + int.from_bytes(data[moov : moov + 4], "big")])
    for at in [m.start() for m in re.finditer(b"stco", header)]:  # every chunk moves
        count = int.from_bytes(header[at + 8 : at + 12], "big")
        for entry in range(at + 12, at + 12 + 4 * count, 4):
            offset = int.from_bytes(header[entry : entry + 4], "big")
            header[entry : entry + 4] = struct.pack(">I", offset + len(header))
    rest = data[start:moov] + data[moov + len(header) :]
    clip.write_bytes(data[:start] + bytes(header) + rest)
    return clip


@pytest.mark.parametrize("layout", ["moov-last", "faststart"])
@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_the_sound_track_of_a_phone_video_is_found(tmp_path, suffix, layout):
    clip = with_sound(write_clip(tmp_path / f"clip{suffix}", frames=30, fps=30))
    silent = write_clip(tmp_path / f"silent{suffix}", frames=30, fps=30)
    if layout == "faststart":
        clip, silent = faststart(clip), faststart(silent)
    assert len(read_rgb_frames(clip)) == 30  # a file FFmpeg, which OpenCV reads with, takes
    assert video_container.mp4_track_samples(clip, b"soun") == 8000
    assert video_container.mp4_track_samples(clip) == 30
    assert video_container.has_sound(clip) is True
    assert video_container.has_sound(silent) is False


def test_the_sound_stream_of_an_avi_is_found(tmp_path):
    # a dashcam's or an older camera's AVI: MJPG frames and PCM sound, each a strl in the header
    data = bytearray(mjpg_avi_bytes(tmp_path / "silent.avi"))
    assert video_container.has_sound(tmp_path / "silent.avi") is False
    strh = struct.pack("<4sI4s", b"strh", 56, b"auds") + bytes(52)
    strl = struct.pack("<4sI4s", b"LIST", 4 + len(strh), b"strl") + strh
    header = data.index(b"LIST")  # hdrl's, the first
    end = header + 8 + int.from_bytes(data[header + 4 : header + 8], "little")
    data[end:end] = strl  # hdrl's last chunk
    for at in (4, header + 4):  # RIFF's size and hdrl's grow
        data[at : at + 4] = (int.from_bytes(data[at : at + 4], "little") + len(strl)).to_bytes(
            4, "little"
        )
    (tmp_path / "sound.avi").write_bytes(bytes(data))
    assert video_container.has_sound(tmp_path / "sound.avi") is True
    (tmp_path / "cut.avi").write_bytes(bytes(data[:40]))  # no stream header: cannot tell
    assert video_container.has_sound(tmp_path / "cut.avi") is None


def opencv_video(path: Path, frames: int = 3, codec: str = "mp4v") -> Path:
    """A 64x48 video at 30 FPS of the container ``path`` names, as OpenCV writes it."""
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 30, (64, 48))
    for i in range(frames):
        video.write(np.full((48, 64, 3), 20 * i % 256, np.uint8))
    video.release()
    return path


@pytest.mark.parametrize("segment", ["sized", "unknown-size"])
@pytest.mark.parametrize("suffix", [".mkv", ".webm"])
def test_the_sound_track_of_a_matroska_or_webm_video_is_found(tmp_path, suffix, segment):
    codec = "VP80" if suffix == ".webm" else "mp4v"
    silent = opencv_video(tmp_path / f"silent{suffix}", codec=codec)
    assert len(read_rgb_frames(silent)) == 3
    assert video_container.has_sound(silent) is False
    data = bytearray(silent.read_bytes())
    seek = data.index(bytes.fromhex("1654ae6b"))  # the seek head's pointer to the track list
    tracks = data.index(bytes.fromhex("1654ae6b"), seek + 4) + 4
    width = 9 - data[tracks].bit_length()  # of its size, whose first bit marks the width
    size = int.from_bytes(data[tracks : tracks + width], "big") ^ (1 << 7 * width)
    entry = bytes.fromhex("ae86d78102838102")  # TrackEntry (6 bytes): TrackNumber 2, TrackType 2
    data[tracks + width + size : tracks + width + size] = entry  # the list's last
    size = (size + len(entry)) | (1 << 7 * width)
    data[tracks : tracks + width] = size.to_bytes(width, "big")
    at = data.index(bytes.fromhex("18538067")) + 4
    assert data[at] == 1, "a size of 8 bytes"
    size = int.from_bytes(data[at + 1 : at + 8], "big") + len(entry)
    # a browser's recording (MediaRecorder) does not know its segment's size: all ones
    size = 2**56 - 1 if segment == "unknown-size" else size
    data[at + 1 : at + 8] = size.to_bytes(7, "big")
    sound = tmp_path / f"sound{suffix}"
    sound.write_bytes(bytes(data))
    assert video_container.has_sound(sound) is True
    sound.write_bytes(bytes(data[: tracks + 4]))  # cut in its track list
    assert video_container.has_sound(sound) is None


def test_a_phone_videos_sound_is_named_with_the_command_that_adds_it(tmp_path, checkpoint, capsys):
    # OpenCV drops the sound: the output was silent, and only "no sound" said so, with no way
    # to get it back but the README's command, whose paths the user had to fill in
    clip = with_sound(write_clip(tmp_path / "my clip.mp4", frames=30, fps=30))
    out = tmp_path / "out dir"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video, "find_ffmpeg", lambda: None)  # no ffmpeg to add it
        infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))
    printed = capsys.readouterr().out.splitlines()
    quoted = [utils.shell_quote(str(p)) for p in (out / "my clip.mp4", clip)]
    assert quoted[1] == f"'{clip}'" or sys.platform == "win32"
    command = (
        f"ffmpeg -i {quoted[0]} -i {quoted[1]} -map 0:v -map 1:a -c:v copy -c:a aac -t 1.000 "
        + utils.shell_quote(str(out / "my clip_sound.mp4"))
    )
    assert printed[0].endswith(", 30.000 FPS, no sound (OpenCV writes video only)")
    assert printed[1] == f"to add the input's sound: {command}"


def test_sound_that_would_not_keep_pace_with_the_output_is_not_offered(
    tmp_path, checkpoint, capsys
):
    # the output plays 1.8x faster than the input (VariableRateFile, and an output that could
    # not be retimed): its sound would drift
    clip = with_sound(write_clip(tmp_path / "screen.mp4", frames=12, fps=10))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer_video.cv2, "VideoCapture", VariableRateFile)
        mp.setattr(infer_video, "retime_mp4", lambda path, times: False)
        infer_video.main(video_args(input=clip, model=checkpoint, out_dir=tmp_path / "out"))
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == (
        "the input's sound was left out: the output plays at another pace (see the warning "
        "above), which it would not keep"
    )


def test_a_video_without_sound_or_whose_sound_is_unknown_says_so(
    tmp_path, checkpoint, capsys, monkeypatch
):
    silent = write_clip(tmp_path / "silent.mp4", frames=3)
    infer_video.main(video_args(input=silent, model=checkpoint, out_dir=tmp_path / "a"))
    printed = capsys.readouterr().out
    assert "no sound (nor has the input)" in printed and "ffmpeg" not in printed
    # an MPEG-TS's tracks are not read: its sound may be there, and the command is given for it
    screen = opencv_video(tmp_path / "screen.ts", frames=10)
    monkeypatch.setattr(infer_video, "find_ffmpeg", lambda: None)
    assert video_container.has_sound(screen) is None
    assert not video_container.mp4_edits_hide_frames(screen)
    infer_video.main(video_args(input=screen, model=checkpoint, out_dir=tmp_path / "b"))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith("no sound (OpenCV writes video only)")
    assert printed[1].startswith("if the input has sound, to add it: ffmpeg -i ")


# An ffmpeg that logs its arguments, lists its input's sound as FAKE_FFMPEG_SOUND's codec where
# it is given no output, and "muxes" by copying its second input (the clip, sound and all, of as
# many frames as the output) to its output; it fails for the -c:a values listed
FAKE_FFMPEG = """
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_FFMPEG_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if "-c:a" not in args:
    codec = os.environ["FAKE_FFMPEG_SOUND"]
    sys.exit(f"  Stream #0:1[0x2](und): Audio: {codec} (mp4a), 8000 Hz\\nAt least one output file")
if args[args.index("-c:a") + 1] in os.environ["FAKE_FFMPEG_FAILS"].split(","):
    sys.exit("[mp4 @ 0x5] Could not write header: Invalid argument\\nConversion failed!")
inputs = [args[i + 1] for i, arg in enumerate(args) if arg == "-i"]
shutil.copy(inputs[1], args[-1])
"""


def fake_ffmpeg(tmp_path, monkeypatch, fails: str = "", sound: str = "aac") -> Path:
    """Put FAKE_FFMPEG first on the PATH; returns the file its calls' arguments go to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "ffmpeg"
    script.write_text(f"#!{sys.executable}\n{FAKE_FFMPEG}")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_FFMPEG_FAILS", fails)
    monkeypatch.setenv("FAKE_FFMPEG_SOUND", sound)
    monkeypatch.setenv("FAKE_FFMPEG_LOG", str(tmp_path / "calls.jsonl"))
    return tmp_path / "calls.jsonl"


def ffmpeg_calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def mux_calls(log: Path) -> list[list[str]]:
    """ffmpeg_calls that write a video (not those that list the input's tracks)."""
    return [call for call in ffmpeg_calls(log) if "-c:a" in call]


needs_posix_exec = pytest.mark.skipif(sys.platform == "win32", reason="runs a script as ffmpeg")


@needs_posix_exec
def test_ffmpeg_is_the_paths_else_imageio_ffmpegs_else_none(tmp_path, monkeypatch):
    # Without ffmpeg on the PATH (as on CI) the output was silent: the binary the imageio-ffmpeg
    # package ships now adds the sound
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    monkeypatch.delenv("IMAGEIO_FFMPEG_EXE", raising=False)
    calls = fake_ffmpeg(tmp_path, monkeypatch)  # one on the PATH comes first
    assert infer_video.find_ffmpeg() == str(tmp_path / "bin" / "ffmpeg")
    assert ffmpeg_calls(calls) == [], "found, not run"
    monkeypatch.setenv("PATH", str(tmp_path))  # a folder without one
    shipped = infer_video.find_ffmpeg()
    assert shipped == imageio_ffmpeg.get_ffmpeg_exe() and Path(shipped).is_file()

    def no_binary():
        raise RuntimeError("No ffmpeg exe could be found.")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_binary)
        assert infer_video.find_ffmpeg() is None
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # the package not installed
    assert infer_video.find_ffmpeg() is None


@needs_posix_exec
@pytest.mark.parametrize(
    "sound, fails, encodings",
    [("aac", "", ["copy"]), ("aac", "copy", ["copy", "aac"]), ("pcm_s16le", "", ["aac"])],
    ids=["copied", "copy-failed", "pcm-encoded"],
)
def test_ffmpeg_on_the_path_puts_the_inputs_sound_into_the_output(
    tmp_path, checkpoint, capsys, monkeypatch, sound, fails, encodings
):
    # With ffmpeg at hand a phone video's output was silent all the same: it now has the sound,
    # copied as it is where MP4 players take it, else encoded to AAC, and replaced atomically.
    # A camera's PCM was copied too: FFmpeg 6+ writes it into the MP4, which few players play.
    calls = fake_ffmpeg(tmp_path, monkeypatch, fails, sound)
    clip = with_sound(write_clip(tmp_path / "clip.mp4", frames=30, fps=30))
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith(", 30.000 FPS, with the input's sound (added by ffmpeg)")
    assert (out / "clip.mp4").read_bytes() == clip.read_bytes()  # the fake's result
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4"], "no temporary file remains"
    made = mux_calls(calls)
    assert [call[call.index("-c:a") + 1] for call in made] == encodings
    assert ffmpeg_calls(calls)[0][-2:] == ["-i", str(clip)], "the input's codec asked first"
    last = made[-1]
    assert last[last.index("-i") + 1] == str(out / "clip.mp4") and str(clip) in last
    assert last[last.index("-t") + 1] == "1.000" and "-c:v" in last and "copy" in last


@needs_posix_exec
def test_a_failing_ffmpeg_keeps_the_silent_video_and_says_why(
    tmp_path, checkpoint, capsys, caplog, monkeypatch
):
    calls = fake_ffmpeg(tmp_path, monkeypatch, fails="copy,aac")
    clip = with_sound(write_clip(tmp_path / "clip.mp4", frames=30, fps=30))
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))
    assert len(mux_calls(calls)) == 2
    assert (
        f"{out / 'clip.mp4'} keeps no sound: ffmpeg failed: [mp4 @ 0x5] Could not write header: "
        "Invalid argument / Conversion failed!" in caplog.text
    )
    assert video_container.mp4_track_samples(out / "clip.mp4", b"soun") == 0
    assert len(read_rgb_frames(out / "clip.mp4")) == 30
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4"], "no temporary file remains"
    assert "to add the input's sound: ffmpeg -i " in capsys.readouterr().out


@needs_posix_exec
def test_no_sound_keeps_the_output_silent_and_never_runs_ffmpeg(
    tmp_path, checkpoint, capsys, monkeypatch
):
    calls = fake_ffmpeg(tmp_path, monkeypatch)
    clip = with_sound(write_clip(tmp_path / "clip.mp4", frames=3, fps=30))
    infer_video.main(
        video_args(input=clip, model=checkpoint, out_dir=tmp_path / "o", no_sound=True)
    )
    assert ffmpeg_calls(calls) == []
    assert "30.000 FPS, no sound (--no-sound)" in capsys.readouterr().out


@needs_ffmpeg
def test_ffmpeg_muxes_the_inputs_sound_with_every_frame(tmp_path, checkpoint, capsys):
    clip = with_sound(write_clip(tmp_path / "clip.mp4", frames=30, fps=30))
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))
    assert "with the input's sound (added by ffmpeg)" in capsys.readouterr().out
    assert video_container.mp4_track_samples(out / "clip.mp4", b"soun") > 0
    assert len(read_rgb_frames(out / "clip.mp4")) == 30


@needs_ffmpeg
@pytest.mark.parametrize(
    "name, sound, kept",
    [
        ("camera.mov", "pcm_s16le", "aac"),
        ("dashcam.avi", "pcm_s16le", "aac"),
        ("phone.mp4", "aac", "aac"),
        ("recording.mkv", "ac3", "ac3"),
    ],
)
def test_sound_that_mp4_players_take_is_copied_and_other_sound_encoded_to_aac(
    tmp_path, checkpoint, capsys, name, sound, kept
):
    # A camera's PCM sound was copied into the output as it was, which FFmpeg 6+ does without
    # an error ('ipcm'), and which few players play; AC3 (kept) shows that the rest is copied
    clip = tmp_path / name
    make = [FFMPEG, "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
            "testsrc=size=64x64:rate=10:duration=0.5", "-f", "lavfi", "-i",
            "sine=frequency=440:sample_rate=48000:duration=0.5", "-c:v", "mpeg4", "-c:a", sound,
            str(clip)]  # fmt: skip
    subprocess.run(make, check=True, timeout=120)
    assert infer_video.sound_codecs(FFMPEG, clip) == [sound]
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))
    assert "with the input's sound (added by ffmpeg)" in capsys.readouterr().out
    result = out / f"{clip.stem}.mp4"
    assert infer_video.sound_codecs(FFMPEG, result) == [kept]
    assert video_container.mp4_track_samples(result, b"soun") > 0
    assert video_container.mp4_track_samples(result) == 5
    assert len(read_rgb_frames(result)) == 5
    assert sorted(p.name for p in out.iterdir()) == [result.name], "no temporary file remains"


def frame_times_ms(path) -> list[float]:
    """The timestamps OpenCV gives the frames of the video at ``path``, in ms."""
    capture, times = cv2.VideoCapture(str(path)), []
    while capture.read()[0]:
        times.append(capture.get(cv2.CAP_PROP_POS_MSEC))
    capture.release()
    return times


def test_retiming_gives_opencvs_mp4_the_frame_times_asked_and_leaves_other_layouts_alone(
    tmp_path,
):
    clip = write_clip(tmp_path / "clip.mp4", frames=12, size=(64, 48), fps=10)
    frames = read_rgb_frames(clip)
    times = np.array([0, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.25, 1.5, 1.6, 1.7, 1.8, 1.9])
    assert video_container.retime_mp4(clip, times)
    assert frame_times_ms(clip) == pytest.approx(1000 * times[:-1], abs=0.1)
    capture = cv2.VideoCapture(str(clip))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12 / 1.9, rel=1e-3)  # the average
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    capture.release()
    assert all(np.array_equal(a, b) for a, b in zip(read_rgb_frames(clip), frames, strict=True))
    assert video_container.retime_mp4(clip, np.linspace(0, 3, 13))  # a run of one duration
    assert frame_times_ms(clip) == pytest.approx(250 * np.arange(12), abs=0.1)
    # a second track (sound), or an edit that starts past the first frame: not OpenCV's
    others = [
        with_sound(write_clip(tmp_path / "sound.mp4", frames=12, fps=10)),
        b_frame_like_mp4(tmp_path / "b.mp4", B_FRAMES),
    ]
    for other in others:
        data = other.read_bytes()
        assert not video_container.retime_mp4(other, np.linspace(0, 3, 13))
        assert other.read_bytes() == data


def phone_variable_rate_mp4(path) -> Path:
    """A 60-frame 64x48 mp4 whose first 30 frames last 1/30 s and the rest 1/10 s (a phone that
    slowed down in the dark), 4 s in all: its stts holds two runs, its durations say 4 s."""
    clip = write_clip(path, frames=60, size=(64, 48), fps=30)  # 512 ticks a frame of 15360
    data = bytearray(clip.read_bytes())
    moov = data.rindex(b"moov") - 4
    at = data.index(b"stts", moov) - 4
    assert struct.unpack(">I4sIII", data[at : at + 20])[3:] == (1, 60)
    data[at : at + 24] = struct.pack(">I4sIIIIII", 32, b"stts", 0, 2, 30, 512, 30, 1536)
    for kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl"):  # the boxes that hold it grow
        box = data.index(kind, moov) - 4
        data[box : box + 4] = struct.pack(">I", int.from_bytes(data[box : box + 4], "big") + 8)
    for kind, offset in ((b"mvhd", 20), (b"tkhd", 24), (b"elst", 12)):  # in 1000ths of a second
        box = data.index(kind, moov)
        data[box + offset : box + offset + 4] = struct.pack(">I", 4000)
    mdhd = data.index(b"mdhd", moov)
    data[mdhd + 20 : mdhd + 24] = struct.pack(">I", 30 * 512 + 30 * 1536)
    clip.write_bytes(bytes(data))
    return clip


def test_a_phone_video_at_a_variable_frame_rate_keeps_each_frames_time(
    tmp_path, checkpoint, capsys
):
    # OpenCV states the average, 15 FPS: the output kept the length, 4 s, but showed frame 30,
    # 1 s into the input, at 2 s, out of step with the sound put back beside it
    clip = phone_variable_rate_mp4(tmp_path / "phone.mp4")
    shown = [1000 * i / 30 for i in range(30)] + [1000 + 100 * i for i in range(30)]
    assert frame_times_ms(clip) == pytest.approx(shown, abs=0.1)
    capture = cv2.VideoCapture(str(clip))
    assert capture.get(cv2.CAP_PROP_FPS) == 15
    capture.release()
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out))
    assert frame_times_ms(out / "phone.mp4") == pytest.approx(shown, abs=0.1)
    assert "phone.mp4: 60 frames, 64x48, 15.000 FPS" in capsys.readouterr().out


def test_a_glob_the_shell_expanded_is_named_with_the_quoted_glob(tmp_path, capsys):
    """--input photos/*.jpg, unquoted, reaches the script as several files: argparse called
    the second one an unrecognized argument, and nothing said why."""
    photos = [tmp_path / "photos" / name for name in ("a.jpg", "b.jpg", "c.jpg")]
    photos[0].parent.mkdir()
    for photo in photos:
        photo.write_bytes(b"")
    folder = tmp_path / "photos"
    message = (
        rf"--input takes one file, folder or glob, and got 3 files: a glob the shell expanded\? "
        rf'Quote it, --input "{re.escape(str(folder / "*.jpg"))}", or pass their folder, '
        rf"--input {re.escape(str(folder))}$"
    )
    with pytest.raises(UserError, match=message):
        infer_image.parse_args(["--input", *map(str, photos), "--out-dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit):  # anything else stays argparse's
        infer_image.parse_args(["--input", str(photos[0]), "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    assert infer_image.parse_args(["--input", str(folder / "*.jpg")]).input == str(folder / "*.jpg")


def test_several_videos_after_input_are_named_with_the_fix(tmp_path, capsys):
    """--input videos/*.mp4, which the shell expands: argparse called the second video an
    unrecognized argument."""
    clips = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for clip in clips:
        clip.write_bytes(b"")
    message = (
        r"--input takes one video, and got 2 files \(a glob the shell expanded\?\): run "
        rf"infer_video.py once for each, --input {re.escape(str(clips[0]))} first$"
    )
    with pytest.raises(UserError, match=message):
        infer_video.parse_args(["--input", *map(str, clips)])
    with pytest.raises(SystemExit):  # anything else stays argparse's
        infer_video.parse_args(["--input", str(clips[0]), "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


# --- --legend ------------------------------------------------------------------------------


def drawn_texts(monkeypatch) -> list[str]:
    """The texts utils.draw_text draws from here on, in order (drawn as well)."""
    texts = []
    draw_text = utils.draw_text

    def recording(image, text, *args, **kwargs):
        texts.append(text)
        return draw_text(image, text, *args, **kwargs)

    monkeypatch.setattr(utils, "draw_text", recording)
    return texts


def changed_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the pixels ``after`` changed, bottom and right exclusive."""
    changed = np.argwhere((before != after).any(axis=-1))
    if not len(changed):
        return None
    (top, left), (bottom, right) = changed.min(0), changed.max(0) + 1
    return int(top), int(left), int(bottom), int(right)


def test_the_legend_keys_the_masks_classes_in_the_corner_only(predictor, monkeypatch):
    image, truth = make_sample(np.random.default_rng(5), 320, 240)
    mask = truth.copy()
    texts = drawn_texts(monkeypatch)
    plain = predictor.overlay(image, mask, 0.5)
    keyed = predictor.overlay(image, mask, 0.5, legend=True)
    assert np.array_equal(mask, truth), "the mask is never drawn on"
    # background, black, is left undrawn in the overlay and so in its key
    assert texts == ["person"]
    top, left, bottom, right = changed_box(plain, keyed)
    assert top < 10 and left < 10 and bottom <= 120 and right < 160
    # a class 0 given a colour is keyed like the others (Cityscapes' road)
    road = ClassConfig(("road", "person"), None, ((128, 64, 128), (0, 255, 0)))
    texts.clear()
    utils.draw_legend(plain.copy(), [0, 1], road.names, road.vis_colors)
    assert texts == ["road", "person"]


def test_a_legend_of_150_classes_is_bounded_and_counts_the_rest(monkeypatch):
    names = [f"class {i}" for i in range(150)]
    colors = distinct_colors(150)
    texts = drawn_texts(monkeypatch)
    rows = utils.LEGEND_ROWS
    utils.draw_legend(np.full((1080, 1920, 3), 128, np.uint8), range(150), names, colors)
    # class 0 is black: 149 keyed, rows - 1 of them named, the last row counting the others
    assert texts == [f"class {i}" for i in range(1, rows)] + [f"+{149 - rows + 1} more"]
    # a small image holds fewer rows: the key covers at most LEGEND_HEIGHT of it
    texts.clear()
    image = np.full((240, 320, 3), 128, np.uint8)
    keyed = utils.draw_legend(image.copy(), range(150), names, colors)
    assert 2 <= len(texts) < rows and texts[-1] == f"+{149 - len(texts) + 1} more"
    assert changed_box(image, keyed)[2] <= 240 * utils.LEGEND_HEIGHT
    # a photo of a few of them lists those alone, in the order of their ids
    texts.clear()
    utils.draw_legend(image.copy(), [140, 7, 7, 255], names, colors)
    assert texts == ["class 7", "class 140"]  # 255, ignore, is no class


def test_a_legend_is_sized_to_the_image_and_cut_to_its_width(monkeypatch):
    names = [
        "background",
        "a class whose name is far too long to fit across an image of 320 pixels",
    ]
    colors = [(0, 0, 0), (0, 200, 0)]
    small = np.full((240, 320, 3), 128, np.uint8)
    large = np.full((2160, 3840, 3), 128, np.uint8)
    texts = drawn_texts(monkeypatch)
    small_box = changed_box(small, utils.draw_legend(small.copy(), [1], names, colors))
    large_box = changed_box(large, utils.draw_legend(large.copy(), [1], names, colors))
    small_h, large_h = small_box[2] - small_box[0], large_box[2] - large_box[0]
    assert 3 * small_h < large_h < 9 * small_h  # 10 px text at 320x240, 54 px at 4K
    assert small_box[3] <= 320 and texts[0].endswith("...") and names[1].startswith(texts[0][:-3])
    assert texts[1] == names[1]  # 3840 pixels hold it whole


def key_text_box(image: np.ndarray, swatch: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the white text right of a legend's one ``swatch``."""
    edge = np.argwhere((image == swatch).all(-1))[:, 1].max() + 1  # the swatch's white edge
    ink = np.argwhere((image[:, edge + 1 :] > 200).all(-1))
    (top, left), (bottom, right) = ink.min(0), ink.max(0) + 1
    return int(top), int(left + edge + 1), int(bottom), int(right + edge + 1)


def test_a_legend_draws_class_names_as_written(monkeypatch):
    """OpenCV's Hershey fonts draw ASCII alone: the key named café "cafe" and дерево "??????",
    where the classes' names are the user's own."""
    assert utils.legend_text("café") == "café" == utils.legend_text("cafe\u0301")  # composed
    # line breaks, which stopped the text's layout with "raqm_layout() failed", as spaces
    breaks = "a\nb\rc\x85d\u2029e\x1cf"
    assert utils.legend_text(breaks) == "a b c d e f"
    utils.draw_legend(np.zeros((240, 320, 3), np.uint8), [1], ["", breaks], [(0, 0, 0)] * 2)
    blank = np.zeros((90, 400, 3), np.uint8)

    def drawn(text: str) -> np.ndarray:
        image = blank.copy()
        utils.draw_text(image, text, (10, 60), 40, (255, 255, 255))
        return image

    # é is the e, with an accent above it
    e, e_acute = changed_box(blank, drawn("e")), changed_box(blank, drawn("é"))
    assert e_acute[0] < e[0] - 5 and e_acute[2] == e[2]
    assert np.array_equal(drawn("é")[e[0] :], drawn("e")[e[0] :])
    top, left, bottom, right = changed_box(blank, drawn("дерево"))
    assert bottom - top >= 0.6 * 40 and right - left >= 3 * 40  # six letters, not one
    assert not np.array_equal(drawn("дерево"), drawn("??????"))
    # in a 1080p key: white text as tall as its capitals should be (27 px), readable
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    texts = drawn_texts(monkeypatch)
    colors = [(0, 0, 0), (0, 200, 0)]
    keyed = utils.draw_legend(frame.copy(), [1], ["background", "Дерево"], colors)
    assert texts == ["Дерево"] and utils.LEGEND_TEXT * 1080 == 27
    top, left, bottom, right = key_text_box(keyed, (0, 200, 0))
    assert 0.75 * 27 <= bottom - top <= 1.5 * 27 and right - left >= 3 * 27
    asked = utils.draw_legend(frame.copy(), [1], ["background", "??????"], colors)
    assert not np.array_equal(keyed, asked)
    # and so does legend.png's sheet
    sheet = utils.legend_sheet(["background", "дерево"], colors)
    assert not np.array_equal(sheet, utils.legend_sheet(["background", "??????"], colors))


@pytest.mark.parametrize("font", ["missing", "unreadable"])
def test_without_its_font_the_legend_draws_ascii_and_warns_once(
    tmp_path, monkeypatch, caplog, font
):
    import matplotlib
    from matplotlib import font_manager

    if font == "unreadable":
        (tmp_path / utils.LEGEND_FONT_FILE).parent.mkdir(parents=True)
        (tmp_path / utils.LEGEND_FONT_FILE).write_bytes(b"not a font")

    def not_found(*args, **kwargs):
        raise ValueError("Failed to find font DejaVu Sans")

    monkeypatch.setattr(matplotlib, "get_data_path", lambda: str(tmp_path))
    monkeypatch.setattr(font_manager, "findfont", not_found)
    forget = (utils.legend_font_file.cache_clear, utils._find_legend_font.cache_clear)
    for cache_clear in forget:
        cache_clear()
    try:
        assert utils.legend_text("café") == "cafe" and utils.legend_text("дерево") == "??????"
        image = np.full((240, 320, 3), 90, np.uint8)
        texts = drawn_texts(monkeypatch)
        colors = [(0, 0, 0), (0, 200, 0)]
        keyed = utils.draw_legend(image.copy(), [1], ["background", "café"], colors)
        utils.legend_sheet(["background", "café"], colors)
        assert texts == ["cafe", "0  background", "1  cafe"]
        top, left, bottom, right = key_text_box(keyed, (0, 200, 0))
        assert bottom - top >= 0.6 * utils.LEGEND_MIN_TEXT
        assert right - left >= 1.5 * utils.LEGEND_MIN_TEXT  # four letters
    finally:
        for cache_clear in forget:
            cache_clear()
    warned = [r.getMessage() for r in caplog.records if "DejaVu Sans" in r.getMessage()]
    assert len(warned) == 1 and "reinstall matplotlib" in warned[0]


@pytest.mark.parametrize("shape", [(48, 1, 3), (1, 48, 3), (14, 14, 3), (24, 900, 3), (300, 20, 3)])
def test_a_legend_on_an_image_too_small_for_it_is_left_out(predictor, shape):
    image = np.full(shape, 90, np.uint8)
    mask = np.ones(shape[:2], np.uint8)
    plain = predictor.overlay(image, mask, 0.5)
    assert np.array_equal(predictor.overlay(image, mask, 0.5, legend=True), plain)


def test_infer_image_legend_changes_only_the_overlays_corner_and_writes_legend_png(
    tmp_path, checkpoint, predictor, monkeypatch
):
    src = tmp_path / "in"
    src.mkdir()
    image, _ = make_sample(np.random.default_rng(6), 320, 240)
    Image.fromarray(image).save(src / "a.png")
    assert 1 in predictor.predict(image), "the image must hold a class the legend names"
    infer_image.main(image_args(input=src, model=checkpoint, out_dir=tmp_path / "plain"))
    texts = drawn_texts(monkeypatch)
    keyed = tmp_path / "keyed"
    infer_image.main(image_args(input=src, model=checkpoint, out_dir=keyed, legend=True))
    assert sorted(p.name for p in keyed.iterdir()) == ["a_mask.png", "a_overlay.jpg", "legend.png"]
    assert (keyed / "a_mask.png").read_bytes() == (tmp_path / "plain/a_mask.png").read_bytes()
    plain = np.asarray(Image.open(tmp_path / "plain/a_overlay.jpg"))
    drawn = np.asarray(Image.open(keyed / "a_overlay.jpg"))
    top, left, bottom, right = changed_box(plain, drawn)
    # JPEG codes 16x16 blocks (with their neighbours' colour, at most): the rest is unchanged
    assert top < 16 and left < 16 and bottom <= 120 + 16 and right <= 160 + 16
    # legend.png (written last): every class, named with its id, class 0 too
    assert texts == ["person", "0  background", "1  person"]
    with Image.open(keyed / "legend.png") as legend:
        assert legend.info["Software"] == "infer_image.py --legend"
        pixels = {tuple(p) for p in np.asarray(legend.convert("RGB")).reshape(-1, 3)}
    assert {(0, 0, 0), (0, 255, 0)} <= pixels  # both swatches
    # a rerun into the same folder reads neither its outputs nor its legend as photos
    with pytest.raises(UserError, match="no images found"):
        infer_image.find_images(str(keyed), out_dir=keyed)


@pytest.mark.parametrize("readable", [0, 1])
def test_legend_png_is_written_only_where_an_image_was_segmented(tmp_path, checkpoint, readable):
    """A run whose every image failed left a legend.png, the key of results that are not there."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    if readable:
        Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(src / "a.png")
    (src / "z_broken.png").write_bytes(b"not an image")
    args = image_args(input=src, model=checkpoint, out_dir=out, batch=1, legend=True)
    with pytest.raises(UserError, match=r"image\(s\) could not be read:\n.*z_broken\.png"):
        infer_image.main(args)
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert written == (["a_mask.png", "a_overlay.jpg", "legend.png"] if readable else [])
    if readable:
        assert infer_image.is_legend(out / "legend.png")


def test_a_legend_png_of_the_users_is_never_replaced(tmp_path, checkpoint):
    for name in ("a.png", "legend.png"):  # a photo named legend.png, where results go
        Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(tmp_path / name)
    before = (tmp_path / "legend.png").read_bytes()
    args = image_args(input=tmp_path, model=checkpoint, out_dir=tmp_path, legend=True)
    with pytest.raises(UserError, match=r"--legend would replace .*legend\.png.*another --out-dir"):
        infer_image.main(args)
    assert (tmp_path / "legend.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "legend.png"]
    # without --legend it is a photo like the others
    infer_image.main(image_args(input=tmp_path, model=checkpoint, out_dir=tmp_path))
    assert (tmp_path / "legend_mask.png").is_file()
    assert (tmp_path / "legend.png").read_bytes() == before


def test_a_videos_legend_keys_the_classes_so_far_and_keeps_frames_and_size(
    tmp_path, checkpoint, monkeypatch
):
    # a key of each frame's classes would flicker as they come and go: it only grows
    masks = [np.full((2, 2), c, np.uint8) for c in (1, 0, 1, 2)]
    seen = np.zeros(256, np.int64)
    so_far = infer_video.classes_so_far(masks[:2], seen) + infer_video.classes_so_far(
        masks[2:], seen
    )
    assert [dict(enumerate(p[:3].tolist())) for p in so_far] == [
        {0: 0, 1: 4, 2: 0},
        {0: 4, 1: 4, 2: 0},
        {0: 4, 1: 8, 2: 0},
        {0: 4, 1: 8, 2: 4},
    ]
    assert not any(p[3:].any() for p in so_far)
    clip = scene_clip(tmp_path / "scenes.mp4", frames=5, size=(320, 240))
    texts = drawn_texts(monkeypatch)
    out = tmp_path / "out"
    infer_video.main(video_args(input=clip, model=checkpoint, out_dir=out, batch=2, legend=True))
    written = read_rgb_frames(out / "scenes.mp4")
    assert [frame.shape for frame in written] == [(240, 320, 3)] * 5
    assert texts == ["person"] * 5
    assert sorted(p.name for p in out.iterdir()) == ["scenes.mp4"]  # no legend.png: one video


def test_validation_overlays_key_the_classes_of_each_half(
    tmp_path, predictor, tiny_data, monkeypatch
):
    # tiny_data's 96x72 pair 4 times as large: a key fits in a quarter of its height
    pair = (tmp_path / "big.png", tmp_path / "big_mask.png")
    for folder, dest, resample in (("valid_images", pair[0], Image.BILINEAR),
                                   ("valid_masks", pair[1], Image.NEAREST)):  # fmt: skip
        Image.open(tiny_data / folder / "img000.png").resize((384, 288), resample).save(dest)
    texts = drawn_texts(monkeypatch)
    train.write_overlays(tmp_path, SimpleNamespace(pairs=[pair]), 1, predictor)
    predicted = 1 in predictor.predict(read_image(pair[0]))
    assert texts == ["person"] * (1 + predicted)  # the truth's, then the prediction's if any
    assert Image.open(tmp_path / "valid_preds" / "big.jpg").size == (2 * 384, 288)


def test_a_legend_too_short_for_every_class_keeps_the_largest(predictor, monkeypatch):
    """A street scene of Cityscapes' 19 classes keyed road, sidewalk, ... in id order until
    the rows ran out, and its car, the class covering most of the image, went into "+K more"."""
    names = [f"class {i}" for i in range(20)]
    classes = ClassConfig(tuple(names), None, tuple(map(tuple, distinct_colors(20))))
    monkeypatch.setattr(predictor, "classes", classes)
    mask = np.zeros((240, 320), np.uint8)
    for c in range(1, 20):  # a column of 4 pixels each, class 19 the rest of the image
        mask[:, 4 * c : 4 * c + 4] = c
    mask[:, 80:] = 19
    mask[:100, 80:] = 17
    mask[:, 76:80] = 18  # 8 columns, twice the others'
    texts = drawn_texts(monkeypatch)
    predictor.overlay(np.full((240, 320, 3), 90, np.uint8), mask, 0.5, legend=True)
    shown, more = texts[:-1], texts[-1]
    assert more == f"+{19 - len(shown)} more" and 2 <= len(shown) < 19
    # the three largest are kept, and listed by id as a key that fits is
    assert shown[-3:] == ["class 17", "class 18", "class 19"]
    assert shown == sorted(shown, key=lambda text: int(text.split()[1]))


def test_a_full_video_key_keeps_the_classes_of_the_most_pixels_so_far(predictor, monkeypatch):
    """A video's key of its classes so far listed the lowest ids once its rows were full: the
    cars of a Cityscapes clip that came into view after its first 9 classes were never keyed."""
    names = [f"class {i}" for i in range(20)]
    classes = ClassConfig(tuple(names), None, tuple(map(tuple, distinct_colors(20))))
    monkeypatch.setattr(predictor, "classes", classes)
    early = np.repeat(np.arange(1, 13, dtype=np.uint8), 27)[None, :320].repeat(240, 0)  # 12
    late = np.full((240, 320), 19, np.uint8)  # then one class fills the view
    seen = np.zeros(256, np.int64)
    legends = infer_video.classes_so_far([early, late, late], seen)
    image = np.full((240, 320, 3), 90, np.uint8)
    texts = drawn_texts(monkeypatch)
    predictor.overlay(image, early, 0.5, legends[0])
    first = texts[:]
    assert first[-1] == f"+{12 - (len(first) - 1)} more" and "class 19" not in first
    del texts[:]
    predictor.overlay(image, late, 0.5, legends[2])
    assert "class 19" in texts and texts[-1] == f"+{13 - (len(texts) - 1)} more"


def test_validation_overlays_key_at_most_a_quarter_of_their_height(
    tmp_path, predictor, tiny_data, monkeypatch
):
    """--legend's key may cover half an image's height. Drawn unasked in valid_preds, on a 96x72
    validation image it hid the top quarter of each half: there it is left out, and on larger
    ones it lists fewer classes (the last row "+K more") than --legend would."""
    image_path = tiny_data / "valid_images" / "img000.png"
    valid_set = SimpleNamespace(pairs=[(image_path, tiny_data / "valid_masks" / "img000.png")])
    texts = drawn_texts(monkeypatch)
    train.write_overlays(tmp_path, valid_set, 1, predictor)
    assert texts == []
    image = np.full((240, 320, 3), 90, np.uint8)
    names = [f"class {i}" for i in range(8)]
    colors = distinct_colors(8)
    full = utils.draw_legend(image.copy(), range(8), names, colors)
    assert changed_box(image, full)[2] > 240 / 4  # as --legend draws it: 7 rows
    texts.clear()
    keyed = utils.draw_legend(image.copy(), range(8), names, colors, train.VALID_LEGEND_HEIGHT)
    assert changed_box(image, keyed)[2] <= 240 * train.VALID_LEGEND_HEIGHT <= 240 / 4
    assert texts == ["class 1", "class 2", "+5 more"]
