import argparse
import copy
import fnmatch
import gc
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import config
import train
from config import (
    CLASS_KEYS,
    DEFAULT_CLASSES,
    IGNORE_INDEX,
    PENN_FUDAN_URL,
    ClassConfig,
    distinct_colors,
    flag_name,
    parse_args,
)
from conftest import FAKE_HUB, ROOT, PixelClassifier, load_benchmark, small_memory
from datasets import SegmentationDataset, check_dataset, read_mask, resize_image, resize_mask
from engine import Predictor, evaluate
from leftover_workers import leftover_workers_end_at_once  # noqa: F401 (autouse)
from metrics import ConfusionMatrix
from model import (
    Segmentor,
    load_backbone,
    load_checkpoint,
    peek_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from synthetic import make_dataset, penn_fudan_zip
from utils import UserError, amp_dtype, check_grad_scaler, pick_device, read_csv, write_csv

IMGSZ = ["90", "66"]  # neither a multiple of 14 nor square


def run_train(argv: list[str]) -> None:
    train.main(*parse_args(train.get_args_parser(), argv))


def common(data: Path, out: Path, weights: Path) -> list[str]:
    return ["--data", str(data), "--out-dir", str(out), "--backbone-source", "timm",
            "--weights", str(weights), "--imgsz", *IMGSZ, "--workers", "0", "--batch", "4",
            "--lr", "3e-3"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data, weights_file) -> Path:
    out = tmp_path_factory.mktemp("run")
    run_train([*common(tiny_data, out, weights_file), "--epochs", "6"])
    return out


def test_training_lifts_validation_miou_above_the_untrained_model(trained, tiny_data, weights_file):
    torch.manual_seed(42)  # the seed train.py uses, so the head starts from the same weights
    backbone = load_backbone("dinov2_vits14", "timm", str(weights_file))
    untrained = Segmentor(backbone, num_classes=2)
    valid = SegmentationDataset(
        check_dataset(tiny_data, DEFAULT_CLASSES)["valid"], DEFAULT_CLASSES, (90, 66), train=False
    )
    loader = torch.utils.data.DataLoader(valid, batch_size=4, collate_fn=train.collate_eval)
    before = evaluate(untrained, loader, torch.device("cpu"), 2)
    rows = read_csv(trained / "metrics.csv")
    best = max(r["valid_miou"] for r in rows)
    assert best > before["miou"] + 0.15, (before["miou"], [r["valid_miou"] for r in rows])
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_training_writes_every_output(trained):
    rows = read_csv(trained / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert set(rows[0]) >= {"epoch", "train_loss", "train_acc", "train_miou", "valid_loss",
                            "valid_acc", "valid_miou", "lr", "seconds"}  # fmt: skip
    for name in ("loss.png", "accuracy.png", "miou.png"):
        assert (trained / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((trained / "valid_preds").glob("*.jpg"))) == 4
    settings = yaml.safe_load((trained / "args.yaml").read_text())
    assert settings["imgsz"] == [90, 66] and settings["ALL_CLASSES"] == ["background", "person"]
    assert not list(trained.glob(".*.tmp")), "no temporary files may remain"


def readme_outputs() -> dict[str, str]:
    """The README's table of what train.py writes: each file named in a row (a glob for the
    overlays) -> that row's content cell."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Outputs", 1)[1].split("| file | content |\n| --- | --- |\n", 1)[1]
    outputs = {}
    for row in table.split("\n\n", 1)[0].splitlines():
        files, content = row.strip("|").split(" | ", 1)
        outputs.update(dict.fromkeys(re.findall(r"`([^`]+)`", files), content))
    return outputs


def test_the_readme_names_every_file_and_column_a_run_writes(trained):
    outputs = readme_outputs()
    written = {p.relative_to(trained).as_posix() for p in trained.rglob("*") if p.is_file()}
    eval_only = ("eval_metrics.json", *train.CONFUSION_PLOTS.values())
    named = [name for name in outputs if name not in eval_only]
    unwritten = [name for name in named if not fnmatch.filter(written, name)]
    assert not unwritten, f"the README's Outputs table names {unwritten}: the run wrote none"
    unnamed = sorted(f for f in written if not any(fnmatch.fnmatch(f, name) for name in named))
    assert not unnamed, f"the run wrote {unnamed}, which the README's Outputs table leaves out"
    columns = outputs["metrics.csv"].split("one row per epoch: ", 1)[1].rstrip(" |").split(", ")
    assert list(read_csv(trained / "metrics.csv")[0]) == columns


def test_checkpoints_describe_themselves_and_load_safely(trained):
    best = max(read_csv(trained / "metrics.csv"), key=lambda r: r["valid_miou"])
    for name in ("best_model_iou.pth", "best_model_loss.pth", "last_model.pth"):
        ckpt = torch.load(trained / name, weights_only=True)
        assert ckpt["backbone"] == "dinov2_vits14" and ckpt["backbone_source"] == "timm"
        assert ckpt["layers"] == 4 and ckpt["imgsz"] == [90, 66]
        assert ckpt["classes"]["ALL_CLASSES"] == ["background", "person"]
        assert ckpt["classes"]["VIS_LABEL_MAP"] == [[0, 0, 0], [0, 255, 0]]
        assert {"optimizer", "scheduler", "epoch", "args"} <= ckpt.keys()
        assert "blocks.11.mlp.fc2.weight" in ckpt["model"]["backbone"]  # backbone included
    assert torch.load(trained / "last_model.pth", weights_only=True)["epoch"] == 6
    assert torch.load(trained / "best_model_iou.pth", weights_only=True)["epoch"] == best["epoch"]


def test_a_tied_score_keeps_the_first_epoch_that_reached_it_as_best(
    tmp_path, fresh_data, weights_file, monkeypatch
):
    # a tie is no improvement: best_model_*.pth stay the earliest epoch with the best score
    scores = {"loss": 0.5, "acc": 0.75, "miou": 0.5, "iou": [0.5, 0.5]}
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: dict(scores))
    run_train([*common(fresh_data, tmp_path, weights_file), "--epochs", "2",
               "--imgsz", "56", "56", "--num-vis", "0"])  # fmt: skip
    assert [r["valid_miou"] for r in read_csv(tmp_path / "metrics.csv")] == [0.5, 0.5]
    for name in ("best_model_iou.pth", "best_model_loss.pth"):
        assert read_checkpoint(tmp_path / name)["epoch"] == 1, name


def test_patience_stops_after_epochs_without_a_better_miou_and_a_resume_counts_on(
    tmp_path, fresh_data, weights_file, monkeypatch, caplog
):
    # each epoch's valid mIoU, by the epoch evaluate is called for ("valid E/N"): epoch 1 is the
    # best, and epoch 3 only ties it, which is no improvement, as for best_model_iou.pth
    mious = {1: 0.5, 2: 0.4, 3: 0.5, 4: 0.45, 5: 0.6}  # then 0.0

    def scores(*args, desc, **kwargs) -> dict:
        epoch = int(desc.split()[1].split("/")[0])
        return {"loss": 0.5, "acc": 0.75, "miou": mious.get(epoch, 0.0), "iou": [0.5, 0.5]}

    monkeypatch.setattr(train, "evaluate", scores)
    args = [*common(fresh_data, tmp_path, weights_file), "--imgsz", "56", "56", "--num-vis", "1"]
    with caplog.at_level("INFO", logger="dinoseg"):
        run_train([*args, "--epochs", "10", "--patience", "2"])
    assert (
        "stopped early at epoch 3 of 10: no valid mIoU has beaten epoch 1's 0.5000 in the 2 "
        "epochs since (--patience 2)"
    ) in caplog.text
    # a normal end: every file of epoch 3 is written, and the best model is epoch 1's
    assert [r["epoch"] for r in read_csv(tmp_path / "metrics.csv")] == [1, 2, 3]
    assert read_checkpoint(tmp_path / "last_model.pth")["epoch"] == 3
    assert read_checkpoint(tmp_path / "best_model_iou.pth")["epoch"] == 1
    settings = (tmp_path / "args.yaml").read_text()
    assert yaml.safe_load(settings)["patience"] == 2
    for name in ("loss.png", "accuracy.png", "miou.png"):
        assert (tmp_path / name).stat().st_mtime >= (tmp_path / "metrics.csv").stat().st_mtime

    # resumed as it was, it has nothing to do, and says how to train on
    resume = ["--resume", str(tmp_path / "last_model.pth")]
    caplog.clear()
    with caplog.at_level("INFO", logger="dinoseg"):
        run_train([*args, *resume])
    assert (
        "nothing to do: --patience 2 is reached, as no valid mIoU has beaten epoch 1's 0.5000 "
        "in the 2 epochs up to the checkpoint's epoch 3. To train on, resume with --patience 3 "
        "or more, or --no-patience"
    ) in caplog.text
    assert (tmp_path / "args.yaml").read_text() == settings
    # a larger --patience trains on, counting on from metrics.csv: epoch 4 is the third epoch
    # without a better mIoU, where the uninterrupted run under --patience 3 stops too
    caplog.clear()
    with caplog.at_level("INFO", logger="dinoseg"):
        run_train([*args, *resume, "--patience", "3"])
    assert "apply from epoch 4: --patience 3 (was 2)" in caplog.text
    assert "stopped early at epoch 4 of 10: no valid mIoU has beaten epoch 1's" in caplog.text
    assert read_checkpoint(tmp_path / "last_model.pth")["epoch"] == 4


def test_checkpoint_round_trip_gives_the_trained_models_predictions(tmp_path, weights_file):
    torch.manual_seed(0)
    model = Segmentor(load_backbone("dinov2_vits14", "timm", str(weights_file), layers=2), 2,
                      fine_tune=True)  # fmt: skip
    images = torch.randint(0, 256, (2, 3, 56, 70), dtype=torch.uint8)
    masks = torch.randint(0, 2, (2, 56, 70))
    optimizer = torch.optim.SGD(model.param_groups(0.1, 0.01))
    train.train_one_epoch(model, [(images, masks, None)] * 2, optimizer, torch.device("cpu"), 2)
    assert model.head.bn.running_mean.abs().sum() > 0  # statistics the checkpoint must carry
    model.eval()
    with torch.no_grad():
        expected = model(images)
    save_checkpoint(tmp_path / "model.pth", model, classes=DEFAULT_CLASSES.to_dict(),
                    imgsz=[70, 56])  # fmt: skip
    loaded, _ = load_checkpoint(tmp_path / "model.pth")
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), expected, rtol=0, atol=0)


def test_eval_only_reproduces_the_best_validation_score(trained, tiny_data, tmp_path, caplog):
    best = max(read_csv(trained / "metrics.csv"), key=lambda r: r["valid_miou"])
    # a --config of other classes is named as ignored: the checkpoint's classes are scored
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "ALL_CLASSES": ["bg", "cat", "dog"], "VIS_LABEL_MAP": [[0, 0, 0], [1, 1, 1], [2, 2, 2]],
        "LABEL_COLORS_LIST": [[0, 0, 0], [1, 1, 1], [2, 2, 2]]}))  # fmt: skip
    run_train(["--eval-only", "--model", str(trained / "best_model_iou.pth"), "--data",
               str(tiny_data), "--out-dir", str(tmp_path), "--workers", "0",
               "--config", str(tmp_path / "c.yaml")])  # fmt: skip
    assert "the classes of --config" in caplog.text and "['background', 'person']" in caplog.text
    result = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert result["miou"] == pytest.approx(best["valid_miou"], abs=1e-9)
    assert result["pixel_accuracy"] == pytest.approx(best["valid_acc"], abs=1e-9)
    assert set(result["per_class_iou"]) == {"background", "person"}
    ious = list(result["per_class_iou"].values())
    assert sum(ious) / 2 == pytest.approx(result["miou"])
    # the matrix counts every labelled pixel of the valid masks once, each at its own size
    labelled = sum(
        int((read_mask(path, DEFAULT_CLASSES) != 255).sum())
        for path in (tiny_data / "valid_masks").iterdir()
    )
    assert sum(map(sum, result["confusion_matrix"])) == labelled
    # rows = ground truth: a row's diagonal share is the class's recall, a column's its precision
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    assert result["per_class_recall"] == pytest.approx({"background": tn / (tn + fp),
                                                        "person": tp / (fn + tp)})  # fmt: skip
    assert result["per_class_precision"] == pytest.approx({"background": tn / (tn + fn),
                                                           "person": tp / (fp + tp)})  # fmt: skip
    with Image.open(tmp_path / "confusion_matrix.png") as image:
        assert image.format == "PNG" and min(image.size) > 300
        image.load()  # decodes the whole file: a truncated one raises
    # the README's Outputs table names every entry (tta, slide: with --tta, --slide alone)
    named = re.findall(r"`(\w+)`", readme_outputs()["eval_metrics.json"])
    assert list(result) == [key for key in named if key not in ("null", "tta", "slide")]


def test_eval_metrics_json_records_the_precision_it_was_scored_in(
    checkpoint, tiny_data, tmp_path, monkeypatch
):
    # --amp changes the numbers (README: Metrics), and the file did not say which one they were
    argv = ["--eval-only", "--model", str(checkpoint), "--data", str(tiny_data), "--workers", "0",
            "--out-dir", str(tmp_path), "--device", "cpu"]  # fmt: skip
    for amp in ("off", "bf16"):
        run_train([*argv, "--amp", amp])
        assert json.loads((tmp_path / "eval_metrics.json").read_text())["amp"] == amp
    # a stop before the plot is drawn leaves none rather than the earlier run's, of other numbers
    assert (tmp_path / "confusion_matrix.png").is_file()

    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "plot_confusion", stop)
    with pytest.raises(KeyboardInterrupt):
        run_train([*argv, "--amp", "off"])
    assert json.loads((tmp_path / "eval_metrics.json").read_text())["amp"] == "off"
    assert not (tmp_path / "confusion_matrix.png").exists()


def test_eval_only_without_data_scores_the_checkpoints_own_data(trained, tmp_path, monkeypatch):
    """Not the Penn-Fudan default: a checkpoint of other classes would be scored on persons."""

    def no_download(folder):
        raise AssertionError(f"--eval-only downloaded Penn-Fudan into {folder}")

    monkeypatch.setattr(train, "download_penn_fudan", no_download)
    monkeypatch.chdir(tmp_path)  # no data/PennFudanPed here
    best = max(read_csv(trained / "metrics.csv"), key=lambda r: r["valid_miou"])
    model = trained / "best_model_iou.pth"
    shutil.copy(model, tmp_path / "best.pth")
    run_train(["--eval-only", "--model", "best.pth", "--out-dir", "eval", "--workers", "0"])
    result = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert result["miou"] == pytest.approx(best["valid_miou"], abs=1e-9)
    # absolute, as every recorded path: a relative one is lost once the file is read elsewhere
    assert result["checkpoint"] == str(Path.cwd() / "best.pth")
    # a recorded folder that is gone is named, with the flag that fixes it
    ckpt = torch.load(model, weights_only=True)
    ckpt["args"]["data"] = str(tmp_path / "moved")
    torch.save(ckpt, tmp_path / "moved.pth")
    with pytest.raises(UserError, match=r"trained on --data .*moved.*pass --data"):
        run_train(["--eval-only", "--model", "moved.pth", "--out-dir", "eval", "--workers", "0"])


def test_eval_only_reads_with_its_workers_whatever_the_feature_cache_says(
    checkpoint, tiny_data, tmp_path, monkeypatch
):
    # --eval-only reads images, never cached features: a --cache-features that a --config
    # OUT/args.yaml of a cached run sets, ignored with a warning, still made it read them in
    # the main process alone, whatever --workers
    made = []

    def make_loader(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    original = train.make_loader
    monkeypatch.setattr(train, "make_loader", make_loader)
    run_train(["--eval-only", "--model", str(checkpoint), "--data", str(tiny_data), "--workers",
               "1", "--out-dir", str(tmp_path), "--cache-features", "memory"])  # fmt: skip
    assert [loader.num_workers for loader in made] == [1]


def test_eval_only_names_the_model_flags_it_ignores(checkpoint, tiny_data, tmp_path, caplog):
    # --eval-only scores the checkpoint's model: other model flags were silently ignored
    argv = ["--eval-only", "--model", str(checkpoint), "--data", str(tiny_data), "--workers", "0",
            "--out-dir", str(tmp_path)]  # fmt: skip
    run_train(argv)
    assert "ignored" not in caplog.text
    plain = json.loads((tmp_path / "eval_metrics.json").read_text())
    weights = torch.load(checkpoint, weights_only=True)["args"]["weights"]
    run_train([*argv, "--layers", "2", "--fine-tune", "--weights", "random"])
    assert (
        f"ignored: --layers 2 (the checkpoint's: 4), --fine-tune True (the checkpoint's: False), "
        f"--weights random (the checkpoint's: {weights}). --eval-only scores the checkpoint's "
        "model as it was trained"
    ) in caplog.text
    assert json.loads((tmp_path / "eval_metrics.json").read_text()) == plain
    # a --config file's value is named too, and one equal to the checkpoint's is not
    caplog.clear()
    (tmp_path / "c.yaml").write_text("layers: 1\nbackbone: dinov2_vits14\n")
    run_train([*argv, "--config", str(tmp_path / "c.yaml")])
    assert "ignored: --layers 1 (the checkpoint's: 4). --eval-only" in caplog.text
    # the feature cache is training's: a --config OUT/args.yaml of a cached run sets it
    caplog.clear()
    run_train([*argv, "--cache-features", "memory"])
    assert "--cache-features memory ignored: --eval-only computes the features" in caplog.text
    assert json.loads((tmp_path / "eval_metrics.json").read_text()) == plain
    # --cache-dir alone too (taken without --cache-features disk only here): it was silent
    caplog.clear()
    run_train([*argv, "--cache-dir", str(tmp_path / "cache")])
    ignored = f"--cache-dir {tmp_path / 'cache'} ignored: --eval-only computes the features"
    assert ignored in caplog.text
    assert not (tmp_path / "cache").exists()
    caplog.clear()
    run_train([*argv, "--cache-features", "disk", "--cache-dir", str(tmp_path / "cache")])
    assert f"--cache-features disk {ignored}" in caplog.text
    # another backbone is refused, as the inference scripts refuse it
    with pytest.raises(UserError, match="holds a dinov2_vits14 model, not the requested "
                                        "--backbone dinov2_vitb14; drop --backbone"):  # fmt: skip
        run_train([*argv, "--backbone", "dinov2_vitb14"])


def test_eval_only_of_a_model_unlike_the_defaults_needs_no_model_flags(
    tmp_path, tiny_data, weights_file, caplog
):
    # a checkpoint saved without args still names its backbone, layers and fine-tuning
    torch.manual_seed(0)
    backbone = load_backbone("dinov2_vits14", "timm", str(weights_file), layers=2)
    model = Segmentor(backbone, 2, fine_tune=True)
    save_checkpoint(tmp_path / "best_model_iou.pth", model, classes=DEFAULT_CLASSES.to_dict(),
                    imgsz=[56, 56])  # fmt: skip
    # scored as OUT/best_model_iou.pth, the default --model
    run_train(["--eval-only", "--out-dir", str(tmp_path), "--data", str(tiny_data), "--workers",
               "0"])  # fmt: skip
    assert "ignored" not in caplog.text
    assert json.loads((tmp_path / "eval_metrics.json").read_text())["images"] == 4
    # the settings parsed are the scored checkpoint's: a vitb14 one is not refused as vits14
    recorded = {"backbone": "dinov2_vitb14", "layers": 1, "fine_tune": True,
                "args": {"weights": "random", "layers": 3, "lr": 0.5}}  # fmt: skip
    torch.save(recorded, tmp_path / "b.pth")
    args, _ = parse_args(
        train.get_args_parser(), ["--eval-only", "--model", str(tmp_path / "b.pth")]
    )
    assert (args.backbone, args.layers, args.fine_tune, args.weights) == (
        "dinov2_vitb14", 1, True, "random")  # fmt: skip
    assert args.lr == 1e-4  # the model's settings only: --eval-only continues no run
    assert not train.ignored_model_flags(args, recorded)
    # a checkpoint that cannot be read leaves the defaults: the loader names the problem
    args, _ = parse_args(train.get_args_parser(), ["--eval-only", "--model", "missing.pth"])
    assert (args.backbone, args.layers) == ("dinov2_vits14", 4)


def test_resume_continues_from_the_next_epoch(tmp_path, tiny_data, weights_file, caplog):
    args = common(tiny_data, tmp_path, weights_file)
    run_train([*args, "--epochs", "2", "--scheduler", "cosine"])
    first = read_csv(tmp_path / "metrics.csv")
    run_train([*args, "--epochs", "3", "--scheduler", "cosine", "--resume",
               str(tmp_path / "last_model.pth"), "--imgsz", "98", "98", "--fine-tune",
               "--layers", "2"])  # fmt: skip
    assert "--imgsz 98 98 ignored: a resumed run keeps its checkpoint's size 90 66" in caplog.text
    # the model's flags are named as ignored, and args.yaml records the model trained
    assert (
        "ignored: --layers 2 (the checkpoint's: 4), --fine-tune True (the checkpoint's: False). "
        "A resumed run keeps its checkpoint's model"
    ) in caplog.text
    settings = yaml.safe_load((tmp_path / "args.yaml").read_text())
    assert (settings["layers"], settings["fine_tune"]) == (4, False)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[:2] == first
    ckpt = torch.load(tmp_path / "last_model.pth", weights_only=True)
    assert ckpt["epoch"] == 3
    steps_per_epoch = 2  # 8 training images, batch 4
    assert ckpt["optimizer"]["state"][0]["step"] == 3 * steps_per_epoch
    assert ckpt["scheduler"]["last_epoch"] == 3
    assert rows[2]["lr"] < rows[0]["lr"]  # the cosine schedule went on, not restarted


class _OneWeight(torch.nn.Module):
    """The optimizer groups of a Segmentor (head, fine-tuned backbone) over one weight each."""

    def __init__(self):
        super().__init__()
        self.head, self.backbone = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)

    def param_groups(self, lr: float, backbone_lr: float) -> list[dict]:
        return [{"params": list(self.head.parameters()), "lr": lr, "name": "head"},
                {"params": list(self.backbone.parameters()), "lr": backbone_lr,
                 "name": "backbone"}]  # fmt: skip


@pytest.mark.parametrize("scheduler", ["cosine", "poly", "none"])
def test_make_optimization_resumes_the_states_it_was_saved_with(scheduler):
    # An epoch here is one fp16 step and fit's schedule step. The first step's gradient is
    # infinite, so the scaler skips it and halves its scale: a resume that started a fresh
    # scaler (or optimizer, or schedule) would go on from other states than the run it resumes.
    args = argparse.Namespace(lr=3e-3, backbone_lr=1e-4, weight_decay=0.05, scheduler=scheduler,
                              epochs=5, amp="fp16")  # fmt: skip
    cpu = torch.device("cpu")

    def run(model, ckpt, start) -> tuple[list, dict]:
        """The lrs of each epoch from ``start`` on, and the states saved after each epoch."""
        optimizer, schedule, scaler = train.make_optimization(args, model, cpu, ckpt, start)
        lrs, saved = [], {}
        for epoch in range(start, args.epochs + 1):
            x = torch.tensor([[1.0, math.inf if epoch == 1 else -2.0]])
            scaler.scale((model.head(x) + model.backbone(x)).sum()).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lrs.append([g["lr"] for g in optimizer.param_groups])
            if schedule is not None:
                train.step_schedule(schedule)
            saved[epoch] = copy.deepcopy(
                {
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "scheduler": schedule.state_dict() if schedule else None,
                    "model": model.state_dict(),
                }
            )
        return lrs, saved

    torch.manual_seed(0)
    whole_lrs, whole = run(_OneWeight(), None, 1)
    assert whole[2]["scaler"]["scale"] == 2.0**15  # the first step was skipped
    model = _OneWeight()
    model.load_state_dict(whole[2]["model"])
    lrs, resumed = run(model, whole[2], 3)
    assert lrs == whole_lrs[2:]
    end, expected = resumed[5], whole[5]
    assert end["scaler"] == expected["scaler"] and end["scheduler"] == expected["scheduler"]
    assert end["optimizer"]["param_groups"] == expected["optimizer"]["param_groups"]
    torch.testing.assert_close(end["optimizer"]["state"], expected["optimizer"]["state"])
    torch.testing.assert_close(end["model"], expected["model"], rtol=0, atol=0)


@pytest.mark.parametrize("scheduler", ["poly", "cosine"])
def test_resume_with_more_epochs_replans_the_schedule(tmp_path, tiny_data, weights_file, scheduler):
    # a finished 2-epoch run extended to 4: poly would stay at 0, cosine would climb back up
    args = [*common(tiny_data, tmp_path, weights_file), "--imgsz", "56", "56", "--num-vis", "0",
            "--scheduler", scheduler]  # fmt: skip
    run_train([*args, "--epochs", "2"])
    run_train([*args, "--epochs", "4", "--resume", str(tmp_path / "last_model.pth")])
    lrs = [r["lr"] for r in read_csv(tmp_path / "metrics.csv")]
    # epochs 3 and 4 of a 4-epoch schedule: 2 and 3 epochs done
    if scheduler == "poly":
        expected = [(1 - done / 4) ** 0.9 for done in (2, 3)]
    else:
        expected = [(1 + math.cos(math.pi * done / 4)) / 2 for done in (2, 3)]
    assert lrs[2:] == pytest.approx([3e-3 * f for f in expected], rel=1e-9)
    assert lrs[1] >= lrs[2] > lrs[3] > 0


def test_an_epoch_without_an_optimizer_step_keeps_the_schedule_and_warns_nothing(
    tmp_path, tiny_data, weights_file, monkeypatch
):
    # every training crop fully ignored: no epoch steps the optimizer (as when fp16's scaler
    # skips every step of an epoch), yet each epoch must get the rate the schedule plans for
    # it, without PyTorch's warning that the scheduler was stepped in the wrong order
    real = train.train_one_epoch

    def ignored_crops(model, loader, *args, **kwargs):
        batches = [(images, torch.full_like(masks, 255), ids) for images, masks, ids in loader]
        return real(model, batches, *args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", ignored_crops)
    args = [*common(tiny_data, tmp_path, weights_file), "--imgsz", "56", "56", "--num-vis", "0",
            "--scheduler", "cosine", "--epochs", "3"]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_train(args)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    lrs = [r["lr"] for r in read_csv(tmp_path / "metrics.csv")]
    expected = [(1 + math.cos(math.pi * done / 3)) / 2 for done in (0, 1, 2)]
    assert lrs == pytest.approx([3e-3 * f for f in expected], rel=1e-9)
    ckpt = torch.load(tmp_path / "last_model.pth", weights_only=True)
    assert ckpt["optimizer"]["state"] == {}  # no step was taken


def test_resume_applies_a_changed_lr_and_weight_decay(tmp_path, tiny_data, weights_file, caplog):
    # the advice after a divergence: lower --lr and continue with --resume
    args = [*common(tiny_data, tmp_path, weights_file), "--imgsz", "56", "56", "--num-vis", "0"]
    run_train([*args, "--epochs", "1"])
    run_train([*args, "--epochs", "2", "--lr", "1e-5", "--weight-decay", "0.5", "--resume",
               str(tmp_path / "last_model.pth")])  # fmt: skip
    assert "--lr 1e-05 (was 0.003)" in caplog.text
    assert [r["lr"] for r in read_csv(tmp_path / "metrics.csv")] == [3e-3, 1e-5]
    group = torch.load(tmp_path / "last_model.pth", weights_only=True)["optimizer"]
    assert (group["param_groups"][0]["lr"], group["param_groups"][0]["weight_decay"]) == (1e-5, 0.5)
    assert yaml.safe_load((tmp_path / "args.yaml").read_text())["lr"] == 1e-5
    # a switch by its flags, not as "--no-augment True (was False)"
    run_train(
        [*args, "--epochs", "3", "--no-augment", "--resume", str(tmp_path / "last_model.pth")]
    )
    assert "--no-augment (was --augment)" in caplog.text


def test_a_resume_on_another_number_of_processes_says_the_step_changes(
    tmp_path, checkpoint, tiny_data, caplog
):
    # --batch is per process: a 2-process run resumed in 1 process steps on half the images
    ckpt = torch.load(checkpoint.parent / "last_model.pth", weights_only=True)
    assert ckpt["processes"] == 1
    ckpt["processes"] = 2
    torch.save(ckpt, tmp_path / "last_model.pth")
    argv = ["--resume", str(tmp_path / "last_model.pth"), "--out-dir", str(tmp_path),
            "--data", str(tiny_data), "--workers", "0", "--num-vis", "0"]  # fmt: skip
    run_train([*argv, "--epochs", str(ckpt["epoch"] + 1)])
    assert (
        f"--resume {tmp_path / 'last_model.pth'} trained on 2 processes, this run on 1: --batch "
        "is per process, so an optimizer step now follows 4 x 1 x 1 images (--batch x --accum x "
        "processes) instead of 4 x 1 x 2"
    ) in caplog.text
    # the same number of processes says nothing
    caplog.clear()
    run_train([*argv, "--epochs", str(ckpt["epoch"] + 2)])
    assert "trained on" not in caplog.text


def test_a_fine_tuned_checkpoint_resumes_only_through_the_source_it_was_trained_with(
    tmp_path, fresh_data, weights_file
):
    # The optimizer state lists the backbone's parameters in its build's order, which the hub
    # and timm builds do not share: resumed through timm (the advice for offline use), AdamW's
    # first step met a hub moment of another shape, a RuntimeError after the data and model
    # had loaded.
    argv = ["--data", str(fresh_data), "--out-dir", str(tmp_path), "--backbone-source", "hub",
            "--hub-dir", str(FAKE_HUB), "--weights", str(weights_file), "--imgsz", "28", "28",
            "--workers", "0", "--batch", "2", "--num-vis", "0", "--fine-tune"]  # fmt: skip
    run_train([*argv, "--epochs", "1"])
    resume = ["--resume", str(tmp_path / "last_model.pth"), "--out-dir", str(tmp_path),
              "--workers", "0", "--num-vis", "0", "--epochs", "2"]  # fmt: skip
    with pytest.raises(UserError, match=(
        r"last_model.pth fine-tuned its backbone as built by --backbone-source hub.*resume with "
        r"--backbone-source hub \(offline: and --hub-dir DIR")):  # fmt: skip
        run_train([*resume, "--backbone-source", "timm"])
    assert [r["epoch"] for r in read_csv(tmp_path / "metrics.csv")] == [1]
    run_train([*resume, "--hub-dir", str(FAKE_HUB)])  # its own source
    assert [r["epoch"] for r in read_csv(tmp_path / "metrics.csv")] == [1, 2]


def test_a_resume_with_nothing_to_do_writes_nothing(tmp_path, fresh_data, weights_file, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    args = [*common(fresh_data, first, weights_file), "--imgsz", "28", "28", "--num-vis", "0"]
    run_train([*args, "--epochs", "2"])
    recorded = (first / "args.yaml").read_text()
    capsys.readouterr()
    run_train([*args, "--epochs", "1", "--resume", str(first / "last_model.pth")])
    assert (first / "args.yaml").read_text() == recorded  # not epochs: 1 and a resume: PATH
    # another --out-dir got A's best checkpoints alone, without last_model.pth or metrics.csv,
    # and the report called it the run's outputs
    run_train([*args, "--out-dir", str(second), "--resume", str(first / "last_model.pth")])
    assert not second.exists()
    assert "outputs in" not in capsys.readouterr().out
    # the features of a run with no epoch left were computed, and written into B/feature_cache
    run_train([*args, "--out-dir", str(second), "--resume", str(first / "last_model.pth"),
               "--cache-features", "disk"])  # fmt: skip
    assert not second.exists()


def test_a_run_resumed_into_another_out_dir_holds_its_best_model_and_history(
    tmp_path, fresh_data, weights_file
):
    # before: B got last_model.pth and epoch 3 alone, and no best model unless epoch 3 beat A's
    first, second = tmp_path / "a", tmp_path / "b"
    args = [*common(fresh_data, first, weights_file), "--imgsz", "28", "28", "--num-vis", "0"]
    run_train([*args, "--epochs", "2"])
    run_train([*args, "--out-dir", str(second), "--epochs", "3", "--resume",
               str(first / "last_model.pth")])  # fmt: skip
    assert [r["epoch"] for r in read_csv(second / "metrics.csv")] == [1, 2, 3]
    assert read_csv(second / "metrics.csv")[:2] == read_csv(first / "metrics.csv")
    for name in train.BEST_CHECKPOINTS:  # copied from A, or written by a better epoch 3
        assert (second / name).is_file(), name


def test_resuming_into_the_out_dir_of_another_run_is_refused(tmp_path, fresh_data, weights_file):
    """--resume runs/a/last_model.pth without --out-dir writes into outputs/: the metrics.csv
    of an older run there was continued as this run's history, its best checkpoints kept."""
    first, other = tmp_path / "a", tmp_path / "b"
    args = [*common(fresh_data, first, weights_file), "--imgsz", "28", "28", "--num-vis", "0"]
    run_train([*args, "--epochs", "1"])
    run_train([*args, "--epochs", "1", "--out-dir", str(other), "--lr", "1e-3"])
    before = {f.name: f.read_bytes() for f in other.iterdir() if f.is_file()}
    with pytest.raises(UserError, match=rf"--out-dir {other} holds another run: epoch 1 of"):
        run_train([*args, "--epochs", "2", "--out-dir", str(other), "--resume",
                   str(first / "last_model.pth")])  # fmt: skip
    assert {f.name: f.read_bytes() for f in other.iterdir() if f.is_file()} == before
    # the run's own folder, even with its numbers rounded by a spreadsheet, resumes
    rows = read_csv(first / "metrics.csv")
    write_csv(
        first / "metrics.csv",
        [{k: v if k == "epoch" else float(f"{v:.10g}") for k, v in r.items()} for r in rows],
    )
    run_train([*args, "--epochs", "2", "--resume", str(first / "last_model.pth")])
    assert [r["epoch"] for r in read_csv(first / "metrics.csv")] == [1, 2]


def test_a_metrics_csv_saved_by_a_spreadsheet_is_still_the_resumed_runs(tmp_path):
    # Excel and LibreOffice save a CSV as their columns show it: down to three digits (9.22E-05)
    row = {"epoch": 10, "train_loss": 0.4321987654, "valid_miou": 0.6123456789,
           "lr": 9.221639627510075e-05, "seconds": 123.456789}  # fmt: skip
    shown = {"epoch": 10, "train_loss": 0.432199, "valid_miou": 0.612346, "lr": 9.22e-05,
             "seconds": 123.4568}  # fmt: skip
    out = tmp_path / "b"
    out.mkdir()
    write_csv(out / "metrics.csv", [shown])
    args = argparse.Namespace(out_dir=out, resume=tmp_path / "a" / "last_model.pth")
    train.check_same_run(args, {"metrics": row}, start=11)
    with pytest.raises(UserError, match="holds another run"):  # another run's epoch 10
        train.check_same_run(args, {"metrics": {**row, "valid_miou": 0.58}}, start=11)


def test_a_shorter_run_in_the_out_dir_is_another_run(tmp_path):
    """outputs/ holding an older run of 1 epoch, resumed into at epoch 11: accepted before, its
    epoch 1 was continued as this run's history, and its best checkpoints kept as this run's."""
    out = tmp_path / "b"
    out.mkdir()
    write_csv(out / "metrics.csv", [{"epoch": 1, "valid_miou": 0.2, "seconds": 3.0}])
    args = argparse.Namespace(out_dir=out, resume=tmp_path / "a" / "last_model.pth")
    row = {"epoch": 10, "valid_miou": 0.6, "seconds": 40.0}
    with pytest.raises(UserError, match=r"holds another run: its metrics.csv ends at epoch 1"):
        train.check_same_run(args, {"metrics": row}, start=11)
    # a folder whose rows all come after the resumed epoch (the same checkpoint resumed there
    # again, its own history left behind) holds nothing to continue: they are trained again
    write_csv(out / "metrics.csv", [{"epoch": 11, "valid_miou": 0.61, "seconds": 41.0}])
    train.check_same_run(args, {"metrics": row}, start=11)


def test_a_checkpoint_resumed_in_its_own_folder_is_never_of_another_run(tmp_path):
    """Stopped after best_model_iou.pth of epoch 2 but before last_model.pth, the run resumed
    from last_model.pth (epoch 1) and trained epoch 2 again: metrics.csv's epoch 2 is no longer
    the best checkpoint's, which was refused as another run, to be resumed with the --out-dir
    it already had."""
    write_csv(tmp_path / "metrics.csv", [{"epoch": 2, "valid_miou": 0.5, "seconds": 41.0}])
    best = {"metrics": {"epoch": 2, "valid_miou": 0.5, "seconds": 47.0}}
    args = argparse.Namespace(out_dir=tmp_path, resume=tmp_path / "best_model_iou.pth")
    train.check_same_run(args, best, start=3)
    args.out_dir = tmp_path / "b" / ".."  # the same folder, otherwise written
    train.check_same_run(args, best, start=3)


def test_carry_over_copies_only_the_best_checkpoints_of_the_resumed_epochs(tmp_path):
    source, out = tmp_path / "a", tmp_path / "b"
    source.mkdir()
    torch.save({"epoch": 2}, source / "best_model_iou.pth")
    torch.save({"epoch": 7}, source / "best_model_loss.pth")  # of a later, other run
    write_csv(source / "metrics.csv", [{"epoch": e, "valid_miou": 0.5} for e in (1, 2, 3, 4)])
    history = train.carry_over(source, out, start=3)
    assert [r["epoch"] for r in history] == [1, 2]
    assert torch.load(out / "best_model_iou.pth", weights_only=True) == {"epoch": 2}
    assert not (out / "best_model_loss.pth").exists()
    # out's own best checkpoint is kept, and resuming in the same folder copies nothing
    torch.save({"epoch": 1}, source / "best_model_iou.pth")
    train.carry_over(source, out, start=3)
    assert torch.load(out / "best_model_iou.pth", weights_only=True) == {"epoch": 2}
    assert train.carry_over(source, source, start=3) == []


def test_carry_over_from_a_run_whose_metrics_csv_is_broken_keeps_its_best_and_no_history(
    tmp_path,
):
    # the resumed run's own folder, not the one written to: its broken file stops nothing
    source, out = tmp_path / "a", tmp_path / "b"
    source.mkdir()
    torch.save({"epoch": 2}, source / "best_model_iou.pth")
    (source / "metrics.csv").write_text("epoch;valid_miou\n1;0.5\n2;0.6\n")
    assert train.carry_over(source, out, start=3) == []
    assert torch.load(out / "best_model_iou.pth", weights_only=True) == {"epoch": 2}


def test_the_default_data_is_downloaded_once_into_data_pennfudanped(tmp_path, monkeypatch):
    downloads = []

    def download(url, dst, progress=True):
        downloads.append(url)
        penn_fudan_zip(dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.chdir(tmp_path)
    args, _ = parse_args(train.get_args_parser(), [])
    assert train.resolve_data(args) == Path("data/PennFudanPed")
    assert train.resolve_data(args) == Path("data/PennFudanPed")  # there now: not again
    assert downloads == [PENN_FUDAN_URL]
    assert len(check_dataset(Path("data/PennFudanPed"), DEFAULT_CLASSES)["train"]) == 8
    explicit, _ = parse_args(train.get_args_parser(), ["--data", "mine"])
    assert train.resolve_data(explicit) == Path("mine")


def test_the_classes_of_a_config_file_give_way_to_the_resumed_checkpoints(
    checkpoint, tmp_path, caplog
):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "ALL_CLASSES": ["background", "cat", "dog"],
        "LABEL_COLORS_LIST": [[0, 0, 0], [255, 0, 0], [0, 0, 255]],
        "VIS_LABEL_MAP": [[0, 0, 0], [255, 0, 0], [0, 0, 255]],
    }))  # fmt: skip
    last = checkpoint.parent / "last_model.pth"
    args, classes = parse_args(
        train.get_args_parser(), ["--resume", str(last), "--config", str(cfg)]
    )
    _, kept, _ = train.read_resume(args, classes)
    assert kept == DEFAULT_CLASSES
    assert "the classes of --config" in caplog.text and "['background', 'person']" in caplog.text


