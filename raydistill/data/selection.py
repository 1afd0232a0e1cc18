"""Choosing at most N training images per class, the same way on every run and in any read order."""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from typing import Iterable, Iterator

import numpy as np


def _rank(seed: int, image_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest(), "big")


def class_counts(index: Iterable[tuple[np.ndarray, np.ndarray]]) -> Counter:
    """Images per label over an index stream of (ids, labels) chunks."""
    counts: Counter = Counter()
    for _, labels in index:
        counts.update(np.asarray(labels).tolist())
    return counts


def select_per_class(index: Iterator[tuple[np.ndarray, np.ndarray]], limit: int, seed: int) -> tuple[frozenset, Counter]:
    """Keeps the `limit` ids of each class with the smallest seeded hash: a uniform random choice that does not
    depend on shard order, computed in one streaming pass holding at most `limit` ids per class.

    Returns:
        The kept ids, and how many were kept per label.
    """
    heaps: dict[int, list[tuple[int, str]]] = {}
    for ids, labels in index:
        for image_id, label in zip(ids, np.asarray(labels).tolist()):
            heap = heaps.setdefault(label, [])
            item = (-_rank(seed, str(image_id)), str(image_id))
            if len(heap) < limit:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
    kept = frozenset(image_id for heap in heaps.values() for _, image_id in heap)
    return kept, Counter({label: len(heap) for label, heap in heaps.items()})
