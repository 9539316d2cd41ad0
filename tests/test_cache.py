"""The frozen-feature cache: hit, invalidated by changes, and faithful to uncached training."""

import argparse
import copy
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import engine
import train
from config import DEFAULT_CLASSES, parse_args
from datasets import (
    CachedFeatureDataset,
    check_dataset,
    read_image,
    read_mask,
    resize_image,
    resize_mask,
)
from engine import FeatureCache
from leftover_workers import leftover_workers_end_at_once  # noqa: F401 (autouse)
from model import Segmentor, load_backbone
from synthetic import make_dataset
from utils import UserError, read_csv


def run_train(args: list[str]) -> None:
    train.main(*parse_args(train.get_args_parser(), args))


def argv(data, out, weights, *extra) -> list[str]:
    return ["--data", str(data), "--out-dir", str(out), "--backbone-source", "timm",
            "--weights", str(weights), "--imgsz", "90", "66", "--epochs", "3", "--batch", "4",
            "--lr", "3e-3", "--workers", "0", *extra]  # fmt: skip


def cache_report(text: str) -> tuple[int, int]:
    found = re.findall(r"feature cache \(\w+\): (\d+) views computed .*?, (\d+) reused", text)
    assert found, "no feature cache report was logged"
    computed, reused = found[-1]
    return int(computed), int(reused)


def test_cached_training_matches_uncached_with_augmentation_off(
    tmp_path, tiny_data, weights_file, caplog
):
    run_train(argv(tiny_data, tmp_path / "plain", weights_file, "--no-augment"))
    with caplog.at_level("INFO", logger="dinoseg"):
        run_train(argv(tiny_data, tmp_path / "cached", weights_file, "--no-augment",
                       "--cache-features", "memory"))  # fmt: skip
    assert "feature cache (memory)" in caplog.text
    assert cache_report(caplog.text) == (8 + 4, 0)  # the cache was filled, so it was used
    plain, cached = (
        read_csv(tmp_path / "plain/metrics.csv"),
        read_csv(tmp_path / "cached/metrics.csv"),
    )
    # float16 features: the losses differ by rounding, and a pixel at a class boundary may
    # flip (one of the 32,640 valid pixels is 3.1e-5 of the accuracy, 1.1e-4 of the mIoU here)
    pixels = sum(np.prod(Image.open(p).size) for p in (tiny_data / "valid_masks").iterdir())
    for a, b in zip(plain, cached, strict=True):
        for key in ("valid_loss", "train_loss"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), key
        assert abs(b["valid_acc"] - a["valid_acc"]) * pixels <= 2  # pixels
        assert b["valid_miou"] == pytest.approx(a["valid_miou"], abs=3e-4)
    assert len(list((tmp_path / "cached/valid_preds").iterdir())) == 4


def test_disk_cache_is_reused_and_invalidated_by_a_changed_file(tmp_path, weights_file, caplog):
    data = make_dataset(tmp_path / "data", n_train=4, n_valid=2)
    # one epoch: the cache is filled, and reported on, before the first
    args = argv(data, tmp_path / "out", weights_file, "--cache-features", "disk", "--workers", "2",
                "--epochs", "1")  # fmt: skip
    with caplog.at_level("INFO", logger="dinoseg"):
        run_train(args)
    assert cache_report(caplog.text) == (4 * 2 + 2, 0)  # original and flipped train views
    files = sorted((tmp_path / "out/feature_cache").glob("*.pt"))
    assert len(files) == 10
    assert torch.load(files[0], weights_only=True).dtype == torch.float16

    caplog.clear()
    with caplog.at_level("INFO", logger="dinoseg"):
        run_train(args)
    assert cache_report(caplog.text) == (0, 10)

    image = data / "train_images" / "img000.png"
    Image.fromarray(np.zeros((72, 96, 3), np.uint8)).save(image)  # same name, new content
    caplog.clear()
    with caplog.at_level("INFO", logger="dinoseg"):
        run_train(args)
    assert cache_report(caplog.text) == (2, 8)  # only that image's two views


