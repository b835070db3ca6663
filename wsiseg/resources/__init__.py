"""Packaged defaults: model and cluster configs, the bundled demo model."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from wsiseg.errors import InputError

__all__ = ["packaged_config", "packaged_configs"]


def packaged_configs(kind: str) -> list[str]:
    """Names of the packaged configs of ``kind`` (``models`` or ``clusters``)."""
    root = resources.files("wsiseg") / "resources" / "configs" / kind
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def packaged_config(kind: str, name: str) -> Path:
    """Path of a packaged config; an unknown name lists the known ones."""
    ref = resources.files("wsiseg") / "resources" / "configs" / kind / f"{name}.yaml"
    path = Path(str(ref))
    if not path.is_file():
        known = ", ".join(packaged_configs(kind)) or "none"
        raise InputError(f"no such file or packaged {kind} config: {name!r} (packaged: {known})")
    return path
