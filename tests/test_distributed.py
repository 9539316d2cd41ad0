"""torchrun training with 2 CPU processes (gloo), on loopback only: --device cpu, also where
there is a GPU."""

import argparse
import contextlib
import datetime
import errno
import json
import logging
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from record_writes import written_path
from torch.nn.parallel import DistributedDataParallel

import engine
import train
import utils
from config import DEFAULT_CLASSES, parse_args
from conftest import FAKE_HUB, ROOT, PixelClassifier
from datasets import ShardSampler, check_dataset
from engine import FeatureCache, TrainingDiverged, dice_loss, train_one_epoch
from model import Segmentor, load_backbone
from synthetic import make_dataset
from utils import UserError, read_csv, setup_distributed


@pytest.mark.parametrize(("size", "world"), [(5, 2), (4, 2), (1, 3), (0, 2)])
def test_shard_sampler_counts_each_item_exactly_once(size, world):
    shards = [list(ShardSampler(size, rank, world)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(size))
    assert [len(ShardSampler(size, rank, world)) for rank in range(world)] == list(map(len, shards))


@pytest.mark.parametrize(("size", "batch", "batches"), [(10, 8, 1), (10, 2, 2), (17, 4, 2)])
def test_each_process_trains_on_at_least_one_batch(size, batch, batches):
    # 10 images over 2 processes is 5 each: a batch of 8 must not be dropped as incomplete
    args = argparse.Namespace(batch=batch, seed=0, cache_features="off", workers=0)
    for rank in range(2):
        loader = train.make_loader(range(size), args, torch.device("cpu"), True, rank, world=2)
        assert len(loader) == len(list(loader)) == batches


@pytest.mark.parametrize(("size", "world", "batch"), [(5, 2, 3), (7, 4, 2), (1, 3, 1)])
def test_training_metrics_count_an_image_distributed_sampler_repeats_once(size, world, batch):
    # DistributedSampler gives each process ceil(size / world) images, the last processes'
    # ending with repeats of images others train on; no batch is dropped, so the repeats are
    # trained on. Each process runs here without a process group: its metrics are its share's.
    g = torch.Generator().manual_seed(0)
    images = torch.rand(size, 3, 4, 4, generator=g)
    masks = torch.randint(0, 2, (size, 4, 4), generator=g)
    dataset = list(zip(images, masks, range(size), strict=True))
    args = argparse.Namespace(batch=batch, seed=0, cache_features="off", workers=0)
    torch.manual_seed(0)
    model = PixelClassifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the same model for every process
    counted = set()
    for rank in range(world):
        loader = train.make_loader(dataset, args, torch.device("cpu"), True, rank, world)
        order = [int(i) for _, _, indices in loader for i in indices]
        assert len(order) == math.ceil(size / world)
        real = [i for i in order if i not in counted]  # padding repeats the order's first items
        counted.update(real)
        stats = train_one_epoch(model, loader, optimizer, torch.device("cpu"), 2)
        with torch.no_grad():
            logits = model(images[real], None)
        loss = torch.nn.functional.cross_entropy(logits, masks[real])
        assert stats["loss"] == pytest.approx(loss.item(), rel=1e-6, nan_ok=True)
        acc = (logits.argmax(1) == masks[real]).double().mean()
        assert stats["acc"] == pytest.approx(acc.item(), nan_ok=True)
    assert counted == set(range(size))


# in a spawned process: "hooked" once _record_write is installed (for good: audit hooks stay),
# "log", the open file of the run's writes, while a run goes on
_recording = {}


def _record_write(event: str, args: tuple) -> None:
    """An audit hook: logs the writes of train.main, as tests/record_writes.py does."""
    path = written_path(event, args)
    if path is not None and "log" in _recording:
        _recording["log"].write(f"{event} {os.path.abspath(path)}\n")


def _train_as_torchrun_would(rank: int, port: int, argv: list[str], folder: Path) -> None:
    """train.py's run_script(main) as process ``rank`` of 2 that torchrun started: with
    torchrun's environment, run_script sets the rank's log level, and setup_distributed joins
    (and main leaves) a group of its own on 127.0.0.1:``port``.

    Writes folder/<rank>.log (the dinoseg log),
    folder/<rank>.out (stdout), folder/<rank>.txt (the files main wrote, as
    tests/record_writes.py logs them) and folder/<rank>.exit ("ok", or the traceback of the
    error)."""
    env = {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
    os.environ.update(env)
    folder.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("dinoseg")
    handler = logging.FileHandler(folder / f"{rank}.log")
    log.addHandler(handler)
    if "hooked" not in _recording:
        sys.addaudithook(_record_write)
        _recording["hooked"] = True
    try:
        with (
            open(folder / f"{rank}.out", "w") as out,
            contextlib.redirect_stdout(out),
            open(folder / f"{rank}.txt", "w", buffering=1) as _recording["log"],
        ):
            utils.run_script(lambda: train.main(*parse_args(train.get_args_parser(), argv)))
    except (Exception, SystemExit):
        # on to the next scenario: the other process, if it waits in a collective, fails on the
        # connection main's leave_distributed closed
        (folder / f"{rank}.exit").write_text(traceback.format_exc())
        return
    finally:
        _recording.pop("log", None)
        log.removeHandler(handler)
        handler.close()
        for key in env:
            del os.environ[key]
    (folder / f"{rank}.exit").write_text("ok")


def _train_runs(root: Path, weights: str, trained: Path, data: Path) -> dict[str, list[str]]:
    """The command lines of train.py that _two_process_scenarios runs, by the folder of each;
    ``trained``: torchrun_training's folder, whose model "eval" scores; ``data``: tiny_data, on
    which "resume" resumes the run of the checkpoint fixture (copied to resume/run)."""
    cached = ["--data", str(root / "cache_data"), "--backbone-source", "timm", "--weights", weights,
              "--imgsz", "56", "56", "--epochs", "2", "--batch", "1", "--workers", "0",
              "--num-vis", "3", "--lr", "3e-3", "--device", "cpu"]  # fmt: skip
    return {
        "cache_disk": [*cached, "--out-dir", str(root / "cache_disk" / "out"),
                       "--cache-features", "disk"],
        "cache_memory": [*cached, "--out-dir", str(root / "cache_memory" / "out"),
                         "--cache-features", "memory"],
        "fine_tune": ["--data", str(root / "fine_tune_data"),
                      "--out-dir", str(root / "fine_tune" / "out"), "--backbone-source", "hub",
                      "--hub-dir", str(FAKE_HUB), "--weights", weights, "--fine-tune",
                      "--imgsz", "56", "56", "--epochs", "1", "--batch", "1", "--workers", "0",
                      "--num-vis", "0", "--device", "cpu"],
        "eval": ["--eval-only", "--model", str(trained / "out" / "last_model.pth"),
                 "--data", str(trained / "data"), "--out-dir", str(root / "eval" / "out"),
                 "--workers", "0", "--device", "cpu"],
        "resume": ["--data", str(data), "--out-dir", str(root / "resume" / "run"),
                   "--resume", str(root / "resume" / "run" / "last_model.pth"), "--epochs", "2",
                   "--imgsz", "98", "98", "--layers", "2", "--lr", "1e-3", "--workers", "0",
                   "--device", "cpu"],
    }  # fmt: skip


def _two_process_scenarios(
    rank: int, folder: str, weights: str, trained: str, data: str, ports: list[int]
) -> None:
    """The scenarios of the tests below in 2 spawned processes, one after another: each spawn
    costs the processes' start (torch, DDP's import of torch._dynamo), as each torchrun does,
    the scenarios themselves a fraction of a second to a few seconds. First the train.py runs,
    each in a group of its own, as torchrun starts them; then the others in one gloo group.
    Each writes what it saw under ``folder``."""
    root = Path(folder)
    # torchrun's OMP_NUM_THREADS=1: two processes of a thread per core each fight on 2 cores
    # (measured: the train.py runs took 3 times as long)
    torch.set_num_threads(1)
    runs = _train_runs(root, weights, Path(trained), Path(data))
    for (name, argv), port in zip(runs.items(), ports, strict=True):
        _train_as_torchrun_would(rank, port, argv, root / name)
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))  # fmt: skip
    _record_updates(rank, str(root / "updates"))
    _check_data_in(rank, [str(root / "first"), str(root / "second")])
    _stop_early_in_every_process(rank, str(root / "patience"), weights)
    _diverge_in_one_process(rank, str(root / "diverge"))  # last: it leaves a DDP step unfinished
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def torchrun_training(tmp_path_factory, weights_file) -> tuple[Path, subprocess.CompletedProcess]:
    """A torchrun of train.py with 2 processes, each recording its writes: its folder (data,
    out, writes: tests/record_writes.py's logs) and the finished process; do not modify."""
    folder = tmp_path_factory.mktemp("torchrun_training")
    data = make_dataset(folder / "data", n_train=8, n_valid=5, seed=7)  # 5: uneven over 2
    out, writes = folder / "out", folder / "writes"
    writes.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "tests/record_writes.py", str(writes), "train.py",
           "--data", str(data), "--out-dir", str(out), "--backbone-source", "timm",
           "--weights", str(weights_file), "--imgsz", "90", "66", "--epochs", "2",
           "--batch", "2", "--workers", "0", "--lr", "3e-3", "--num-vis", "2",
           "--device", "cpu"]  # fmt: skip
    return folder, subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def two_process_runs(
    tmp_path_factory, weights_file, torchrun_training, checkpoint, tiny_data
) -> Path:
    """The folder of what _two_process_scenarios's processes wrote; do not modify."""
    root = tmp_path_factory.mktemp("two_processes")
    for name in ("updates", "diverge"):
        (root / name).mkdir()
    for folder in (root / "first", root / "second", root / "patience"):
        make_dataset(folder / "data", n_train=2, n_valid=2, sizes=((28, 28),))
    (root / "second" / "data" / "valid_images" / "img001.jpg").unlink()  # a copy not finished
    make_dataset(root / "cache_data", n_train=4, n_valid=3, seed=5)
    make_dataset(root / "fine_tune_data", n_train=4, n_valid=2, seed=3)
    shutil.copytree(checkpoint.parent, root / "resume" / "run")
    # a port for each train.py run's group: one group's store can outlive its run
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in _train_runs(root, "", root, root)]
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    context = torch.multiprocessing.spawn(
        _two_process_scenarios,
        args=(str(root), str(weights_file), str(torchrun_training[0]), str(tiny_data), ports),
        nprocs=2,
        join=False,
    )
    # Not context.join(), which fails on any exit code: in about 1 run of 30 under pytest (and
    # under load) a process has ended with SIGABRT in gloo's C++ code ("terminate called
    # without an active exception"). What each process wrote is what the tests check; a
    # process that died before writing leaves no file, and its test fails.
    for process in context.processes:
        process.join(timeout=300)
    for process in context.processes:
        if process.is_alive():  # waiting for a peer that died: its test fails on what is missing
            process.kill()
    return root