def test_a_resumed_metrics_csv_saved_by_a_spreadsheet_is_read_and_a_broken_one_named(tmp_path):
    # a UTF-8 CSV saved by a spreadsheet starts with a byte-order mark: KeyError 'epoch' before
    csv_path = tmp_path / "metrics.csv"
    write_csv(csv_path, [{"epoch": e, "valid_miou": 0.5} for e in (1, 2, 3)])
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
    assert [r["epoch"] for r in train.resumed_history(csv_path, 3)] == [1, 2]
    assert train.resumed_history(tmp_path / "none.csv", 3) == []
    for text in ("epoch;valid_miou\n1;0.5\n", "epoch,valid_miou\n1,0.5\n2,\n", "epoch\nabc\n"):
        csv_path.write_text(text)
        with pytest.raises(
            UserError, match=r"metrics.csv is not a metrics.csv that train.py wrote"
        ):
            train.resumed_history(csv_path, 3)


def test_resuming_a_checkpoint_without_training_state_names_it(tmp_path, tiny_data, weights_file):
    # a checkpoint saved by save_checkpoint with the model's keys only: KeyError 'epoch' before
    model = Segmentor(load_backbone("dinov2_vits14", "timm", str(weights_file)), 2)
    save_checkpoint(tmp_path / "model.pth", model, classes=DEFAULT_CLASSES.to_dict(),
                    imgsz=[56, 56])  # fmt: skip
    args = [*common(tiny_data, tmp_path / "out", weights_file), "--epochs", "1", "--resume",
            str(tmp_path / "model.pth")]  # fmt: skip
    with pytest.raises(UserError, match=r"model.pth holds no training state \(it lacks epoch, "):
        run_train(args)


