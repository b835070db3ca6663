"""Samplers as objects: the registry, dispatch by config name, budgets and phase timings."""

from __future__ import annotations

import pytest
import torch

from wsiseg.errors import InputError
from wsiseg.models.config import ModelConfig, packaged_model_config
from wsiseg.models.deformseg import DeformSeg, MemorySource
from wsiseg.models.samplers import (
    LearnedSampler,
    TiledSampler,
    UniformSampler,
    get_sampler,
    register_sampler,
    sampler_names,
)

TINY = packaged_model_config("tiny")


def test_known_names_map_to_their_classes() -> None:
    assert sampler_names() == ("learned", "uniform", "tiled")
    assert isinstance(get_sampler("learned"), LearnedSampler)
    assert isinstance(get_sampler("uniform"), UniformSampler)
    assert isinstance(get_sampler("tiled"), TiledSampler)


@pytest.mark.parametrize("name", ["magic", "Learned", "", None])
def test_unknown_name_lists_the_known_ones(name: object) -> None:
    with pytest.raises(InputError) as err:
        get_sampler(name)  # type: ignore[arg-type]
    assert str(err.value) == f"unknown sampler {name!r} (known: learned, uniform, tiled)"


def test_unknown_name_in_a_config_is_refused() -> None:
    with pytest.raises(InputError, match=r"unknown sampler 'magic' \(known: learned, uniform"):
        ModelConfig(sampler="magic")
    with pytest.raises(InputError, match="unknown sampler 'magic'"):
        ModelConfig.from_dict({"sampler": "magic"})


def test_a_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_sampler(UniformSampler())
    assert sampler_names() == ("learned", "uniform", "tiled")


@pytest.mark.parametrize("sampler", ["learned", "uniform", "tiled"])
def test_model_dispatches_to_the_named_sampler(sampler: str) -> None:
    cfg = TINY.replace(sampler=sampler)
    model = DeformSeg(cfg)
    assert model.sampler is get_sampler(sampler)
    assert (model.saliency is not None) == (sampler == "learned")
    expected = 1.0 if sampler == "tiled" else (cfg.sample_px / cfg.region_px) ** 2
    assert cfg.budget == expected


def test_tiled_model_has_no_sample_forward() -> None:
    model = DeformSeg(TINY.replace(sampler="tiled"))
    with pytest.raises(RuntimeError, match="segments windows"):
        model(MemorySource(torch.rand(1, 3, 256, 256)))


@pytest.mark.parametrize(
    ("sampler", "phases"),
    [
        ("learned", {"saliency", "sampling", "segmenter", "backprojection"}),
        ("uniform", {"saliency", "sampling", "segmenter", "backprojection"}),
        ("tiled", {"segmenter"}),
    ],
)
def test_timings_are_recorded_and_change_nothing(sampler: str, phases: set[str]) -> None:
    torch.manual_seed(0)
    model = DeformSeg(TINY.replace(sampler=sampler)).eval()
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    plain, fwd_plain = model.predict(MemorySource(x), (100, 100))
    timings: dict[str, float] = {}
    timed, fwd_timed = model.predict(MemorySource(x), (100, 100), timings=timings)
    assert set(timings) == phases
    assert all(v >= 0 for v in timings.values())
    assert plain.shape == (2, TINY.num_classes, 100, 100)
    torch.testing.assert_close(timed, plain, rtol=0, atol=0)
    assert (fwd_plain is None) == (fwd_timed is None) == (sampler == "tiled")
    if fwd_plain is not None and fwd_timed is not None:
        torch.testing.assert_close(fwd_timed.logits, fwd_plain.logits, rtol=0, atol=0)
        assert (fwd_timed.density is not None) == (sampler == "learned")