def test_cache_keys_depend_on_weights_size_blocks_and_precision(
    tiny_data, weights_file, reg_weights_file
):
    image = next((tiny_data / "train_images").iterdir())
    base = Segmentor(load_backbone("dinov2_vits14", "timm", str(weights_file)), 2)
    other = Segmentor(load_backbone("dinov2_vits14", "timm", None), 2)  # other weights
    fewer = Segmentor(load_backbone("dinov2_vits14", "timm", str(weights_file), layers=2), 2)
    key = FeatureCache(base, (90, 66), "memory").key(image, "orig")
    assert key == FeatureCache(base, (90, 66), "memory").key(image, "orig")
    assert key != FeatureCache(base, (90, 66), "memory").key(image, "flip")
    assert key != FeatureCache(other, (90, 66), "memory").key(image, "orig")
    assert key != FeatureCache(fewer, (90, 66), "memory").key(image, "orig")
    assert key != FeatureCache(base, (84, 70), "memory").key(image, "orig")
    bf16 = FeatureCache(base, (90, 66), "memory", autocast_dtype=torch.bfloat16)
    assert key != bf16.key(image, "orig")  # --amp bf16 features differ from fp32 ones
    # a cast backbone's too, whose head stays float32
    cast = copy.deepcopy(base).cast(torch.bfloat16)
    assert key != FeatureCache(cast, (90, 66), "memory").key(image, "orig")


@pytest.mark.skipif(
    sys.platform != "linux", reason="a file name that is not UTF-8: Linux allows it"
)
def test_a_dataset_whose_path_is_not_utf8_trains_from_the_disk_cache(
    tmp_path, tiny_data, weights_file, caplog
):
    """A cache key hashed the image's path as strict UTF-8, which a Latin-1 name on Linux
    (Python's surrogates) is not: a UnicodeEncodeError traceback before the first epoch, where
    training without the cache read the same dataset."""
    data = tmp_path / os.fsdecode(b"donn\xe9es")
    shutil.copytree(tiny_data, data)
    run_train(argv(data, tmp_path / "out", weights_file, "--epochs", "1", "--cache-features",
                   "disk", "--cache-dir", str(tmp_path / "cache")))  # fmt: skip
    with caplog.at_level("INFO", logger="dinoseg"):  # a second run reuses every entry
        run_train(argv(data, tmp_path / "out", weights_file, "--epochs", "1", "--cache-features",
                       "disk", "--cache-dir", str(tmp_path / "cache")))  # fmt: skip
    assert cache_report(caplog.text) == (0, 2 * 8 + 4)


def test_cache_size_estimate_is_the_size_written(tiny_data, weights_file):
    model = Segmentor(load_backbone("dinov2_vits14", "timm", str(weights_file)), 2)
    pairs = check_dataset(tiny_data, DEFAULT_CLASSES)["train"][:1]
    cache = FeatureCache(model, (90, 66), "memory")
    assert len(cache.missing(pairs, ("orig", "flip"))) == 2
    cache.fill(model, pairs, ("orig",), batch=1)
    assert cache.missing(pairs, ("orig", "flip")) == [(pairs[0][0], "flip")]
    stored = cache.load(pairs[0][0], "orig")
    assert stored.numel() * stored.element_size() == cache.view_bytes()


def test_unusable_cache_dir_is_reported_before_caching(tmp_path, tiny_data, weights_file):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(UserError, match=r"--cache-dir .*file/cache is not writable"):
        run_train(argv(tiny_data, tmp_path / "out", weights_file, "--cache-features", "disk",
                       "--cache-dir", str(blocker / "cache")))  # fmt: skip


def test_cache_refuses_a_fine_tuned_backbone(tmp_path, tiny_data, weights_file):
    with pytest.raises(UserError, match="--cache-features needs a frozen backbone"):
        run_train(argv(tiny_data, tmp_path, weights_file, "--cache-features", "memory",
                       "--fine-tune"))  # fmt: skip