def _stop_early_in_every_process(rank: int, folder: str, weights: str) -> None:
    """fit of 4 epochs under --patience 1 in 2 processes, whose valid mIoU (all-reduced, as
    evaluate's is) never beats epoch 1's: each writes the epochs it validated, once past a
    barrier that a process still training would leave the other waiting at."""
    args, classes = parse_args(train.get_args_parser(), [
        "--data", f"{folder}/data", "--out-dir", f"{folder}/out", "--backbone-source", "hub",
        "--hub-dir", str(FAKE_HUB), "--weights", weights, "--imgsz", "28", "28", "--layers", "1",
        "--epochs", "4",
        "--patience", "1", "--batch", "1", "--workers", "0", "--num-vis", "0",
        "--device", "cpu"])  # fmt: skip
    evaluate, validated = train.evaluate, []

    def tied(*args, **kwargs) -> dict:
        validated.append(kwargs["desc"])
        return {**evaluate(*args, **kwargs), "miou": 0.5}

    train.evaluate = tied  # in this spawned process alone
    train.save_checkpoint = lambda *args, **kwargs: None  # saves time
    train.fit(args, classes, torch.device("cpu"), None, rank, world=2)
    dist.barrier()
    Path(folder, f"{rank}.txt").write_text(", ".join(validated))


