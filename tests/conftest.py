"""Shared fixtures: official-format random weights, tiny datasets and a prepared TORCH_HOME."""

import getpass
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import onnxruntime
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from synthetic import make_dataset, random_official_weights  # noqa: E402

FAKE_HUB = Path(__file__).parent / "fake_dinov2_hub"
# onnxruntime 1.18 to 1.23 run the float32 graph but have no ConvInteger for the int8 one, so
# export.py --int8 stops there: the tests run the int8 graph only where onnxruntime can
ORT_RUNS_INT8 = tuple(int(n) for n in onnxruntime.__version__.split(".")[:2]) >= (1, 24)


def _cores() -> int:
    """The cores this process may use (Linux), else all of them (macOS, Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _share_the_cores() -> None:
    """Give each pytest-xdist worker (``-n auto``) its share of the cores, for its own PyTorch
    and for the scripts it starts (OMP_NUM_THREADS). Each would take them all: with two
    workers on 2 cores the suite took 11.7 minutes, 12.6 in one process, 7.7 with a thread
    each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, _cores() // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_the_cores()

# The memory a test process may need at its peak, with the processes its tests start: two on 2
# cores peaked at 10.1 GB together, one at 6.9 GB (2026-12-02)
WORKER_MEMORY = 5 * 2**30


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int | None:
    """``-n auto``: a test process per core, as many as the memory holds at WORKER_MEMORY each
    (a laptop of 10 cores and 16 GB runs 3). PYTEST_XDIST_AUTO_NUM_WORKERS decides where set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # pytest-xdist's own answer reads it
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): a process per core
        return None
    return max(1, min(_cores(), memory // WORKER_MEMORY))


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py as a module, to call its functions or its main in the test's process
    (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_memory(monkeypatch, gib: float) -> None:
    """Report ``gib`` GiB of free memory on every device, and fail any forward pass through a
    backbone at once: a test of a size refused for memory would otherwise run it, for hours or
    until the machine's memory ran out, the moment the refusal stopped working."""
    import model
    import utils

    def ran(*args, **kwargs):
        raise AssertionError("a forward pass ran at a size that should have been refused")

    monkeypatch.setattr(utils, "free_memory", lambda device: int(gib * 2**30))
    monkeypatch.setattr(model.DinoBackbone, "forward", ran)


def _can_mount_privately() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


needs_mount_namespace = pytest.mark.skipif(
    not _can_mount_privately(), reason="needs unshare -rm (a Linux mount namespace)"
)


def run_bind_mounted(folder: Path, alias: Path, *cmd: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ROOT with ``folder`` shown under a second name, ``alias`` (an empty
    folder), by a bind mount in a mount namespace of its own: as on a case-insensitive file
    system (macOS, Windows), where ../Proj is the folder proj, resolve() cannot see that the two
    names are one folder."""
    mount_then_run = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    cmd = ["unshare", "-rm", "sh", "-c", mount_then_run, "sh", str(folder), str(alias), *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def run_on_tmpfs(folder: Path, size: str, *cmd: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ROOT with a new tmpfs of ``size`` bytes ("16k") mounted on ``folder`` in
    a mount namespace of its own: a file system of its own there (a Docker volume, a drive),
    or a small one that fills. What is left in ``folder`` is listed on stdout after ``cmd``'s
    output (ls -A), before the file system goes with the namespace."""
    script = 'mount -t tmpfs -o size="$1" none "$2" && d="$2" && shift 2 && "$@"; s=$?; ls -A "$d"'
    cmd = ["unshare", "-rm", "sh", "-c", f"{script}; exit $s", "sh", size, str(folder), *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt in the tests however pytest was started. A shell that
    starts it in the background (``cmd &`` in a script, nohup) leaves SIGINT ignored, and the
    tests that press Ctrl-C (``_thread.interrupt_main``) then saw nothing happen."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session", autouse=True)
def tmpdir_under_basetemp(tmp_path_factory):
    """The temporary files of the tests and of the processes they start go under pytest's own
    temporary folder, which pytest prunes: torch's DataLoader workers (multiprocessing's pymp-*)
    and torchrun (torchelastic_*) left folders in /tmp, those of a process the tests stop always.
    tempfile.tempdir too: gettempdir() read TMPDIR once and keeps the answer.

    Inductor's compile cache stays where torch puts it by default (TMP/torchinductor_USER): it
    is meant to outlive a run, and compiling again what it holds is slow (one small graph: 24 s
    against 6 s from the cache).
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid without a name (containers): torch's own fallback
        user = f"uid_{os.getuid()}"
    inductor_cache = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    folder = tmp_path_factory.mktemp("tmpdir")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR", inductor_cache)
        )
        patch.setenv("TMPDIR", str(folder))
        patch.setattr(tempfile, "tempdir", str(folder))
        yield folder


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> Path:
    """An official-format dinov2_vits14_pretrain.pth with random values."""
    path = tmp_path_factory.mktemp("weights") / "dinov2_vits14_pretrain.pth"
    torch.save(random_official_weights(), path)
    return path


@pytest.fixture(scope="session")
def reg_weights_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(random_official_weights(registers=True, seed=1), path)
    return path


@pytest.fixture
def torch_home(tmp_path, monkeypatch, weights_file) -> Path:
    """A TORCH_HOME as torch.hub leaves it after loading dinov2_vits14 once online.

    The code folder is our stand-in hubconf (tests/fake_dinov2_hub), not the official repository.
    """
    home = tmp_path / "torch_home"
    shutil.copytree(FAKE_HUB, home / "hub" / "facebookresearch_dinov2_main")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(weights_file, home / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth")
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """8 train and 4 valid images of 96x72 and 84x112 pixels; do not modify."""
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=8, n_valid=4)


@pytest.fixture
def fresh_data(tmp_path) -> Path:
    """A dataset the test may break."""
    return make_dataset(tmp_path / "data", n_train=4, n_valid=2)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tiny_data, weights_file) -> Path:
    """best_model_iou.pth of a short training run at 90x66 on tiny_data (timm source)."""
    import train
    from config import parse_args

    out = tmp_path_factory.mktemp("ckpt")
    argv = ["--data", str(tiny_data), "--out-dir", str(out), "--backbone-source", "timm",
            "--weights", str(weights_file), "--imgsz", "90", "66", "--workers", "0",
            "--batch", "4", "--lr", "3e-3", "--epochs", "2", "--num-vis", "0"]  # fmt: skip
    train.main(*parse_args(train.get_args_parser(), argv))
    return out / "best_model_iou.pth"


class PixelClassifier(torch.nn.Module):
    """A 1x1 convolution with the Segmentor's call signature: for tests of the training loop."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, images, size, from_features=False):
        return self.conv(images)
