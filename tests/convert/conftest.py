"""Tiny synthetic datasets shared by the convert tests (generated once per session)."""
import pytest

from convert.synthetic import write_synthetic
from tests.convert.datasets import IDENTITIES, PER_IDENTITY


@pytest.fixture(scope="session")
def synth_rec(tmp_path_factory):
    """An insightface-layout .rec folder: 12 identities x 5 images, identity-sorted."""
    out = tmp_path_factory.mktemp("synth_rec")
    write_synthetic(out, IDENTITIES, PER_IDENTITY, seed=3, fmt="rec", workers=1)
    return str(out)


@pytest.fixture(scope="session")
def synth_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_folder")
    write_synthetic(out, IDENTITIES, PER_IDENTITY, seed=3, fmt="folder", workers=1)
    return str(out)