def test_resuming_a_fine_tuned_run_refuses_the_cache(tmp_path, tiny_data, weights_file):
    # a fine-tuned run to resume, at a small size and without overlays: its images matter
    # no more than its scores here
    run_train(argv(tiny_data, tmp_path, weights_file, "--fine-tune", "--epochs", "1",
                   "--imgsz", "28", "28", "--num-vis", "0"))  # fmt: skip
    last = tmp_path / "last_model.pth"
    # without --fine-tune on the command line: the checkpoint says the backbone is trained
    with pytest.raises(UserError, match=r"last_model.pth fine-tunes its backbone.*without"):
        run_train(argv(tiny_data, tmp_path, weights_file, "--resume", str(last),
                       "--cache-features", "memory"))  # fmt: skip


@pytest.fixture(scope="module")
def untrained() -> Segmentor:
    return Segmentor(load_backbone("dinov2_vits14", "timm", None, layers=1), 2)


@pytest.fixture
def cached_pair(fresh_data, untrained) -> tuple[FeatureCache, tuple]:
    """A memory cache holding the original view of one training image."""
    pair = check_dataset(fresh_data, DEFAULT_CLASSES)["train"][0]
    cache = FeatureCache(untrained, (56, 56), "memory")
    cache.fill(untrained, [pair], ("orig",), batch=1)
    assert cache.missing([pair]) == []
    return cache, pair


def test_an_image_whose_mtime_alone_changed_misses_the_cache(cached_pair):
    cache, (image, mask) = cached_pair
    stat = image.stat()
    later = stat.st_mtime_ns + 1_000_000  # 1 ms
    os.utime(image, ns=(stat.st_atime_ns, later))
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (stat.st_size, later)  # premise
    assert cache.missing([(image, mask)]) == [(image, "orig")]


def test_an_image_rewritten_with_its_old_mtime_misses_the_cache(cached_pair):
    # cp -p, rsync -t or an archive's one mtime: new content in the same file (same inode) with
    # the same mtime; only the size tells
    cache, (image, mask) = cached_pair
    stat = image.stat()
    image.write_bytes(image.read_bytes() + b"\0" * 16)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    now = image.stat()
    assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)  # premise
    assert now.st_size != stat.st_size  # premise
    assert cache.missing([(image, mask)]) == [(image, "orig")]


def test_an_image_touched_mid_run_still_loads_its_cached_features(cached_pair):
    # A sync tool or an editor may touch a file while training runs for hours: the run keeps
    # the entry it checked, and only the next check (a later run) sees the change.
    cache, (image, mask) = cached_pair
    features = cache.load(image, "orig")
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert torch.equal(cache.load(image, "orig"), features)
    assert cache.missing([(image, mask)]) == [(image, "orig")]


def test_a_copy_with_the_same_size_and_mtime_has_its_own_entry(cached_pair):
    cache, (image, mask) = cached_pair
    copy_path = image.with_name(f"copy{image.suffix}")
    shutil.copy2(image, copy_path)
    stat, copied = image.stat(), copy_path.stat()
    assert (copied.st_size, copied.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)  # premise
    assert cache.missing([(copy_path, mask)]) == [(copy_path, "orig")]
    assert cache.key(copy_path, "orig") != cache.key(image, "orig")


def test_changing_one_backbone_weight_changes_the_cache_key(tiny_data, untrained):
    image = next((tiny_data / "train_images").iterdir())
    model = copy.deepcopy(untrained)
    key = FeatureCache(model, (56, 56), "memory").key(image, "orig")
    with torch.no_grad():
        model.backbone.vit.blocks[7].mlp.fc1.weight.view(-1)[12345] += 1e-3
    assert FeatureCache(model, (56, 56), "memory").key(image, "orig") != key


def test_a_changed_image_resize_changes_the_cache_key(tiny_data, untrained, monkeypatch):
    # features of images resized another way (an older resize_image) would be served stale
    image = next((tiny_data / "train_images").iterdir())
    key = FeatureCache(untrained, (56, 56), "memory").key(image, "orig")
    monkeypatch.setattr(engine, "RESIZE_VERSION", engine.RESIZE_VERSION + 1)
    assert FeatureCache(untrained, (56, 56), "memory").key(image, "orig") != key


