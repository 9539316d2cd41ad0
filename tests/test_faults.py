"""Interruption, resume, divergence and disk failures: nothing finished may be lost."""

import argparse
import collections
import gc
import importlib
import io
import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import datasets
import train
import utils
from config import parse_args
from conftest import ROOT, PixelClassifier
from engine import TrainingDiverged, train_one_epoch
from leftover_workers import leftover_workers_end_at_once  # noqa: F401 (autouse)
from model import Segmentor, load_backbone, save_checkpoint
from utils import UserError, read_csv, write_csv

EPOCHS = 5


def argv(data, out, weights, epochs=EPOCHS) -> list[str]:
    # On the CPU, where resume is exact: CUDA's upsampling backward is not deterministic.
    return ["--data", str(data), "--out-dir", str(out), "--backbone-source", "timm",
            "--weights", str(weights), "--imgsz", "90", "66", "--workers", "2", "--batch", "4",
            "--lr", "3e-3", "--epochs", str(epochs), "--scheduler", "cosine",
            "--num-vis", "1", "--device", "cpu"]  # fmt: skip


def run_train(args: list[str]) -> None:
    train.main(*parse_args(train.get_args_parser(), args))


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_sigterm_then_resume_repeats_the_uninterrupted_run(tmp_path, tiny_data, weights_file):
    # 3 epochs: stopped once epoch 2's metrics.csv row is written, so epoch 1 is saved whole
    # (a stop just after last_model.pth's rename, before the run counted it saved, said that
    # epoch 1 was lost), and the run still has an epoch to train when SIGTERM comes
    epochs = 3
    whole = tmp_path / "whole"
    run_train(argv(tiny_data, whole, weights_file, epochs))

    cut = tmp_path / "cut"
    cmd = [sys.executable, "train.py", *argv(tiny_data, cut, weights_file, epochs)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        csv = cut / "metrics.csv"
        if csv.is_file() and len(read_csv(csv)) >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "stopped during epoch" in stderr and "continue with --resume" in stderr
    assert not list(cut.glob(".*")), "no temporary file may remain"
    finished = torch.load(cut / "last_model.pth", weights_only=True)["epoch"]
    assert 1 <= finished < epochs

    resume = [*argv(tiny_data, cut, weights_file, epochs), "--resume", str(cut / "last_model.pth")]
    run_train(resume)
    resumed, reference = read_csv(cut / "metrics.csv"), read_csv(whole / "metrics.csv")
    assert without_time(resumed) == without_time(reference)
    # and the last checkpoint is the one the uninterrupted run saved, to resume from in turn
    ends = [torch.load(d / "last_model.pth", weights_only=True) for d in (cut, whole)]
    torch.testing.assert_close(ends[0]["model"], ends[1]["model"], rtol=0, atol=0)
    optimizers = [end["optimizer"] for end in ends]
    torch.testing.assert_close(optimizers[0]["state"], optimizers[1]["state"], rtol=0, atol=0)
    assert optimizers[0]["param_groups"] == optimizers[1]["param_groups"]
    assert ends[0]["scheduler"] == ends[1]["scheduler"]


LOADER_UNTIL_STOPPED = """
import argparse, multiprocessing, sys, time
import torch
import train, utils


def main():
    multiprocessing.set_start_method(sys.argv[1])
    args = argparse.Namespace(batch=2, workers=2, cache_features="off", seed=0)
    loader = train.make_loader([torch.zeros(3)] * 8, args, torch.device("cpu"), train=True)
    while True:  # epochs, until a signal stops the main process
        for _ in loader:
            print("batch", flush=True)
            time.sleep(0.01)


utils.run_script(main)
"""


# Linux's default up to Python 3.13, macOS's, and Linux's from 3.14
START_METHODS = ["fork", "spawn", "forkserver"]


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_sigterm_to_the_whole_process_group_stops_with_one_message(start_method):
    # Slurm, systemd and torchrun signal every process of a job: DataLoader workers died of it,
    # and the main process's clean stop ("interrupted") was followed by PyTorch's traceback of
    # a worker "killed by signal: Terminated"
    proc = subprocess.Popen([sys.executable, "-c", LOADER_UNTIL_STOPPED, start_method], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        # batches 1 and 2 come from workers 1 and 2: both started
        assert [proc.stdout.readline(), proc.stdout.readline()] == ["batch\n"] * 2
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and stderr == "interrupted\n", stderr


class NativeThreadMasks(torch.utils.data.Dataset):
    """Two items, each the signal masks of the threads of the worker that loads it, its main
    thread and those that Python did not start: Linux's SigBlk, hex numbers separated by
    spaces. (leave_stop_signals_to_main's thread, once in sigwaitinfo, unblocks SIGTERM there.)"""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> str:
        python = {t.native_id for t in threading.enumerate()} - {threading.get_native_id()}
        masks = []
        for thread in os.listdir("/proc/self/task"):
            if int(thread) not in python:
                status = Path(f"/proc/self/task/{thread}/status").read_text()
                masks.append(status.split("SigBlk:")[1].split()[0])
        return " ".join(masks)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux's /proc")
@pytest.mark.parametrize("start_method", START_METHODS)
def test_every_thread_of_a_dataloader_worker_leaves_sigterm_to_one(start_method):
    # A spawned worker runs a native thread before its worker_init_fn: a job's SIGTERM that it
    # took ended the worker (in 2 runs of 3 with 2 workers), whatever the others blocked
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(start_method, force=True)
    try:
        args = argparse.Namespace(batch=1, workers=1, cache_features="off", seed=0)
        loader = train.make_loader(NativeThreadMasks(), args, torch.device("cpu"), train=True)
        items = [text for (text,) in loader]
    finally:
        multiprocessing.set_start_method(previous, force=True)
    for text in items:
        masks = [int(mask, 16) for mask in text.split()]
        assert all(mask & 1 << signal.SIGTERM - 1 for mask in masks), text


def wait_until_taken(pid: int, signum: int, timeout: float = 30.0) -> None:
    """Wait until process ``pid`` no longer has ``signum`` pending (Linux's ShdPnd), or is gone;
    a second where /proc cannot say."""
    status = Path(f"/proc/{pid}/status")
    if not status.parent.is_dir():
        time.sleep(1)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pending = int(status.read_text().split("ShdPnd:")[1].split()[0], 16)
        except (FileNotFoundError, ProcessLookupError):
            return  # gone: ended by it
        if not pending & 1 << signum - 1:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not take signal {signum} in {timeout} s")


def test_a_dataloader_worker_ignores_a_foreign_sigterm_and_obeys_its_main_process(
    quick_worker_shutdown,
):
    # the main process's SIGTERM ends a worker that hangs at shutdown: one that ignored every
    # SIGTERM would keep the script from exiting
    args = argparse.Namespace(batch=2, workers=1, cache_features="off", seed=0)
    loader = train.make_loader([torch.zeros(3)] * 4, args, torch.device("cpu"), train=True)
    batches = iter(loader)
    next(batches)  # the worker is running
    worker = batches._workers[0]
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # a scheduler's, say
    # Taken before the next is sent: two SIGTERMs pending at once are one, with the first's
    # sender, and the worker would rightly go on ignoring it (a loaded machine's late thread).
    wait_until_taken(worker.pid, signal.SIGTERM)
    worker.join(timeout=1)
    assert worker.is_alive(), f"a signal to the job ended the worker (exit {worker.exitcode})"
    os.kill(worker.pid, signal.SIGTERM)
    worker.join(timeout=10)
    assert worker.exitcode == 0
    del batches


STOPPED_IN_A_FINALIZER = """
import os, signal, sys, time
import utils


class Finalized:
    def __del__(self):
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))  # its handler runs in here, at once


def main():
    Finalized()  # collected at once
    time.sleep(60)  # the rest of the run, in a system call that the stop must end
    print("finished")


utils.run_script(main)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_that_arrives_in_a_finalizer_still_stops_the_run(sig):
    # Python reports an exception raised in a finalizer (a __del__, a weakref callback, both
    # frequent where tqdm and DataLoaders are collected) and goes on: a SIGTERM (measured: 1 of
    # 5 at the end of short epochs) or Ctrl-C that arrived there printed "Exception ignored in
    # ... utils.Terminated" and the run went on to its last epoch, exit code 0
    proc = subprocess.run([sys.executable, "-c", STOPPED_IN_A_FINALIZER, sig], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", "interrupted\n")


# The main thread held past the 10 ms after which _stop_again sends the stop again (a loaded
# machine): the signal lands while the hook still runs, once.
HELD_IN_THE_HOOK = """
import threading


class HeldTimer(threading.Timer):
    held = False

    def start(self):
        super().start()
        if not HeldTimer.held:
            HeldTimer.held = True
            self.join()  # the signal is sent before start returns, in the hook


threading.Timer = HeldTimer
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_sent_again_while_the_hook_still_runs_still_stops_the_run(sig):
    # Raised in sys.unraisablehook itself, the stop was reported as "Exception ignored in
    # sys.unraisablehook" and lost: the run went on (and a SIGTERM after it was ignored)
    code = HELD_IN_THE_HOOK + STOPPED_IN_A_FINALIZER
    proc = subprocess.run([sys.executable, "-c", code, sig], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", "interrupted\n")


SIGTERM_TWICE = """
import os, signal, sys
import utils


def main():
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs at once
    except KeyboardInterrupt:
        os.kill(os.getpid(), signal.SIGTERM)  # the same stop, forwarded by torchrun
        print("stopped during epoch 2", file=sys.stderr)
        raise


utils.run_script(main)
"""


def test_a_second_sigterm_does_not_interrupt_the_stop_of_the_first():
    # Slurm and systemd signal every process of a job, and torchrun forwards the signal it gets
    # to each of its processes: each one got two SIGTERMs. The second one cut rank 0's message
    # and ended in a traceback of utils.Terminated.
    proc = subprocess.run([sys.executable, "-c", SIGTERM_TWICE], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (130, "stopped during epoch 2\ninterrupted\n")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoints(
    tmp_path, tiny_data, weights_file, monkeypatch
):
    real = train.train_one_epoch
    calls = collections.Counter()

    def poisoned(model, *args, **kwargs):
        calls["epochs"] += 1
        if calls["epochs"] == 2:
            model.head.classifier.weight.data.fill_(math.nan)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", poisoned)
    with pytest.raises(UserError, match=r"loss became nan at batch 1 of epoch 2.*holds epoch 1"
                       r".* Lower --lr \(now [0-9.e-]+\)\.$"):  # fmt: skip
        run_train(argv(tiny_data, tmp_path, weights_file))  # without fp16, no advice about it
    assert torch.load(tmp_path / "last_model.pth", weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / "best_model_iou.pth", weights_only=True)["epoch"] == 1
    assert [r["epoch"] for r in read_csv(tmp_path / "metrics.csv")] == [1]


def test_a_model_broken_by_the_last_update_of_an_epoch_is_not_saved(
    tmp_path, fresh_data, weights_file, monkeypatch
):
    # one step per epoch: the training loss of that step is finite, the update it makes is not.
    # A learning rate that large is refused now, so the update breaks the head's weights itself.
    adamw_step = torch.optim.AdamW.step

    def broken_step(self, *args, **kwargs):
        result = adamw_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(math.nan)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", broken_step)
    args = ["--data", str(fresh_data), "--out-dir", str(tmp_path), "--backbone-source", "timm",
            "--weights", str(weights_file), "--imgsz", "56", "56", "--workers", "0", "--batch",
            "4", "--epochs", "2", "--num-vis", "0", "--device", "cpu"]  # fmt: skip
    with pytest.raises(UserError, match=r"validation loss became nan after the training of "
                       r"epoch 1; training stopped. No epoch finished"):  # fmt: skip
        run_train(args)
    assert not list(tmp_path.glob("*.pth")), "a checkpoint that cannot be resumed was written"


def test_unwritable_out_dir_is_reported_before_anything_runs(tmp_path, tiny_data, weights_file):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(UserError, match=r"--out-dir .*file/out is not writable"):
        run_train(argv(tiny_data, blocker / "out", weights_file))


def test_an_out_dir_that_is_a_file_is_named_as_one(tmp_path, tiny_data, weights_file):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(UserError, match=r"--out-dir .*file is not writable: it is a file, not a"):
        run_train(argv(tiny_data, blocker, weights_file))


# An unset shell variable (--out-dir "$OUT") was the current folder, Path(""): train.py and the
# inference scripts wrote their outputs there, and the others named "." in their messages.
@pytest.mark.parametrize(
    ("script", "argv"),
    [
        ("train", ["--out-dir", ""]),
        ("train", ["--config", ""]),
        ("train", ["--eval-only", "--model", ""]),
        ("train", ["--weights", ""]),
        ("infer_image", ["--input", "photos", "--out-dir", ""]),
        ("infer_image", ["--input", ""]),
        ("infer_video", ["--input", ""]),
        ("export", ["--model", "best_model_iou.pth", "--output", ""]),
        ("prepare_data", ["binary", "--root", "", "--out", "data/binary"]),
    ],
)
def test_an_empty_path_is_refused_naming_its_flag(script, argv, capsys):
    parser = importlib.import_module(script).get_args_parser()
    with pytest.raises(SystemExit) as caught:
        parse_args(parser, argv)
    assert caught.value.code == 2
    flag = argv[argv.index("") - 1]
    assert f"argument {flag}: an empty value (an unset shell variable?)" in capsys.readouterr().err


def in_this_process(monkeypatch) -> None:
    """Keep run_script from changing the test process: its SIGTERM handler, unraisable hook
    and log level."""
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(utils.log, "setLevel", lambda level: None)


# a --batch or --imgsz too large for the device ended in a traceback
@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has ..."),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                     "allocate memory: you tried to allocate 8000000000 bytes."),
        MemoryError("Unable to allocate 1.12 GiB for an array with shape (1, 20000, 20000, 3)"),
        RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: ..."),
    ],
)  # fmt: skip
def test_out_of_memory_is_one_message_naming_the_flags(error, monkeypatch, capsys):
    def main():
        raise error

    in_this_process(monkeypatch)
    with pytest.raises(SystemExit) as caught:
        utils.run_script(main)
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory (") and err.count("\n") == 1
    assert "; lower --batch or --imgsz" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "advice"),
    [
        (["infer_image.py", "--input", "x"], "lower --batch or --imgsz\n"),
        (["infer_image.py", "--tta", "--tta-scales", "1", "3"], "or the largest of --tta-scales\n"),
        (["train.py"], "--accum K keeps the batch size"),
        (["train.py", "--cache-features", "memory"], "; --cache-features disk keeps"),
        (["train.py", "--cache-features=memory"], "; --cache-features disk keeps"),
        (["train.py", "--cache-features", "disk"], "one update)\n"),
    ],
)
def test_out_of_memory_names_what_else_of_the_command_takes_memory(
    argv, advice, monkeypatch, capsys
):
    """--tta's largest scale, a memory cache and training's batch (which --accum keeps while
    --batch shrinks) were left out of "lower --batch or --imgsz"."""

    def main():
        raise MemoryError("Unable to allocate 1.12 GiB for an array")

    in_this_process(monkeypatch)
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        utils.run_script(main)
    assert advice in capsys.readouterr().err


class WriteRecorder(io.StringIO):
    """A stderr that keeps each write() apart."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


@pytest.mark.parametrize(
    "error", [UserError("a mistake"), KeyboardInterrupt(), MemoryError("Unable to allocate")]
)
def test_each_closing_message_is_one_write(error, monkeypatch):
    # print wrote the text and its newline apart, and under torchrun the agent's log line on
    # the same stream came in between: "interruptedW1130 ... Sending process 8940 ..."
    def main():
        raise error

    in_this_process(monkeypatch)
    monkeypatch.setattr(utils, "_let_loaders_close", lambda: None)
    stderr = WriteRecorder()
    monkeypatch.setattr(sys, "stderr", stderr)
    with pytest.raises(SystemExit):
        utils.run_script(main)
    assert len(stderr.writes) == 1 and stderr.writes[0].endswith("\n"), stderr.writes


def test_other_errors_keep_their_traceback(monkeypatch):
    def main():
        raise RuntimeError("a bug")

    in_this_process(monkeypatch)
    with pytest.raises(RuntimeError, match="a bug"):
        utils.run_script(main)


def test_full_disk_is_reported_before_training(tmp_path, tiny_data, weights_file, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 30 * 2**20))
    with pytest.raises(UserError, match=r"has 30 MB free, but this run needs about \d+ MB"):
        run_train(argv(tiny_data, tmp_path, weights_file))
    assert not (tmp_path / "metrics.csv").exists()


def test_full_disk_is_reported_before_the_feature_cache_is_filled(
    tmp_path, tiny_data, weights_file, monkeypatch
):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 30 * 2**20))

    def fill_splits(*args, **kwargs):
        raise AssertionError("the cache was filled before the checkpoints' space was checked")

    monkeypatch.setattr(train.FeatureCache, "fill_splits", fill_splits)
    with pytest.raises(UserError, match=r"needs about \d+ MB for its checkpoints"):
        run_train([*argv(tiny_data, tmp_path, weights_file), "--cache-features", "memory"])


def test_a_cache_on_the_checkpoints_disk_needs_room_for_both(
    tmp_path, tiny_data, weights_file, monkeypatch
):
    # each check passed against the same free space: the cache then took the checkpoints' room
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(train, "checkpoint_space", lambda model, out_dir: 100 * 2**20)
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 100 * 2**20 + 1))
    with pytest.raises(UserError, match=r"--cache-dir .*needs about 10\d MB for the cache and the "
                       r"checkpoints of --out-dir"):  # fmt: skip
        run_train([*argv(tiny_data, tmp_path, weights_file), "--cache-features", "disk"])


def test_the_checkpoints_space_check_covers_the_peak_and_counts_the_files_it_replaces(
    tmp_path, tiny_data, weights_file, monkeypatch
):
    # From epoch 2 each save writes a temporary copy beside the three files it replaces: a
    # check for three passed, then the disk filled up at epoch 2. A resume into its own folder
    # replaces the three that are there, which a check for three more refused on a disk with
    # room to spare.
    out = tmp_path / "out"
    asked, peak = [], [0]

    def pth_bytes() -> int:  # the checkpoints and their temporary copies
        # (glob: --out-dir is made by the run's first file, after the first check)
        return sum(f.stat().st_size for f in out.glob("*") if ".pth" in f.name)

    real_check, real_save = train.check_writable, utils.torch_save

    def check(folder, needed_bytes, *args, **kwargs):
        if kwargs.get("purpose") == "its checkpoints":
            asked.append((needed_bytes, pth_bytes()))
        real_check(folder, needed_bytes, *args, **kwargs)

    def save(obj, path):
        real_save(obj, path)
        peak[0] = max(peak[0], pth_bytes())

    monkeypatch.setattr(train, "check_writable", check)
    monkeypatch.setattr("model.torch_save", save)
    run_train(argv(tiny_data, out, weights_file, epochs=2))
    (needed, held), three = asked.pop(), pth_bytes()
    assert held == 0 and peak[0] <= needed
    peak[0] = 0
    run_train(["--resume", str(out / "last_model.pth"), "--out-dir", str(out), "--epochs", "3"])
    ((needed, held),) = asked
    size = (out / "last_model.pth").stat().st_size
    assert held == three and peak[0] - held <= needed < 2 * size


def test_peak_memory_without_the_resource_module_is_nan(monkeypatch):
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows: importing it fails
    assert math.isnan(utils.peak_memory_mb(torch.device("cpu")))


def test_the_memory_report_on_mps_adds_what_mps_holds(monkeypatch):
    # the resident figure alone may leave out the GPU's buffers: 900 MB for a run that held GBs
    monkeypatch.setattr(utils, "peak_memory_mb", lambda device: 900.4)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 3 * 2**30)
    report = utils.memory_report(torch.device("mps"))
    assert report == "peak memory 900 MB resident, 3072 MB held by MPS at the end"
    assert utils.memory_report(torch.device("cpu")) == "peak memory 900 MB resident"
    assert utils.memory_report(torch.device("cuda")) == "peak GPU memory 900 MB"
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows: nothing to report
    assert utils.memory_report(torch.device("cpu")) == ""


def test_a_failed_write_mid_run_is_reported_and_keeps_earlier_files(
    tmp_path, tiny_data, weights_file, monkeypatch
):
    real = train.save_checkpoint

    def save(path, model, **meta):
        if meta["epoch"] == 2:
            raise OSError(28, "No space left on device")
        real(path, model, **meta)

    monkeypatch.setattr(train, "save_checkpoint", save)
    with pytest.raises(UserError, match=r"No space left on device.*holds epoch 1"):
        run_train(argv(tiny_data, tmp_path, weights_file))
    assert torch.load(tmp_path / "last_model.pth", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_dataset_file_broken_mid_run_is_named_with_what_is_kept(
    tmp_path, fresh_data, weights_file, monkeypatch, workers
):
    """The dataset is checked before training; an image broken after that ended the run with a
    traceback (a DataLoader worker's, with workers), without naming the checkpoint to resume."""
    report = train.write_report

    def report_then_break(out_dir, history):
        report(out_dir, history)
        (fresh_data / "train_images" / "img000.png").write_text("not an image")

    monkeypatch.setattr(train, "write_report", report_then_break)
    args = [*argv(fresh_data, tmp_path, weights_file, epochs=2), "--workers", workers]
    with pytest.raises(UserError) as err:
        run_train([*args, "--imgsz", "28", "28", "--num-vis", "0"])
    assert str(err.value).startswith(f"{fresh_data / 'train_images' / 'img000.png'}: unreadable")
    assert str(err.value).endswith(
        f"the file changed during training; fix or restore it. {tmp_path / 'last_model.pth'} "
        f"holds epoch 1; continue with --resume {tmp_path / 'last_model.pth'} --out-dir {tmp_path}."
    )
    # the stopped run's loaders live on in err's traceback: their workers did too
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_dataset_file_broken_during_eval_only_is_named(
    tmp_path, fresh_data, checkpoint, monkeypatch, workers
):
    """As in training: a valid image broken after the check ended --eval-only with a traceback
    of the DataError (a DataLoader worker's, with workers)."""
    checked = train.checked_pairs

    def check_then_break(*args, **kwargs):
        pairs = checked(*args, **kwargs)
        (fresh_data / "valid_images" / "img001.jpg").write_text("not an image")
        return pairs

    monkeypatch.setattr(train, "checked_pairs", check_then_break)
    with pytest.raises(UserError) as err:
        run_train(["--eval-only", "--model", str(checkpoint), "--data", str(fresh_data),
                   "--out-dir", str(tmp_path), "--workers", workers])  # fmt: skip
    assert str(err.value).startswith(f"{fresh_data / 'valid_images' / 'img001.jpg'}: unreadable")
    assert str(err.value).endswith("the file changed during the evaluation; fix or restore it, "
                                   "and run again")  # fmt: skip
    assert not (tmp_path / "eval_metrics.json").exists()
    assert not multiprocessing.active_children()


@pytest.fixture
def quick_worker_shutdown(monkeypatch):
    """A loader's shutdown joins each worker for MP_STATUS_CHECK_INTERVAL (5 s) before it
    terminates one that is still alive: a hung worker, and a healthy one shut down after it (seen
    here). 0.2 s here, and the test's loaders collected before the patch ends: else the next test
    paid 10 s when the garbage collector reached them. The workers read the interval imported at
    their fork; only the main process's joins are shortened."""
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    yield
    gc.collect()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["hangs", "is killed"])
def test_a_dataloader_worker_that_hangs_or_dies_stops_the_run_with_what_is_kept(
    tmp_path, fresh_data, weights_file, monkeypatch, fault, quick_worker_shutdown
):
    """A worker that never delivered its batch (a read from a stalled network disk, a lock held
    at fork time) left the run waiting forever, without a word; one that the OOM killer ended
    stopped it with a traceback that named neither the cause nor the checkpoint to resume."""
    flag = tmp_path / "fault"  # workers fork once: they see a file, not a later monkeypatch
    read = datasets.read_image

    def read_or_fail(path):
        if flag.exists() and torch.utils.data.get_worker_info() is not None:
            if fault == "is killed":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        return read(path)

    report = train.write_report

    def report_then_fail(out_dir, history):
        report(out_dir, history)
        flag.touch()

    monkeypatch.setattr(datasets, "read_image", read_or_fail)
    monkeypatch.setattr(train, "write_report", report_then_fail)
    monkeypatch.setattr(train, "WORKER_TIMEOUT", 2)  # a healthy worker's 28x28 batch: milliseconds
    args = [*argv(fresh_data, tmp_path, weights_file, epochs=2), "--workers", "1"]
    with pytest.raises(UserError) as err:
        run_train([*args, "--imgsz", "28", "28", "--num-vis", "0"])
    if fault == "hangs":
        assert str(err.value).startswith(
            "a DataLoader worker gave no batch in 2 s: it hangs (reading a file from a stalled "
            "disk?). Rerun with --workers 0 to see where it stops."
        ), err.value
    else:
        assert str(err.value).startswith("DataLoader worker (pid"), err.value
        assert "(when memory runs out, Linux's OOM killer ends a worker): lower --workers" in (
            str(err.value)
        )
    last = tmp_path / "last_model.pth"
    assert str(err.value).endswith(
        f"holds epoch 1; continue with --resume {last} --out-dir {tmp_path}."
    )
    assert not multiprocessing.active_children()  # the hung one included


@pytest.mark.timeout(300)
def test_a_hung_dataloader_worker_stops_eval_only_with_one_message(
    tmp_path, tiny_data, checkpoint, monkeypatch, quick_worker_shutdown
):
    # With the timeout alone, --eval-only ended in the DataLoader's RuntimeError traceback
    read = datasets.read_image

    def read_or_hang(path):
        if torch.utils.data.get_worker_info() is not None:
            time.sleep(3600)
        return read(path)

    monkeypatch.setattr(datasets, "read_image", read_or_hang)
    monkeypatch.setattr(train, "WORKER_TIMEOUT", 2)
    hung = r"^a DataLoader worker gave no batch in 2 s: it hangs"
    with pytest.raises(UserError, match=hung) as err:
        run_train(["--eval-only", "--model", str(checkpoint), "--data", str(tiny_data),
                   "--out-dir", str(tmp_path), "--workers", "1", "--device", "cpu"])  # fmt: skip
    assert err.traceback and not multiprocessing.active_children()


STALLED_DOWNLOAD = """
import sys
from pathlib import Path

import utils

utils.NETWORK_TIMEOUT = 0.5  # any timeout that ends the wait: a stall never answers
import datasets, model

try:
    {call}
except utils.UserError as err:
    print("UserError", err)
"""


@pytest.mark.parametrize(
    "call",
    [
        "model.download_official_weights('dinov2_vits14', Path(sys.argv[1]) / 'w.pth')",
        "model._hub_load('dinov2_vits14', None)",  # the official code, from GitHub
        "datasets.download_penn_fudan(Path(sys.argv[1]) / 'data')",
    ],
)
def test_a_download_whose_connection_goes_silent_fails_instead_of_waiting_forever(tmp_path, call):
    # A proxy that accepts the connection and never answers: torch.hub's downloads set no
    # timeout, and each of these waited forever
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the system completes the connections; nothing ever reads or answers
    proxy = f"http://127.0.0.1:{silent.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update(HTTPS_PROXY=proxy, https_proxy=proxy, TORCH_HOME=str(tmp_path / "torch"))
    code = STALLED_DOWNLOAD.format(call=call)
    with silent:
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.stdout.startswith("UserError could not"), proc.stderr[-2000:]


@pytest.mark.parametrize(("accum", "steps"), [(1, 4), (2, 2), (3, 2)])
def test_accum_steps_the_optimizer_once_per_k_batches(
    tmp_path, tiny_data, weights_file, accum, steps
):
    # 8 training images, batch 2: 4 batches; the last partial group still steps
    run_train([*argv(tiny_data, tmp_path, weights_file, epochs=1), "--batch", "2", "--workers", "0",
               "--accum", str(accum)])  # fmt: skip
    state = torch.load(tmp_path / "last_model.pth", weights_only=True)["optimizer"]["state"]
    assert state[0]["step"] == steps


def test_an_accum_beyond_the_batches_of_an_epoch_is_named(
    tmp_path, tiny_data, weights_file, monkeypatch, caplog
):
    # 8 training images, batch 4: 2 batches, so --accum 3 stepped once per epoch over 2 batches,
    # an effective batch of 8 rather than the 12 asked for, without a word. Said before the
    # backbone loads (a download, or a minute for the largest), not after it.
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "load_backbone", stop)
    base = [*argv(tiny_data, tmp_path, weights_file, epochs=1), "--workers", "0"]
    for accum in ("2", "3"):
        with pytest.raises(KeyboardInterrupt):
            run_train([*base, "--accum", accum])
        warned = [r.getMessage() for r in caplog.records if "--accum" in r.getMessage()]
        assert warned == ([] if accum == "2" else [
            "--accum 3 is more than the 2 training batches of an epoch (8 images, --batch 4): "
            "each epoch makes one optimizer step, over 2 batches. Use --accum 2 or less"
        ])  # fmt: skip