def test_a_resumed_runs_data_that_is_gone_is_named_as_the_checkpoints(checkpoint, tmp_path):
    # the dataset moved, or the run resumes on another machine: "--data X is not a folder" named
    # a flag that the command line did not hold
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["args"]["data"] = str(tmp_path / "moved")
    torch.save(ckpt, tmp_path / "last_model.pth")
    argv = ["--resume", str(tmp_path / "last_model.pth"), "--out-dir", str(tmp_path)]
    with pytest.raises(UserError, match=r"last_model.pth continues its run on --data .*moved, "
                       r"which is not a folder here: pass --data DIR"):  # fmt: skip
        run_train([*argv, "--epochs", "3"])


def test_resume_continues_the_recorded_run_unless_a_flag_changes_it(tmp_path, caplog):
    recorded = {"data": "my/data", "epochs": 40, "batch": 16, "lr": 3e-3, "scheduler": "cosine",
                "no_augment": True, "amp": "bf16", "cache_dir": None, "workers": 9,
                "out_dir": "old/out"}  # fmt: skip
    torch.save({"args": recorded}, tmp_path / "last.pth")
    (tmp_path / "c.yaml").write_text("batch: 4\n")
    with caplog.at_level("INFO", logger="dinoseg"):
        args, _ = parse_args(train.get_args_parser(), [
            "--resume", str(tmp_path / "last.pth"), "--config", str(tmp_path / "c.yaml"),
            "--epochs", "60"])  # fmt: skip
    assert (args.data, args.lr, args.scheduler, args.no_augment, args.amp) == (
        Path("my/data"), 3e-3, "cosine", True, "bf16")  # fmt: skip
    assert (args.epochs, args.batch) == (60, 4)  # the command line, then --config, win
    # noted once, for train.py's checks: a recorded None given again is the checkpoint's too
    assert args.from_checkpoint == {"data", "lr", "scheduler", "no_augment", "amp", "cache_dir"}
    # the machine and the outputs are this command's: not continued
    assert (args.workers, args.out_dir, args.cache_dir) == (
        train.get_args_parser().get_default("workers"), Path("outputs"), None)  # fmt: skip
    assert "continuing " in caplog.text and "--data my/data, --lr 0.003" in caplog.text
    assert "--scheduler cosine, --no-augment, --amp bf16" in caplog.text  # flags, not "True"
    assert "--batch 16" not in caplog.text and "--epochs 40" not in caplog.text
    # a recorded --no-augment is undone by --augment, or by no_augment: false in --config
    (tmp_path / "augment.yaml").write_text("no_augment: false\n")
    for flags in (["--augment"], ["--config", str(tmp_path / "augment.yaml")]):
        args, _ = parse_args(train.get_args_parser(), ["--resume", str(tmp_path / "last.pth"),
                                                       *flags])  # fmt: skip
        assert args.no_augment is False, flags
    assert parse_args(train.get_args_parser(), [])[0].no_augment is False
    assert parse_args(train.get_args_parser(), ["--no-augment"])[0].no_augment is True
    # --eval-only scores a checkpoint; nothing of its run carries over
    args, _ = parse_args(train.get_args_parser(), [
        "--resume", str(tmp_path / "last.pth"), "--eval-only"])  # fmt: skip
    assert (args.data, args.lr) == (None, 1e-4)
    # resume: in --config continues the recorded run as --resume does
    (tmp_path / "resume.yaml").write_text(f"resume: {tmp_path / 'last.pth'}\nbatch: 4\n")
    args, _ = parse_args(train.get_args_parser(), ["--config", str(tmp_path / "resume.yaml")])
    assert (args.data, args.lr, args.epochs, args.batch) == (Path("my/data"), 3e-3, 40, 4)
    # an unreadable --resume is left to the checkpoint check, which names it
    args, _ = parse_args(train.get_args_parser(), ["--resume", str(tmp_path / "c.yaml")])
    assert args.data is None


