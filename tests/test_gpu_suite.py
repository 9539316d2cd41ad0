"""benchmarks/gpu_suite.sh's own logic, with a stand-in interpreter: no GPU, no benchmark run."""

import shutil
import subprocess

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("bash", "timeout", "tr")), reason="needs bash, timeout"
)

# Answers the suite's checks on stdin ("-") and prints a step's output, a progress bar among it.
STAND_IN = """#!/bin/sh
case "$1" in
    -) cat >/dev/null; echo "stand-in python3" ;;
    *) printf 'device stand-in\\nbar:  50%%|#####     | 1/2\\rbar: 100%%|##########| 2/2\\r'
       echo; echo "result of $*"; exit 3 ;;
esac
"""


def run_suite(tmp_path, steps, seconds, python="/no/such/.venv/bin/python"):
    stand_in = tmp_path / "bin" / "python3"
    stand_in.parent.mkdir()
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    env = {
        "PATH": f"{stand_in.parent}:/usr/bin:/bin",
        "PYTHON": python,
        "GPU_SUITE_SECONDS": str(seconds),
    }
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(tmp_path / "logs"), *steps]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_a_missing_interpreter_falls_back_and_every_step_is_logged(tmp_path):
    proc = run_suite(tmp_path, ["latency", "attention"], seconds=0)
    assert proc.returncode == 2, proc.stderr  # both steps failed (the stand-in exits 3)
    summary = (tmp_path / "logs" / "summary.log").read_text()
    assert "PYTHON=/no/such/.venv/bin/python is not there" in summary
    assert "stand-in python3" in summary
    assert "latency: exit 3" in summary and "attention: exit 3" in summary
    log = (tmp_path / "logs" / "latency.log").read_text()
    assert "result of benchmarks/bench_inference.py --device cuda --amp bf16 --batch 1" in log
    # the closing lines are printed again at the end, without the progress bar
    closing = proc.stdout[proc.stdout.index("== the closing lines") :]
    assert "-- latency\ndevice stand-in\nresult of benchmarks/bench_inference.py" in closing
    assert "%|" not in closing


def test_no_step_starts_past_the_time_limit(tmp_path):
    proc = run_suite(tmp_path, ["throughput", "suite"], seconds=1)
    assert proc.returncode == 2, proc.stderr  # steps that did not run count as failed
    summary = (tmp_path / "logs" / "summary.log").read_text()
    assert "throughput: not run" in summary and "suite: not run" in summary
    assert not (tmp_path / "logs" / "throughput.log").exists()


def test_an_unknown_step_is_refused_before_anything_runs(tmp_path):
    proc = run_suite(tmp_path, ["throughput", "speed"], seconds=0)
    assert proc.returncode == 2
    assert "unknown step speed" in proc.stderr
    assert not (tmp_path / "logs").exists()
