"""Checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (config and checksum).

Weights are only ever read with safetensors. Pickled checkpoints (``torch.save``
files, plain pickles) are refused without being unpickled, because unpickling a
file can execute arbitrary code.

The JSON file holds::

    {"format": "wsiseg-checkpoint", "format_version": 1, "wsiseg_version": "...",
     "weights": "NAME.safetensors", "sha256": "...", "half": false,
     "config": {...the caller's config, returned untouched by load_checkpoint...}}

A config may state the model card's ``notice`` (`model_notice`), shown with every output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wsiseg import __version__
from wsiseg.errors import WsisegError
from wsiseg.fileops import atomic_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "CheckpointMetadata",
    "DEFAULT_NOTICE",
    "check_state_fits",
    "checkpoint_paths",
    "file_sha256",
    "load_checkpoint",
    "load_state_strict",
    "model_notice",
    "read_checkpoint_metadata",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "wsiseg-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

_PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar"})
_MAX_LISTED = 5
_FP16_MAX = 65504.0
_MAX_JSON_BYTES = 16 << 20

#: The model card's notice when a checkpoint's config states none.
DEFAULT_NOTICE = "Research use only. Not for diagnosis."


class CheckpointError(WsisegError):
    """A checkpoint is missing, malformed, tampered with, pickled, or does not fit the model."""


@dataclass(frozen=True)
class CheckpointMetadata:
    """What a checkpoint's JSON says, without its weights.

    Attributes
    ----------
    weights_path, json_path : pathlib.Path
        The two files of the checkpoint.
    sha256 : str
        Hex SHA-256 of the safetensors file as recorded at save time.
    half : bool
        Whether floating-point weights are stored as float16.
    format_version : int
        Checkpoint format version.
    wsiseg_version : str
        wsiseg version that wrote the checkpoint.
    config : dict
        The caller's config, as saved.
    """

    weights_path: Path
    json_path: Path
    sha256: str
    half: bool
    format_version: int
    wsiseg_version: str
    config: dict[str, Any]


def model_notice(config: Mapping[str, Any]) -> str:
    """The notice a model's outputs carry (what it is for, "not for diagnosis").

    A checkpoint config's ``notice``, else its older free-text ``note`` (the bundled
    demo model's), else `DEFAULT_NOTICE`; the first letter capitalised.
    """
    for key in ("notice", "note"):
        value = config.get(key)
        if isinstance(value, str) and value.strip():
            text = " ".join(value.split())
            return text[0].upper() + text[1:]
    return DEFAULT_NOTICE


def _pickle_refusal(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path}: refusing a pickled checkpoint (torch.save/pickle) because loading it can "
        "execute arbitrary code; convert it to a wsiseg safetensors checkpoint in a trusted "
        "environment"
    )


def _sniff(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(16)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _looks_pickled(head: bytes) -> bool:
    # Pickle protocol >= 2 starts with PROTO (0x80); torch.save's zip format starts with PK.
    return head[:1] == b"\x80" or head[:2] == b"PK"


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Return ``(weights_path, json_path)`` for a ``.safetensors`` path, ``.json`` path or stem.

    Raises
    ------
    CheckpointError
        If ``path`` names a pickle-style file (``.pt``, ``.pth``, ``.ckpt``, ``.bin``,
        ``.pkl``...) or an existing file that is neither safetensors nor JSON.
    """
    p = Path(path)
    if p.suffix.lower() in _PICKLE_SUFFIXES:
        if not p.exists():
            raise CheckpointError(f"{p}: not found")
        raise _pickle_refusal(p)
    if p.suffix.lower() not in (".safetensors", ".json") and p.is_file():
        # A file without a known suffix: never guess, but say why if it is a pickle.
        if _looks_pickled(_sniff(p)):
            raise _pickle_refusal(p)
        raise CheckpointError(
            f"{p}: not a wsiseg checkpoint; expected NAME.safetensors with NAME.json beside it"
        )
    weights, config = _pair_names(p)
    if not weights.is_file() and not config.is_file():
        if p.is_dir():
            raise CheckpointError(
                f"{p}: is a folder, not a checkpoint (expected NAME.safetensors with "
                "NAME.json beside it)"
            )
        _read_json(config, weights, given=p)  # says "not found", or names a pickle twin
    return weights, config


def _pair_names(p: Path) -> tuple[Path, Path]:
    if p.suffix.lower() in (".safetensors", ".json") or p.suffix.lower() in _PICKLE_SUFFIXES:
        stem = p.with_suffix("")
    else:
        stem = p  # dots in a stem are kept: "model.v1" -> "model.v1.safetensors"
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _prepare_tensors(state_dict: Mapping[str, Tensor], half: bool) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise TypeError(
                f"state_dict must map str to Tensor; got {type(key).__name__} -> "
                f"{type(value).__name__}"
            )
        t = value.detach().to("cpu", copy=True).contiguous()  # copy: no shared storage
        if half and t.is_floating_point() and t.dtype != torch.float16:
            finite = torch.isfinite(t)
            if bool((t[finite].abs() > _FP16_MAX).any()):
                raise CheckpointError(
                    f"cannot store {key!r} as float16: values exceed ±{_FP16_MAX:g}; "
                    "save without half=True"
                )
            t = t.to(torch.float16)
        out[key] = t
    return out