def test_the_accum_warning_of_a_one_batch_epoch_says_batch(caplog):
    args = argparse.Namespace(accum=2, batch=4)
    train.warn_long_accum(args, share=3, world=1)
    assert [r.getMessage() for r in caplog.records] == [
        "--accum 2 is more than the 1 training batch of an epoch (3 images, --batch 4): "
        "each epoch makes one optimizer step, over 1 batch. Use --accum 1 or less"
    ]


@pytest.mark.parametrize(("accum", "batches"), [(3, 4), (2, 5), (4, 4)])
def test_every_accumulated_update_averages_its_own_group(accum, batches):
    # lr 0 keeps the weights fixed, so with identical batches every update must see the gradient
    # of one batch: a short last group divided by accum instead of its size would see less.
    torch.manual_seed(0)
    model = PixelClassifier()
    images = torch.rand(2, 3, 4, 4)
    masks = torch.randint(0, 2, (2, 4, 4))
    loader = [(images, masks, None)] * batches

    model.zero_grad()
    torch.nn.functional.cross_entropy(model(images, None), masks).backward()
    expected = model.conv.weight.grad.clone()

    seen = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(model.conv.weight.grad.clone())
            return super().step(closure)

    optimizer = Recording(model.parameters(), lr=0.0)
    train_one_epoch(model, loader, optimizer, torch.device("cpu"), 2, accum=accum)
    assert len(seen) == math.ceil(batches / accum)
    for grad in seen:
        torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("accum", [2, 3])
