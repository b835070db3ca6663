"""Checkpoints that must be refused: pickles (never unpickled), weights that do not fit their
config, configs naming unknown architectures or holding junk. Each is a `CheckpointError`
(a `WsisegError`) naming the file, one line in the CLI, before any worker starts.

tests/models/test_checkpoint.py covers the format itself (`load_checkpoint`,
`load_state_strict`); test_train.py a pickle and an unknown segmenter in `load_model`.
Here: the same and more through `load_model`, `check_model` and the CLI.
"""

from __future__ import annotations

import json
import pickle
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import wsiseg.pipeline.cluster
from tests.segment_helpers import assert_clean_failure, run_cli
from wsiseg.errors import WsisegError
from wsiseg.models.checkpoint import CheckpointError, file_sha256, save_checkpoint
from wsiseg.models.config import packaged_model_config
from wsiseg.models.deformseg import DeformSeg
from wsiseg.models.loading import check_model, checkpoint_config, load_model

TINY = packaged_model_config("tiny")


@pytest.fixture(autouse=True)
def _no_unpickling_no_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any unpickling, or a cluster being started, fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling or a cluster was attempted")

    class Refusing(pickle.Unpickler):  # a class: libraries subclass it at import
        def load(self) -> Any:
            refuse()

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", Refusing)
    monkeypatch.setattr(wsiseg.pipeline.cluster, "open_client", refuse)


