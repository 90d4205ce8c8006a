"""The fast backend's memory pool (skscratch/fast/memory.py): large arrays reuse the blocks of
arrays that are gone, and never the block of one that is alive (through any view of it)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from skscratch import fast, tuning
from skscratch.fast import memory

SHAPE = (4, 64, 32, 32)  # 1 MiB of float32: pooled


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@pytest.fixture(autouse=True)
def empty_pool(monkeypatch):
    # Other tests run the command line in this process, which tunes the allocator; the pool
    # serves only processes whose allocator does not keep freed memory.
    monkeypatch.setattr(tuning, "_freed_memory_kept", False)
    gc.collect()  # arrays earlier tests left to the collector return their blocks now, not later
    memory.release()
    yield
    memory.release()


def test_an_array_is_an_ordinary_writeable_contiguous_array():
    a = memory.empty(SHAPE, np.float32)
    assert a.shape == SHAPE and a.dtype == np.float32
    assert a.flags.c_contiguous and a.flags.writeable
    small = memory.empty((3, 4), np.float64)
    assert small.shape == (3, 4) and small.dtype == np.float64


def test_a_released_block_is_reused_and_a_live_one_never():
    a = memory.empty(SHAPE, np.float32)
    a[...] = 1.0
    b = memory.empty(SHAPE, np.float32)  # a is alive: b gets other memory
    b[...] = 2.0
    assert _address(a) != _address(b)
    assert np.all(a == 1.0)
    where = _address(a)
    del a
    gc.collect()
    assert memory.kept_bytes() >= np.prod(SHAPE) * 4
    c = memory.empty(SHAPE, np.float32)
    assert _address(c) == where  # the freed block, not new memory
    assert np.all(b == 2.0)


def test_a_view_keeps_its_block_from_being_reused():
    a = memory.empty(SHAPE, np.float32)
    a[...] = 3.0
    view = a[1:].reshape(-1)
    where = _address(a)
    del a
    gc.collect()
    b = memory.empty(SHAPE, np.float32)
    assert _address(b) != where
    b[...] = 0.0
    assert np.all(view == 3.0)


def test_at_most_keep_bytes_are_kept_and_release_hands_them_back(monkeypatch):
    block = int(np.prod(SHAPE)) * 4
    monkeypatch.setattr(memory, "KEEP_BYTES", 2 * block)
    arrays = [memory.empty(SHAPE, np.float32) for _ in range(4)]
    del arrays
    gc.collect()
    assert memory.kept_bytes() == 2 * block
    memory.release()
    assert memory.kept_bytes() == 0


def test_outputs_of_repeated_fast_calls_stay_independent():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    w = rng.standard_normal((64, 2, 3, 3), dtype=np.float32)
    first, _ = fast.conv2d_forward(x, w, padding=1, groups=32)
    kept = first.copy()
    for _ in range(3):  # freed outputs and scratch are reused; `first` is never written
        out, cache = fast.conv2d_forward(x, 2 * w, padding=1, groups=32)
        fast.conv2d_backward(out, cache)
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_allclose(out, 2 * first, rtol=1e-5, atol=1e-5)


def test_the_pool_steps_aside_where_the_allocator_keeps_freed_memory(monkeypatch):
    monkeypatch.setattr(tuning, "_freed_memory_kept", True)
    a = memory.empty(SHAPE, np.float32)
    assert a.base is None  # a plain np.empty array, owning its memory
    del a
    gc.collect()
    assert memory.kept_bytes() == 0