def test_an_accumulated_update_is_that_of_one_batch_of_its_group(accum):
    # Batches with different numbers of ignored pixels, and a short last group (5 batches):
    # each update must be the gradient of one batch of the group's images, the mean over all
    # its labelled pixels. Averaging each batch's own mean weighed a pixel of a mostly ignored
    # batch up to 6 times more (measured: 17-290% off that gradient).
    torch.manual_seed(0)
    model = PixelClassifier()
    g = torch.Generator().manual_seed(1)
    loader = []
    for ignored_rows in (0, 5, 1, 3, 4):
        masks = torch.randint(0, 2, (2, 6, 6), generator=g)
        masks[:, :ignored_rows] = 255
        loader.append((torch.rand(2, 3, 6, 6, generator=g), masks, None))
    expected = []
    for start in range(0, len(loader), accum):
        group = loader[start : start + accum]
        model.zero_grad()
        images, masks = (torch.cat([batch[i] for batch in group]) for i in (0, 1))
        torch.nn.functional.cross_entropy(model(images, None), masks, ignore_index=255).backward()
        expected.append(model.conv.weight.grad.clone())
    seen = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(model.conv.weight.grad.clone())
            return super().step(closure)

    train_one_epoch(model, loader, Recording(model.parameters(), lr=0.0), torch.device("cpu"), 2,
                    accum=accum)  # fmt: skip
    assert len(seen) == len(expected)
    for got, want in zip(seen, expected, strict=True):
        torch.testing.assert_close(got, want)


