"""Outputs: label OME-TIFF, QuPath GeoJSON, overlay PNG, HTML QC report (files out).

Every writer is atomic (temporary name, renamed when complete) and refuses to
replace an existing file unless ``overwrite=True``. The QuPath import script is
package data: ``importlib.resources.files("wsiseg.export") / "qupath_import.groovy"``.
"""

from __future__ import annotations

from wsiseg.export.geojson import (
    AREA_MEASUREMENT,
    FEATURE_ID_NAMESPACE,
    labels_to_features,
    write_geojson,
)
from wsiseg.export.ome_tiff import (
    CLASS_COLOURS_NS,
    CLASS_NAMES_NS,
    read_label_classes,
    read_label_ome_tiff,
    write_label_ome_tiff,
)
from wsiseg.export.overlay import render_overlay, viridis, write_overlay_png, write_png
from wsiseg.export.report import render_report, write_report

__all__ = [
    "AREA_MEASUREMENT",
    "CLASS_COLOURS_NS",
    "CLASS_NAMES_NS",
    "FEATURE_ID_NAMESPACE",
    "labels_to_features",
    "read_label_classes",
    "read_label_ome_tiff",
    "render_overlay",
    "render_report",
    "viridis",
    "write_geojson",
    "write_label_ome_tiff",
    "write_overlay_png",
    "write_png",
    "write_report",
]
