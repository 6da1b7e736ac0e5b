"""The image pass: it refuses to run on a device the model is not on."""
import copy

import pytest

from evaluate.embed import embed_encoded
from tests.evaluate.conftest import pair_set


def test_embed_refuses_a_device_the_model_is_not_on(tiny_model):
    # a model on the meta device stands in for one on a GPU: the pass, asked to run on the CPU, refuses
    on_meta = copy.deepcopy(tiny_model).to("meta")
    with pytest.raises(ValueError, match="move the model"):
        embed_encoded(on_meta, pair_set(1)[0], device="cpu")