class NormalizedPixelClassifier(PixelClassifier):
    """PixelClassifier with BatchNorm before its convolution, as the head has one."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3)

    def forward(self, images, size, from_features=False):
        return self.conv(self.bn(images))


def test_a_group_without_a_labelled_pixel_steps_nothing():
    # a batch (here with --accum 1) whose masks are all 255 has no gradient to follow: AdamW
    # still moved the weights by its momentum (2/3 of a real step here) and weight decay.
    # (BatchNorm's running statistics are the images', which need no label.)
    torch.manual_seed(0)
    images = torch.rand(2, 3, 4, 4)
    labelled = (images, torch.randint(0, 2, (2, 4, 4)), None)
    ignored = (images, torch.full((2, 4, 4), 255), None)
    runs = []
    for loader in ([labelled], [labelled, ignored]):
        torch.manual_seed(0)
        model = NormalizedPixelClassifier()
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        stats = train_one_epoch(model, loader, optimizer, torch.device("cpu"), 2)
        runs.append((model.state_dict(), optimizer.state_dict()["state"][0]["step"], stats))
    (before, steps_before, stats_before), (after, steps_after, stats_after) = runs
    assert steps_after == steps_before == 1
    for key in ("conv.weight", "conv.bias", "bn.weight", "bn.bias"):
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)
    assert stats_after["loss"] == stats_before["loss"]


def test_an_epoch_without_a_labelled_pixel_reports_no_loss_rather_than_0():
    # its accuracy and mIoU are nan (nothing was scored): a loss of 0 read as a perfect fit
    model = PixelClassifier()
    loader = [(torch.rand(2, 3, 4, 4), torch.full((2, 4, 4), 255), None)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, loader, optimizer, torch.device("cpu"), 2)
    assert math.isnan(stats["loss"]) and math.isnan(stats["acc"]) and math.isnan(stats["miou"])
    assert not optimizer.state, "nothing to learn from: no step"


def test_a_best_checkpoint_that_failed_to_write_is_written_on_resume(
    tmp_path, tiny_data, weights_file, monkeypatch
):
    # at this lr, epoch 2 improves on epoch 1
    args = [*argv(tiny_data, tmp_path, weights_file, epochs=2), "--lr", "3e-4"]
    real = train.save_checkpoint

    def save(path, model, **meta):
        if path.name == "best_model_iou.pth" and meta["epoch"] == 2:
            raise OSError(28, "No space left on device")
        real(path, model, **meta)

    monkeypatch.setattr(train, "save_checkpoint", save)
    with pytest.raises(UserError, match=r"No space left on device.*holds epoch 1"):
        run_train(args)
    monkeypatch.setattr(train, "save_checkpoint", real)
    run_train([*args, "--resume", str(tmp_path / "last_model.pth")])
    rows = read_csv(tmp_path / "metrics.csv")
    best = max(rows, key=lambda r: r["valid_miou"])
    assert best["epoch"] == 2
    saved = torch.load(tmp_path / "best_model_iou.pth", weights_only=True)
    assert saved["epoch"] == best["epoch"]
    assert saved["best_miou"] == best["valid_miou"]


def test_a_resume_from_an_earlier_epoch_keeps_no_best_checkpoint_of_the_course_it_replaces(
    tmp_path, tiny_data, weights_file, monkeypatch
):
    # A copy of epoch 1 resumed into the run's folder, whose best checkpoints hold epoch 2: the
    # new epoch 2, worse, left them there, models of a course that metrics.csv no longer shows
    out = tmp_path / "out"
    run_train(argv(tiny_data, out, weights_file, epochs=1))
    shutil.copyfile(out / "last_model.pth", tmp_path / "epoch1.pth")
    run_train(["--resume", str(out / "last_model.pth"), "--out-dir", str(out), "--epochs", "2"])
    for name in train.BEST_CHECKPOINTS:  # epoch 2 the best of its course, whatever it scored
        shutil.copyfile(out / "last_model.pth", out / name)
    real = train.evaluate

    def worse(*args, **kwargs):  # the new course scores below epoch 1
        scores = real(*args, **kwargs)
        return {**scores, "miou": scores["miou"] - 1, "loss": scores["loss"] + 100}

    monkeypatch.setattr(train, "evaluate", worse)
    run_train(["--resume", str(tmp_path / "epoch1.pth"), "--out-dir", str(out), "--epochs", "2"])
    rows = read_csv(out / "metrics.csv")
    for name, best in (("best_model_iou.pth", max), ("best_model_loss.pth", min)):
        key = "valid_miou" if name == "best_model_iou.pth" else "valid_loss"
        ckpt = torch.load(out / name, weights_only=True)
        assert ckpt["epoch"] == 1 and ckpt["metrics"][key] == best(r[key] for r in rows)


def test_a_resume_from_an_epoch_that_is_not_the_best_names_the_best_checkpoint_it_leaves(
    tmp_path, caplog
):
    # Epoch 2 resumed, the best mIoU that of epoch 1 and the best loss its own; the folder's
    # best checkpoints hold epoch 3 of the course trained again. best_model_loss.pth gets epoch
    # 2 back; epoch 1 is in no file here, so best_model_iou.pth stays, named, until an epoch
    # beats epoch 1's mIoU.
    out = tmp_path / "out"
    out.mkdir()
    torch.save({"epoch": 3, "course": "replaced"}, out / "best_model_iou.pth")
    torch.save({"epoch": 3, "course": "replaced"}, out / "best_model_loss.pth")
    torch.save({"epoch": 2, "course": "resumed"}, tmp_path / "epoch2.pth")
    ckpt = {"metrics": {"valid_miou": 0.5, "valid_loss": 0.2}, "best_miou": 0.6,
            "best_loss": 0.2}  # fmt: skip
    args = argparse.Namespace(out_dir=out, resume=tmp_path / "epoch2.pth")
    train.restore_best(args, ckpt, start=3)
    assert torch.load(out / "best_model_loss.pth", weights_only=True)["course"] == "resumed"
    assert torch.load(out / "best_model_iou.pth", weights_only=True)["course"] == "replaced"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [
        f"{out / 'best_model_iou.pth'} holds epoch 3 of the course this run trains again from "
        "epoch 3 (its scores are not metrics.csv's): it stays until an epoch beats the best "
        "before epoch 3; move it away to keep it"
    ]


def test_a_checkpoint_write_that_fails_midway_keeps_the_old_file(tmp_path, monkeypatch):
    model = Segmentor(load_backbone("dinov2_vits14", "timm", None, layers=1), 2)
    dest = tmp_path / "last_model.pth"
    save_checkpoint(dest, model, epoch=1)

    def full_disk(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 the first bytes of a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("model.torch.save", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        save_checkpoint(dest, model, epoch=2)
    monkeypatch.undo()
    assert torch.load(dest, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last_model.pth"], "no temporary file"


def test_a_csv_write_that_fails_midway_keeps_the_old_file(tmp_path):
    dest = tmp_path / "metrics.csv"
    rows = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    write_csv(dest, rows)
    # the first row is written before the second one fails
    with pytest.raises(ValueError, match="fields not in fieldnames"):
        write_csv(dest, [{"epoch": 3, "loss": 0.125}, {"epoch": 4, "typo": 0.1}])
    assert read_csv(dest) == rows
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"], "no temporary file"


@pytest.mark.parametrize("writer", ["atomic_path", "atomic_files"])
def test_a_stop_as_soon_as_the_temporary_exists_leaves_nothing(tmp_path, monkeypatch, writer):
    # A Ctrl-C or SIGTERM is raised wherever the main thread is: one raised between mkstemp and
    # the try that removes its file (in Path(), say) left .loss.png.xxxxxxxx.tmp in --out-dir
    def path(*args):
        made = Path(*args)
        if made.name.startswith(".loss.png.") and made.exists():
            raise KeyboardInterrupt  # as the temporary's name becomes a Path
        return made

    monkeypatch.setattr(utils, "Path", path)
    with pytest.raises(KeyboardInterrupt), getattr(utils, writer)(tmp_path / "loss.png"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_name_near_the_255_byte_limit_still_gets_an_atomic_write(tmp_path):
    name = "a" + "写真" * 39 + "_mask.png"  # 244 bytes: the temporary name must be shorter
    with utils.atomic_path(tmp_path / name) as tmp:
        tmp.write_bytes(b"x")
        assert len(tmp.name.encode()) <= 255
        tmp.name.encode("utf-8")  # cut between characters, never inside one
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.skipif(
    sys.platform != "linux", reason="a file name that is not UTF-8: Linux allows it"
)
def test_a_name_that_is_not_utf8_still_gets_an_atomic_write(tmp_path):
    # a Latin-1 name from an old archive: Python holds its byte 0xE9 as the surrogate U+DCE9,
    # which a strict UTF-8 encode refuses, so the image was read but its results not written
    name = os.fsdecode(b"caf\xe9_mask.png")
    utils.write_text(tmp_path / name, "x")
    assert os.listdir(os.fsencode(tmp_path)) == [b"caf\xe9_mask.png"]


def test_atomic_writes_reach_the_disk_before_their_rename_with_plain_permissions(
    tmp_path, monkeypatch
):
    # mkstemp's files are private (0600) and a rename keeps them; a rename before fsync may
    # leave an empty file under the final name after a crash; a graph moved in before its
    # external data would name a file that is not there yet
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"x")
    events = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or fsync(fd))
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(Path(b).name) or replace(a, b))
    with utils.atomic_path(tmp_path / "last_model.pth") as tmp:
        tmp.write_bytes(b"checkpoint")
    with utils.atomic_files(tmp_path / "model.onnx") as staged:
        staged.write_bytes(b"graph")
        (staged.parent / "model.onnx.data").write_bytes(b"weights")
        (staged.parent / "model.onnx.data").chmod(0o600)  # as ONNX writes it
    assert events == ["fsync", "last_model.pth", "fsync", "fsync", "model.onnx.data", "model.onnx"]
    for name in ("last_model.pth", "model.onnx", "model.onnx.data"):
        assert (tmp_path / name).stat().st_mode == plain.stat().st_mode, name


def test_the_ordered_writer_runs_jobs_in_order_one_at_a_time_and_reraises():
    # a video's frames are encoded by these jobs: two at once would interleave them
    done = []

    def job(i):
        time.sleep(0.02 * (4 - i))  # the first jobs are the slowest
        done.append(i)

    writer = utils.OrderedWriter(depth=2)
    for i in range(5):
        writer.submit(job, i)
        assert len(done) >= i - 1, "at most depth jobs wait"
    writer.finish()
    assert done == [0, 1, 2, 3, 4]

    def full_disk():
        raise OSError(28, "No space left on device")

    writer = utils.OrderedWriter()
    writer.submit(full_disk)
    writer.submit(job, 4)
    with pytest.raises(OSError, match="No space left"):
        writer.finish()


def test_prefetch_reraises_the_producers_error_and_stops_with_its_consumer():
    # a video's frames are decoded in this thread: a read error must reach the loop that
    # consumes them, after the frames read before it
    def frames():
        yield 1
        yield 2
        raise OSError("the drive was unplugged")

    got = []
    with pytest.raises(OSError, match="unplugged"):
        for item in utils.prefetch(frames()):
            got.append(item)
    assert got == [1, 2]

    # a consumer that stops early (Ctrl-C, a failed write) stops the producer with it
    produced = []

    def long_video():
        for i in range(1000):
            produced.append(i)
            yield i

    items = utils.prefetch(long_video(), depth=2)
    assert next(items) == 0
    items.close()  # joins the thread
    assert len(produced) <= 5, "the producer went on decoding for nobody"


def test_the_inference_queues_hold_at_most_max_bytes_but_always_one_item():
    # at 4K with --batch 16 each queue's depth in batches held gigabytes of frames
    produced = []

    def frames(size):
        for i in range(12):
            produced.append(i)
            yield bytes(size)

    items = utils.prefetch(frames(100), depth=10, max_bytes=250, nbytes=len)
    next(items)
    # the one consumed and two waiting (200 of 250 bytes): awaited, as a loaded machine may run
    # the producer's thread late, then given time to go past the budget. The producer makes
    # no fourth to hold while it waits for room (it did: a batch of 8 4K frames, 200 MB more)
    deadline = time.monotonic() + 60
    while len(produced) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert len(produced) == 3
    assert sum(1 for _ in items) == 11
    # an item larger than the budget still goes through, one at a time
    assert len(list(utils.prefetch(frames(1000), max_bytes=250, nbytes=len))) == 12

    writer = utils.OrderedWriter(depth=10, max_bytes=250)
    for _ in range(6):
        writer.submit(time.sleep, 0.01, nbytes=100)
        assert writer.pending_bytes <= 250 and len(writer.pending) <= 2
    writer.submit(time.sleep, 0.01, nbytes=1000)  # alone over the budget: it waits alone
    assert len(writer.pending) == 1
    writer.finish()


def test_an_infinite_validation_loss_stops_before_any_checkpoint(
    tmp_path, fresh_data, weights_file, monkeypatch
):
    # a loss that overflowed to inf is as broken as a NaN one: no checkpoint of that model
    scores = {"loss": math.inf, "acc": 0.5, "miou": 0.5, "iou": [0.5, 0.5]}
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: dict(scores))
    args = ["--data", str(fresh_data), "--out-dir", str(tmp_path), "--backbone-source", "timm",
            "--weights", str(weights_file), "--imgsz", "56", "56", "--workers", "0",
            "--epochs", "1", "--num-vis", "0", "--device", "cpu"]  # fmt: skip
    with pytest.raises(
        UserError, match=r"validation loss became inf after the training of epoch 1"
    ):
        run_train(args)
    assert not list(tmp_path.glob("*.pth")), "a checkpoint of a diverged model was written"


def nan_at(batch: int, batches: int) -> tuple[torch.nn.Module, list]:
    """A PixelClassifier and a loader of ``batches`` batches whose ``batch``-th (1-based) holds
    a NaN pixel."""
    torch.manual_seed(0)
    model = PixelClassifier()
    images, masks = torch.rand(2, 3, 4, 4), torch.randint(0, 2, (2, 4, 4))
    poisoned = images.clone()
    poisoned[0, 0, 0, 0] = math.nan
    loader = [(poisoned if i == batch else images, masks, None) for i in range(1, batches + 1)]
    return model, loader


def test_a_nan_loss_stops_training_before_the_optimizer_uses_it():
    model, loader = nan_at(2, batches=3)
    after_steps = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            loss = super().step(closure)
            after_steps.append([p.detach().clone() for p in model.parameters()])
            return loss

    optimizer = Recording(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged, match="the training loss became nan at batch 2"):
        train_one_epoch(model, loader, optimizer, torch.device("cpu"), 2)
    assert len(after_steps) == 1, "the optimizer stepped on the NaN batch"
    for param, stepped in zip(model.parameters(), after_steps[0], strict=True):
        assert torch.isfinite(param).all()
        torch.testing.assert_close(param.detach(), stepped, rtol=0, atol=0)


def test_an_infinite_loss_stops_training_as_a_nan_one_does():
    # float32 overflow (x 2e38 pixels here; fp16 logits or a huge --lr in practice) gives inf
    torch.manual_seed(0)
    model = PixelClassifier()
    images, masks = torch.rand(2, 3, 4, 4), torch.randint(0, 2, (2, 4, 4))
    loader = [(images, masks, None), (images * 2e38, masks, None)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(TrainingDiverged, match="the training loss became inf at batch 2"):
        train_one_epoch(model, loader, optimizer, torch.device("cpu"), 2)


def test_a_diverged_loss_names_the_batch_not_the_optimizer_step():
    # with --accum 2 the NaN of the third batch comes in the second optimizer step: "step 2"
    # would send the user to the wrong batch
    model, loader = nan_at(3, batches=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(TrainingDiverged, match=r"^the training loss became nan at batch 3$"):
        train_one_epoch(model, loader, optimizer, torch.device("cpu"), 2, accum=2)


def test_a_stop_in_the_first_resumed_epoch_names_the_checkpoint_that_holds_it(
    tmp_path, checkpoint, tiny_data, weights_file, monkeypatch, caplog
):
    # resumed into another --out-dir: OUT/last_model.pth does not exist until an epoch finishes.
    # The run resumed is the checkpoint fixture's (2 epochs on tiny_data), copied: a run trained
    # here only to be resumed and stopped at once was most of this test's time.
    first = shutil.copytree(checkpoint.parent, tmp_path / "first")
    resumed = [*argv(tiny_data, tmp_path / "second", weights_file, epochs=3), "--resume",
               str(first / "last_model.pth")]  # fmt: skip

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_one_epoch", stop)
    with pytest.raises(KeyboardInterrupt):
        run_train(resumed)
    advice = f"continue with --resume {first / 'last_model.pth'} --out-dir {tmp_path / 'second'}."
    assert advice in caplog.text
    assert str(tmp_path / "second" / "last_model.pth") not in caplog.text


def test_the_advice_after_a_stop_keeps_the_runs_out_dir(tmp_path, monkeypatch):
    """The advice "continue with --resume OUT/last_model.pth" left out --out-dir, which is not
    resumed: followed as printed, the run went on in outputs/ (the best checkpoints copied
    there), apart from its first epochs."""
    ckpt = tmp_path / "run" / "last_model.pth"
    assert train.kept_message(ckpt, 2, tmp_path / "run") == (
        f"{ckpt} holds epoch 2; continue with --resume {ckpt} --out-dir {tmp_path / 'run'}."
    )
    monkeypatch.chdir(tmp_path)  # the default --out-dir needs no flag
    assert train.kept_message(Path("outputs/last_model.pth"), 2, Path("outputs")) == (
        f"{Path('outputs/last_model.pth')} holds epoch 2; continue with --resume "
        f"{Path('outputs/last_model.pth')}."
    )


WRITE_UNDER_A_SIZE_LIMIT = """
import resource, sys
from pathlib import Path
import numpy as np
from PIL import Image
from utils import atomic_path, plot_curves, write_image
out = Path(sys.argv[1])


