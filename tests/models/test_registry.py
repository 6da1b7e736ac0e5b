"""The backbone registry: names, unknown and duplicate names, embedding size."""
import pytest
from torch import nn

import models
from models import registry


def test_names_lists_every_architecture_family():
    assert set(models.names()) >= {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet",
                                   "ir18", "ir50", "ir101", "mobilefacenet_s", "iresnet_s"}
    assert models.names() == sorted(models.names())


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(models.UnknownModelError) as info:
        models.build("resnet9000")
    assert "resnet9000" in str(info.value)
    for name in models.names():
        assert name in str(info.value)


def test_duplicate_name_raises_and_keeps_the_first(monkeypatch):
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))
    first = registry._BUILDERS["iresnet18"]
    with pytest.raises(ValueError, match="iresnet18.*already registered"):
        @models.register("iresnet18")
        def again(embedding_size: int) -> nn.Module:
            return nn.Identity()
    assert registry._BUILDERS["iresnet18"] is first


def test_register_then_build_a_new_name(monkeypatch):
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))

    @models.register("tiny_test_net")
    def tiny(embedding_size: int) -> nn.Module:
        return nn.Linear(3, embedding_size)

    assert "tiny_test_net" in models.names()
    assert models.build("tiny_test_net", 7).out_features == 7


@pytest.mark.parametrize("size", [0, -1, 2.5, True, "512"])
def test_bad_embedding_size_is_rejected(size):
    with pytest.raises(ValueError, match="embedding_size"):
        models.build("mobilefacenet_s", size)


def test_bad_name_to_register_is_rejected():
    with pytest.raises(ValueError, match="name"):
        models.register("Has Space")