def save_checkpoint(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Tensor],
    config: Mapping[str, Any],
    *,
    half: bool = False,
) -> Path:
    """Write ``NAME.safetensors`` and ``NAME.json`` atomically.

    Parameters
    ----------
    path : path-like
        ``NAME.safetensors``, ``NAME.json`` or the stem ``NAME`` (dots in a stem
        are kept; a ``.pt``/``.pth``/``.ckpt``/``.bin``/``.pkl`` suffix is replaced).
    state_dict : mapping of str to torch.Tensor
        Weights (e.g. ``module.state_dict()``); tensors are copied to CPU.
    config : mapping
        JSON-serialisable configuration (architecture, classes, ``task_mpp``...),
        stored untouched under ``"config"``.
    half : bool
        Store floating-point tensors as float16 (read back as float32).

    Returns
    -------
    pathlib.Path
        The ``.safetensors`` path.

    Raises
    ------
    TypeError
        If ``config`` is not JSON-serialisable or ``state_dict`` holds non-tensors.
    CheckpointError
        If ``half`` and a value does not fit in float16.

    Notes
    -----
    Both files are written under :func:`wsiseg.fileops.atomic_path` temporaries
    in the target folder, flushed, then renamed, weights first and JSON last: a
    reader never sees a partial file. A crash between the two renames leaves new
    weights beside the old JSON, which :func:`load_checkpoint` reports as a
    checksum mismatch, never loads.
    """
    from safetensors.torch import save as to_bytes

    weights_path, json_path = _pair_names(Path(path))
    try:
        config_json = json.loads(json.dumps(dict(config), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint config is not JSON-serialisable: {exc}") from exc

    tensors = _prepare_tensors(state_dict, half)
    for final in (weights_path, json_path):
        if final.is_dir():  # atomic_path would replace a folder; a checkpoint never does
            raise IsADirectoryError(f"{final} is a folder, not a checkpoint file")
    # Nested: the weights are renamed first, the JSON last; an error before leaves both.
    with (
        atomic_path(json_path, overwrite=True) as tmp_json,
        atomic_path(weights_path, overwrite=True) as tmp_weights,
    ):
        data = to_bytes(tensors, metadata={"format": "pt", "wsiseg": CHECKPOINT_FORMAT})
        tmp_weights.write_bytes(data)
        document = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "wsiseg_version": __version__,
            "weights": weights_path.name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "half": bool(half),
            "config": config_json,
        }
        tmp_json.write_bytes((json.dumps(document, indent=2) + "\n").encode("utf-8"))
    logger.info(
        "saved checkpoint %s (%d tensors, %s, %d bytes)",
        weights_path,
        len(tensors),
        "float16" if half else "as given",
        weights_path.stat().st_size,
    )
    return weights_path


def _read_json(json_path: Path, weights_path: Path, given: Path | None = None) -> dict[str, Any]:
    if not json_path.is_file() and not weights_path.is_file():
        # Nothing under the wsiseg names: say so (the name as the user gave it), pointing
        # at a pickle twin if there is one.
        stem = weights_path.with_suffix("")
        for suffix in sorted(_PICKLE_SUFFIXES):
            twin = stem.with_name(stem.name + suffix)
            if twin.is_file():
                raise _pickle_refusal(twin)
        raise CheckpointError(
            f"{given or stem}: not found (neither {weights_path.name} nor {json_path.name} exists)"
        )
    if not json_path.is_file():
        raise CheckpointError(
            f"{json_path}: checkpoint config missing (expected beside {weights_path.name})"
        )
    if _looks_pickled(_sniff(json_path)):
        raise _pickle_refusal(json_path)
    if json_path.stat().st_size > _MAX_JSON_BYTES:
        raise CheckpointError(
            f"{json_path}: {json_path.stat().st_size} bytes is too large for a checkpoint config"
        )
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{json_path}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise CheckpointError(f"{json_path}: cannot read: {exc.strerror or exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{json_path}: not a wsiseg checkpoint config (format field)")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{json_path}: format_version missing or not an integer")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{json_path}: checkpoint format {version} is newer than this wsiseg supports "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade wsiseg"
        )
    if version < 1:
        raise CheckpointError(f"{json_path}: invalid format_version {version}")
    sha = doc.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise CheckpointError(f"{json_path}: sha256 missing or malformed")
    if not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"{json_path}: config missing or not an object")
    if not isinstance(doc.get("half", False), bool):
        raise CheckpointError(f"{json_path}: half must be true or false")
    return doc


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> CheckpointMetadata:
    """Read and validate a checkpoint's JSON (the weights are not read or verified).

    Parameters
    ----------
    path : path-like
        ``NAME.safetensors``, ``NAME.json`` or the stem ``NAME``.

    Raises
    ------
    CheckpointError
        If the JSON is missing, malformed or not a wsiseg checkpoint, or ``path`` is
        a pickle-style file.
    """
    weights_path, json_path = checkpoint_paths(path)
    doc = _read_json(json_path, weights_path)
    return CheckpointMetadata(
        weights_path=weights_path,
        json_path=json_path,
        sha256=doc["sha256"].lower(),
        half=bool(doc.get("half", False)),
        format_version=int(doc["format_version"]),
        wsiseg_version=str(doc.get("wsiseg_version", "")),
        config=doc["config"],
    )