def jpeg():  # as the scripts write their images
    with atomic_path(out / "x.jpg") as tmp:
        write_image(tmp, Image.fromarray(noise), "JPEG")


noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
rows = [{f"{s}_{k}": 0.1 * e for s in ("train", "valid") for k in ("loss", "acc", "miou")}
        | {"epoch": e} for e in (1, 2, 3)]
resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY))  # Python ignores SIGXFSZ
for name, write in (("jpeg", jpeg), ("plots", lambda: plot_curves(rows, out))):
    try:
        write()
        print(name, "written")
    except OSError:
        print(name, "refused")
"""


def test_images_and_plots_on_a_full_disk_raise_instead_of_being_cut_off(tmp_path):
    # Pillow's encoders write to the file descriptor and ignore a short write: a full disk left
    # cut-off overlays without an error (matplotlib's plots raised). A file size limit fails
    # writes past 2 KB as a full disk would.
    pytest.importorskip("resource")  # POSIX
    proc = subprocess.run([sys.executable, "-c", WRITE_UNDER_A_SIZE_LIMIT, str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.stdout.split("\n")[:2] == ["jpeg refused", "plots refused"], proc.stderr
    assert list(tmp_path.iterdir()) == [], "no file, cut off or temporary, may remain"


def test_the_curves_of_one_epoch_or_of_nan_values_mark_whole_epochs(tmp_path, monkeypatch):
    # one epoch's single point got ticks 0.945, 0.960, ... 1.050: the integer locator finds
    # no two whole epochs in the range matplotlib pads a single point with
    from matplotlib.figure import Figure

    ticks = []
    savefig = Figure.savefig

    def record(fig, *args, **kwargs):
        ax = fig.axes[0]
        low, high = ax.get_xlim()
        ticks.append([t for t in ax.get_xticks() if low <= t <= high])
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    nan = math.nan
    train = {"train_loss": nan, "train_acc": nan, "train_miou": nan}  # no labelled pixel
    valid = {"valid_loss": 0.5, "valid_acc": 0.7, "valid_miou": 0.4}
    row = {"epoch": 1, **train, **valid, "lr": 1e-4, "seconds": 1.0}
    for history in ([row], [{**row, "epoch": 3}], [row, {**row, "epoch": 2}]):
        ticks.clear()
        utils.plot_curves(history, tmp_path)
        assert len(ticks) == 3
        epochs = [r["epoch"] for r in history]
        for seen in ticks:
            assert seen and all(float(t).is_integer() for t in seen), (epochs, seen)
            assert set(epochs) <= set(seen), (epochs, seen)


def test_a_metrics_file_held_open_elsewhere_is_a_warning_not_the_end(tmp_path, monkeypatch, caplog):
    # Windows: metrics.csv open in Excel cannot be replaced; the run stopped at the epoch's end
    rows = [{f"{s}_{k}": 0.5 for s in ("train", "valid") for k in ("loss", "acc", "miou")}
            | {"epoch": 1}]  # fmt: skip

    def failing(errno: int, reason: str):
        def write_csv(path, rows):
            raise PermissionError(errno, reason) if errno == 13 else OSError(errno, reason)

        return write_csv

    monkeypatch.setattr(train, "write_csv", failing(13, "Permission denied"))
    train.write_report(tmp_path, rows)
    assert (
        "could not update metrics.csv" in caplog.text and "open in another program" in caplog.text
    )
    assert (tmp_path / "miou.png").is_file()  # the rest is written
    monkeypatch.setattr(train, "write_csv", failing(28, "No space left on device"))
    with pytest.raises(OSError, match="No space"):  # a full disk still stops the run
        train.write_report(tmp_path, rows)


def test_an_overlay_held_open_elsewhere_is_a_warning_not_the_end(
    tmp_path, tiny_data, weights_file, monkeypatch, caplog
):
    # Windows: valid_preds/NAME.jpg open in an image viewer cannot be replaced; the run stopped
    # at the first epoch's end, with no checkpoint
    replace = utils.os.replace

    def held_open(src, dst):
        if "valid_preds" in str(dst):
            raise PermissionError(13, "The process cannot access the file", str(src))
        replace(src, dst)

    monkeypatch.setattr(utils.os, "replace", held_open)
    out = tmp_path / "out"
    run_train([*argv(tiny_data, out, weights_file, epochs=2), "--workers", "0"])
    assert "could not update img000.jpg" in caplog.text
    assert "open in another program" in caplog.text
    assert (out / "last_model.pth").is_file() and len(read_csv(out / "metrics.csv")) == 2


SAVE_UNDER_A_SIZE_LIMIT = """
import resource, sys
from pathlib import Path
from model import Segmentor, load_backbone, save_checkpoint
model = Segmentor(load_backbone("dinov2_vits14", "timm", None, layers=1), 2)
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.RLIM_INFINITY))  # Python ignores SIGXFSZ
try:
    save_checkpoint(Path(sys.argv[1]) / "last_model.pth", model, epoch=1)
    print("written")
