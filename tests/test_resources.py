"""Packaged defaults: one lookup by name, and `configs/` kept identical to the packaged configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsiseg.errors import InputError
from wsiseg.models.checkpoint import CheckpointError
from wsiseg.models.config import load_config_file
from wsiseg.models.loading import resolve_model_path
from wsiseg.resources import KINDS, packaged, packaged_names, resolve

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "configs"
PACKAGED = REPO / "wsiseg" / "resources" / "configs"

#: Files only the repository has, and why they are not packaged.
REPO_ONLY = {
    "clusters/localhost-ci.yaml": "the test SLURM of tests/cluster/start_slurm.sh, not a site",
}


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_examples_and_packaged_configs_are_identical() -> None:
    examples, shipped = _files(EXAMPLES), _files(PACKAGED)
    assert shipped, "no packaged configs found"
    assert set(REPO_ONLY) <= examples, "a REPO_ONLY entry names no file"
    assert examples - set(REPO_ONLY) == shipped, "configs/ and wsiseg/resources/configs/ differ"
    differ = [
        f for f in sorted(shipped) if (EXAMPLES / f).read_bytes() != (PACKAGED / f).read_bytes()
    ]
    assert not differ, f"edit both copies: {differ}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_packaged_name_resolves(kind: str) -> None:
    names = packaged_names(kind)
    assert names
    for name in names:
        assert packaged(kind, name).is_file()
        assert resolve(kind, name) == packaged(kind, name)


def test_known_packaged_names() -> None:
    assert {"default", "tiny"} <= set(packaged_names("models"))
    assert {"slurm-cpu", "slurm-gpu"} <= set(packaged_names("clusters"))
    assert "default" in packaged_names("checkpoints")
    for name in packaged_names("checkpoints"):  # every bundled model is a --model NAME
        assert resolve_model_path(name) == packaged("checkpoints", name)


def test_model_names_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"^glass: not a checkpoint file or a bundled model \(bundled: default",
    ):
        resolve_model_path("glass")
    assert resolve_model_path("runs/best.safetensors") == Path("runs/best.safetensors")
    (tmp_path / "mine").write_text("")  # a file of that name: a path, not a name
    assert resolve_model_path("mine") == Path("mine")


@pytest.mark.parametrize("name", ["nope", "", "../models/tiny", "tiny.yaml"])
def test_unknown_name_lists_the_known_ones(name: str) -> None:
    known = ", ".join(packaged_names("models"))
    with pytest.raises(InputError) as err:
        packaged("models", name)
    assert str(err.value) == f"no packaged model config {name!r} (packaged: {known})"


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="known: models, clusters, checkpoints"):
        packaged_names("weights")


def test_a_file_wins_over_a_packaged_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_text("model: {sampler: uniform}\n")
    assert resolve("models", "tiny") == Path("tiny")
    assert load_config_file("tiny") == {"model": {"sampler": "uniform"}}
    assert load_config_file("default")["model"]["sampler"] == "learned"


def test_neither_a_file_nor_a_packaged_name(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(InputError, match=r"no such file or packaged model config: .*missing.yaml"):
        load_config_file(missing)
    with pytest.raises(InputError, match=r"\(packaged: .*default.*tiny"):
        load_config_file("nope")


def test_glas_config_is_the_bundled_glas_models_recipe() -> None:
    """`--config glas` trains what `--model glas` is (all but its seed and thread count):
    the model's settings and the training rule recorded in its checkpoint."""
    import json

    from wsiseg.models.config import ModelConfig
    from wsiseg.train.loop import TrainConfig

    recorded = json.loads((REPO / "wsiseg/resources/models/glas.json").read_text())["config"]
    raw = load_config_file("glas")
    model = ModelConfig.from_dict(raw["model"]).to_dict()
    bundled = ModelConfig.from_dict(recorded["model"]).to_dict()
    assert {k: v for k, v in model.items() if k != "classes"} == {
        k: v for k, v in bundled.items() if k != "classes"
    }
    ignore = {"seed", "threads"}
    train = TrainConfig.from_dict(raw["train"]).__dict__
    assert {k: v for k, v in train.items() if k not in ignore} == {
        k: v for k, v in recorded["train_cfg"].items() if k not in ignore
    }
