"""Training data layouts: PANDA, image/mask tiles (GlaS, CPM-15), slides with GeoJSON."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from wsiseg.errors import InputError
from wsiseg.export.geojson import labels_to_features, write_geojson
from wsiseg.models.config import DEFAULT_CLASSES
from wsiseg.train.datasets import PANDA_CLASS_MAPS, LabelMask, discover_sources
from wsiseg.train.losses import IGNORE_INDEX


def test_panda_layout_maps_classes_per_provider(small_synthetic, tmp_path: Path) -> None:
    root = tmp_path / "panda"
    (root / "train_images").mkdir(parents=True)
    (root / "train_label_masks").mkdir()
    for image_id in ("rad1", "kar1"):
        shutil.copy(small_synthetic.image, root / "train_images" / f"{image_id}.tiff")
        shutil.copy(small_synthetic.mask, root / "train_label_masks" / f"{image_id}_mask.tiff")
    (root / "train.csv").write_text(
        "image_id,data_provider,isup_grade,gleason_score\nrad1,radboud,0,0+0\nkar1,karolinska,0,0+0\n"
    )
    sources = {s.name: s for s in discover_sources(root)}
    assert set(sources) == {"rad1", "kar1"}
    raw = LabelMask(small_synthetic.mask).read(0, 0, 0, 3072, 2048)
    for name, provider in (("rad1", "radboud"), ("kar1", "karolinska")):
        _, lab = sources[name].read(0, 0, 3072, 2048, (2048, 3072))
        lut = np.full(256, IGNORE_INDEX)
        lut[: len(PANDA_CLASS_MAPS[provider])] = PANDA_CLASS_MAPS[provider]
        np.testing.assert_array_equal(lab, lut[raw])
    # Karolinska's "cancer" (2) becomes tumour (3).
    assert PANDA_CLASS_MAPS["karolinska"][2] == 3


def test_glas_tiles_as_binary_pairs(shared_data: Path) -> None:
    sources = discover_sources(shared_data / "labeled" / "glas", data_mpp=0.62, binary_labels=True)
    assert sorted(s.name for s in sources) == ["testA_2", "testB_1", "train_2"]
    for s in sources:
        img, lab = s.read(0, 0, s.size[0], s.size[1], (s.size[1], s.size[0]))
        assert img.shape[:2] == lab.shape and set(np.unique(lab)) == {0, 1}


def test_cpm15_instance_masks(shared_data: Path) -> None:
    sources = discover_sources(shared_data / "labeled" / "cpm15", data_mpp=0.5, binary_labels=True)
    assert sorted(s.name for s in sources) == ["image02", "image14"]
    names = [n for n, _ in DEFAULT_CLASSES]
    with pytest.raises(InputError, match="--binary-labels"):
        discover_sources(shared_data / "labeled" / "cpm15", data_mpp=0.5, class_names=names)


def test_tiles_need_a_pixel_size(shared_data: Path) -> None:
    with pytest.raises(InputError, match="--data-mpp"):
        discover_sources(shared_data / "labeled" / "glas", binary_labels=True)


def test_slide_with_geojson_labels(small_synthetic, tmp_path: Path) -> None:
    root = tmp_path / "gj"
    root.mkdir()
    shutil.copy(small_synthetic.image, root / "core.tiff")
    mask = LabelMask(small_synthetic.mask)
    level = 2  # 4x down
    w, h = mask.level_sizes[level]
    labels = mask.read(level, 0, 0, w, h)
    names = [n for n, _ in DEFAULT_CLASSES]
    feats = labels_to_features(
        labels,
        downsample=3072 / w,
        class_names=names,
        class_colours=[c for _, c in DEFAULT_CLASSES],
        mpp=0.5,
        slide_id="core",
        min_area_um2=0.0,
        simplify_px=0.0,
    )
    write_geojson(root / "core.geojson", feats)
    (src,) = discover_sources(root, class_names=names)
    _, lab = src.read(0, 0, src.size[0], src.size[1], (src.size[1], src.size[0]))
    truth = labels[: lab.shape[0], : lab.shape[1]]
    assert (lab == truth).mean() > 0.99


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no labeled images"):
        discover_sources(tmp_path)
    with pytest.raises(InputError, match="no such data folder"):
        discover_sources(tmp_path / "missing")