except OSError as err:
    print("OSError", err)
"""


def test_a_checkpoint_on_a_full_disk_fails_as_a_write(tmp_path):
    # PyTorch's zip writer reports a short write as a RuntimeError, which train.fit's report of
    # a failed write (naming the epoch that last_model.pth still holds) would miss
    pytest.importorskip("resource")  # POSIX
    proc = subprocess.run([sys.executable, "-c", SAVE_UNDER_A_SIZE_LIMIT, str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.stdout.startswith("OSError the file system took only part of"), proc.stderr
    assert list(tmp_path.iterdir()) == [], "no file, cut off or temporary, may remain"


@pytest.mark.parametrize("stop_at", ["last_model.pth", "log_epoch"])
def test_a_stop_while_the_first_epoch_is_saved_says_what_is_on_disk(
    tmp_path, tiny_data, weights_file, monkeypatch, caplog, stop_at
):
    # Both said "No epoch finished, so this run wrote no checkpoint": a stop before last_model.pth
    # of epoch 1 was written, while best_model_iou.pth held epoch 1, and one after it was written.
    real = train.save_checkpoint

    def save(path, model, **meta):
        if path.name == stop_at:
            raise KeyboardInterrupt
        real(path, model, **meta)

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", save)
    if stop_at == "log_epoch":
        monkeypatch.setattr(train, "log_epoch", interrupt)
    args = [*argv(tiny_data, tmp_path, weights_file, epochs=2), "--workers", "0"]
    with caplog.at_level("INFO", logger="dinoseg"), pytest.raises(KeyboardInterrupt):
        run_train([*args, "--imgsz", "28", "28", "--num-vis", "0"])
    assert torch.load(tmp_path / "best_model_iou.pth", weights_only=True)["epoch"] == 1
    assert "No epoch finished" not in caplog.text
    if stop_at == "log_epoch":
        last = tmp_path / "last_model.pth"
        assert f"{last} holds epoch 1; continue with --resume {last} --out-dir {tmp_path}." in (
            caplog.text
        )
    else:
        assert not (tmp_path / "last_model.pth").exists()
        assert (
            f"best_model_iou.pth and best_model_loss.pth in {tmp_path} hold epoch 1, but its "
            "last_model.pth was not written: run the same command again to train from epoch 1."
        ) in caplog.text


def test_a_stop_while_a_later_epoch_is_saved_names_its_best_checkpoints(tmp_path):
    last = tmp_path / "last_model.pth"
    assert train.kept_message(last, 2, tmp_path, ["best_model_iou.pth"]) == (
        f"best_model_iou.pth in {tmp_path} holds epoch 3, but its last_model.pth was not "
        f"written. {last} holds epoch 2; continue with --resume {last} --out-dir {tmp_path}."
    )


def test_failed_runs_leave_no_folders_they_made_behind(tmp_path, checkpoint, monkeypatch):
    """A run that fails after its checks passed (offline, a missing model, a graph that does not
    convert, a dataset with a problem) left its output folder, and train.py its data/, behind
    empty."""
    import export
    import infer_image
    import infer_video
    import prepare_data
    from synthetic import write_clip

    def offline(*args, **kwargs):
        raise datasets.URLError("no network")

    def cannot_convert(*args):
        raise RuntimeError("Unsupported: aten::_some_op")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(export, "export", cannot_convert)
    monkeypatch.chdir(tmp_path)
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    (tmp_path / "images").mkdir()
    shutil.copy(clip, tmp_path / "images" / "not_an_image.png")
    new, gone = tmp_path / "new", str(tmp_path / "gone.pth")
    runs = {
        "could not download Penn-Fudan": lambda: run_train(["--out-dir", str(new / "out")]),
        "checkpoint .*gone.pth": lambda: infer_image.main(
            infer_image.get_args_parser().parse_args(
                ["--input", "images", "--model", gone, "--out-dir", str(new / "out")]
            )
        ),
        "gone.pth": lambda: infer_video.main(
            infer_video.get_args_parser().parse_args(
                ["--input", str(clip), "--model", gone, "--out-dir", str(new / "out")]
            )
        ),
        "ONNX export failed": lambda: export.main(
            export.get_args_parser().parse_args(
                ["--model", str(checkpoint), "--output", str(new / "out" / "m.onnx")]
            )
        ),
        "ImageSets.*train.txt is missing": lambda: prepare_data.main(
            prepare_data.get_args_parser().parse_args(
                ["voc", "--root", "images", "--out", str(new / "out" / "voc")]
            )
        ),
    }
    for message, run in runs.items():
        with pytest.raises(UserError, match=message):
            run()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "images"], message


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stop_while_the_curves_are_drawn_waits_until_all_are_written(tmp_path, monkeypatch, stop):
    # A stop raised inside matplotlib may leave its global figures half-made; held until the
    # three curves are written, it is raised after them, as the same stop.
    from matplotlib.figure import Figure

    savefig, saved = Figure.savefig, []

    def stopped_at_the_first(fig, *args, **kwargs):
        if not saved:
            os.kill(os.getpid(), stop)  # the handler runs before the next bytecode
        saved.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", stopped_at_the_first)
    row = {f"{s}_{k}": 0.5 for s in ("train", "valid") for k in ("loss", "acc", "miou")}
    previous = signal.signal(signal.SIGTERM, utils._terminate)  # as run_script installs
    utils._stopping.clear()  # an earlier test's run_script may have stopped
    try:
        with pytest.raises(KeyboardInterrupt) as err:
            utils.plot_curves([{"epoch": 1, **row}], tmp_path)
        assert isinstance(err.value, utils.Terminated) == (stop == signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is utils._terminate  # given back
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
        utils._stopping.clear()
    assert len(saved) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.png", "loss.png", "miou.png"]