def test_patience_stops_every_process_at_the_same_epoch(two_process_runs):
    folder = two_process_runs / "patience"
    for rank in (0, 1):
        assert (folder / f"{rank}.txt").read_text() == "valid 1/4, valid 2/4", rank
    assert [r["epoch"] for r in read_csv(folder / "out" / "metrics.csv")] == [1, 2]


def _diverge_in_one_process(rank: int, results: str) -> None:
    """Train 3 identical steps in 2 processes; process 1's second batch holds a NaN."""
    torch.manual_seed(0)
    model = DistributedDataParallel(PixelClassifier())
    images, masks = torch.rand(2, 3, 4, 4), torch.randint(0, 2, (2, 4, 4))
    poisoned = images.clone()
    poisoned[0, 0, 0, 0] = math.nan
    loader = [(images, masks, None), (poisoned if rank == 1 else images, masks, None),
              (images, masks, None)]  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        train_one_epoch(model, loader, optimizer, torch.device("cpu"), 2)
        outcome = "finished"
    except TrainingDiverged as err:
        outcome = str(err)
    Path(results, f"{rank}.txt").write_text(outcome)
    # An orderly teardown: gloo could abort a process that exits while its peer still talks.
    del model, optimizer
    dist.barrier()


def test_a_nan_in_one_process_stops_every_process_at_the_same_step(two_process_runs):
    results = two_process_runs / "diverge"
    assert (results / "0.txt").read_text() == (
        "the training loss diverged in another process at batch 2"
    )
    assert (results / "1.txt").read_text() == "the training loss became nan at batch 2"


def _uneven_batches(rank: int) -> list:
    """Three batches of process ``rank``, each with its own number of ignored pixels."""
    g = torch.Generator().manual_seed(10 + rank)
    batches = []
    for ignored_rows in ((0, 5, 1), (4, 2, 0))[rank]:
        masks = torch.randint(0, 2, (2, 6, 6), generator=g)
        masks[:, :ignored_rows] = 255
        batches.append((torch.rand(2, 3, 6, 6, generator=g), masks, None))
    return batches


# the --class-weights of the weighted updates _record_updates records
UPDATE_WEIGHTS = (0.25, 3.0)


def _record_updates(rank: int, results: str) -> None:
    """Train --accum 2 over 3 batches in 2 processes, without and with UPDATE_WEIGHTS, and with
    them and --loss ce+dice; save the gradients each update used (RANK.pt, weighted_RANK.pt,
    dice_RANK.pt)."""

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            self.seen.append(self.param_groups[0]["params"][0].grad.clone())  # conv.weight
            return super().step(closure)

    runs = [("", None, "ce"), ("weighted_", torch.tensor(UPDATE_WEIGHTS), "ce"),
            ("dice_", torch.tensor(UPDATE_WEIGHTS), "ce+dice")]  # fmt: skip
    for name, weights, loss in runs:
        torch.manual_seed(0)
        model = DistributedDataParallel(PixelClassifier())
        optimizer = Recording(model.parameters(), lr=0.0)
        optimizer.seen = []
        train_one_epoch(model, _uneven_batches(rank), optimizer, torch.device("cpu"), 2, accum=2,
                        class_weights=weights, loss=loss)  # fmt: skip
        torch.save(optimizer.seen, Path(results, f"{name}{rank}.pt"))
        del model, optimizer
    dist.barrier()


