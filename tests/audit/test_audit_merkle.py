"""RFC 6962 Merkle proofs: every inclusion and consistency proof verifies for trees up to 64 leaves,
and any change to the proof, the leaf, the sizes or the roots makes it fail."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jurisfed.audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

MAX_LEAVES = 64


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written as literally as possible."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


def leaves_of(count: int) -> list[bytes]:
    return [leaf_hash(f"event {i}".encode()) for i in range(count)]


def flip(value: bytes, bit: int) -> bytes:
    mutable = bytearray(value)
    mutable[bit // 8 % len(mutable)] ^= 1 << (bit % 8)
    return bytes(mutable)


def test_leaf_and_node_hashes_use_the_rfc_6962_prefixes() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    assert MerkleTree().root() == EMPTY_ROOT


def test_known_answer_from_certificate_transparency() -> None:
    # The 8-leaf test tree of the RFC 6962 reference implementation (leaves are raw byte strings).
    inputs = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
    tree = MerkleTree([leaf_hash(bytes.fromhex(i)) for i in inputs])
    assert tree.root(1).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert tree.root(8).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


@given(st.integers(min_value=0, max_value=MAX_LEAVES))
def test_every_earlier_root_matches_the_rfc_definition(count: int) -> None:
    leaves = leaves_of(count)
    tree = MerkleTree(leaves)
    for size in range(count + 1):
        assert tree.root(size) == reference_root(leaves[:size])


@settings(max_examples=200)
@given(st.data())
def test_inclusion_proofs_verify_and_fail_when_tampered(data: st.DataObject) -> None:
    size = data.draw(st.integers(min_value=1, max_value=MAX_LEAVES), label="size")
    index = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
    tree = MerkleTree(leaves_of(MAX_LEAVES))
    leaf, root = tree.leaf(index), tree.root(size)
    proof = tree.inclusion_proof(index, size)

    assert verify_inclusion(leaf, index, size, proof, root)

    assert not verify_inclusion(flip(leaf, data.draw(st.integers(0, 255))), index, size, proof, root)
    assert not verify_inclusion(leaf, index, size, proof, flip(root, data.draw(st.integers(0, 255))))
    if proof:
        step = data.draw(st.integers(0, len(proof) - 1), label="step")
        bent = [*proof[:step], flip(proof[step], data.draw(st.integers(0, 255))), *proof[step + 1 :]]
        assert not verify_inclusion(leaf, index, size, bent, root)
        assert not verify_inclusion(leaf, index, size, proof[:-1], root)
    assert not verify_inclusion(leaf, index, size, [*proof, tree.leaf(0)], root)
    other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index) if size > 1 else st.none())
    if other is not None:
        assert not verify_inclusion(leaf, other, size, proof, root)
    if size < MAX_LEAVES:  # a proof for one tree head says nothing about the next one
        assert not verify_inclusion(leaf, index, size + 1, proof, tree.root(size + 1))


@settings(max_examples=200)
@given(st.data())
def test_consistency_proofs_verify_and_fail_when_tampered(data: st.DataObject) -> None:
    new_size = data.draw(st.integers(min_value=1, max_value=MAX_LEAVES), label="new_size")
    old_size = data.draw(st.integers(min_value=1, max_value=new_size), label="old_size")
    tree = MerkleTree(leaves_of(MAX_LEAVES))
    old_root, new_root = tree.root(old_size), tree.root(new_size)
    proof = tree.consistency_proof(old_size, new_size)

    assert verify_consistency(old_size, new_size, old_root, new_root, proof)

    bit = data.draw(st.integers(0, 255), label="bit")
    assert not verify_consistency(old_size, new_size, flip(old_root, bit), new_root, proof)
    assert not verify_consistency(old_size, new_size, old_root, flip(new_root, bit), proof)
    if proof:
        step = data.draw(st.integers(0, len(proof) - 1), label="step")
        bent = [*proof[:step], flip(proof[step], bit), *proof[step + 1 :]]
        assert not verify_consistency(old_size, new_size, old_root, new_root, bent)
        assert not verify_consistency(old_size, new_size, old_root, new_root, proof[:-1])
    if old_size < new_size < MAX_LEAVES:
        assert not verify_consistency(old_size, new_size + 1, old_root, tree.root(new_size + 1), proof)


@settings(max_examples=100)
@given(st.data())
def test_a_forked_tree_cannot_prove_consistency_with_the_original(data: st.DataObject) -> None:
    new_size = data.draw(st.integers(min_value=2, max_value=MAX_LEAVES), label="new_size")
    old_size = data.draw(st.integers(min_value=1, max_value=new_size - 1), label="old_size")
    changed = data.draw(st.integers(min_value=0, max_value=old_size - 1), label="changed")
    original = MerkleTree(leaves_of(new_size))
    leaves = leaves_of(new_size)
    leaves[changed] = leaf_hash(b"rewritten")
    fork = MerkleTree(leaves)

    proof = fork.consistency_proof(old_size, new_size)

    assert not verify_consistency(old_size, new_size, original.root(old_size), fork.root(new_size), proof)


def test_trivial_and_invalid_requests() -> None:
    tree = MerkleTree(leaves_of(5))
    assert tree.consistency_proof(0, 5) == []
    assert tree.consistency_proof(5, 5) == []
    assert verify_consistency(0, 5, EMPTY_ROOT, tree.root(), [])
    assert verify_consistency(5, 5, tree.root(), tree.root(), [])
    assert not verify_consistency(5, 5, tree.root(), tree.root(4), [])
    assert not verify_consistency(6, 5, tree.root(), tree.root(), [])
    assert not verify_inclusion(tree.leaf(0), 5, 5, [], tree.root())
    with pytest.raises(ValueError, match="not in a tree"):
        tree.inclusion_proof(5)
    with pytest.raises(ValueError, match="has 5 leaves"):
        tree.root(6)
    with pytest.raises(ValueError, match="32 bytes"):
        tree.append(b"short")


def test_every_proof_of_every_tree_up_to_64_leaves_verifies() -> None:
    tree = MerkleTree(leaves_of(MAX_LEAVES))
    for size in range(1, MAX_LEAVES + 1):
        root = tree.root(size)
        for index in range(size):
            assert verify_inclusion(tree.leaf(index), index, size, tree.inclusion_proof(index, size), root)
        for old in range(size + 1):
            proof = tree.consistency_proof(old, size)
            assert verify_consistency(old, size, tree.root(old), root, proof)