def test_a_resumed_patience_goes_on_unless_no_patience_or_a_config_null_ends_it(tmp_path, caplog):
    ckpt = {"args": {"patience": 3, "epochs": 40}}
    torch.save(ckpt, tmp_path / "last.pth")
    parser, resume = train.get_args_parser(), ["--resume", str(tmp_path / "last.pth")]
    assert parse_args(parser, resume)[0].patience == 3
    assert parse_args(parser, [*resume, "--patience", "5"])[0].patience == 5
    (tmp_path / "off.yaml").write_text("patience: null\n")
    for flags in (["--no-patience"], ["--config", str(tmp_path / "off.yaml")]):
        args, _ = parse_args(parser, [*resume, *flags])
        assert args.patience is None, flags
    train.warn_changed_settings(args, ckpt, start=41)
    assert "settings that differ from the run of" in caplog.text
    assert "apply from epoch 41: --no-patience (was 3)" in caplog.text
    # the switch's name as a config key is named with the key to write
    (tmp_path / "switch.yaml").write_text("no_patience: true\n")
    with pytest.raises(UserError, match="write no_patience: true as patience: null"):
        parse_args(parser, ["--config", str(tmp_path / "switch.yaml")])


def test_the_epoch_patience_counts_from_on_resume_is_the_one_its_history_shows(tmp_path, caplog):
    """The epoch of the best valid mIoU so far, which the uninterrupted run counted from: from
    metrics.csv (of --out-dir, else of the checkpoint's folder), else from the checkpoint itself
    or its folder's best_model_iou.pth; where none shows it, from the resumed epoch, said."""
    run, out = tmp_path / "run", tmp_path / "out"
    run.mkdir()
    out.mkdir()
    rows = [{"epoch": e, "valid_miou": m} for e, m in [(1, 0.3), (2, 0.5), (3, 0.5), (4, 0.4)]]
    ckpt = {"epoch": 4, "best_miou": 0.5, "metrics": rows[3]}
    args = argparse.Namespace(resume=run / "last_model.pth", out_dir=run, patience=2)
    assert train.resumed_best_epoch(args, ckpt, rows) == 2  # the first to score it
    write_csv(run / "metrics.csv", rows)
    args.out_dir = out  # resumed into another folder, whose metrics.csv is the checkpoint's
    assert train.resumed_best_epoch(args, ckpt, []) == 2
    (run / "metrics.csv").unlink()
    torch.save({"epoch": 2, "best_miou": 0.5}, run / "best_model_iou.pth")
    assert train.resumed_best_epoch(args, ckpt, []) == 2
    (run / "best_model_iou.pth").unlink()
    # a checkpoint of the best epoch (--resume best_model_iou.pth) says so itself
    assert train.resumed_best_epoch(args, {**ckpt, "metrics": rows[1], "epoch": 2}, []) == 2
    assert "--patience" not in caplog.text
    assert train.resumed_best_epoch(args, ckpt, []) == 4
    assert "--patience 2 counts from epoch 4: neither metrics.csv nor" in caplog.text


def test_a_recorded_setting_the_parser_refuses_names_the_checkpoint_not_a_config_file(
    checkpoint, tmp_path
):
    # a run of a version with another --scheduler choice, or an edited checkpoint
    ckpt = torch.load(checkpoint.parent / "last_model.pth", weights_only=True)
    ckpt["args"]["scheduler"] = "linear"
    torch.save(ckpt, tmp_path / "last_model.pth")
    with pytest.raises(UserError) as caught:
        parse_args(train.get_args_parser(), ["--resume", str(tmp_path / "last_model.pth")])
    assert str(caught.value).startswith(
        f"checkpoint {tmp_path / 'last_model.pth'}: scheduler: 'linear' is not one of none,"
    )


def test_config_file_sets_classes_and_defaults_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "ALL_CLASSES": ["background", "cat", "dog"],
        "LABEL_COLORS_LIST": [[0, 0, 0], [255, 0, 0], [0, 0, 255]],
        "VIS_LABEL_MAP": [[0, 0, 0], [255, 0, 0], [0, 0, 255]],
        "lr": 0.05, "epochs": 7, "imgsz": [112, 56], "fine_tune": True,
    }))  # fmt: skip
    args, classes = parse_args(train.get_args_parser(), ["--config", str(cfg), "--epochs", "2"])
    assert classes.names == ("background", "cat", "dog")
    assert (args.lr, args.epochs, args.imgsz, args.fine_tune) == (0.05, 2, [112, 56], True)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"patience": 0}, "--patience (patience in the config file {}) must be at least 1"),
        ({"lr": 2}, "--lr (lr in the config file {}) must be above 0 and at most 1"),
        ({"weight_decay": -1}, "--weight-decay (weight_decay in the config file {}) must be 0 "
         "or more"),
        ({"class_weights": [1, -5]}, "--class-weights (class_weights in the config file {}) "
         "must be finite"),
    ],
)  # fmt: skip
def test_a_bad_value_of_a_config_file_names_the_file(tmp_path, setting, message):
    # it was blamed on the flag alone, which the user never typed
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(setting))
    args, classes = parse_args(train.get_args_parser(), ["--config", str(cfg)])
    with pytest.raises(UserError, match=f"^{re.escape(message.format(cfg))}"):
        train.check_args(args)
        train.check_class_weights(args.class_weights, classes, flag_name(args, "class_weights"))
    # given on the command line too, the value is the command line's: no file to name
    flag = "--" + next(iter(setting)).replace("_", "-")
    value = [str(v) for v in np.atleast_1d(next(iter(setting.values())))]
    args, classes = parse_args(train.get_args_parser(), ["--config", str(cfg), flag, *value])
    assert not args.from_config & {next(iter(setting))}
    with pytest.raises(UserError, match=f"^{re.escape(flag)} (?!\\()"):
        train.check_args(args)
        train.check_class_weights(args.class_weights, classes, flag_name(args, "class_weights"))


def test_a_runs_args_yaml_repeats_it_as_a_config_file(trained, tmp_path):
    # OUT/args.yaml holds every resolved setting, config: null and the classes among them
    args, classes = parse_args(train.get_args_parser(), ["--config", str(trained / "args.yaml")])
    recorded = yaml.safe_load((trained / "args.yaml").read_text())
    assert train.settings(args, classes, args.imgsz) == recorded
    (tmp_path / "nested.yaml").write_text("config: other.yaml\n")
    with pytest.raises(UserError, match=r"unknown keys \['config'\]"):
        parse_args(train.get_args_parser(), ["--config", str(tmp_path / "nested.yaml")])


def test_a_config_files_weights_take_a_home_folder_and_no_escapes(tmp_path, monkeypatch):
    # --weights in a config file is a path as the other path flags are (recorded absolute:
    # test_a_weights_file_is_recorded_absolute_and_an_older_relative_one_still_matches)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "c.yaml").write_text("weights: ~/w.pth\n")
    args, _ = parse_args(train.get_args_parser(), ["--config", str(tmp_path / "c.yaml")])
    assert Path(args.weights) == tmp_path / "home" / "w.pth"
    (tmp_path / "c.yaml").write_text('weights: "C:\\new\\t.pth"\n')  # \n, \t in double quotes
    with pytest.raises(UserError, match=r"weights: .* holds a control character"):
        parse_args(train.get_args_parser(), ["--config", str(tmp_path / "c.yaml")])
    (tmp_path / "c.yaml").write_text("weights: pretrained\n")  # a word, not a file here
    args, classes = parse_args(train.get_args_parser(), ["--config", str(tmp_path / "c.yaml")])
    assert train.settings(args, classes, [56, 56])["weights"] == "pretrained"


def test_config_null_sets_nothing_under_a_parser_without_config():
    # every run's args.yaml records config: null, which raised KeyError where the parser had no
    # --config of its own
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    assert config._flags_to_argv(parser, {"config": None, "lr": 0.5}, "f.yaml") == ["--lr", "0.5"]


def test_the_args_yaml_of_a_run_with_a_config_file_repeats_it(tmp_path):
    # the run's classes and flags are written out in args.yaml, which must not name the file
    # they came from: --config refuses a config file that names another one
    cfg = tmp_path / "classes.yaml"
    cfg.write_text(yaml.safe_dump({
        "ALL_CLASSES": ["background", "cat", "dog"],
        "LABEL_COLORS_LIST": [[0, 0, 0], [255, 0, 0], [0, 0, 255]],
        "VIS_LABEL_MAP": [[9, 9, 9], [255, 0, 0], [0, 0, 255]],
        "lr": 0.05,
    }))  # fmt: skip
    args, classes = parse_args(train.get_args_parser(), ["--config", str(cfg), "--epochs", "3"])
    written = train.settings(args, classes, [70, 56])
    (tmp_path / "args.yaml").write_text(yaml.safe_dump(written, sort_keys=False))
    again, again_classes = parse_args(
        train.get_args_parser(), ["--config", str(tmp_path / "args.yaml")]
    )
    assert again_classes == classes
    assert train.settings(again, again_classes, again.imgsz) == written
    assert written["config"] is None and written["lr"] == 0.05 and written["epochs"] == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"learning_rate": 1}, "unknown keys \\['learning_rate'\\]"),
        # a key written as its flag: the list of allowed keys left the user to spot the fix
        ({"num-vis": 2}, r"unknown keys \['num-vis'\].*: write num-vis as num_vis"),
        ({"--lr": 0.1}, r"unknown keys \['--lr'\].*: write --lr as lr"),
        # a misspelt key or a class key in lower case: the list left the user to spot it too
        ({"epoch": 5, "lr_scheduler": "cosine"},
         r"\['epoch', 'lr_scheduler'\]: epoch: did you mean epochs\?; lr_scheduler: did you "
         r"mean scheduler\? Allowed keys: ALL_CLASSES"),
        ({"all_classes": ["a", "b"]}, r"\['all_classes'\]: all_classes: did you mean ALL_CLASSES"),
        # other repositories' names, a little further off: no hint, and the hint there was
        # began "Keys are the flags' names with underscores", beside the point for a misspelling
        ({"num_epochs": 8, "num_workers": 2, "img_size": [56, 56], "classes": ["a", "b"]},
         r"classes: did you mean ALL_CLASSES\?; img_size: did you mean imgsz\?; num_epochs: did "
         r"you mean epochs\?; num_workers: did you mean workers\? Allowed keys:"),
        # no guess where the closest key is another setting
        ({"warmup": 2, "data_dir": "d"}, r"\['data_dir', 'warmup'\]; allowed keys: ALL_CLASSES"),
        ({"augment": True}, r"\[.augment.\].*: write augment: true as no_augment: false"),
        ({"ALL_CLASSES": ["a", "b"], "LABEL_COLORS_LIST": [[0, 0, 0]], "VIS_LABEL_MAP": []},
         r"c.yaml: LABEL_COLORS_LIST has 1 colours for 2 classes"),
        ({"ALL_CLASSES": ["a"], "LABEL_COLORS_LIST": [[0, 0, 0]], "VIS_LABEL_MAP": [[0, 0, 0]]},
         r"c.yaml: ALL_CLASSES needs at least two classes"),
        ({"ALL_CLASSES": ["a", "b"], "LABEL_COLORS_LIST": [[0, 0, 0], [True, 255, 0]],
          "VIS_LABEL_MAP": [[0, 0, 0], [0, 255, 0]]}, r"c.yaml: LABEL_COLORS_LIST must be a list"),
        ({"VIS_LABEL_MAP": [[0, 0, 0], [0, 255, 0]]}, r"c.yaml lacks ALL_CLASSES, the class names"),
        # an optional key, given, still needs a colour per class
        ({"ALL_CLASSES": ["a", "b"], "VIS_LABEL_MAP": [[0, 0, 0]]},
         r"c.yaml: VIS_LABEL_MAP has 1 colours for 2 classes"),
        # two classes of one colour: a colour mask could not say which class a pixel is
        ({"ALL_CLASSES": ["a", "b"], "LABEL_COLORS_LIST": [[0, 255, 0], [0, 255, 0]],
          "VIS_LABEL_MAP": [[0, 0, 0], [0, 255, 0]]}, r"c.yaml: LABEL_COLORS_LIST has repeated"),
        # a class without a name trained, and was reported as "IoU : 0.52"
        ({"ALL_CLASSES": ["background", " "], "LABEL_COLORS_LIST": [[0, 0, 0], [0, 255, 0]],
          "VIS_LABEL_MAP": [[0, 0, 0], [0, 255, 0]]}, r"c.yaml: ALL_CLASSES has an empty name"),
        # two classes of one name: the per-class IoU and the overlays' legend could not tell them
        ({"ALL_CLASSES": ["a", "a"], "LABEL_COLORS_LIST": [[0, 0, 0], [0, 255, 0]],
          "VIS_LABEL_MAP": [[0, 0, 0], [0, 255, 0]]},
         r"c.yaml: ALL_CLASSES has repeated names: \['a', 'a'\]"),
        # YAML reads unquoted numbers as ints, yes/no/on/off as booleans, null as None: the
        # message said "a list of names" of a list that looked like one, without the fix
        ({"ALL_CLASSES": [0, 1], "LABEL_COLORS_LIST": [[0, 0, 0], [0, 255, 0]],
          "VIS_LABEL_MAP": [[0, 0, 0], [0, 255, 0]]},
         r"c.yaml: ALL_CLASSES must be a list of names; YAML reads 0, 1 as no text: put them in "
         r"quotes \('1', 'no'\)"),
        ({"ALL_CLASSES": ["background", False, None]},
         r"ALL_CLASSES must be a list of names; YAML reads false, null as no text: put them in "
         r"quotes .*yes, no, on, off"),
        ({"ALL_CLASSES": "background, person"}, r"c.yaml: ALL_CLASSES must be a list of names$"),
        # class 255 would be the ignore index
        ({"ALL_CLASSES": [f"c{i}" for i in range(256)],
          "LABEL_COLORS_LIST": [[i, 0, 0] for i in range(256)],
          "VIS_LABEL_MAP": [[i, 0, 0] for i in range(256)]},
         r"c.yaml: at most 255 classes are supported, got 256"),
        (["lr", 0.1], r"config file .*c.yaml must hold a mapping of keys to values"),
    ],
)  # fmt: skip
def test_bad_config_files_fail_loudly(tmp_path, content, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(content))
    with pytest.raises(UserError, match=message):
        parse_args(train.get_args_parser(), ["--config", str(cfg)])


