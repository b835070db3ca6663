"""Packaged defaults: model configs, cluster profiles and the bundled models.

`packaged` is the one lookup of a packaged file by name (an unknown name lists the
known ones) and `resolve` the one "a path, or else a packaged name" rule. The
repository's top-level ``configs/`` holds the same configs as user-editable examples
(``tests/test_resources.py`` keeps the two identical). Imports nothing but
`wsiseg.errors`, so every layer may use it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from wsiseg.errors import InputError

__all__ = ["KINDS", "packaged", "packaged_names", "resolve"]

#: kind -> (folder under wsiseg/resources, file suffix, what one is called in messages)
KINDS: dict[str, tuple[str, str, str]] = {
    "models": ("configs/models", ".yaml", "model config"),
    "clusters": ("configs/clusters", ".yaml", "cluster profile"),
    "checkpoints": ("models", ".safetensors", "model"),
}


def _folder(kind: str) -> tuple[Path, str, str]:
    if kind not in KINDS:
        raise ValueError(f"unknown kind of packaged file {kind!r} (known: {', '.join(KINDS)})")
    sub, suffix, what = KINDS[kind]
    return Path(str(resources.files("wsiseg") / "resources" / sub)), suffix, what


def packaged_names(kind: str) -> list[str]:
    """Sorted names of the packaged files of ``kind`` (see `KINDS`)."""
    folder, suffix, _ = _folder(kind)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))


def packaged(kind: str, name: str) -> Path:
    """Path of the packaged file ``name`` of ``kind``.

    Raises
    ------
    InputError
        No such packaged file; the message lists the known names.
    """
    folder, suffix, what = _folder(kind)
    path = folder / f"{name}{suffix}"
    if not name or Path(name).name != name or not path.is_file():
        known = ", ".join(packaged_names(kind)) or "none"
        raise InputError(f"no packaged {what} {name!r} (packaged: {known})")
    return path


def resolve(kind: str, name_or_path: str | Path) -> Path:
    """An existing file at ``name_or_path``, else the packaged file of that name.

    Raises
    ------
    InputError
        Neither; the message lists the packaged names.
    """
    path = Path(name_or_path)
    if path.exists():
        return path
    try:
        return packaged(kind, str(name_or_path))
    except InputError:
        known = ", ".join(packaged_names(kind)) or "none"
        what = KINDS[kind][2]
        raise InputError(
            f"no such file or packaged {what}: {str(name_or_path)!r} (packaged: {known})"
        ) from None
