"""Merkle tree hashing as in RFC 6962 / RFC 9162: tree heads, inclusion and consistency proofs.

A leaf hashes as ``SHA-256(0x00 || data)`` and an inner node as ``SHA-256(0x01 || left || right)``;
the two prefixes keep a leaf from ever passing for a node. A tree of ``n`` leaves splits at the
largest power of two below ``n``, so the first ``m`` leaves of a bigger tree are always the
same sub-trees: that is what makes consistency proofs (the old tree is a prefix of the new
one) short.

`MerkleTree` keeps every complete, aligned sub-tree hash (about 64 bytes per leaf), so roots
of any earlier size and both kinds of proof cost O(log² n) hashes, never a pass over the log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


class MerkleTree:
    """An append-only tree of leaf hashes."""

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        # _levels[k] holds the hashes of the complete sub-trees of 2**k leaves, left to right.
        self._levels: list[bytearray] = [bytearray()]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return len(self._levels[0]) // HASH_BYTES

    def append(self, leaf: bytes) -> None:
        """Add the hash of one leaf (see `leaf_hash`)."""
        if len(leaf) != HASH_BYTES:
            raise ValueError(f"a leaf hash has {HASH_BYTES} bytes, not {len(leaf)}")
        self._levels[0] += leaf
        index, level = self.size - 1, 0
        while index & 1:
            if level + 1 == len(self._levels):
                self._levels.append(bytearray())
            self._levels[level + 1] += node_hash(self._hash_at(level, index - 1), self._hash_at(level, index))
            index >>= 1
            level += 1

    def leaf(self, index: int) -> bytes:
        self._check_index(index, self.size)
        return self._hash_at(0, index)

    def root(self, size: int | None = None) -> bytes:
        """The tree head of the first `size` leaves (all of them by default)."""
        size = self.size if size is None else size
        self._check_size(size)
        return self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf `index` in the tree of the first `size` leaves (RFC 9162 2.1.3.1)."""
        size = self.size if size is None else size
        self._check_size(size)
        self._check_index(index, size)
        return self._path(index, 0, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Proof that the first `old_size` leaves are a prefix of the first `new_size` (RFC 9162 2.1.4.1)."""
        new_size = self.size if new_size is None else new_size
        self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old size {old_size} must be between 0 and the new size {new_size}")
        if old_size in (0, new_size):
            return []
        return self._subproof(old_size, 0, new_size, True)

    def _path(self, index: int, low: int, high: int) -> list[bytes]:
        if high - low == 1:
            return []
        split = _split(high - low)
        if index < split:
            return [*self._path(index, low, low + split), self._subtree(low + split, high)]
        return [*self._path(index - split, low + split, high), self._subtree(low, low + split)]

    def _subproof(self, old_size: int, low: int, high: int, complete: bool) -> list[bytes]:
        if old_size == high - low:
            return [] if complete else [self._subtree(low, high)]
        split = _split(high - low)
        if old_size <= split:
            return [*self._subproof(old_size, low, low + split, complete), self._subtree(low + split, high)]
        return [
            *self._subproof(old_size - split, low + split, high, False),
            self._subtree(low, low + split),
        ]

    def _subtree(self, low: int, high: int) -> bytes:
        count = high - low
        if count == 0:
            return EMPTY_ROOT
        if count & (count - 1) == 0 and low % count == 0:
            level = count.bit_length() - 1
            return self._hash_at(level, low >> level)
        split = _split(count)
        return node_hash(self._subtree(low, low + split), self._subtree(low + split, high))

    def _hash_at(self, level: int, index: int) -> bytes:
        start = index * HASH_BYTES
        return bytes(self._levels[level][start : start + HASH_BYTES])

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"the tree has {self.size} leaves, not {size}")

    @staticmethod
    def _check_index(index: int, size: int) -> None:
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of {size} leaves")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether `proof` shows that `leaf` is leaf `index` of the tree of `size` leaves with head `root`."""
    if not 0 <= index < size:
        return False
    node, last = index, size - 1
    computed = leaf
    for sibling in proof:
        if last == 0 or len(sibling) != HASH_BYTES:
            return False
        if node & 1 or node == last:
            computed = node_hash(sibling, computed)
            if not node & 1:
                while not node & 1 and node != 0:
                    node >>= 1
                    last >>= 1
        else:
            computed = node_hash(computed, sibling)
        node >>= 1
        last >>= 1
    return last == 0 and computed == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether `proof` shows the tree (`old_size`, `old_root`) is a prefix of (`new_size`, `new_root`)."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if old_size == new_size:
        return not proof and old_root == new_root
    if not proof or any(len(step) != HASH_BYTES for step in proof):
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    node, last = old_size - 1, new_size - 1
    while node & 1:
        node >>= 1
        last >>= 1
    old_computed = new_computed = path[0]
    for step in path[1:]:
        if last == 0:
            return False
        if node & 1 or node == last:
            old_computed = node_hash(step, old_computed)
            new_computed = node_hash(step, new_computed)
            if not node & 1:
                while not node & 1 and node != 0:
                    node >>= 1
                    last >>= 1
        else:
            new_computed = node_hash(new_computed, step)
        node >>= 1
        last >>= 1
    return last == 0 and old_computed == old_root and new_computed == new_root


def _split(count: int) -> int:
    """The largest power of two strictly below `count` (count >= 2)."""
    return 1 << ((count - 1).bit_length() - 1)
