"""How ``pytest -n auto`` sizes the suite's test processes (tests/conftest.py)."""

import os

import pytest

import conftest


@pytest.mark.parametrize(
    ("cores", "gib", "workers"), [(10, 16, 3), (2, 24, 2), (16, 128, 16), (8, 4, 1)]
)
def test_auto_runs_a_process_per_core_that_the_memory_holds(monkeypatch, cores, gib, workers):
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    monkeypatch.setattr(conftest, "_cores", lambda: cores)
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": gib * 2**30 // 4096}
    monkeypatch.setattr(os, "sysconf", pages.__getitem__, raising=False)
    assert conftest.pytest_xdist_auto_num_workers(None) == workers


def test_auto_leaves_the_choice_to_its_variable_and_to_machines_without_sysconf(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "5")
    assert conftest.pytest_xdist_auto_num_workers(None) is None
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS")
    monkeypatch.delattr(os, "sysconf", raising=False)
    assert conftest.pytest_xdist_auto_num_workers(None) is None