class _Evil:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _evil_bytes(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": _Evil(marker)}, protocol=pickle.HIGHEST_PROTOCOL)


def _plausible_json(weights: Path) -> None:
    """A well-formed wsiseg JSON beside ``weights`` (so only the weights can give it away)."""
    doc = {
        "format": "wsiseg-checkpoint",
        "format_version": 1,
        "sha256": file_sha256(weights),
        "config": checkpoint_config(TINY),
    }
    weights.with_suffix(".json").write_text(json.dumps(doc))


def _pickles(folder: Path, marker: Path) -> dict[str, Path]:
    """Pickled checkpoints in every disguise; each would create ``marker`` if unpickled."""
    made: dict[str, Path] = {}
    for suffix in (".pt", ".pth", ".ckpt", ".bin", ".pkl"):
        made[suffix] = folder / f"evil{suffix}"
        made[suffix].write_bytes(_evil_bytes(marker))
    disguised = folder / "disguised.safetensors"
    disguised.write_bytes(_evil_bytes(marker))
    _plausible_json(disguised)
    made["pickle named .safetensors"] = disguised
    bare = folder / "bare"
    bare.write_bytes(_evil_bytes(marker))
    made["pickle without suffix"] = bare
    zipped = folder / "zipped.safetensors"
    torch.save({"w": torch.zeros(2), "evil": _Evil(marker)}, zipped)
    _plausible_json(zipped)
    made["torch.save zip named .safetensors"] = zipped
    good = save_checkpoint(folder / "jsonpickle", DeformSeg(TINY).state_dict(), {})
    good.with_suffix(".json").write_bytes(_evil_bytes(marker))
    made["pickle as the JSON"] = good
    return made


PICKLE_FORMS = [
    ".pt",
    ".pth",
    ".ckpt",
    ".bin",
    ".pkl",
    "pickle named .safetensors",
    "pickle without suffix",
    "torch.save zip named .safetensors",
    "pickle as the JSON",
]


@pytest.mark.parametrize("form", PICKLE_FORMS)
def test_pickles_refused_without_running_code(form: str, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    path = _pickles(tmp_path, marker)[form]
    for load in (check_model, lambda p: load_model(p, device="cpu")):
        with pytest.raises(CheckpointError, match="pickle") as info:
            load(path)
        assert isinstance(info.value, WsisegError) and "\n" not in str(info.value)
        assert path.name in str(info.value) or path.with_suffix(".json").name in str(info.value)
    slide = tmp_path / "slide.tiff"  # never opened: the model is checked first
    out = tmp_path / "out"
    for args in (
        ["segment", str(slide), "-o", str(out), "--model", str(path)],
        ["evaluate", "--model", str(path), "--data", str(tmp_path), "-o", str(out)],
        ["evaluate", "--model", "default", "--baseline", str(path), "--data", str(tmp_path)]
        + ["-o", str(out)],
    ):
        code, stdout, err = run_cli(args, capsys)
        assert code == 1, args
        assert_clean_failure(err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "pickle" in lines[0]
    assert not marker.exists(), "unpickling ran code"
    assert not out.exists(), "nothing is written for a refused model"


def _tiny_weights(**changes: Any) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return DeformSeg(TINY.replace(**changes)).state_dict()


def test_weights_of_another_shape_are_refused(tmp_path: Path, capsys) -> None:
    """Config says saliency width 8 (tiny), the weights were trained with width 16."""
    path = save_checkpoint(
        tmp_path / "m", _tiny_weights(saliency_width=16), checkpoint_config(TINY)
    )
    with pytest.raises(CheckpointError, match="wrong shape") as info:
        load_model(path, device="cpu")
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "saliency" in message
    code, _, err = run_cli(
        ["segment", str(tmp_path / "s.tiff"), "-o", str(tmp_path / "o"), "--model", str(path)],
        capsys,
    )
    assert code == 1 and err.count("\n") == 1 and "wrong shape" in err and str(path) in err
    assert not (tmp_path / "o").exists()


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    weights = DeformSeg(TINY.replace(segmenter="unet-resnet18")).state_dict()
    path = save_checkpoint(tmp_path / "m", weights, checkpoint_config(TINY))
    with pytest.raises(CheckpointError, match="missing.*unexpected") as info:
        check_model(path)
    assert "\n" not in str(info.value)


def test_huge_declared_architecture_is_never_allocated(tmp_path: Path) -> None:
    """A config declaring a 10^6-wide saliency net (~36 TB of weights) beside tiny weights:
    refused from shapes alone, in bounded time and memory."""
    cfg = checkpoint_config(TINY)
    cfg["model"]["saliency_width"] = 10**6
    path = save_checkpoint(tmp_path / "m", _tiny_weights(), cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(path, device="cpu")
    assert time.perf_counter() - t0 < 30
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown_kib < 512 * 1024, f"peak memory grew by {grown_kib / 1024:.0f} MiB"


def _with_model_section(model: Any) -> dict[str, Any]:
    return {**checkpoint_config(TINY), "model": model}


CONFIGS: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "unknown segmenter": (
        lambda: _with_model_section({**TINY.to_dict(), "segmenter": "resnet-9000"}),
        "unknown segmenter 'resnet-9000'; known segmenters: .*unet-tiny",
    ),
    "unknown sampler": (
        lambda: _with_model_section({**TINY.to_dict(), "sampler": "magic"}),
        "unknown sampler 'magic'",
    ),
    "unknown key": (
        lambda: _with_model_section({**TINY.to_dict(), "exec": "rm -rf /"}),
        "unknown model config keys: exec",
    ),
    "classes not a list of classes": (
        lambda: _with_model_section({**TINY.to_dict(), "classes": [1, 2]}),
        "invalid model config",
    ),
    "size not a number": (
        lambda: _with_model_section({**TINY.to_dict(), "region_px": "big"}),
        "invalid model config",
    ),
    "implausible task_mpp": (
        lambda: _with_model_section({**TINY.to_dict(), "task_mpp": 1e6}),
        "task_mpp",
    ),
    "model section not an object": (lambda: _with_model_section("unet"), "no 'model' section"),
    "no model section": (lambda: {"wsiseg_version": "0"}, "no 'model' section"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_configs_are_refused(case: str, tmp_path: Path, capsys) -> None:
    make, pattern = CONFIGS[case]
    path = save_checkpoint(tmp_path / "m", _tiny_weights(), make())
    for load in (check_model, lambda p: load_model(p, device="cpu")):
        with pytest.raises(CheckpointError, match=pattern) as info:
            load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    code, _, err = run_cli(
        ["segment", str(tmp_path / "s.tiff"), "-o", str(tmp_path / "o"), "--model", str(path)],
        capsys,
    )
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and str(path) in err
    assert_clean_failure(err)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("[1, 2, 3]", "not a wsiseg checkpoint config"),
        ('"just a string"', "not a wsiseg checkpoint config"),
        ("\xff\xfe garbage", "not valid JSON"),
        ("[" * 200_000 + "]" * 200_000, "not valid JSON"),
    ],
    ids=["array", "string", "binary", "nested 200k deep"],
)
def test_junk_json_is_refused(text: str, pattern: str, tmp_path: Path, capsys) -> None:
    path = save_checkpoint(tmp_path / "m", _tiny_weights(), checkpoint_config(TINY))
    json_path = tmp_path / "m.json"
    json_path.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with pytest.raises(CheckpointError, match=pattern) as info:
        check_model(path)
    assert "\n" not in str(info.value)
    code, _, err = run_cli(
        ["segment", str(tmp_path / "s.tiff"), "-o", str(tmp_path / "o"), "--model", str(path)],
        capsys,
    )
    assert code == 1 and err.count("\n") == 1
    assert_clean_failure(err)


def test_oversized_json_is_refused_unread(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m", _tiny_weights(), checkpoint_config(TINY))
    with open(tmp_path / "m.json", "r+b") as fh:
        fh.truncate(64 << 20)  # sparse: 64 MiB of zeros, no disk used
    with pytest.raises(CheckpointError, match="too large"):
        check_model(path)


def test_good_tiny_checkpoint_passes(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m", _tiny_weights(), checkpoint_config(TINY))
    assert check_model(path) == path
    assert load_model(path, device="cpu").config == TINY