def test_a_flipped_training_item_flips_its_features_and_its_mask_together(fresh_data, untrained):
    pair = check_dataset(fresh_data, DEFAULT_CLASSES)["train"][0]
    cache = FeatureCache(untrained, (56, 42), "memory")
    cache.fill(untrained, [pair], ("orig", "flip"), batch=2)
    image = torch.from_numpy(resize_image(read_image(pair[0]), (56, 42))).permute(2, 0, 1)
    mask = torch.from_numpy(resize_mask(read_mask(pair[1], DEFAULT_CLASSES), (56, 42)))
    assert (mask != mask.flip(-1)).any(), "the mask must not be symmetric, or this proves nothing"
    with torch.no_grad():
        views = {
            False: (untrained.features(image[None])[0], mask),
            True: (untrained.features(image.flip(-1)[None])[0], mask.flip(-1)),  # left-right
        }
    data = CachedFeatureDataset([pair], DEFAULT_CLASSES, (56, 42), cache, train=True)
    seen = set()
    for epoch in range(8):
        data.set_epoch(epoch)
        features, target, _ = data[0]
        flipped = bool((target == views[True][1]).all())
        seen.add(flipped)
        assert (target == views[flipped][1]).all()
        torch.testing.assert_close(features.float(), views[flipped][0], rtol=0.01, atol=0.01)
    assert seen == {False, True}, "both views must have been drawn"


@pytest.mark.parametrize("cache", ["off", "memory"])
def test_the_training_set_draws_its_augmentations_from_seed(tmp_path, fresh_data, untrained, cache):
    # --seed picks each item's augmentation (a crop and flip, or with the cache the original
    # or flipped view): make_datasets must hand it on, or every --seed would augment alike
    pairs = check_dataset(fresh_data, DEFAULT_CLASSES)
    drawn = {}
    for seed in (1, 7):
        args = argparse.Namespace(no_augment=False, cache_features=cache, cache_dir=None,
                                  out_dir=tmp_path, seed=seed, batch=4)  # fmt: skip
        train_set, _ = train.make_datasets(
            args, untrained, pairs, DEFAULT_CLASSES, (28, 28), None, rank=0, world=1
        )
        drawn[seed] = []
        for epoch in range(4):
            train_set.set_epoch(epoch)
            drawn[seed] += [train_set[i][1] for i in range(len(train_set))]  # the masks
    assert not all(torch.equal(a, b) for a, b in zip(drawn[1], drawn[7], strict=True))


def test_masks_past_the_memory_bound_are_read_again_not_kept(fresh_data, untrained, monkeypatch):
    """Validation masks keep their photos' size (12 MB at 4000x3000): a set of many would hold
    them all in RAM. Past MASK_MEMORY they are read again each epoch, with the same items."""
    pairs = check_dataset(fresh_data, DEFAULT_CLASSES)["train"][:3]  # scored as validation
    cache = FeatureCache(untrained, (56, 42), "memory")
    cache.fill(untrained, pairs, ("orig",), batch=2)
    masks = [read_mask(mask, DEFAULT_CLASSES) for _, mask in pairs]
    monkeypatch.setattr(datasets, "MASK_MEMORY", masks[0].nbytes)  # room for one mask
    reads = []
    real_read_mask = datasets.read_mask
    monkeypatch.setattr(
        datasets,
        "read_mask",
        lambda path, classes: reads.append(path) or real_read_mask(path, classes),
    )
    data = CachedFeatureDataset(pairs, DEFAULT_CLASSES, (56, 42), cache, train=False)
    for epoch in range(2):
        data.set_epoch(epoch)
        for i, expected in enumerate(masks):
            assert np.array_equal(data[i][1].numpy(), expected)
    kept, others = pairs[0][1], [mask for _, mask in pairs[1:]]
    assert reads == [kept, *others, *others], "the first mask is kept, the others read again"


def test_a_disk_entry_removed_mid_run_is_named_as_a_cache_problem(fresh_data, untrained, tmp_path):
    # train.fit reports an OSError as a failed write to --out-dir: a vanished cache file is not one
    pair = check_dataset(fresh_data, DEFAULT_CLASSES)["train"][0]
    cache = FeatureCache(untrained, (56, 56), "disk", tmp_path / "cache")
    cache.fill(untrained, [pair], ("orig",), batch=1)
    for file in (tmp_path / "cache").iterdir():
        file.unlink()
    with pytest.raises(UserError, match=r"feature cache entry .* of .* is gone"):
        cache.load(pair[0], "orig")


