"""RFC 6962 (Certificate Transparency) Merkle tree hash over a list of leaves.

Using CT's exact construction — leaf = SHA-256(0x00 || data), node =
SHA-256(0x01 || left || right), split at the largest power of two below n —
means any CT tooling can check our roots, and the prefixes stop a leaf from
being passed off as an inner node (second-preimage attack).
"""
import hashlib

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + bytes(data)).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_leaf_hashes(hashes):
    """Merkle tree hash of already leaf-hashed items, bottom-up without recursion.

    Pairing neighbours level by level and promoting an odd last node unchanged
    gives exactly RFC 6962's largest-power-of-two split (the left subtree is
    always complete), in O(n) time and without deep recursion for large trees.
    """
    level = list(hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def root(leaves):
    """Merkle tree hash (MTH) of raw leaf data, RFC 6962 §2.1."""
    return root_from_leaf_hashes(leaf_hash(leaf) for leaf in leaves)