def test_a_class_config_needs_only_its_names_and_is_written_out_as_resolved():
    names = ["background", "cat", "dog"]
    only = ClassConfig.from_dict({"ALL_CLASSES": names})
    # masks are read as class ids only (no colours made up), overlays in the default colours
    assert only.mask_colors is None and only.vis_colors == distinct_colors(3)
    colours = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    given = ClassConfig.from_dict({"ALL_CLASSES": names, "LABEL_COLORS_LIST": colours})
    assert given.vis_colors == given.mask_colors == tuple(map(tuple, colours))
    full = {"ALL_CLASSES": names, "LABEL_COLORS_LIST": colours, "VIS_LABEL_MAP": colours[::-1]}
    assert ClassConfig.from_dict(full).to_dict() == full  # the older, complete form as before
    assert only.to_dict() == {
        "ALL_CLASSES": names, "VIS_LABEL_MAP": [list(c) for c in distinct_colors(3)]}  # fmt: skip
    for classes in (only, given):  # as OUT/args.yaml and checkpoints store them
        assert ClassConfig.from_dict(yaml.safe_load(yaml.safe_dump(classes.to_dict()))) == classes


def test_a_config_of_class_names_alone_trains_and_scores_class_index_masks(
    tmp_path, fresh_data, weights_file
):
    # a third class in class-index PNGs, as every importer of prepare_data.py writes them
    for path in fresh_data.glob("*_masks/*.png"):
        mask = np.array(Image.open(path))
        mask[:20, :20] = 2
        Image.fromarray(mask).save(path)
    (tmp_path / "c.yaml").write_text("ALL_CLASSES: [background, person, sign]\n")
    out = tmp_path / "out"
    run_train([*common(fresh_data, out, weights_file), "--config", str(tmp_path / "c.yaml"),
               "--epochs", "1", "--imgsz", "56", "56", "--num-vis", "1"])  # fmt: skip
    # the run's args.yaml and checkpoints hold the overlay colours it resolved
    resolved = {"ALL_CLASSES": ["background", "person", "sign"],
                "VIS_LABEL_MAP": [list(c) for c in distinct_colors(3)]}  # fmt: skip
    recorded = yaml.safe_load((out / "args.yaml").read_text())
    assert {k: recorded[k] for k in CLASS_KEYS if k in recorded} == resolved
    best = out / "best_model_iou.pth"
    assert read_checkpoint(best)["classes"] == resolved
    predictor = Predictor.from_checkpoint(best, torch.device("cpu"))
    assert predictor.classes.vis_colors == distinct_colors(3)  # the same overlays, loaded
    run_train(["--eval-only", "--model", str(best), "--data", str(fresh_data), "--out-dir",
               str(tmp_path / "eval"), "--workers", "0"])  # fmt: skip
    scored = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert list(scored["per_class_iou"]) == ["background", "person", "sign"]


def test_default_class_colours_are_distinct_and_visible():
    colors = distinct_colors(IGNORE_INDEX)  # the most classes there may be
    assert len(set(colors)) == IGNORE_INDEX
    assert colors[:3] == ((0, 0, 0), (0, 255, 0), (128, 0, 0))  # the default classes', then VOC's
    # VOC's (64, 0, 0) and (0, 64, 0) were classes 8 and 16 of an import, unseen on dark photos
    assert all(max(c) >= 128 for c in colors[1:])
    assert distinct_colors(4) == colors[:4]


def test_a_missing_config_file_is_named_and_an_empty_one_changes_nothing(tmp_path):
    with pytest.raises(UserError, match=r"config file .*missing.yaml does not exist"):
        parse_args(train.get_args_parser(), ["--config", str(tmp_path / "missing.yaml")])
    # a dataset folder given for the classes.yaml that prepare_data.py writes into it
    (tmp_path / "data" / "classes.yaml").parent.mkdir()
    (tmp_path / "data" / "classes.yaml").write_text("ALL_CLASSES: [background, cat]\n")
    with pytest.raises(
        UserError,
        match=r"config file .*data is a folder; pass the YAML file, such as .*classes.yaml",
    ):
        parse_args(train.get_args_parser(), ["--config", str(tmp_path / "data")])
    # a config file whose settings are all commented out yet: YAML reads it as null
    (tmp_path / "empty.yaml").write_text("# lr: 0.01\n")
    args, classes = parse_args(train.get_args_parser(), ["--config", str(tmp_path / "empty.yaml")])
    defaults, _ = parse_args(train.get_args_parser(), [])
    assert classes == DEFAULT_CLASSES
    assert {**vars(args), "config": None} == vars(defaults)


def test_config_file_takes_off_unquoted(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("amp: off\ncache_features: off\nscheduler: none\n")  # YAML 1.1: off is false
    args, _ = parse_args(train.get_args_parser(), ["--config", str(cfg)])
    assert (args.amp, args.cache_features, args.scheduler) == ("off", "off", "none")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("scheduler: linear\n", r"c.yaml: scheduler: 'linear' is not one of none, cosine, poly"),
        ("lr: abc\n", r"c.yaml: lr: 'abc' is not a valid value"),
        ("imgsz: [640, big]\n", r"c.yaml: imgsz: 'big' is not a valid value"),
        ("imgsz: 640\n", r"c.yaml: imgsz takes a list of 2 values, not \['640'\]"),
        ("imgsz: [56, 56, 56]\n", r"c.yaml: imgsz takes a list of 2 values"),
        ("lr: [0.1, 0.2]\n", r"c.yaml: lr takes a single value, not \['0.1', '0.2'\]"),
        ("tta_scales: []\n", r"c.yaml: tta_scales takes a list of one or more values"),
        ("lr: 0.1\nbatch: 4\nlr: 0.2\n", r"c.yaml: 'lr' is given twice"),  # not the last one
        # a quoted "false" is a string, which is true: fine-tuning would be turned on
        ('fine_tune: "false"\n', r"c.yaml: fine_tune must be true or false"),
        ('out_dir: ""\n', r"c.yaml: out_dir: '' is not a valid value \(an empty value"),
    ],
)
def test_bad_values_in_config_file_name_the_file(tmp_path, content, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content)
    with pytest.raises(UserError, match=message):
        parse_args(train.get_args_parser(), ["--config", str(cfg)])


@pytest.mark.parametrize(
    "content",
    [
        'data: "C:\\Users\\me\\data"\n',  # \U starts an escape: a YAML error
        'data: "D:\\new\\test"\n',  # \n and \t: read as a path with a newline and a tab
        'out_dir: "D:\\Nets"\n',  # \N: NEL, U+0085
    ],
)
def test_a_windows_path_in_double_quotes_is_named_with_the_fix(tmp_path, content):
    # A Windows user writes paths as in Explorer; YAML's double quotes make escapes of them
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content)
    with pytest.raises(UserError, match=r"(?s)c\.yaml.*write a Windows path unquoted or in sing"):
        parse_args(train.get_args_parser(), ["--config", str(cfg)])
    cfg.write_text(content.replace('"', "'"))  # the same path in single quotes is read as it is
    args, _ = parse_args(train.get_args_parser(), ["--config", str(cfg)])
    assert "\\" in str(args.data if "data" in content else args.out_dir)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--eval-only", "--model", "README.md"], "is not a readable checkpoint"),
        (
            ["--eval-only", "--model", "missing.pth"],
            "checkpoint missing.pth (--model) does not exist",
        ),
        (
            ["--eval-only", "--model", "old.pth"],
            "old.pth is damaged or was edited: it lacks layers, fine_tune, classes, imgsz",
        ),
        (["--device", "cuda"], "--device cuda was asked for"),
        (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a cuda or mps device"),
        (["--batch", "0"], "--batch must be at least 1"),
        (["--seed", "-1"], "--seed must be between 0 and 4294967295, not -1"),
        (["--weight-decay", "-0.1"], "--weight-decay must be 0 or more, not -0.1"),
        (["--lr", "inf"], "--lr must be above 0 and at most 1 (AdamW moves each weight by"),
        (["--data", "no/such/dir", "--weights", "random"], "--data no/such/dir is not a folder"),
    ],
)
def test_user_errors_exit_2_without_traceback(argv, message, tmp_path):
    if argv[0] == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "README.md").write_text("not a checkpoint")
    old = {"format": "dinov2-segmentation/1", "model": {}, "backbone": "dinov2_vits14",
           "backbone_source": "hub"}  # fmt: skip
    torch.save(old, tmp_path / "old.pth")
    cmd = [sys.executable, str(ROOT / "train.py"), *argv, "--out-dir", str(tmp_path / "o")]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_device_auto_prefers_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert pick_device("auto") == torch.device(expected)


@pytest.mark.parametrize(
    ("built", "why"),
    [(False, "this PyTorch build has no MPS support"), (True, "this Mac gives PyTorch no MPS")],
)
def test_device_mps_without_mps_is_refused_with_the_reason_and_the_fix(monkeypatch, built, why):
    # a Mac build on macOS before 12.3 or in a virtual machine has MPS built but no device
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: built)
    with pytest.raises(UserError, match=f"--device mps was asked for, but {why}") as raised:
        pick_device("mps")
    assert str(raised.value).endswith(": pass --device auto or --device cpu")


def test_device_cuda_without_a_gpu_names_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"no CUDA GPU here: pass --device auto or --device cpu$"):
        pick_device("cuda")


@pytest.mark.parametrize(
    ("version", "device", "amp", "refused"),
    [((2, 7), "mps", "fp16", True), ((2, 8), "mps", "fp16", False),
     ((2, 7), "cuda", "fp16", False), ((2, 7), "mps", "off", False)],
)  # fmt: skip
def test_fp16_training_on_mps_needs_torch_2_8(monkeypatch, version, device, amp, refused):
    # torch 2.7's GradScaler.unscale_ casts the scale to float64, which MPS lacks
    monkeypatch.setattr("utils.torch_version", lambda: version)
    if refused:
        with pytest.raises(UserError, match=r"--amp fp16 training on MPS needs torch 2\.8"):
            check_grad_scaler(amp, torch.device(device))
    else:
        check_grad_scaler(amp, torch.device(device))


def test_train_refuses_fp16_on_mps_with_torch_2_7_before_loading(monkeypatch, tmp_path, fresh_data):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr("utils.torch_version", lambda: (2, 7))
    args = ["--data", str(fresh_data), "--out-dir", str(tmp_path), "--weights", "random",
            "--device", "mps", "--amp", "fp16", "--workers", "0"]  # fmt: skip
    with pytest.raises(UserError, match=r"--amp fp16 training on MPS needs torch 2\.8"):
        run_train(args)
    assert not (tmp_path / "args.yaml").exists()


def test_train_refuses_bf16_on_mps_naming_the_precision_it_has(monkeypatch, tmp_path, fresh_data):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    args = ["--data", str(fresh_data), "--out-dir", str(tmp_path), "--weights", "random",
            "--device", "mps", "--amp", "bf16", "--workers", "0"]  # fmt: skip
    message = (
        r"--amp bf16 needs a cuda or cpu device; this run uses mps: use --amp fp16 or --amp off$"
    )
    with pytest.raises(UserError, match=message):
        run_train(args)
    assert not (tmp_path / "args.yaml").exists()


def test_fp16_on_the_cpu_is_refused_naming_bf16():
    with pytest.raises(UserError, match=r"this run uses cpu: use --amp bf16 or --amp off$"):
        amp_dtype("fp16", torch.device("cpu"))


@pytest.mark.parametrize(("device", "wider"), [("mps", "--amp off"), ("cuda", "--amp bf16")])
def test_an_fp16_divergence_suggests_a_precision_the_device_has(device, wider):
    # MPS has no bf16 here: the advice would only lead to the refusal above
    args = argparse.Namespace(lr=1e-3, amp="fp16")
    err = train.TrainingDiverged("the training loss became nan at batch 3")
    message = str(train.stopped_error(err, args, 2, "Kept.", torch.device(device)))
    assert message.endswith(f"Lower --lr (now 0.001), or use {wider} rather than fp16.")


@pytest.mark.parametrize(("batch", "imgsz"), [("1", "14"), ("1", "20")])
def test_batches_of_one_value_per_channel_are_refused_before_training(
    tmp_path, fresh_data, batch, imgsz
):
    # BatchNorm in training mode raised a ValueError traceback on a 1x1 patch grid of one image
    args = ["--data", str(fresh_data), "--out-dir", str(tmp_path), "--weights", "random",
            "--imgsz", imgsz, imgsz, "--batch", batch, "--workers", "0"]  # fmt: skip
    with pytest.raises(UserError, match=r"--batch 2 or more .* --imgsz of at least 21 21"):
        run_train(args)
    assert not (tmp_path / "args.yaml").exists()


