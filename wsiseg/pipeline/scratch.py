"""A slide's scratch folder, and resuming a killed slide from its finished regions.

While a slide runs, ``OUT/<name>/.work-XXXXXXXX/`` holds its stitched labels
(``labels.zarr``: one chunk file per region core, `wsiseg.pipeline.stitch`) and one
record per finished batch of regions, ``done/NNNNNN.json`` (its region indices, the
SHA-256 of each core as written, their sampling densities and the pixels decoded),
written by a rename after the batch's cores. ``XXXXXXXX`` hashes the scratch key (the
slide's `ResumeIdentity`, the wsiseg version, the plan of regions and batches, and the
device asked for), which ``key.json`` holds in full.

A rerun of a killed slide with the same key reuses every batch whose record parses and
whose cores are stored with the recorded checksums, and computes the others in the same
batches (a batch's composition can change its numbers), so its outputs equal an
uninterrupted run's. Scratch of another key, or any scratch with ``--overwrite``, is
discarded. The caller removes the scratch when the slide ends.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsiseg import __version__
from wsiseg.fileops import atomic_path
from wsiseg.pipeline.outputs import ResumeIdentity
from wsiseg.pipeline.stitch import Stitcher
from wsiseg.tiling import Region, RegionPlan

__all__ = ["BatchRecord", "Scratch", "core_sha256", "open_scratch", "scratch_key"]

log = logging.getLogger(__name__)

_PREFIX = ".work-"
_KEY_FILE = "key.json"


def core_sha256(core: np.ndarray) -> str:
    """Checksum of a region's core labels (as `Stitcher.add_core` takes them)."""
    return hashlib.sha256(np.ascontiguousarray(core, dtype=np.uint8).tobytes()).hexdigest()


def scratch_key(
    identity: ResumeIdentity,
    plan: RegionPlan,
    batches: Sequence[Sequence[Region]],
    device: str = "",
) -> dict[str, Any]:
    """What a slide's scratch is valid for: its identity, the wsiseg version, a hash of
    the plan (grid, regions, batches) and the ``--device`` asked for (not part of the
    identity, but one slide's regions are not mixed across devices). JSON-ready."""
    geometry = plan.geometry()
    layout = {
        "grid": [
            geometry.slide_size,
            geometry.mpp,
            geometry.task_mpp,
            geometry.output_mpp,
            geometry.region_px,
            geometry.margin_px,
            geometry.output_size,
        ],
        "batches": [[[r.index, r.row, r.col, r.x0, r.y0, r.side] for r in b] for b in batches],
    }
    text = json.dumps(layout, separators=(",", ":"))
    return {
        "wsiseg": __version__,
        "identity": identity.to_json(),
        "device": device,
        "plan_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def _canonical(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class BatchRecord:
    """A finished batch: its regions, their cores' checksums and densities, its cost."""

    batch: int
    regions: tuple[int, ...]
    sha256: tuple[str, ...]
    pixels_decoded: int
    densities: tuple[np.ndarray, ...] = ()  # one per region; empty without a density map

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "regions": list(self.regions),
            "sha256": list(self.sha256),
            "pixels_decoded": self.pixels_decoded,
            "densities": [
                {"shape": list(d.shape), "f4": base64.b64encode(d.astype("<f4").tobytes()).decode()}
                for d in self.densities
            ],
        }

    @classmethod
    def from_json(cls, data: object) -> BatchRecord | None:
        """The record, or None for anything malformed (its batch is then redone)."""
        try:
            if not isinstance(data, dict):
                raise TypeError("not a mapping")
            regions = tuple(int(i) for i in data["regions"])
            sha = tuple(str(h) for h in data["sha256"])
            decoded = data["pixels_decoded"]
            dens = tuple(
                np.frombuffer(base64.b64decode(d["f4"], validate=True), "<f4")
                .astype(np.float32)
                .reshape(tuple(int(v) for v in d["shape"]))
                for d in data["densities"]
            )
            if not isinstance(decoded, int) or len(sha) != len(regions):
                raise ValueError("inconsistent record")
            if dens and len(dens) != len(regions):
                raise ValueError("densities do not match the regions")
            return cls(int(data["batch"]), regions, sha, decoded, dens)
        except (KeyError, TypeError, ValueError):
            return None


class Scratch:
    """One slide's scratch folder (see the module notes); make it with `open_scratch`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._done = folder / "done"

    @property
    def labels_path(self) -> Path:
        return self.folder / "labels.zarr"

    def add(self, record: BatchRecord) -> None:
        """Record a finished batch (after its cores are stored): a temporary, then a rename."""
        self._done.mkdir(exist_ok=True)
        final = self._done / f"{record.batch:06d}.json"
        # not fsynced: a record is checked against its chunks' checksums when reused
        with atomic_path(final, overwrite=True, sync=False) as tmp:
            tmp.write_text(json.dumps(record.to_json(), separators=(",", ":")))

    def reusable(
        self, stitcher: Stitcher, batches: Sequence[Sequence[Region]]
    ) -> dict[int, BatchRecord]:
        """Batch number -> record, for the recorded batches whose cores are all stored
        with their checksums (and densities present where the stitcher keeps them)."""
        out: dict[int, BatchRecord] = {}
        if not self._done.is_dir():
            return out
        dropped = 0
        for path in sorted(self._done.glob("[0-9]*.json")):
            try:
                rec = BatchRecord.from_json(json.loads(path.read_text()))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                rec = None
            if rec is None or not _stored(rec, stitcher, batches):
                dropped += 1
                continue
            out[rec.batch] = rec
        if dropped:
            log.info(
                "%s: %d batch record(s) incomplete or not matching; redone", self.folder, dropped
            )
        return out


def _stored(rec: BatchRecord, stitcher: Stitcher, batches: Sequence[Sequence[Region]]) -> bool:
    """Whether ``rec`` is batch ``rec.batch`` of the plan with each core stored as recorded."""
    if not 0 <= rec.batch < len(batches):
        return False
    regions = batches[rec.batch]
    if rec.regions != tuple(r.index for r in regions):
        return False
    if stitcher.density is not None and len(rec.densities) != len(regions):
        return False
    for region, sha in zip(regions, rec.sha256, strict=True):
        core = stitcher.stored_core(region)
        if core is None or core_sha256(core) != sha:
            return False
    return True


def _read_key(folder: Path) -> str | None:
    try:
        return _canonical(json.loads((folder / _KEY_FILE).read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def open_scratch(out_dir: Path, key: dict[str, Any], *, discard: bool = False) -> Scratch:
    """The scratch of ``key`` in ``out_dir``: a killed run's if it was made for the same
    key (and not ``discard``), else a new one. Every other scratch there is removed.
    The caller holds the slide's lock."""
    text = _canonical(key)
    folder = out_dir / f"{_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    for old in sorted(out_dir.glob(_PREFIX + "*")):
        if old == folder and not discard and _read_key(old) == text:
            log.info("%s: resuming from the scratch of an interrupted run", out_dir)
            continue
        why = "--overwrite" if discard else "made for other inputs or settings, or incomplete"
        log.info("%s: discarding the scratch %s (%s)", out_dir, old.name, why)
        shutil.rmtree(old, ignore_errors=True)
    if not folder.is_dir():
        folder.mkdir()
        with atomic_path(folder / _KEY_FILE, overwrite=True, sync=False) as tmp:
            tmp.write_text(json.dumps(key, sort_keys=True, default=str))
    return Scratch(folder)
