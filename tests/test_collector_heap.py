"""The collector's garbage collector settings (collector/service.py): what a flush leaves is frozen, and the
periodic full collection still frees reference cycles among frozen objects."""

from __future__ import annotations

import gc
import weakref

from collector import service


class Node:
    def __init__(self):
        self.other = self


def test_a_cycle_frozen_with_the_heap_is_freed_by_the_full_collection():
    try:
        service._settle_heap()
        cycle = Node()
        watch = weakref.ref(cycle)
        gc.freeze()  # as at the end of a flush
        del cycle
        gc.collect()
        assert watch() is not None  # frozen: out of the ordinary collections' reach
        service._collect_everything()
        assert watch() is None
        assert gc.get_freeze_count() > 0  # and the heap is frozen again
    finally:
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