@pytest.mark.parametrize("layers", ["0", "5"])
def test_layers_beyond_the_head_blocks_are_refused(tmp_path, fresh_data, layers):
    # the "+ms" head takes the last four blocks: --layers 5 would silently mean 4
    args = ["--data", str(fresh_data), "--out-dir", str(tmp_path / "o"), "--weights", "random",
            "--backbone-source", "timm", "--imgsz", *IMGSZ, "--workers", "0",
            "--layers", layers]  # fmt: skip
    with pytest.raises(UserError, match=rf"--layers must be between 1 and 4, not {layers}"):
        run_train(args)
    assert not (tmp_path / "o" / "last_model.pth").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tta"], "--tta applies to --eval-only"),
        # ignored before: the README's training table says --tta-scales is refused without --tta
        (["--tta-scales", "1.0", "1.32"], "--tta-scales applies to --eval-only --tta"),
        (["--model", "outputs/best_model_iou.pth"], "to go on training a checkpoint, use --resume"),
    ],
)
def test_evaluation_flags_without_eval_only_are_refused(argv, message):
    args, _ = parse_args(train.get_args_parser(), argv)
    with pytest.raises(UserError, match=message):
        train.check_args(args)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # silently unused before: a frozen backbone has no learning rate
        (["--backbone-lr", "1e-4"], "--backbone-lr is the learning rate of a fine-tuned backbone"),
        (["--cache-dir", "c"], "--cache-dir is the folder of --cache-features disk"),
        (["--cache-dir", "c", "--cache-features", "memory"], "--cache-dir is the folder of"),
        # AdamW's step raised "value cannot be converted to type float without overflow"
        (["--lr", "1e38"], r"--lr must be above 0 and at most 1 .*, not 1e\+38"),
        (["--fine-tune", "--backbone-lr", "2"], "--backbone-lr must be above 0 and at most 1"),
        (["--lr", "0.5", "--weight-decay", "4"], r"multiplies each weight by 1 - 2 per step"),
        (["--patience", "0"], "--patience must be at least 1"),
        (["--patience", "-2", "--eval-only"], "--patience must be at least 1"),
    ],
)
def test_flags_that_would_do_nothing_or_overflow_are_refused(argv, message):
    args, _ = parse_args(train.get_args_parser(), argv)
    with pytest.raises(UserError, match=message):
        train.check_args(args)


@pytest.mark.parametrize(
    ("argv", "needs"),
    [
        (["--tta"], "--eval-only"),
        (["--tta-scales", "1.0", "1.32"], "--tta"),
        (["--model", "m.pth"], "--eval-only"),
        (["--backbone-lr", "1e-4"], "--fine-tune"),
        (["--cache-dir", "c"], "--cache-features disk"),
    ],
)
def test_the_help_of_a_flag_refused_alone_names_the_flag_it_needs(argv, needs):
    """--help told of --tta "average class probabilities over --tta-scales and horizontal
    flips", and of --cache-dir "disk cache folder": a reader then got the refusal at the run."""
    parser = train.get_args_parser()
    args, _ = parse_args(parser, argv)
    with pytest.raises(UserError, match=re.escape(needs)):
        train.check_args(args)
    action = next(a for a in parser._actions if argv[0] in a.option_strings)
    assert needs in action.help, f"train.py --help of {argv[0]}: {action.help!r}"


def test_flags_that_take_effect_are_not_refused():
    parser = train.get_args_parser()
    accepted = [
        ["--fine-tune", "--backbone-lr", "1e-4"],
        ["--cache-features", "disk", "--cache-dir", "c"],
        ["--lr", "1", "--weight-decay", "1"],
        ["--eval-only", "--cache-dir", "c"],
        ["--eval-only", "--patience", "3"],  # ignored, as --epochs: a run's args.yaml sets both
    ]
    for flags in accepted:
        train.check_args(parse_args(parser, flags)[0])
    # a resumed run's --cache-dir is its checkpoint's, and --cache-features may turn the cache off
    args, _ = parse_args(parser, ["--cache-dir", "c"])
    args.resume = Path("outputs/last_model.pth")
    train.check_args(args)


@pytest.mark.parametrize(
    ("name", "flag", "message"),
    [
        ("runs", "--model", r"--model .*runs is a folder; .* such as .*best_model_iou\.pth"),
        ("runs", "--resume", r"--resume .*runs is a folder; .* such as .*last_model\.pth"),
        ("model.onnx", "--model", r"is an ONNX model, not a .pth .* --backend onnxruntime"),
        ("model.onnx", "--resume", r"--resume .*model.onnx is an ONNX model, not a .pth"),
        ("pickled.pth", "--model", r"pickled.pth is not a (readable )?checkpoint"),
        ("notes.txt", "--model", r"notes.txt is not a readable checkpoint: PyTorch cannot load"),
        ("gone.pth", "--resume", r"gone.pth \(--resume\) does not exist; pass the last_model"),
        ("nomodel.pth", "--model", r"nomodel.pth is damaged .* lacks model.backbone and model.h"),
        ("v2.pth", "--model", r"v2.pth has checkpoint format 'dinov2-segmentation/2', and this"),
    ],
)
def test_files_that_are_not_checkpoints_are_named_with_their_flag(tmp_path, name, flag, message):
    fields = {"format": "dinov2-segmentation/1", "backbone": "dinov2_vits14",
              "backbone_source": "timm", "layers": 4, "fine_tune": False, "imgsz": [56, 56],
              "classes": DEFAULT_CLASSES.to_dict()}  # fmt: skip
    torch.save({**fields, "model": {"head": {}}}, tmp_path / "nomodel.pth")
    torch.save({**fields, "format": "dinov2-segmentation/2"}, tmp_path / "v2.pth")
    (tmp_path / "runs").mkdir()
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    torch.save({"loss": ValueError("a Python object")}, tmp_path / "pickled.pth")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(UserError, match=message):
        read_checkpoint(tmp_path / name, flag)


WATCHED = ("head.classifier.weight", "backbone.vit.blocks.11.attn.qkv.weight")


def fine_tune_steps(weights_file: Path, amp: torch.dtype | None) -> tuple:
    """3 SGD steps of a fine-tuned model from seed 0 in precision ``amp`` (None: float32):
    (mean loss, {WATCHED name: its update}, {WATCHED name: its start}, GradScaler scale or
    None)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 128, (2, 3, 56, 70), dtype=torch.uint8, generator=g)
    masks = torch.zeros(2, 56, 70, dtype=torch.int64)
    images[:, :, 10:40, 20:50] += 100
    masks[:, 10:40, 20:50] = 1
    loader = [(images, masks, None)] * 3
    torch.manual_seed(0)
    backbone = load_backbone("dinov2_vits14", "timm", str(weights_file), layers=2)
    model = Segmentor(backbone, 2, fine_tune=True)
    start = {name: p.detach().clone() for name, p in model.named_parameters() if name in WATCHED}
    optimizer = torch.optim.SGD(model.param_groups(0.1, 0.01))
    scaler = torch.amp.GradScaler("cpu", enabled=amp == torch.float16)
    stats = train.train_one_epoch(model, loader, optimizer, torch.device("cpu"), 2, amp, scaler)
    updates = {n: p.detach() - start[n] for n, p in model.named_parameters() if n in WATCHED}
    return stats["loss"], updates, start, scaler.get_scale() if scaler.is_enabled() else None


@pytest.fixture(scope="module")
def fp32_fine_tuning(weights_file) -> tuple:
    """fine_tune_steps in float32, once for both precisions compared with it (read only)."""
    return fine_tune_steps(weights_file, None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_fine_tuning_follows_fp32(dtype, weights_file, fp32_fine_tuning):
    """The autocast (+ GradScaler for fp16) step makes the same updates as fp32, within rounding.

    CUDA runs the same code. Plain SGD, unlike Adam, is not invariant to the gradients' scale,
    so a gradient left scaled by the GradScaler, or a skipped step, would show.
    """
    loss32, updates32, start, _ = fp32_fine_tuning
    loss, updates, _, scale = fine_tune_steps(weights_file, dtype)
    assert loss == pytest.approx(loss32, rel=0.02)
    for name in WATCHED:
        assert updates32[name].norm() > 1e-5 * start[name].norm()  # both parts trained
        error = (updates[name] - updates32[name]).norm() / updates32[name].norm()
        assert error < 0.1, (name, error.item())
    if dtype == torch.float16:
        assert scale == 2.0**16  # the scaler scaled every step and none overflowed


def test_training_benchmark_reports_every_setup_and_precision(monkeypatch, capsys):
    bench = load_benchmark("bench_train")
    # Each run in this process rather than a spawned one of its own (which started Python and
    # torch once per row): the next test runs them as the benchmark does.
    monkeypatch.setattr(bench, "run_alone", lambda context, *run: bench.train_run(*run))
    argv = ["--imgsz", "56", "56", "--batch", "2", "--steps", "1", "--warmup", "1",
            "--workers", "0", "--data-images", "4", "--device", "cpu"]  # fmt: skip
    bench.main(bench.get_args_parser().parse_args(argv))
    stdout = capsys.readouterr().out
    lines = stdout.splitlines()
    rows = [line.split() for line in lines if line.startswith(("frozen", "fine-tune"))]
    assert [row[:2] for row in rows] == [["frozen", "off"], ["frozen", "bf16"],
                                         ["fine-tune", "off"], ["fine-tune", "bf16"]]  # fmt: skip
    assert all(float(row[2]) > 0 for row in rows)  # images per second
    assert "data pipeline:" in stdout


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_sigterm_stops_the_training_benchmark_and_its_run_at_once(tmp_path):
    # SIGTERM reaches the benchmark's process alone: it then waited for its run's process to
    # train every step (still training 90 s later), which ran on after it was killed
    cmd = [sys.executable, "benchmarks/bench_train.py", "--imgsz", "28", "28", "--batch", "2",
           "--steps", "100000", "--warmup", "0", "--setups", "frozen", "--amp", "off",
           "--workers", "0", "--device", "cpu"]  # fmt: skip
    log, children = tmp_path / "stderr.txt", []
    with log.open("w") as stderr:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 240
        while "frozen off:" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)  # until the run's progress bar shows it training
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children, "premise: the run has a process of its own"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130, log.read_text()[-3000:]
        # multiprocessing's resource tracker, one of them, ends once it reads the benchmark's
        # exit: awaited, as a loaded machine may run it late; a run training on never ends
        deadline = time.monotonic() + 30
        while any(alive(int(pid)) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in children if alive(int(pid))]
        assert left == [], "the run's processes must end with the benchmark"
    finally:
        for pid in [proc.pid, *map(int, children)]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, awaiting its parent's wait, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_size_that_cannot_fit_in_memory_is_refused_before_training_or_scoring(
    tmp_path, fresh_data, weights_file, trained, monkeypatch
):
    """--imgsz 10000 10000 on the CPU: the run was killed outright (SIGKILL), without a word;
    --eval-only counts the largest --tta view."""
    small_memory(monkeypatch, 16)
    out = tmp_path / "out"
    args = [*common(fresh_data, out, weights_file), "--imgsz", "10000", "10000"]
    fits = r"patches through dinov2_vits14\) at 4 images a batch needs at least .* GB free"
    with pytest.raises(UserError, match=rf"--imgsz 10000 10000 \(714x714 {fits}"):
        run_train(args)
    assert not list(out.glob("*.pth"))
    scored = ["--eval-only", "--model", str(trained / "best_model_iou.pth"), "--data",
              str(fresh_data), "--out-dir", str(out), "--workers", "0", "--batch", "4",
              "--imgsz", "5000", "5000", "--tta", "--tta-scales", "1", "2"]  # fmt: skip
    with pytest.raises(UserError, match=rf"--imgsz 5000 5000 \(its --tta-scales 2 view .*{fits}"):
        run_train(scored)
    assert not (out / "eval_metrics.json").exists()


def test_training_benchmark_refuses_a_size_that_cannot_fit_in_memory(monkeypatch):
    # its runs' processes were killed outright, one after another
    small_memory(monkeypatch, 16)
    bench = load_benchmark("bench_train")
    monkeypatch.setattr(bench, "run_alone", None)  # a run would call it
    args = bench.get_args_parser().parse_args(["--imgsz", "10000", "10000", "--device", "cpu"])
    with pytest.raises(UserError, match=r"--imgsz 10000 10000 .* at 8 images a batch needs"):
        bench.main(args)


@pytest.mark.parametrize("flag", ["--lr", "--backbone-lr"])
def test_training_benchmark_refuses_a_learning_rate_adamw_cannot_take(flag):
    # AdamW's step raised "value cannot be converted to type float without overflow"
    bench = load_benchmark("bench_train")
    args = bench.get_args_parser().parse_args([flag, "1e38", "--device", "cpu"])
    with pytest.raises(UserError, match=f"{flag} must be above 0 and at most 1"):
        bench.main(args)


def test_training_benchmark_refuses_batches_batchnorm_cannot_normalize():
    # one image of one patch: BatchNorm's "Expected more than 1 value per channel" traceback,
    # from the run's process, where train.py names --batch and --imgsz
    bench = load_benchmark("bench_train")
    args = bench.get_args_parser().parse_args(["--batch", "1", "--imgsz", "14", "14"])
    with pytest.raises(UserError, match=r"one value per channel.* use --batch 2 or more"):
        bench.main(args)


def test_bf16_training_runs_end_to_end_on_the_cpu(tmp_path, fresh_data, weights_file):
    out = tmp_path / "out"
    run_train(["--data", str(fresh_data), "--out-dir", str(out), "--backbone-source", "timm",
               "--weights", str(weights_file), "--imgsz", "56", "56", "--layers", "1",
               "--workers", "0", "--batch", "2", "--epochs", "2", "--num-vis", "1",
               "--device", "cpu", "--amp", "bf16"])  # fmt: skip
    rows = read_csv(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r[key]) for r in rows for key in ("train_loss", "valid_loss"))
    model, ckpt = load_checkpoint(out / "last_model.pth")
    assert ckpt["epoch"] == 2 and ckpt["args"]["amp"] == "bf16"
    stored = {**ckpt["model"]["head"], **ckpt["model"]["backbone"]}
    assert all(t.dtype == torch.float32 for t in stored.values() if t.is_floating_point())
    with torch.no_grad():
        logits = model(torch.randint(0, 256, (1, 3, 56, 56), dtype=torch.uint8))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_gpu_without_native_bf16_warns(monkeypatch, caplog, native):
    """T4 and V100 (before Ampere) run bf16 only by emulation, far slower than fp16."""
    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    with caplog.at_level("WARNING", logger="dinoseg"):
        assert amp_dtype("bf16", torch.device("cuda")) == torch.bfloat16
    assert asked == [False]
    assert ("emulates it, slowly. Use --amp fp16" in caplog.text) is not native


@pytest.mark.parametrize(
    ("capabilities", "warned"),
    [({"avx2": True, "avx512_f": True}, True), ({"avx512_bf16": True}, False),
     ({"amx_bf16": True}, False), ({"neon": True, "bf16": True}, False)],
)  # fmt: skip
def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch, caplog, capabilities, warned):
    """Laptops without AVX-512 BF16 or AMX run bf16 matrix multiplies by emulation."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities, raising=False)
    with caplog.at_level("WARNING", logger="dinoseg"):
        assert amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16
        assert amp_dtype("off", torch.device("cpu")) is None
    assert ("usually slower than --amp off" in caplog.text) is warned


