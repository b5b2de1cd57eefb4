"""RFC 6962 Merkle tree hash: Certificate Transparency's published roots and an
independent recursive implementation written straight from the RFC's definition."""
import hashlib

from hypothesis import given
from hypothesis import strategies as st

from host_tools.settlement import merkle

# The reference leaves and tree heads used by Certificate Transparency's test suites
# (google/certificate-transparency, trillian): leaves, then the root of each prefix.
CT_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
             "606162636465666768696a6b6c6d6e6f"]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_roots_match_certificate_transparency():
    leaves = [bytes.fromhex(leaf) for leaf in CT_LEAVES]
    for size, expected in enumerate(CT_ROOTS):
        assert merkle.root(leaves[:size]).hex() == expected, size


def test_leaf_and_node_prefixes():
    assert merkle.leaf_hash(b"").hex() == CT_ROOTS[1]
    assert merkle.leaf_hash(b"\x00").hex() == (
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7")
    left, right = merkle.leaf_hash(b""), merkle.leaf_hash(b"\x00")
    assert merkle.node_hash(left, right).hex() == CT_ROOTS[2]


def _rfc_mth(leaves):
    """RFC 6962 §2.1 literally: split at the largest power of two smaller than n."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _rfc_mth(leaves[:k]) + _rfc_mth(leaves[k:])).digest()


@given(st.lists(st.binary(max_size=40), max_size=70))
def test_matches_the_recursive_definition(leaves):
    assert merkle.root(leaves) == _rfc_mth(leaves)


def test_any_change_changes_the_root():
    leaves = [bytes([i]) for i in range(13)]
    root = merkle.root(leaves)
    assert merkle.root(leaves[:-1]) != root
    assert merkle.root(leaves[:5] + [b"x"] + leaves[6:]) != root
    assert merkle.root(leaves[1:] + leaves[:1]) != root