@pytest.mark.parametrize("name", ["", "weighted_", "dice_"])
def test_an_update_under_torchrun_is_that_of_one_batch_of_every_processs_images(
    two_process_runs, name
):
    # The processes' batches hold different numbers of ignored pixels: averaging each process's
    # own mean weighed their pixels unequally (measured: 1.4-52% off this gradient). With
    # --class-weights, the group's labelled pixels are counted by their weights in every process.
    # With --loss ce+dice, the Dice loss of each batch adds its share of the group's mean.
    results = two_process_runs / "updates"
    weights = torch.tensor(UPDATE_WEIGHTS) if name else None
    torch.manual_seed(0)
    model = PixelClassifier()
    expected = []
    for start in (0, 2):  # --accum 2 over 3 batches: groups of 2 and 1 batches per process
        group = [b for rank in (0, 1) for b in _uneven_batches(rank)[start : start + 2]]
        model.zero_grad()
        images, masks = (torch.cat([batch[i] for batch in group]) for i in (0, 1))
        loss = torch.nn.functional.cross_entropy(
            model(images, None), masks, weight=weights, ignore_index=255
        )
        if name == "dice_":
            dice = [dice_loss(model(im, None), m, weights) for im, m, _ in group]
            loss = loss + sum(dice) / len(dice)
        loss.backward()
        expected.append(model.conv.weight.grad.clone())
    for rank in (0, 1):
        seen = torch.load(results / f"{name}{rank}.pt", weights_only=True)
        assert len(seen) == 2
        for got, want in zip(seen, expected, strict=True):
            torch.testing.assert_close(got, want)


def _writes(log_dir: Path, rank: int, under: Path) -> list[str]:
    """The writes that tests/record_writes.py logged for ``rank`` inside the folder ``under``."""
    lines = (log_dir / f"{rank}.txt").read_text().splitlines()
    return [line for line in lines if Path(line.split(" ", 1)[1]).is_relative_to(under)]