def scoring_split() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three (3, 42, 56) uint8 images with masks of their own sizes, a third of them 255."""
    g = torch.Generator().manual_seed(3)
    split = []
    for h, w in ((30, 40), (50, 70), (42, 56)):
        mask = torch.randint(0, 2, (h, w), generator=g)
        mask[: h // 3] = 255
        split.append((torch.randint(0, 256, (3, 42, 56), dtype=torch.uint8, generator=g), mask))
    return split


def test_evaluation_scores_the_whole_split_whatever_the_batch_size():
    torch.manual_seed(0)
    model = Segmentor(load_backbone("dinov2_vits14", "timm", None, layers=1), 2).eval()
    split = scoring_split()
    cm, loss_sum, labelled = ConfusionMatrix(2), 0.0, 0
    with torch.no_grad():
        for image, mask in split:
            logits = model(image[None], size=tuple(mask.shape))
            cm.update(logits.argmax(1)[0], mask)
            loss_sum += F.cross_entropy(logits, mask[None], ignore_index=255, reduction="sum")
            labelled += int((mask != 255).sum())
    expected = cm.compute()
    grad_modes = []
    model.head.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    for batch in (1, 2, 3):
        loader = [train.collate_eval([(im, m, i) for i, (im, m) in enumerate(split[s : s + batch])])
                  for s in range(0, len(split), batch)]  # fmt: skip
        out = evaluate(model, loader, torch.device("cpu"), 2)
        assert out["miou"] == pytest.approx(expected["miou"], abs=1e-12), batch
        assert out["acc"] == pytest.approx(expected["pixel_accuracy"], abs=1e-12), batch
        assert out["iou"] == pytest.approx(expected["iou"], abs=1e-12), batch
        # the mean over labelled pixels only: 255 pixels add nothing to sum or count
        assert out["loss"] == pytest.approx(float(loss_sum) / labelled, rel=1e-5), batch
    assert not any(grad_modes), "evaluation must not record a graph for backward"


def test_the_epoch_loss_is_the_mean_over_labelled_pixels_and_steps_ignore_255():
    # batches of different sizes and ignored areas: the epoch's loss weighs every labelled pixel
    # once, and each step's gradient is that of the batch's mean over its labelled pixels
    torch.manual_seed(0)
    model = PixelClassifier()
    g = torch.Generator().manual_seed(1)
    loader = []
    for n, ignored_rows in ((3, 0), (1, 3), (2, 1)):
        masks = torch.randint(0, 2, (n, 4, 4), generator=g)
        masks[:, :ignored_rows] = 255
        loader.append((torch.rand(n, 3, 4, 4, generator=g), masks, None))
    grads = []
    for images, masks, _ in loader:
        model.zero_grad()
        F.cross_entropy(model(images, None), masks, ignore_index=255).backward()
        grads.append(model.conv.weight.grad.clone())
    with torch.no_grad():
        sums = [F.cross_entropy(model(im, None), m, ignore_index=255, reduction="sum")
                for im, m, _ in loader]  # fmt: skip
    labelled = sum(int((m != 255).sum()) for _, m, _ in loader)
    seen = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(model.conv.weight.grad.clone())
            return super().step(closure)

    model.eval()  # as evaluate() leaves it after the previous epoch
    stats = train.train_one_epoch(model, loader, Recording(model.parameters(), lr=0.0),
                                  torch.device("cpu"), 2)  # fmt: skip
    assert stats["loss"] == pytest.approx(float(sum(sums)) / labelled, rel=1e-6)
    assert len(seen) == 3
    for got, want in zip(seen, grads, strict=True):
        torch.testing.assert_close(got, want)
    assert model.training, "training must switch the model back to training mode"


@pytest.mark.parametrize("start_method", ["fork", "spawn"])  # Linux's default, macOS's
def test_workers_kept_between_epochs_draw_each_epochs_augmentations(tiny_data, start_method):
    # The workers start once and live through the epochs: each epoch's items must still be the
    # ones the main process draws for that epoch, or --resume would not repeat a run.
    pairs = check_dataset(tiny_data, DEFAULT_CLASSES)["train"]
    dataset = SegmentationDataset(pairs, DEFAULT_CLASSES, (56, 42), train=True, seed=3)
    args = argparse.Namespace(batch=4, seed=3, cache_features="off", workers=2)
    loader = train.make_loader(dataset, args, torch.device("cpu"), train=True)
    assert loader.persistent_workers
    loader.multiprocessing_context = start_method
    drawn = {}
    for epoch in (1, 2, 3):
        dataset.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        for images, masks, indices in loader:
            for image, mask, index in zip(images, masks, indices.tolist(), strict=True):
                expected_image, expected_mask, _ = dataset[index]
                assert torch.equal(image, expected_image), (epoch, index)
                assert torch.equal(mask, expected_mask), (epoch, index)
                drawn[epoch, index] = image
    # each epoch draws its own augmentations: the same image differs from one epoch to the next
    for epoch in (1, 2):
        assert any(not torch.equal(drawn[epoch, i], drawn[epoch + 1, i]) for i in range(8))


def test_the_accum_warning_counts_the_batches_of_the_training_loader():
    # worked out before the loader is made, so that it is said before the backbone loads
    for images in range(1, 12):
        for batch in (1, 2, 3, 4, 8, 16):
            args = argparse.Namespace(batch=batch, seed=0, cache_features="off", workers=0)
            loader = train.make_loader(list(range(images)), args, torch.device("cpu"), True)
            assert train.train_batches(images, batch) == len(loader), (images, batch)


def test_workers_start_without_this_processs_garbage(tiny_data):
    # A forked worker ran the destructors of garbage it inherited: an ONNX Runtime session in a
    # reference cycle, left by an earlier test, hung the suite in its destructor.
    class Cycle:
        pass

    garbage = Cycle()
    garbage.itself = garbage
    gone = weakref.ref(garbage)
    gc.collect()  # still referenced: moved to the oldest generation, which is rarely collected
    del garbage
    pairs = check_dataset(tiny_data, DEFAULT_CLASSES)["train"]
    dataset = SegmentationDataset(pairs, DEFAULT_CLASSES, (28, 28), train=True)
    args = argparse.Namespace(batch=4, seed=3, cache_features="off", workers=2)
    train.make_loader(dataset, args, torch.device("cpu"), train=True)
    assert gone() is None, "the workers would inherit an uncollected reference cycle"


def test_the_training_order_is_a_function_of_seed_and_epoch(tiny_data):
    # A resumed run builds a new loader and starts at a later epoch: it must shuffle that epoch
    # as the uninterrupted run did, whatever the loader drew before.
    dataset = SegmentationDataset(check_dataset(tiny_data, DEFAULT_CLASSES)["train"],
                                  DEFAULT_CLASSES, (28, 28), train=True)  # fmt: skip
    args = argparse.Namespace(batch=2, seed=5, cache_features="off", workers=0)

    def orders(epochs) -> list[list[int]]:
        loader = train.make_loader(dataset, args, torch.device("cpu"), train=True)
        result = []
        for epoch in epochs:
            loader.sampler.set_epoch(epoch)
            result.append([i for _, _, indices in loader for i in indices.tolist()])
        return result

    whole = orders([1, 2, 3])
    assert orders([2, 3]) == whole[1:]
    assert len({tuple(order) for order in whole}) == 3
    args.seed = 6  # --seed picks the shuffles too, not only the augmentations
    assert all(a != b for a, b in zip(orders([1, 2, 3]), whole, strict=True))


def test_a_resumed_runs_args_yaml_works_as_config_for_eval_only(tmp_path):
    # OUT/args.yaml of a resumed run records resume: PATH; --eval-only must not inherit it
    torch.save({"args": {"lr": 3e-3}}, tmp_path / "last.pth")
    (tmp_path / "args.yaml").write_text(f"resume: {tmp_path / 'last.pth'}\nlr: 0.003\n")
    args, _ = parse_args(train.get_args_parser(), [
        "--config", str(tmp_path / "args.yaml"), "--eval-only"])  # fmt: skip
    assert args.resume is None
    train.check_args(args)
    # given on the command line, the pair is still refused
    args, _ = parse_args(train.get_args_parser(), [
        "--resume", str(tmp_path / "last.pth"), "--eval-only"])  # fmt: skip
    with pytest.raises(UserError, match="--resume and --eval-only"):
        train.check_args(args)


# A locale whose encoding is not UTF-8 (ASCII here; cp1252 on most Windows machines, which
# misreads UTF-8 as other characters instead of failing)
NON_UTF8_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0"}


def test_reports_print_names_the_locale_cannot_encode():
    # Windows writes a redirected stdout in its code page: a report naming the class 行人
    # (train.py --eval-only > eval.txt) ended in a UnicodeEncodeError
    code = "from utils import run_script; run_script(lambda: print('IoU \\u884c\\u4eba: 0.5'))"
    env = {**os.environ, **NON_UTF8_LOCALE}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "IoU \\u884c\\u4eba: 0.5"


def test_ctrl_c_exits_130_with_one_line_and_no_traceback():
    # the shell convention (128 + SIGINT) that scripts and schedulers test for
    code = "import utils\ndef main():\n    raise KeyboardInterrupt\nutils.run_script(main)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 130
    assert proc.stderr == "interrupted\n"


def test_under_torchrun_rank_0_alone_says_interrupted():
    # each process said it, one line per process for one stop, after rank 0's own message
    code = "import utils\ndef main():\n    raise KeyboardInterrupt\nutils.run_script(main)"
    env = {**os.environ, "RANK": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=env)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (130, "")


def test_config_files_are_read_as_utf8_whatever_the_locale(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "ALL_CLASSES: [background, café]\nLABEL_COLORS_LIST: [[0, 0, 0], [0, 255, 0]]\n"
        "VIS_LABEL_MAP: [[0, 0, 0], [0, 255, 0]]\n",
        encoding="utf-8",
    )
    code = "import sys; from pathlib import Path; from config import read_yaml; "
    code += "print(ascii(read_yaml(Path(sys.argv[1]))['ALL_CLASSES']))"
    env = {**os.environ, **NON_UTF8_LOCALE}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(cfg)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == ascii(["background", "café"])


def test_a_new_run_into_the_folder_of_another_says_it_replaces_it(tmp_path, tiny_data, weights_file,
                                                                   caplog):  # fmt: skip
    """A second `python train.py` into the default outputs/ replaced the first run's best
    checkpoints, metrics and plots without a word (a --resume there is refused, a new run not)."""
    args = [*common(tiny_data, tmp_path, weights_file), "--epochs", "1", "--imgsz", "28", "28",
            "--num-vis", "0"]  # fmt: skip
    run_train(args)
    assert "holds an earlier run" not in caplog.text
    run_train(args)
    assert f"--out-dir {tmp_path} holds an earlier run (its metrics.csv, " in caplog.text
    assert f"--resume {tmp_path / 'last_model.pth'}" in caplog.text


def test_a_new_run_leaves_no_file_of_the_earlier_run_in_its_folder(
    tmp_path, checkpoint, tiny_data, weights_file, monkeypatch, caplog
):
    """A new run replaced the earlier run's files as it wrote its own: overlays of images it
    does not draw and an eval_metrics.json of the earlier model stayed, and a stop in its first
    epoch left the earlier checkpoints and metrics.csv beside the new args.yaml."""
    out = shutil.copytree(checkpoint.parent, tmp_path / "out")  # a 2-epoch run, finished
    (out / "valid_preds").mkdir()
    (out / "valid_preds" / "other_image.jpg").write_bytes(b"an earlier overlay")
    (out / "eval_metrics.json").write_text('{"miou": 0.9}')
    (out / "confusion_matrix.png").write_bytes(b"the earlier model's")
    (out / "confusion_matrix_tta.png").write_bytes(b"the earlier model's, with TTA")
    (out / "notes.txt").write_text("the user's")

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_one_epoch", stop)
    with pytest.raises(KeyboardInterrupt):
        run_train([*common(tiny_data, out, weights_file), "--epochs", "1", "--seed", "7"])
    assert f"--out-dir {out} holds an earlier run (its metrics.csv" in caplog.text
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "args.yaml",
        "notes.txt",
    ]
    assert yaml.safe_load((out / "args.yaml").read_text())["seed"] == 7


def test_a_run_on_a_relative_data_path_resumes_and_scores_from_another_folder(
    tmp_path, fresh_data, weights_file, monkeypatch, caplog
):
    """A relative --data was recorded as typed: --resume or --eval-only from another working
    folder looked for it there, and stopped as if the dataset had moved."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    argv = ["--data", "data", "--out-dir", str(out), "--backbone-source", "timm", "--weights",
            str(weights_file), "--imgsz", "28", "28", "--workers", "0", "--batch", "2",
            "--num-vis", "0"]  # fmt: skip
    run_train([*argv, "--epochs", "1"])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    run_train(["--resume", str(out / "last_model.pth"), "--out-dir", str(out), "--epochs", "2",
               "--workers", "0"])  # fmt: skip
    assert [r["epoch"] for r in read_csv(out / "metrics.csv")] == [1, 2]
    run_train(["--eval-only", "--model", str(out / "last_model.pth"), "--out-dir", "eval",
               "--workers", "0", "--imgsz", "28", "28"])  # fmt: skip
    scored = json.loads((tmp_path / "elsewhere" / "eval" / "eval_metrics.json").read_text())
    assert scored["images"] == 2
    # the same folder named relatively again is no changed setting
    caplog.clear()
    monkeypatch.chdir(tmp_path)
    run_train(["--resume", str(out / "last_model.pth"), "--out-dir", str(out), "--epochs", "3",
               "--workers", "0", "--data", "data"])  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "--epochs 3 (was 2)" in warnings[0] and "--data" not in warnings[0]