def test_each_disk_entry_of_a_batch_holds_its_own_view_alone(fresh_data, untrained, tmp_path):
    # an entry saved as a row of its batch would write the whole batch's storage to each file
    pairs = check_dataset(fresh_data, DEFAULT_CLASSES)["train"][:3]
    cache = FeatureCache(untrained, (56, 56), "disk", tmp_path / "cache")
    cache.fill(untrained, pairs, ("orig", "flip"), batch=6)
    sizes = [file.stat().st_size for file in (tmp_path / "cache").iterdir()]
    assert len(sizes) == 6 and max(sizes) <= cache.file_bytes()


def test_a_damaged_disk_entry_is_named_with_the_fix(fresh_data, untrained, tmp_path):
    # entries are written whole, but a copy of the folder or a disk fault can cut one off
    pair = check_dataset(fresh_data, DEFAULT_CLASSES)["train"][0]
    cache = FeatureCache(untrained, (56, 56), "disk", tmp_path / "cache")
    cache.fill(untrained, [pair], ("orig",), batch=1)
    (entry,) = (tmp_path / "cache").iterdir()
    entry.write_bytes(entry.read_bytes()[:100])
    damaged = rf"entry {re.escape(str(entry))} of .* is damaged .*: delete it"
    with pytest.raises(UserError, match=damaged):
        cache.load(pair[0], "orig")