def test_torchrun_two_processes_match_a_single_process_evaluation(
    torchrun_training, two_process_runs, tmp_path
):
    folder, proc = torchrun_training
    data, out, writes = folder / "data", folder / "out", folder / "writes"
    assert proc.returncode == 0, proc.stderr[-3000:]

    # rank 0 alone reports and writes
    assert proc.stdout.count("Best valid mIoU") == 1
    assert proc.stderr.count("epoch 1/2  train loss") == 1
    assert proc.stderr.count("epoch 2/2  train loss") == 1
    assert "2 processes, batch 2 each" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "accuracy.png", "args.yaml", "best_model_iou.pth", "best_model_loss.pth",
        "last_model.pth", "loss.png", "metrics.csv", "miou.png", "valid_preds"])  # fmt: skip
    assert len(list((out / "valid_preds").iterdir())) == 2
    # every file above was written by rank 0; rank 1 wrote nothing anywhere in the test's folders
    written = {Path(line.split(" ", 1)[1]) for line in _writes(writes, 0, folder)}
    assert written >= set(out.iterdir()) | set((out / "valid_preds").iterdir())
    assert _writes(writes, 1, folder) == []
    rows = read_csv(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    # for a resume on another number of processes, which changes the images of a step
    assert torch.load(out / "last_model.pth", weights_only=True)["processes"] == 2

    # the summed confusion matrix gives the single-process numbers, every image counted once
    train.main(*parse_args(train.get_args_parser(), [
        "--eval-only", "--model", str(out / "last_model.pth"), "--data", str(data),
        "--out-dir", str(tmp_path / "eval"), "--workers", "0"]))  # fmt: skip
    single = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert single["images"] == 5
    assert rows[-1]["valid_miou"] == pytest.approx(single["miou"], abs=1e-9)
    assert rows[-1]["valid_acc"] == pytest.approx(single["pixel_accuracy"], abs=1e-9)

    # --eval-only of that model with 2 processes (_train_runs's "eval", in torchrun's setting):
    # the summed matrix and the scores from it are the single process's, and rank 0 alone
    # writes them and the plot
    run = two_process_runs / "eval"
    for rank in (0, 1):
        assert (run / f"{rank}.exit").read_text() == "ok", rank
    assert "".join((run / f"{rank}.out").read_text() for rank in (0, 1)).count("Wrote ") == 1
    both = json.loads((run / "out" / "eval_metrics.json").read_text())
    assert both["confusion_matrix"] == single["confusion_matrix"]
    for key in ("miou", "pixel_accuracy", "per_class_iou", "per_class_precision",
                "per_class_recall"):  # fmt: skip
        assert both[key] == pytest.approx(single[key], abs=1e-12), key
    assert sorted(p.name for p in (run / "out").iterdir()) == [
        "confusion_matrix.png",
        "eval_metrics.json",
    ]
    # under the session's folders: the model's and data's, and those of every test
    everywhere = two_process_runs.parent
    written = {Path(line.split(" ", 1)[1]) for line in _writes(run, 0, everywhere)}
    assert written >= set((run / "out").iterdir())
    assert _writes(run, 1, everywhere) == []


def test_torchrun_fine_tunes_the_official_hub_model(two_process_runs):
    """Every trainable parameter must get a gradient under DDP: the official model's mask_token
    never does, so it has to stay frozen. (_train_runs's "fine_tune", in torchrun's setting.)"""
    run = two_process_runs / "fine_tune"
    for rank in (0, 1):
        assert (run / f"{rank}.exit").read_text() == "ok", rank
    said = [(run / f"{rank}.out").read_text() for rank in (0, 1)]
    assert "".join(said).count("Best valid mIoU") == 1


def test_torchrun_processes_share_the_work_of_the_feature_cache(two_process_runs):
    """Each process computes half of the features; with the disk cache the others read them from
    the shared folder, with the memory cache they arrive through the process group. Both must
    train on the same features, so their metrics agree. (_train_runs's "cache_disk" and
    "cache_memory": 4 train and 3 valid images, in torchrun's setting.)"""
    rows = {}
    for mode in ("disk", "memory"):
        run = two_process_runs / f"cache_{mode}"
        for rank in (0, 1):
            assert (run / f"{rank}.exit").read_text() == "ok", rank
        said = (run / "0.log").read_text()
        # rank 0's half: 2 train images x 2 views and 2 of the 3 valid images
        assert f"feature cache ({mode}): 6 views computed" in said
        assert ", 0 reused, 5 from the other processes;" in said
        out = run / "out"
        if mode == "disk":
            assert len(list((out / "feature_cache").glob("*.pt"))) == 4 * 2 + 3
        assert len(list((out / "valid_preds").iterdir())) == 3
        rows[mode] = read_csv(out / "metrics.csv")
    assert [r["epoch"] for r in rows["memory"]] == [1, 2]
    for disk, memory in zip(rows["disk"], rows["memory"], strict=True):
        for key in ("train_loss", "train_miou", "valid_loss", "valid_miou"):
            assert memory[key] == pytest.approx(disk[key], abs=1e-6), key


def test_each_epoch_under_torchrun_trains_on_a_new_order(tmp_path, weights_file, monkeypatch):
    """fit as rank 0 of 2, a one-process gloo group standing in for torchrun: DistributedSampler
    repeats its first shuffle every epoch unless fit calls set_epoch."""
    data = make_dataset(tmp_path / "data", n_train=8, n_valid=2, sizes=((56, 56),))
    args, classes = parse_args(train.get_args_parser(), [
        "--data", str(data), "--out-dir", str(tmp_path / "out"), "--backbone-source", "timm",
        "--weights", str(weights_file), "--imgsz", "56", "56", "--epochs", "3", "--batch", "2",
        "--layers", "1", "--workers", "0", "--num-vis", "0", "--device", "cpu"])  # fmt: skip
    orders, epochs = [], []

    def record_order(model, loader, *args, **kwargs) -> dict:
        orders.append([int(i) for _, _, indices in loader for i in indices])
        epochs.append(loader.dataset.epoch)  # the augmentations' (seed, epoch, index)
        return {"loss": 1.0, "acc": 0.5, "miou": 0.5}

    monkeypatch.setattr(train, "train_one_epoch", record_order)
    monkeypatch.setattr(train, "save_checkpoint", lambda *args, **kwargs: None)  # saves time
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        train.fit(args, classes, torch.device("cpu"), None, rank=0, world=2)
    finally:
        dist.destroy_process_group()
    assert [len(order) for order in orders] == [4, 4, 4]  # rank 0's half of 8 images
    assert len({tuple(order) for order in orders}) == 3, orders
    assert epochs == [1, 2, 3], "fit must set each epoch's augmentations, not only its order"


def test_a_disk_cache_other_machines_cannot_see_is_computed_again(tmp_path, weights_file, caplog):
    """Rank 0 of 2, a one-process gloo group standing in for torchrun on two machines whose
    --cache-dir is not shared: the other machine's half never appears, so rank 0 computes it
    and says how to avoid that."""
    data = make_dataset(tmp_path / "data", n_train=3, n_valid=2, sizes=((56, 56),))
    pairs = check_dataset(data, DEFAULT_CLASSES)
    model = Segmentor(load_backbone("dinov2_vits14", "timm", str(weights_file)), 2)
    cache = FeatureCache(model, (56, 56), "disk", tmp_path / "cache")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        with caplog.at_level("INFO", logger="dinoseg"):
            cache.fill_splits(model, pairs, ("orig", "flip"), 2, rank=0, world=2)
    finally:
        dist.destroy_process_group()
    # rank 0's share: train images 0 and 2 (2 views each) and valid image 0; then the rest
    assert "3 feature cache entries of other processes were not in" in caplog.text
    assert "feature cache (disk): 8 views computed" in caplog.text
    assert ", 0 reused, 3 from the other processes;" in caplog.text
    assert not cache.missing(pairs["train"], ("orig", "flip")) + cache.missing(pairs["valid"])


def test_a_failed_cache_write_under_torchrun_leaves_the_folder_the_others_write_into(
    tmp_path, weights_file, monkeypatch
):
    """Rank 0 of 2 (a one-process gloo group) fails its first write to a new --cache-dir (a full
    disk) while the other process, a thread here, is about to write its own first entry there:
    the folder that rank 0's write had made was removed as empty, and the other process's write
    failed with "No such file or directory", which it reported as a full disk."""
    data = make_dataset(tmp_path / "data", n_train=2, n_valid=1, sizes=((28, 28),))
    pairs = check_dataset(data, DEFAULT_CLASSES)
    model = Segmentor(load_backbone("dinov2_vits14", "timm", str(weights_file), 1), 2)
    folder = tmp_path / "new" / "cache"
    cache = FeatureCache(model, (28, 28), "disk", folder)
    other = FeatureCache(model, (28, 28), "disk", folder)
    rank_0_writes, other_checked, rank_0_failed = (threading.Event() for _ in range(3))
    real_save, real_mkstemp = engine.torch_save, tempfile.mkstemp

    def save(obj, path) -> None:
        if threading.current_thread() is not threading.main_thread():
            return real_save(obj, path)
        rank_0_writes.set()
        assert other_checked.wait(60)
        raise OSError(errno.ENOSPC, "No space left on device")

    def mkstemp(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            other_checked.set()  # the folder was there: this write does not make it
            assert rank_0_failed.wait(60)
        return real_mkstemp(*args, **kwargs)

    def write_as_the_other_process() -> None:
        assert rank_0_writes.wait(60)
        try:
            other._store("entry", torch.zeros(2, 2))
        except UserError as err:
            outcome.append(str(err))
        else:
            outcome.append("written")

    monkeypatch.setattr(engine, "torch_save", save)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    outcome = []
    writer = threading.Thread(target=write_as_the_other_process)
    writer.start()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        with pytest.raises(UserError, match="could not write the feature cache"):
            cache.fill_splits(model, pairs, ("orig",), 2, rank=0, world=2)
    finally:
        rank_0_failed.set()
        writer.join(60)
        dist.destroy_process_group()
    assert outcome == ["written"]
    assert [f.name for f in folder.iterdir()] == ["entry.pt"]


LOADING_UNDER_TORCHRUN = """
import argparse, os, time
import torch
import train, utils


def main():
    args = argparse.Namespace(batch=1, workers=1, cache_features="off", seed=0)
    loader = train.make_loader([torch.zeros(3)] * 4, args, torch.device("cpu"), train=True)
    batches = iter(loader)
    next(batches)  # the worker is running
    # one write, atomic on a pipe: print's pieces of the two processes interleaved unbuffered
    os.write(1, f"loading {os.environ['RANK']}\\n".encode())
    time.sleep(300)  # until the stop


utils.run_script(main)
"""


def test_a_sigterm_to_torchrun_stops_its_processes_cleanly_before_its_own_traceback(tmp_path):
    # The README's account of a stopped torchrun job: torchrun sends the signal to each process's
    # group (its DataLoader workers too), and they stop with rank 0's message alone; torchrun
    # then raises its SignalException, whose traceback and exit code 1 are its own.
    script = tmp_path / "load.py"
    script.write_text(LOADING_UNDER_TORCHRUN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        assert sorted([proc.stdout.readline(), proc.stdout.readline()]) == [
            "loading 0\n", "loading 1\n"]  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    assert stderr.count("interrupted\n") == 1, stderr
    # one traceback, torchrun's: none of a process or of a DataLoader worker
    assert stderr.count("Traceback") == 1, stderr
    assert (
        stderr.rstrip()
        .splitlines()[-1]
        .startswith("torch.distributed.elastic.multiprocessing.api.SignalException")
    ), stderr
    assert stderr.index("interrupted") < stderr.index("Traceback")


def test_torchrun_on_cuda_without_nccl_is_refused(monkeypatch):
    # PyTorch's Windows builds have no NCCL, and gloo lacks the GPU collectives used here
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("joined a group"))
    with pytest.raises(UserError, match="needs NCCL, which this PyTorch build lacks"):
        setup_distributed(torch.device("cuda"))


def test_torchrun_on_a_mac_is_refused_with_the_flag_that_fixes_it(
    monkeypatch, tmp_path, fresh_data
):
    # --device auto picks MPS on a Mac, which has no collectives of its own here
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("joined a group"))
    argv = ["--data", str(fresh_data), "--out-dir", str(tmp_path), "--weights", "random"]
    with pytest.raises(UserError, match=r"not MPS: pass --device cpu$"):
        train.main(*parse_args(train.get_args_parser(), argv))
    assert not (tmp_path / "args.yaml").exists()


def test_torchrun_reports_an_unusable_cache_dir_once_without_a_traceback(tmp_path, weights_file):
    # rank 0 checks --cache-dir; the other process must stop too, not fill it and fail there
    data = make_dataset(tmp_path / "data", n_train=2, n_valid=2, sizes=((56, 56),))
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train.py", "--data", str(data), "--out-dir", str(tmp_path / "out"),
           "--backbone-source", "timm", "--weights", str(weights_file), "--imgsz", "28", "28",
           "--epochs", "1", "--batch", "1", "--workers", "0", "--layers", "1",
           "--cache-features", "disk", "--cache-dir", str(blocker / "cache"),
           "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.count("error: --cache-dir") == 1, proc.stderr[-3000:]
    assert "[rank1]" not in proc.stderr, proc.stderr[-3000:]  # no traceback of process 1
    assert "exitcode  : 2" in proc.stderr  # the UserError's code, not a crash


# Run as torchrun's script: train.py, where process 1's second read of a validation image (in
# epoch 2) finds the file broken, as one edited or replaced while the run goes on.
BREAK_VALID_IN_RANK_1 = """
import os, runpy, sys
sys.path.insert(0, os.getcwd())
import datasets
read = datasets.SegmentationDataset.__getitem__
reads = []
def getitem(self, index):
    if not self.train and os.environ["RANK"] == "1":
        reads.append(index)
        if len(reads) == 2:
            raise datasets.DataError(f"{self.pairs[index][0]}: unreadable or corrupt image")
    return read(self, index)
datasets.SegmentationDataset.__getitem__ = getitem
sys.argv = sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_a_dataset_file_that_breaks_in_one_process_is_named_with_what_rank_0_kept(tmp_path):
    # Process 1 named the file and said that no epoch was kept (rank 0 alone saves), while
    # rank 0, waiting for it in a collective, died of gloo's "Connection closed by peer" with a
    # traceback of its own, and never said that last_model.pth held epoch 1.
    # The run trains with --weights random, whose warning every process logged (each builds
    # the same backbone): checked here, as a torchrun of its own costs the processes' start.
    data = make_dataset(tmp_path / "data", n_train=4, n_valid=2, sizes=((28, 28),))
    script = tmp_path / "break_valid.py"
    script.write_text(BREAK_VALID_IN_RANK_1)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), "train.py", "--data", str(data), "--out-dir", str(out),
           "--backbone-source", "timm", "--weights", "random", "--imgsz", "28", "28",
           "--epochs", "3", "--batch", "2", "--workers", "0", "--layers", "1", "--num-vis", "0",
           "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    broken = data / "valid_images" / "img001.jpg"
    assert f"error: {broken}: unreadable or corrupt image: the file changed" in proc.stderr
    assert "No epoch finished" not in proc.stderr, proc.stderr[-3000:]
    # rank 0 says what is kept: as the error of the closed connection, or stopped by torchrun
    assert f"{out / 'last_model.pth'} holds epoch 1; continue with --resume" in proc.stderr
    assert "[rank0]" not in proc.stderr, proc.stderr[-3000:]  # no traceback of process 0
    assert torch.load(out / "last_model.pth", weights_only=True)["epoch"] == 1
    assert proc.stderr.count("--weights random: the dinov2_vits14 backbone") == 1


def test_a_dataset_file_that_breaks_in_one_process_of_eval_only_is_named(tmp_path, checkpoint):
    # --tta reads the valid split twice: process 1's second pass finds the file broken. It
    # died in a traceback of the DataError, and rank 0 in one of gloo's closed connection.
    data = make_dataset(tmp_path / "data", n_train=2, n_valid=2, sizes=((28, 28),))
    script = tmp_path / "break_valid.py"
    script.write_text(BREAK_VALID_IN_RANK_1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), "train.py", "--eval-only", "--tta", "--model", str(checkpoint),
           "--data", str(data), "--out-dir", str(tmp_path / "out"), "--workers", "0",
           "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    broken = data / "valid_images" / "img001.jpg"
    assert f"error: {broken}: unreadable or corrupt image: the file changed" in proc.stderr
    assert "[rank0]" not in proc.stderr and "[rank1]" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out" / "eval_metrics.json").exists()


# Run as torchrun's script: train.py, where process 1 stops on an error as it stores the first
# feature cache entry that rank 0 sends it (--cache-features memory), while rank 0 waits on.
STOP_RANK_1_IN_THE_CACHE = """
import os, runpy, sys
sys.path.insert(0, os.getcwd())
import engine
from utils import UserError
share, store = engine.FeatureCache.share, engine.FeatureCache._store
def sharing(self, *args):
    self.sharing = True
    return share(self, *args)
def storing(self, key, features):
    if getattr(self, "sharing", False) and os.environ["RANK"] == "1":
        raise UserError("process 1 stops here")
    return store(self, key, features)
engine.FeatureCache.share, engine.FeatureCache._store = sharing, storing
sys.argv = sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_a_process_that_stops_while_the_cache_fills_stops_rank_0_without_a_traceback(tmp_path):
    # rank 0, waiting for it in a broadcast, died of gloo's "Connection closed by peer"
    data = make_dataset(tmp_path / "data", n_train=4, n_valid=2, sizes=((28, 28),))
    script = tmp_path / "stop_in_cache.py"
    script.write_text(STOP_RANK_1_IN_THE_CACHE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), "train.py", "--data", str(data), "--out-dir", str(tmp_path / "out"),
           "--backbone-source", "timm", "--weights", "random", "--imgsz", "28", "28",
           "--epochs", "1", "--batch", "2", "--workers", "0", "--layers", "1", "--num-vis", "0",
           "--cache-features", "memory", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "error: process 1 stops here" in proc.stderr
    assert "[rank0]" not in proc.stderr, proc.stderr[-3000:]  # no traceback of process 0
    assert "were in memory and are lost" in proc.stderr, proc.stderr[-3000:]


def test_torchrun_reports_a_failed_penn_fudan_download_once_without_a_traceback(tmp_path):
    # rank 0 downloads while the others wait: they waited in a barrier, which broke with a
    # traceback of process 1 when rank 0 left with its message
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train.py"), "--out-dir", "out", "--backbone-source", "timm",
           "--weights", "random", "--workers", "0", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.stderr.count("error: could not download Penn-Fudan") == 1, proc.stderr[-3000:]
    assert "[rank1]" not in proc.stderr, proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr


def test_torchrun_reports_dataset_problems_and_warnings_once(tmp_path):
    # every process checked the dataset and printed the same list of problems: N copies of it
    data = make_dataset(tmp_path / "data", n_train=2, n_valid=2, sizes=((56, 56),))
    next((data / "train_masks").iterdir()).unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train.py", "--data", str(data), "--out-dir", str(tmp_path / "out"),
           "--backbone-source", "timm", "--weights", "random", "--workers", "0",
           "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.stderr.count("error: the dataset") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("image without a mask") == 1
    assert "[rank1]" not in proc.stderr and "exitcode  : 2" in proc.stderr


def test_torchrun_refuses_one_value_per_batchnorm_channel_once(tmp_path):
    # each process raised the same error: as many copies of it as processes
    data = make_dataset(tmp_path / "data", n_train=2, n_valid=2, sizes=((28, 28),))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train.py", "--data", str(data), "--out-dir", str(tmp_path / "out"),
           "--backbone-source", "timm", "--weights", "random", "--imgsz", "14", "14",
           "--batch", "1", "--workers", "0", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.stderr.count("error: training batches of 1 image") == 1, proc.stderr[-3000:]
    assert "[rank1]" not in proc.stderr and "exitcode  : 2" in proc.stderr


def test_torchrun_names_a_broken_metrics_csv_on_resume_once(tmp_path, checkpoint, tiny_data):
    # every process read OUT/metrics.csv and raised the same error: one copy of it each
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run)
    (run / "metrics.csv").write_text("epoch;valid_miou\n1;0.5\n")  # a spreadsheet's semicolons
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train.py", "--data", str(tiny_data), "--out-dir", str(run),
           "--resume", str(run / "last_model.pth"), "--epochs", "2", "--workers", "0",
           "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.count("is not a metrics.csv that train.py wrote") == 1, proc.stderr[-3000:]
    # torchrun's own traceback of the failed run alone: none of a process
    assert proc.stderr.count("Traceback") == 1 and "[rank1]" not in proc.stderr
    assert "exitcode  : 2" in proc.stderr