def _check_safetensors_header(path: Path, data: bytes) -> None:
    if _looks_pickled(data[:2]):
        raise _pickle_refusal(path)
    if len(data) < 10:
        raise CheckpointError(f"{path}: not a safetensors file (too short)")
    n = int.from_bytes(data[:8], "little")
    if n < 2 or 8 + n > len(data) or data[8:9] != b"{":
        raise CheckpointError(
            f"{path}: not a safetensors file (bad header); wsiseg reads only safetensors "
            "weights and never unpickles"
        )


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load a checkpoint's weights (verified against the recorded SHA-256) and config.

    Parameters
    ----------
    path : path-like
        ``NAME.safetensors``, ``NAME.json`` or the stem ``NAME``.

    Returns
    -------
    state_dict : dict of str to torch.Tensor
        CPU tensors; float16 storage of a ``half`` checkpoint comes back as float32,
        otherwise dtypes are as saved (bit-exact).
    config : dict
        The config given to :func:`save_checkpoint`, untouched (architecture
        names are checked by whoever builds the model).

    Raises
    ------
    CheckpointError
        If either file is missing or malformed, the checksum does not match, or the
        weights are pickled (refused without unpickling).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    weights_path, json_path = checkpoint_paths(path)
    if weights_path.is_file() and _looks_pickled(_sniff(weights_path)):
        # Refuse a pickle before anything else, even if its JSON is missing.
        raise _pickle_refusal(weights_path)
    meta = read_checkpoint_metadata(weights_path)
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: checkpoint weights missing")
    try:
        data = weights_path.read_bytes()  # hash and parse the same bytes
    except OSError as exc:
        raise CheckpointError(f"{weights_path}: cannot read: {exc.strerror or exc}") from exc
    _check_safetensors_header(weights_path, data)
    actual = hashlib.sha256(data).hexdigest()
    if actual != meta.sha256:
        raise CheckpointError(
            f"{weights_path}: checksum mismatch (sha256 {actual[:12]}..., expected "
            f"{meta.sha256[:12]}... from {json_path.name}); the file is corrupt or was modified"
        )
    try:
        tensors = load_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights_path}: unreadable safetensors ({exc})") from exc
    if meta.half:
        tensors = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in tensors.items()}
    logger.debug("loaded checkpoint %s (%d tensors)", weights_path, len(tensors))
    return tensors, meta.config


def check_state_fits(module: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Check that ``state_dict`` has exactly ``module``'s keys and shapes, and finite values.

    ``module`` may live on the ``meta`` device: only its shapes are used, so a
    checkpoint's config can be checked against its weights before any memory is
    allocated for the model it describes.

    Raises
    ------
    CheckpointError
        Listing (on one line) the first few missing keys, unexpected keys and
        shape mismatches, with their counts; or the tensors holding NaN or inf.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", mismatched),
    ):
        if items:
            shown = ", ".join(items[:_MAX_LISTED])
            more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
            problems.append(f"{len(items)} {label}: {shown}{more}")
    if problems:
        raise CheckpointError(
            "checkpoint weights do not fit the model (" + "; ".join(problems) + ")"
        )
    bad = [
        k
        for k, v in state_dict.items()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise CheckpointError(
            f"checkpoint weights hold NaN or infinite values ({', '.join(bad[:_MAX_LISTED])})"
        )


def load_state_strict(module: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load ``state_dict`` into ``module`` after checking every key and shape.

    Parameters
    ----------
    module : torch.nn.Module
        Target module.
    state_dict : mapping of str to torch.Tensor
        Weights, e.g. from :func:`load_checkpoint`.

    Raises
    ------
    CheckpointError
        As :func:`check_state_fits`; nothing is loaded then.
    """
    check_state_fits(module, state_dict)
    module.load_state_dict(dict(state_dict), strict=True)