def test_images_swapped_by_renaming_miss_the_cache(tmp_path, untrained):
    # Unpacked from an archive, files share one mtime; uncompressed ones of one resolution
    # share one size: swapping two names must not give each the other's features.
    rng = np.random.default_rng(0)
    paths = [tmp_path / "a.bmp", tmp_path / "b.bmp"]
    for path in paths:
        Image.fromarray(rng.integers(0, 255, (42, 56, 3), dtype=np.uint8)).save(path)
        os.utime(path, ns=(1_700_000_000 * 10**9,) * 2)
    pairs = [(path, None) for path in paths]
    cache = FeatureCache(untrained, (56, 42), "memory")
    cache.fill(untrained, pairs, ("orig",), batch=2)
    paths[0].rename(tmp_path / "tmp.bmp")
    paths[1].rename(paths[0])
    (tmp_path / "tmp.bmp").rename(paths[1])
    stats = [(p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    assert stats[0] == stats[1], "premise: the same size and mtime"
    assert cache.missing(pairs) == [(paths[0], "orig"), (paths[1], "orig")]


def test_a_full_cache_dir_is_reported_as_one(tmp_path, fresh_data, untrained, monkeypatch):
    pair = check_dataset(fresh_data, DEFAULT_CLASSES)["train"][0]
    cache = FeatureCache(untrained, (56, 56), "disk", tmp_path / "cache")

    def full_disk(obj, path):  # how PyTorch's zip writer reports a short write
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"could not write the feature cache to .*cache \(.*is th"
                       r"e disk full.*\); the entries written so far are kept"):  # fmt: skip
        cache.fill(untrained, [pair], ("orig",), batch=1)


def interrupt_after_stores(monkeypatch, count: int) -> None:
    """Make FeatureCache raise KeyboardInterrupt (a Ctrl-C) once it has stored ``count`` entries."""
    store = FeatureCache._store
    stored = []

    def store_then_interrupt(self, key, features):
        if len(stored) == count:
            raise KeyboardInterrupt
        store(self, key, features)
        stored.append(key)

    monkeypatch.setattr(FeatureCache, "_store", store_then_interrupt)


@pytest.mark.parametrize("mode", ["disk", "memory"])
def test_ctrl_c_while_filling_the_cache_says_what_is_kept(
    tmp_path, tiny_data, weights_file, caplog, monkeypatch, mode
):
    # before: exit 130 without a word on the cache, whose disk entries the next run reuses
    interrupt_after_stores(monkeypatch, 3)
    with caplog.at_level("INFO", logger="dinoseg"), pytest.raises(KeyboardInterrupt):
        run_train(argv(tiny_data, tmp_path, weights_file, "--cache-features", mode))
    if mode == "disk":
        assert len(list((tmp_path / "feature_cache").glob("*.pt"))) == 3
        assert f"the 3 entries computed so far are kept in {tmp_path / 'feature_cache'}" in (
            caplog.text
        )
    else:
        assert "the entries computed so far were in memory and are lost" in caplog.text
    assert "stopped while filling the feature cache" in caplog.text


def test_ctrl_c_while_filling_the_cache_under_torchrun_counts_this_process_alone(
    tmp_path, fresh_data, weights_file, untrained, caplog, monkeypatch
):
    # "the 3 entries computed so far are kept": rank 0's count, while every process had
    # written its own share into the folder (a sum would need a collective during the stop)
    args, classes = parse_args(
        train.get_args_parser(),
        argv(fresh_data, tmp_path, weights_file, "--cache-features", "disk"),
    )
    pairs = check_dataset(fresh_data, classes)
    interrupt_after_stores(monkeypatch, 3)
    with caplog.at_level("INFO", logger="dinoseg"), pytest.raises(KeyboardInterrupt):
        train.make_datasets(args, untrained, pairs, classes, (56, 56), None, rank=0, world=2)
    assert (
        "the entries computed so far (3 by this process, rank 0, and those of the other "
        f"process) are kept in {tmp_path / 'feature_cache'}"
    ) in caplog.text


def test_a_fill_stopped_midway_clears_its_progress_bar_before_the_message(
    fresh_data, untrained, monkeypatch, capsys
):
    # the bar stayed on screen until the stop's exception was done with: "stopped while filling
    # the feature cache: ..." was printed on the bar's line, after "4/128 [00:01<00:59, 2.07it/s]"
    pairs = check_dataset(fresh_data, DEFAULT_CLASSES)["train"]
    cache = FeatureCache(untrained, (56, 56), "memory")

    def interrupt(self, key, features):
        raise KeyboardInterrupt

    monkeypatch.setattr(FeatureCache, "_store", interrupt)
    try:
        cache.fill(untrained, pairs, ("orig",), batch=1)
    except KeyboardInterrupt:
        err = capsys.readouterr().err  # where train.make_datasets's handler writes its message
    else:
        raise AssertionError("the fill went on")
    assert "caching features" in err and err.rsplit("\r", 1)[-1].strip() == "", repr(err[-200:])


def test_a_resumed_cache_dir_that_is_not_here_is_named_as_the_checkpoints(
    tmp_path, checkpoint, monkeypatch, caplog
):
    """A resumed run continues its checkpoint's --cache-dir, maybe a folder of another machine:
    it was made here, or refused as an unwritable --cache-dir, which the command line did not
    hold, without a word of the checkpoint. A run refused after that check leaves no folder."""
    ckpt = torch.load(checkpoint, weights_only=True)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")

    def resume(cache_dir: Path) -> None:
        ckpt["args"].update(cache_features="disk", cache_dir=str(cache_dir))
        torch.save(ckpt, tmp_path / "last_model.pth")
        run_train(["--resume", str(tmp_path / "last_model.pth"), "--out-dir",
                   str(tmp_path / "out"), "--epochs", "3"])  # fmt: skip

    with pytest.raises(UserError, match=(
        rf"--resume {re.escape(str(tmp_path))}/last_model.pth continues its run with --cache-dir "
        r".*file/cache, which is not a folder here and cannot be made \(.*\): pass --cache-dir DIR"
    )):  # fmt: skip
        resume(blocker / "cache")

    def refuse(*args, **kwargs):
        raise UserError("refused after the check")

    with monkeypatch.context() as patched:
        patched.setattr(train, "build_model", refuse)
        with pytest.raises(UserError, match="refused after the check"):
            resume(tmp_path / "later" / "cache")
    assert not (tmp_path / "later").exists()

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_one_epoch", stop)
    with pytest.raises(KeyboardInterrupt):
        resume(tmp_path / "elsewhere" / "cache")
    assert (tmp_path / "elsewhere" / "cache").is_dir()
    assert (
        f"--resume {tmp_path / 'last_model.pth'} continues its run with --cache-dir "
        f"{tmp_path / 'elsewhere' / 'cache'}, which is not a folder here: it is made there"
    ) in caplog.text
