"""Who is who in a test set (evaluate/set_identities.py): a pair set's identities are its same-identity
pairs joined transitively, a set of people's are its labels; the same bytes twice are one image."""
import numpy as np
import pytest

from evaluate import set_identities


def _groups(ids):
    return [ids.images[a:b].tolist() for a, b in zip(ids.starts[:-1], ids.starts[1:])]


def test_pairs_join_identities_and_a_repeated_image_counts_once():
    #           0     1     2     3     4     5     6     7
    images = [b"A", b"B", b"A", b"C", b"D", b"E", b"C", b"F"]
    ids = set_identities.from_pairs(images, [True, False, True, True])  # A-B same, A-C not, D-E same, C-F same
    assert _groups(ids) == [[0, 1], [3, 7], [4, 5]]  # positions 2 and 6 repeat 0 and 3
    assert ids.names == ("0", "3", "4") and ids.sizes.tolist() == [2, 2, 2] and len(ids) == 3


def test_same_pairs_join_transitively_and_a_lone_image_is_an_identity():
    ids = set_identities.from_pairs([b"A", b"B", b"B", b"C", b"D", b"A"], [True, True, False])
    assert _groups(ids) == [[0, 1, 3], [4]] and ids.names == ("0", "4")


def test_people_are_their_labels_and_a_duplicate_photo_counts_once():
    images = [b"x", b"y", b"x", b"x", b"z"]
    labels = np.array([1, 1, 1, 0, 0])
    names = ("bob", "bob", "bob", "alice", "alice")
    ids = set_identities.from_labels(images, labels, names)
    assert _groups(ids) == [[0, 1], [3, 4]] and ids.names == ("bob", "alice")  # in order of first image


def test_mismatched_lengths_refused():
    with pytest.raises(ValueError, match="expected 2 images for 1 pairs, found 4"):
        set_identities.from_pairs([b"a"] * 4, [True])
    with pytest.raises(ValueError, match="2 images with 1 labels"):
        set_identities.from_labels([b"a", b"b"], np.array([0]), ("a", "b"))