def test_torchrun_says_what_a_resume_keeps_and_changes_once(two_process_runs):
    # every process read the checkpoint and the command line, and logged the same warnings
    # (_train_runs's "resume", in torchrun's setting: both processes' logs counted)
    run = two_process_runs / "resume"
    for rank in (0, 1):
        assert (run / f"{rank}.exit").read_text() == "ok", rank
    said = "".join((run / f"{rank}.log").read_text() for rank in (0, 1))
    for message in ("--resume: continuing", "--imgsz 98 98 ignored", "ignored: --layers 2",
                    "--resume: settings that differ", "nothing to do"):  # fmt: skip
        assert said.count(message) == 1, (message, said[-3000:])


def test_torchrun_eval_only_names_ignored_classes_and_a_moved_dataset_once(tmp_path, checkpoint):
    # every process read --model and logged the same warning, or raised the same error
    torch_ckpt = torch.load(checkpoint, weights_only=True)
    torch_ckpt["args"]["data"] = str(tmp_path / "moved")
    torch.save(torch_ckpt, tmp_path / "moved.pth")
    (tmp_path / "c.yaml").write_text(
        "ALL_CLASSES: [bg, cat, dog]\nLABEL_COLORS_LIST: [[0, 0, 0], [1, 1, 1], [2, 2, 2]]\n"
        "VIS_LABEL_MAP: [[0, 0, 0], [1, 1, 1], [2, 2, 2]]\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train.py", "--eval-only", "--model", str(tmp_path / "moved.pth"),
           "--config", str(tmp_path / "c.yaml"), "--out-dir", str(tmp_path / "eval"),
           "--workers", "0", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.stderr.count("the classes of --config") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("was trained on --data") == 1, proc.stderr[-3000:]
    assert "[rank1]" not in proc.stderr and "exitcode  : 2" in proc.stderr


def _check_data_in(rank: int, folders: list[str]) -> None:
    """Check --data "data" with a gloo group of 2, each process in its own folder: two machines,
    each with its own copy of the dataset."""
    cwd = os.getcwd()
    os.chdir(folders[rank])
    try:
        train.checked_pairs(Path("data"), DEFAULT_CLASSES)
        outcome = "ok"
    except UserError as err:
        outcome = f"UserError: {err}"
    except SystemExit as err:
        outcome = f"SystemExit: {err.code}"
    finally:
        os.chdir(cwd)
    Path(folders[rank], "outcome.txt").write_text(outcome)
    dist.barrier()


def test_a_dataset_missing_on_another_machine_is_named_before_training(two_process_runs):
    """Rank 0 alone checks the dataset: a machine whose copy lacked files started training
    and failed at its first batch, with the file "changed during training"."""
    folders = [two_process_runs / "first", two_process_runs / "second"]
    assert (folders[0] / "outcome.txt").read_text() == (
        f"UserError: 1 files of the dataset data are missing on {platform.node()}, such as "
        "data/valid_images/img001.jpg: each machine reads --data from its own disk; copy the "
        "whole dataset to every machine, at the same path"
    )
    assert (folders[1] / "outcome.txt").read_text() == "SystemExit: 2"


def test_rank_0_prints_a_checks_error_before_the_other_processes_learn_of_it(monkeypatch, capsys):
    # The others exit as soon as the broadcast tells them, and torchrun then ends rank 0 too:
    # at times before its error reached run_script, so the run stopped without a word of why.
    said = []
    monkeypatch.setattr(utils, "in_process_group", lambda: True)
    monkeypatch.setattr(utils, "is_main_process", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(
        dist, "broadcast_object_list", lambda *a, **k: said.append(capsys.readouterr().err)
    )

    def check():
        raise UserError("the dataset is broken")

    with pytest.raises(UserError) as raised:
        utils.check_on_main_process(check)
    assert said == ["error: the dataset is broken\n"]
    utils._report_error(raised.value)  # as run_script reports it on the way out: not twice
    assert capsys.readouterr().err == ""


LEAVING_WITH_AN_ERROR = """
import os, sys, torch
from torch.nn.parallel import DistributedDataParallel
from utils import UserError, leave_distributed, setup_distributed

def fail():
    model = DistributedDataParallel(torch.nn.Linear(2, 2))  # the first import of torch._dynamo
    raise UserError("stop")

setup_distributed(torch.device("cpu"))
try:
    try:
        fail()
    finally:
        leave_distributed()
except UserError:
    pass
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
with open(os.path.join(sys.argv[1], os.environ["RANK"] + ".txt"), "w") as f:
    f.write(" ".join(sorted(threads)))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads in Linux's /proc")
def test_leaving_with_an_error_ends_the_process_groups_threads(tmp_path):
    # Left running into the interpreter's exit, gloo's threads now and then abort a process
    # (SIGABRT) that should exit with its error's code: the group must be gone when it is left.
    script = tmp_path / "leave.py"
    script.write_text(LEAVING_WITH_AN_ERROR)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = [(tmp_path / f"{rank}.txt").read_text() for rank in (0, 1)]
    assert all("python" in names for names in threads), threads  # the main thread, at least
    assert not any("gloo" in names for names in threads), threads