def test_an_older_checkpoints_relative_data_is_named_when_it_is_not_here(
    checkpoint, tmp_path, monkeypatch
):
    # checkpoints once recorded --data as typed: one relative to another folder is still
    # named as the checkpoint's, not as a --data the command line does not hold
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["args"]["data"] = "data/mine"
    torch.save(ckpt, tmp_path / "last_model.pth")
    monkeypatch.chdir(tmp_path)
    argv = ["--resume", "last_model.pth", "--out-dir", "out", "--epochs", "3"]
    with pytest.raises(UserError, match=r"continues its run on --data data/mine, which is not a "):
        run_train(argv)


def test_a_run_resumed_with_fewer_overlays_keeps_none_of_the_resumed_models(
    checkpoint, tiny_data, tmp_path
):
    """A resumed run with a smaller --num-vis left the resumed run's other overlays in
    valid_preds/: predictions of two models side by side."""
    out = shutil.copytree(checkpoint.parent, tmp_path / "out")  # a 2-epoch run, finished
    valid = [image for image, _ in check_dataset(tiny_data, DEFAULT_CLASSES)["valid"]]
    (out / "valid_preds").mkdir()
    for image in valid:  # the overlays of its --num-vis 4
        (out / "valid_preds" / f"{image.stem}.jpg").write_bytes(b"epoch 2")
    resume = ["--resume", str(out / "last_model.pth"), "--out-dir", str(out), "--workers", "0"]
    run_train([*resume, "--epochs", "3", "--num-vis", "1"])
    drawn = out / "valid_preds" / f"{valid[0].stem}.jpg"
    assert list((out / "valid_preds").iterdir()) == [drawn]
    assert drawn.read_bytes()[:2] == b"\xff\xd8"  # this run's JPEG
    # none drawn at all: the folder goes too
    run_train([*resume, "--epochs", "4", "--num-vis", "0"])
    assert not (out / "valid_preds").exists()


def test_a_weights_file_is_recorded_absolute_and_an_older_relative_one_still_matches(
    checkpoint, tmp_path, monkeypatch
):
    """--weights FILE was recorded as typed, unlike every other path flag: from another working
    folder a relative one named another file."""
    monkeypatch.chdir(tmp_path)
    parser = train.get_args_parser()
    args, classes = parse_args(parser, ["--weights", "w.pth"])
    assert train.settings(args, classes, (28, 28))["weights"] == str(tmp_path / "w.pth")
    assert parse_args(parser, ["--weights", "random"])[0].weights == "random"
    # recorded absolute, or relative by an older checkpoint (taken from the current folder, as
    # a relative --data is): the same file again is no ignored --weights, another one is
    ckpt = torch.load(checkpoint.parent / "last_model.pth", weights_only=True)
    for recorded in (str(tmp_path / "w.pth"), "w.pth"):
        ckpt["args"]["weights"] = recorded
        torch.save(ckpt, tmp_path / "last_model.pth")
        resume = ["--resume", "last_model.pth"]
        for typed in ([], ["--weights", "w.pth"], ["--weights", str(tmp_path / "w.pth")]):
            args, classes = parse_args(parser, [*resume, *typed])
            assert not train.ignored_model_flags(args, ckpt), (recorded, typed)
        args, classes = parse_args(parser, [*resume, "--weights", "other.pth"])
        ignored = train.ignored_model_flags(args, ckpt)
        assert ignored == f"--weights other.pth (the checkpoint's: {recorded})"
        # args.yaml records the checkpoint's file, absolute
        train.read_resume(args, classes)
        assert train.settings(args, classes, (28, 28))["weights"] == str(tmp_path / "w.pth")


def test_the_instance_id_warning_of_a_checkpoints_classes_says_to_train_a_new_model(
    checkpoint, fresh_data, tmp_path, monkeypatch, caplog
):
    """Masks read as instance ids: the warning said to pass --config, which a resumed run and
    --eval-only ignore, keeping the checkpoint's classes."""
    for split in ("train", "valid"):
        for path in sorted((fresh_data / f"{split}_masks").iterdir()):
            mask = np.asarray(Image.open(path)).copy()
            mask[-4:] = 2  # class ids of a third class
            Image.fromarray(mask).save(path)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_one_epoch", stop)
    with pytest.raises(KeyboardInterrupt):
        run_train(["--resume", str(checkpoint.parent / "last_model.pth"), "--data",
                   str(fresh_data), "--out-dir", str(tmp_path / "out"),
                   "--epochs", "3"])  # fmt: skip
    assert "read as instance ids" in caplog.text
    assert (
        "pass it with --config to train a new model (a resumed run keeps the classes of --resume "
        f"{checkpoint.parent / 'last_model.pth'})"
    ) in caplog.text
    caplog.clear()
    run_train(["--eval-only", "--model", str(checkpoint), "--data", str(fresh_data), "--out-dir",
               str(tmp_path / "eval"), "--workers", "0"])  # fmt: skip
    assert (
        f"pass it with --config to train a new model (--eval-only scores {checkpoint} with the "
        "classes it was trained with)"
    ) in caplog.text


def test_a_run_draws_its_random_numbers_from_seed(tmp_path, monkeypatch):
    # --seed seeds the head's initialization (and anything else drawn before training): the
    # same seed draws the same numbers, another seed others
    def first_draws(args, *rest):
        drawn.append(torch.rand(4))

    monkeypatch.setattr(train, "fit", first_draws)
    drawn = []
    for seed in (3, 3, 7):
        run_train(["--data", str(tmp_path), "--out-dir", str(tmp_path / "out"), "--device",
                   "cpu", "--seed", str(seed)])  # fmt: skip
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2])


def test_train_py_gives_the_head_of_an_independent_adamw_loop(tmp_path, weights_file, monkeypatch):
    # The documented optimization, written out apart from engine.py: DistributedSampler's order
    # for (--seed, epoch), the last short batch dropped, each --accum group's summed
    # cross-entropy over its labelled pixels (255 ignored; the short last group over its own),
    # AdamW decaying every head parameter, and the cosine rate of each epoch by its formula.
    data = make_dataset(tmp_path / "data", n_train=7, n_valid=1)
    masks_dir = data / "train_masks"
    for i, path in enumerate(sorted(masks_dir.iterdir())):  # batches that ignore more or less
        mask = np.array(Image.open(path))
        mask[: i * mask.shape[0] // 8] = IGNORE_INDEX
        Image.fromarray(mask).save(path)
    imgsz, batch, accum, epochs, lr, wd, seed = (42, 28), 2, 2, 3, 1e-2, 0.5, 42
    start = {}
    build = train.Segmentor

    def recorded(backbone, *args, **kwargs):
        model = build(backbone, *args, **kwargs)
        start["backbone"], start["head"] = backbone, copy.deepcopy(model.head)
        return model

    monkeypatch.setattr(train, "Segmentor", recorded)
    run_train(["--data", str(data), "--out-dir", str(tmp_path / "out"), "--backbone-source",
               "timm", "--weights", str(weights_file), "--imgsz", *map(str, imgsz), "--workers",
               "0", "--no-augment", "--num-vis", "0", "--batch", str(batch), "--accum",
               str(accum), "--epochs", str(epochs), "--lr", str(lr), "--weight-decay", str(wd),
               "--scheduler", "cosine", "--seed", str(seed)])  # fmt: skip

    backbone, head = start["backbone"], start["head"].train()
    mean = torch.tensor(config.IMAGENET_MEAN).view(3, 1, 1) * 255
    std = torch.tensor(config.IMAGENET_STD).view(3, 1, 1) * 255
    images, masks = [], []
    for path in sorted((data / "train_images").iterdir()):
        image = resize_image(np.array(Image.open(path).convert("RGB")), imgsz)
        images.append((torch.from_numpy(image).permute(2, 0, 1).float() - mean) / std)
        mask = np.array(Image.open(masks_dir / f"{path.stem}.png"))
        masks.append(torch.from_numpy(resize_mask(mask, imgsz)).long())
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    losses = []
    for epoch in range(1, epochs + 1):
        optimizer.param_groups[0]["lr"] = lr * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(images), generator=generator).tolist()
        batches = [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]
        total = pixels = 0.0
        for first in range(0, len(batches), accum):
            group = batches[first : first + accum]
            labelled = sum(int((masks[i] != IGNORE_INDEX).sum()) for b in group for i in b)
            optimizer.zero_grad()
            for b in group:
                x, y = (torch.stack([items[i] for i in b]) for items in (images, masks))
                with torch.no_grad():  # 42x28, a multiple of the patch: not resized
                    features = torch.cat(backbone(x), 1)
                logits = F.interpolate(head(features), size=y.shape[-2:], mode="bilinear")
                loss = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum")
                (loss / labelled).backward()
                total, pixels = total + loss.item(), pixels + int((y != IGNORE_INDEX).sum())
            optimizer.step()
        losses.append(total / pixels)

    rows = read_csv(tmp_path / "out/metrics.csv")
    assert [r["train_loss"] for r in rows] == pytest.approx(losses, rel=1e-5)
    assert [r["lr"] for r in rows] == pytest.approx([lr, 0.75 * lr, 0.25 * lr])
    trained = torch.load(tmp_path / "out/last_model.pth", weights_only=True)["model"]["head"]
    for name, value in head.state_dict().items():
        torch.testing.assert_close(trained[name], value, msg=name)


def test_a_checkpoint_given_as_config_file_is_named_with_its_runs_args_yaml(checkpoint, tmp_path):
    """A checkpoint stores its run's settings, so it is a likely --config; YAML's reading of its
    bytes ("unacceptable character #x0080") said nothing of what to pass instead."""
    settings = checkpoint.parent / "args.yaml"
    with pytest.raises(
        UserError,
        match=rf"config file {re.escape(str(checkpoint))} is a checkpoint written by train\.py, "
        rf"not a YAML file: pass --config {re.escape(str(settings))}, which holds its run's",
    ):
        parse_args(train.get_args_parser(), ["--config", str(checkpoint)])
    alone = tmp_path / "last_model.pth"  # copied without its run's folder
    shutil.copy(checkpoint, alone)
    with pytest.raises(UserError, match=r"pass --config OUT/args\.yaml of the run that wrote it"):
        parse_args(train.get_args_parser(), ["--config", str(alone)])


@pytest.mark.skipif(
    sys.platform != "linux", reason="a file name that is not UTF-8: Linux allows it"
)
def test_resume_continues_the_recorded_run_from_a_folder_whose_name_is_not_utf8(tmp_path):
    """torch.load's mmap takes the path to C++ as UTF-8, which a Latin-1 name on Linux (Python's
    surrogates) is not: the peek failed, and --resume continued nothing (--data None, --batch 8,
    a download of Penn-Fudan) while train.py read the checkpoint itself and warned of every
    setting as changed."""
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    folder.mkdir()
    torch.save({"args": {"data": "my/data", "batch": 16, "lr": 3e-3}}, folder / "last.pth")
    assert peek_checkpoint(folder / "last.pth")["args"]["batch"] == 16
    args, _ = parse_args(train.get_args_parser(), ["--resume", str(folder / "last.pth")])
    assert (args.data, args.batch, args.lr) == (Path("my/data"), 16, 3e-3)


@pytest.mark.parametrize("flags", [["--resume"], ["--eval-only", "--model"]])
def test_a_checkpoint_of_a_backbone_row_that_left_the_table_is_named_with_the_fix(
    checkpoint, tmp_path, flags
):
    """Its recorded --backbone went through the parser's choices first: "backbone:
    'dinov2_vits14_dpt' is not one of ...", where the inference scripts name the checkpoint's
    backbone as one this version does not build, and what to do."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["backbone"] = ckpt["args"]["backbone"] = "dinov2_vits14_dpt"  # a row since removed
    torch.save(ckpt, tmp_path / "last_model.pth")
    message = r"holds a 'dinov2_vits14_dpt' model, a backbone this version of the repository does"
    with pytest.raises(UserError, match=message):
        run_train([*flags, str(tmp_path / "last_model.pth"), "--out-dir", str(tmp_path / "out")])


def test_a_run_on_label_id_masks_keeps_mask_ids_for_eval_only(tmp_path, weights_file):
    # Cityscapes-style label ids: 24 person, 0 background, 5 a region no class lists (ignored)
    data = make_dataset(tmp_path / "data", n_train=4, n_valid=2)
    for path in data.glob("*_masks/*.png"):
        ids = np.asarray(Image.open(path))
        label_ids = np.where(ids == 1, 24, 0).astype(np.uint8)
        label_ids[:5] = 5
        Image.fromarray(label_ids).save(path)
    (tmp_path / "c.yaml").write_text("ALL_CLASSES: [background, person]\nMASK_IDS: [0, 24]\n")
    out = tmp_path / "run"
    run_train([*common(data, out, weights_file), "--epochs", "1", "--num-vis", "0",
               "--config", str(tmp_path / "c.yaml")])  # fmt: skip
    [row] = read_csv(out / "metrics.csv")
    # the checkpoint reads the masks by its own MASK_IDS: no --config here
    run_train(["--eval-only", "--model", str(out / "best_model_iou.pth"), "--data", str(data),
               "--out-dir", str(tmp_path / "eval"), "--workers", "0"])  # fmt: skip
    result = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert result["miou"] == pytest.approx(row["valid_miou"], abs=1e-9)


def test_eval_only_tells_a_class_missing_from_the_valid_masks_from_one_missed(
    checkpoint, tmp_path, capsys
):
    # the valid masks lose their person, which the images still show: the model's person
    # pixels all score against background, and person's IoU is 0 with nothing to find
    data = make_dataset(tmp_path / "data", n_train=2, n_valid=4)
    for path in (data / "valid_masks").iterdir():
        Image.fromarray(np.zeros_like(np.asarray(Image.open(path)))).save(path)
    run_train(["--eval-only", "--model", str(checkpoint), "--data", str(data), "--out-dir",
               str(tmp_path / "eval"), "--workers", "0"])  # fmt: skip
    result = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert result["per_class_iou"]["person"] == 0.0  # predicted somewhere
    # none of it right: precision 0; nothing to find: no recall
    assert result["per_class_precision"]["person"] == 0.0
    assert result["per_class_recall"]["person"] is None
    printed = capsys.readouterr().out
    assert re.search(
        r"\n  person      IoU 0\.0000  precision 0\.0000  recall   -    \(predicted, but in no "
        r"valid mask\)\n",
        printed,
    )
    assert re.search(r"\n  background  IoU [\d.]+  precision 1\.0000  recall [\d.]+\n", printed)
