"""An autouse fixture for the test modules that stop training midway: import it there.

train.py ends its loaders' workers on every exit (train.shut_down_workers); the loaders a test
builds and stops itself stay in a reference cycle of the exception's traceback, and their
persistent workers alive until the garbage collector reaches them, in whichever later test that
happens. A loader shut down by the collector waits
MP_STATUS_CHECK_INTERVAL (5 s) for each of its workers, which never exit: the weakref finalizer
of the loader's index queue, in the same cycle, stops the queue's feeder thread before the
loader's own finalizer sends its workers the message to end (4 workers: 20 s). The same two
loaders shut down by a direct call took 0.04 s, by gc.collect() 10.3 s.
"""

import gc
import multiprocessing

import pytest
import torch


@pytest.fixture(autouse=True)
def leftover_workers_end_at_once():
    """After the test, where DataLoader workers are still alive: collect their loaders with a
    0.2 s wait for each worker before it is terminated."""
    yield
    if not multiprocessing.active_children():  # the usual case, at no cost
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
        gc.collect()
