"""Checkpoints: safetensors + JSON round trips, refusal of pickles, checksums, strict loading."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

import wsiseg
from wsiseg.errors import WsisegError
from wsiseg.models import checkpoint as ckpt
from wsiseg.models.checkpoint import (
    CheckpointError,
    file_sha256,
    load_checkpoint,
    load_state_strict,
    read_checkpoint_metadata,
    save_checkpoint,
)
from wsiseg.models.saliency import SaliencyNet
from wsiseg.models.segmenters import build_segmenter

CONFIG = {"architecture": "unet-tiny", "num_classes": 3, "task_mpp": 0.5, "classes": ["a", "b"]}


class _Pair(nn.Module):
    def __init__(self, segmenter: str = "unet-tiny", **kwargs: object) -> None:
        super().__init__()
        self.saliency = SaliencyNet(width=8)
        self.segmenter = build_segmenter(segmenter, 3, 3, **kwargs)


def _trained_pair(seed: int = 0) -> _Pair:
    torch.manual_seed(seed)
    model = _Pair()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.train()
    model.segmenter(torch.randn(2, 3, 16, 16))  # move BatchNorm running stats
    return model.eval()


@pytest.fixture(autouse=True)
def _never_unpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_round_trip_float32_is_bit_exact(tmp_path: Path) -> None:
    model = _trained_pair()
    state = model.state_dict()
    out = save_checkpoint(tmp_path / "model", state, CONFIG)
    assert out == tmp_path / "model.safetensors" and out.is_file()
    assert (tmp_path / "model.json").is_file()
    loaded, config = load_checkpoint(out)
    assert config == CONFIG
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key
    fresh = _Pair().eval()
    load_state_strict(fresh, loaded)
    x = torch.randn(1, 3, 20, 28)
    with torch.no_grad():
        assert torch.equal(fresh.segmenter(x), model.segmenter(x))
        assert torch.equal(fresh.saliency(x, (8, 8)), model.saliency(x, (8, 8)))
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "model.json"}


def test_round_trip_half(tmp_path: Path) -> None:
    model = _trained_pair()
    state = model.state_dict()
    full = save_checkpoint(tmp_path / "full", state, CONFIG)
    half = save_checkpoint(tmp_path / "half.safetensors", state, CONFIG, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, config = load_checkpoint(half)
    assert config == CONFIG
    for key, value in state.items():
        if value.is_floating_point():
            assert loaded[key].dtype == torch.float32, key
            torch.testing.assert_close(loaded[key], value, rtol=1e-3, atol=1e-4)
            assert torch.equal(loaded[key], value.half().float()), key
        else:
            assert torch.equal(loaded[key], value), key  # num_batches_tracked stays int64
    assert read_checkpoint_metadata(half).half is True


def test_files_get_normal_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    path = save_checkpoint(tmp_path / "m", {"w": torch.ones(2)}, CONFIG)
    for p in (path, tmp_path / "m.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_json_fields_and_config_untouched(tmp_path: Path) -> None:
    config = {"architecture": "no-such-architecture", "nested": {"x": [1, 2.5, None]}}
    path = save_checkpoint(tmp_path / "m", {"w": torch.ones(2)}, config)
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["format"] == "wsiseg-checkpoint"
    assert doc["format_version"] == 1
    assert doc["wsiseg_version"] == wsiseg.__version__
    assert doc["sha256"] == file_sha256(path)
    assert doc["half"] is False
    assert doc["config"] == config
    # The architecture is not checked here (that is the model builder's job).
    assert load_checkpoint(path)[1] == config
    meta = read_checkpoint_metadata(tmp_path / "m")
    assert meta.sha256 == file_sha256(path) and meta.config == config


@pytest.mark.parametrize("form", ["safetensors", "json", "stem", "str"])
@pytest.mark.parametrize("saved_as", ["model.v1", "model.v1.safetensors", "model.v1.json"])
def test_accepted_path_forms(tmp_path: Path, form: str, saved_as: str) -> None:
    save_checkpoint(tmp_path / saved_as, {"w": torch.arange(3.0)}, CONFIG)
    assert {p.name for p in tmp_path.iterdir()} == {"model.v1.safetensors", "model.v1.json"}
    forms: dict[str, str | Path] = {
        "safetensors": tmp_path / "model.v1.safetensors",
        "json": tmp_path / "model.v1.json",
        "stem": tmp_path / "model.v1",
        "str": str(tmp_path / "model.v1"),
    }
    state, config = load_checkpoint(forms[form])
    assert torch.equal(state["w"], torch.arange(3.0)) and config == CONFIG


def _evil_pickle(marker: Path) -> bytes:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    return pickle.dumps({"state_dict": Evil()}, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.parametrize("name", ["evil.pkl", "evil.safetensors", "evil"])
def test_malicious_pickle_refused_without_running(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    target = tmp_path / name
    target.write_bytes(_evil_pickle(marker))
    if name.endswith(".safetensors"):
        # Even with a plausible JSON beside it, the pickle is refused before anything else.
        (tmp_path / "evil.json").write_text(
            json.dumps(
                {
                    "format": "wsiseg-checkpoint",
                    "format_version": 1,
                    "sha256": file_sha256(target),
                    "config": {},
                }
            )
        )
    with pytest.raises(CheckpointError, match="pickle") as info:
        load_checkpoint(target)
    assert "execute" in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, WsisegError)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin", ".safetensors"])
def test_torch_save_refused(tmp_path: Path, suffix: str) -> None:
    target = tmp_path / f"model{suffix}"
    torch.save(_Pair().state_dict(), target)
    assert target.read_bytes()[:2] == b"PK"
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(target)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path / "model")  # the stem finds model.safetensors or nothing
    if suffix != ".safetensors":
        with pytest.raises(CheckpointError, match="pickle"):
            read_checkpoint_metadata(target)


def test_legacy_torch_save_refused(tmp_path: Path) -> None:
    target = tmp_path / "legacy.safetensors"
    torch.save({"w": torch.ones(2)}, target, _use_new_zipfile_serialization=False)
    assert target.read_bytes()[:1] == b"\x80"
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(target)


def test_protocol0_pickle_is_not_safetensors(tmp_path: Path) -> None:
    target = save_checkpoint(tmp_path / "m", {"w": torch.ones(2)}, CONFIG)
    target.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=0))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(target)


def test_tampered_weights_fail_checksum(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m", {"w": torch.zeros(64)}, CONFIG)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # flip a bit in the last weight
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_missing_and_bad_json(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m", {"w": torch.ones(2)}, CONFIG)
    json_path = tmp_path / "m.json"
    good = json_path.read_text()

    json_path.unlink()
    with pytest.raises(CheckpointError, match="config missing"):
        load_checkpoint(path)

    json_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)

    doc = json.loads(good)
    changes: list[tuple[dict[str, object], str]] = [
        ({"format": "something-else"}, "format"),
        ({"format_version": 2}, "newer"),
        ({"format_version": "1"}, "format_version"),
        ({"sha256": "abc"}, "sha256"),
        ({"config": [1, 2]}, "config"),
    ]
    for change, pattern in changes:
        json_path.write_text(json.dumps({**doc, **change}))
        with pytest.raises(CheckpointError, match=pattern):
            load_checkpoint(path)

    json_path.write_text(good)
    path.unlink()
    with pytest.raises(CheckpointError, match="weights missing"):
        load_checkpoint(json_path)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "nothing-here")


def test_load_state_strict_refuses_wrong_shapes(tmp_path: Path) -> None:
    small = build_segmenter("unet-tiny", 3, 3, widths=(4, 8))
    path = save_checkpoint(tmp_path / "small", small.state_dict(), CONFIG)
    state, _ = load_checkpoint(path)
    target = build_segmenter("unet-tiny", 3, 3, widths=(4, 16))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match="wrong shape") as info:
        load_state_strict(target, state)
    message = str(info.value)
    assert "\n" not in message and "model.down.1.0.0.weight" in message
    # Nothing was loaded.
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_load_state_strict_missing_and_unexpected_keys() -> None:
    model = build_segmenter("unet-tiny", 3, 3, widths=(4, 8))
    state = dict(model.state_dict())
    state.pop("model.head.weight")
    state["extra.weight"] = torch.ones(1)
    with pytest.raises(CheckpointError) as info:
        load_state_strict(model, state)
    message = str(info.value)
    assert "1 missing: model.head.weight" in message
    assert "1 unexpected: extra.weight" in message

    many = {f"k{i}": torch.ones(1) for i in range(20)}
    with pytest.raises(CheckpointError, match="more"):
        load_state_strict(model, {**model.state_dict(), **many})


def test_load_state_strict_refuses_nan() -> None:
    model = SaliencyNet(width=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["head.bias"][0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        load_state_strict(model, state)


def test_overwrite_and_failed_save_keep_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path / "m", {"w": torch.ones(2)}, CONFIG)
    save_checkpoint(tmp_path / "m", {"w": torch.full((2,), 2.0)}, {"v": 2})
    state, config = load_checkpoint(tmp_path / "m")
    assert torch.equal(state["w"], torch.full((2,), 2.0)) and config == {"v": 2}

    import safetensors.torch

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "m", {"w": torch.zeros(2)}, {"v": 3})
    state, config = load_checkpoint(tmp_path / "m")
    assert torch.equal(state["w"], torch.full((2,), 2.0)) and config == {"v": 2}
    assert {p.name for p in tmp_path.iterdir()} == {"m.safetensors", "m.json"}


def test_bad_inputs_to_save(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "m", {"w": torch.ones(1)}, {"x": object()})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "m", {"w": [1.0]}, {})  # type: ignore[dict-item]
    with pytest.raises(CheckpointError, match="float16"):
        save_checkpoint(tmp_path / "m", {"w": torch.tensor([1e6])}, {}, half=True)
    assert list(tmp_path.iterdir()) == []


def test_shared_tensors_are_saved(tmp_path: Path) -> None:
    w = torch.randn(4, 4)
    path = save_checkpoint(tmp_path / "tied", {"a": w, "b": w, "c": w[1]}, {})
    state, _ = load_checkpoint(path)
    assert torch.equal(state["a"], w) and torch.equal(state["b"], w)
    assert torch.equal(state["c"], w[1])


def test_default_model_fp16_size_under_25mb(tmp_path: Path) -> None:
    model = _Pair("unet-resnet18")
    model.saliency = SaliencyNet()  # default width
    path = save_checkpoint(tmp_path / "default", model.state_dict(), CONFIG, half=True)
    assert path.stat().st_size < 25_000_000


def test_module_exports() -> None:
    for name in ckpt.__all__:
        assert hasattr(ckpt, name)
