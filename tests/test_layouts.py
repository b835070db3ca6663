"""The GlaS (glas-full) and MoNuSeg layouts: splits, pixel sizes, targets, patient split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsiseg.cli import main
from wsiseg.errors import InputError
from wsiseg.models.loading import load_model
from wsiseg.train.datasets import discover_sources
from wsiseg.train.evaluate import confusion_per_image
from wsiseg.train.layouts import (
    GLAS_MPP,
    MONUSEG_MPP,
    read_layout,
    split_by_patient,
    target_for_classes,
)

# name, patient, grade
GLAS = [
    ("train_1", 1, "benign"),
    ("train_2", 1, "benign"),
    ("train_3", 2, "malignant"),
    ("train_4", 3, "malignant"),
    ("train_5", 3, "malignant"),
    ("train_6", 4, "benign"),
    ("testA_1", 2, "malignant"),
    ("testA_2", 5, "benign"),
]


def _write_pair(root: Path, name: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[8 + seed % 10 : 30, 5 : 40 + seed % 20] = 255
    Image.fromarray(img).save(root / "images" / f"{name}.png")
    Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return mask


@pytest.fixture
def glas(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "glas-full"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    masks = {name: _write_pair(root, name, i) for i, (name, _, _) in enumerate(GLAS)}
    with open(root / "grade.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "patient_id", "grade_glas", "grade_sirinukunwattana2015"])
        for name, patient, grade in GLAS:
            w.writerow([name, patient, grade, "x"])
    return root, masks


@pytest.fixture
def monuseg(tmp_path: Path) -> Path:
    root = tmp_path / "monuseg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = [
        ("TCGA-AA-0001-01Z-00-DX1", "train", "0.2527"),
        ("TCGA-AA-0002-01Z-00-DX1", "train", ""),
        ("TCGA-BB-0003-01A-01-TS1", "train", "0.2468"),
        ("TCGA-CC-0004-01A-01-TS1", "test", "0.2480"),
    ]
    for i, (name, _, _) in enumerate(rows):
        _write_pair(root, name, i)
    with open(root / "split.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "split", "mask_kind", "n_nuclei", "xml_microns_per_pixel"])
        for name, split, mpp in rows:
            w.writerow([name, split, "x", "1", mpp])
    return root


def test_glas_official_split_pixel_size_and_binary_masks(glas) -> None:
    root, masks = glas
    train = discover_sources(root, split="train")
    assert [s.name for s in train] == [f"train_{i}" for i in range(1, 7)]
    test = discover_sources(root, split="test")
    assert sorted(s.name for s in test) == ["testA_1", "testA_2"]
    assert len(discover_sources(root)) == 8  # no split: all
    assert {s.mpp for s in train} == {GLAS_MPP}
    assert {s.mpp for s in discover_sources(root, split="test", data_mpp=0.5)} == {0.5}
    for s in test:
        _, lab = s.read(0, 0, 64, 48, (48, 64))
        np.testing.assert_array_equal(lab, (masks[s.name] > 0).astype(np.uint8))
    assert {s.group for s in train} == {"patient-1", "patient-2", "patient-3", "patient-4"}
    with pytest.raises(InputError, match="no images in split 'testB'"):
        discover_sources(root, split="testB")


def test_glas_three_class_follows_the_grade(glas) -> None:
    root, masks = glas
    by_name = {s.name: s for s in discover_sources(root, split="all", target="three-class")}
    for name, _, grade in GLAS:
        _, lab = by_name[name].read(0, 0, 64, 48, (48, 64))
        want = (masks[name] > 0).astype(np.uint8) * (1 if grade == "benign" else 2)
        np.testing.assert_array_equal(lab, want)
    layout = read_layout(root)
    assert layout is not None
    assert [n for n, _ in layout.classes("three-class")] == [
        "Not gland",
        "Benign gland",
        "Malignant gland",
    ]
    assert target_for_classes(layout, ("Not gland", "Gland")) == "binary"
    with pytest.raises(InputError, match="none of the glas targets"):
        target_for_classes(layout, ("Background", "Stroma", "Benign gland", "Tumor"))


def test_monuseg_split_and_per_image_pixel_size(monuseg: Path) -> None:
    train = {s.name: s for s in discover_sources(monuseg, split="train")}
    assert len(train) == 3
    assert train["TCGA-AA-0001-01Z-00-DX1"].mpp == pytest.approx(0.2527)
    assert train["TCGA-AA-0002-01Z-00-DX1"].mpp == pytest.approx(MONUSEG_MPP)  # blank
    assert train["TCGA-BB-0003-01A-01-TS1"].group == "TCGA-BB-0003"
    # --data-mpp stands in only where the csv is blank.
    fb = {s.name: s.mpp for s in discover_sources(monuseg, split="train", data_mpp=0.3)}
    assert fb["TCGA-AA-0002-01Z-00-DX1"] == pytest.approx(0.3)
    assert fb["TCGA-AA-0001-01Z-00-DX1"] == pytest.approx(0.2527)
    (test,) = discover_sources(monuseg, split="test")
    assert test.name == "TCGA-CC-0004-01A-01-TS1" and test.mpp == pytest.approx(0.248)
    with pytest.raises(InputError, match="no 'three-class' target"):
        discover_sources(monuseg, target="three-class")


def test_monuseg_csv_errors_are_clear(monuseg: Path) -> None:
    text = (monuseg / "split.csv").read_text().replace(",test,", ",holdout,")
    (monuseg / "split.csv").write_text(text)
    with pytest.raises(InputError, match="unknown split 'holdout'"):
        discover_sources(monuseg)
    (monuseg / "split.csv").write_text("name,mpp\nx,1\n")
    with pytest.raises(InputError, match="missing column"):
        discover_sources(monuseg)


def test_monuseg_layout_problems_are_said_once(
    monuseg: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A listed image that is not on disk, a file without a CSV row, a pixel size that
    is not a number, an implausible --data-mpp and a CSV without the pixel-size column:
    each is said (once per process, though a command reads the layout twice) and named."""
    import logging

    import wsiseg.train.layouts as layouts

    layouts._warned.clear()
    gone = "TCGA-AA-0002-01Z-00-DX1"
    (monuseg / "images" / f"{gone}.png").unlink()
    _write_pair(monuseg, "TCGA-DD-0005-01A-01-TS1", 7)  # on disk, not in split.csv
    with caplog.at_level(logging.WARNING, logger="wsiseg.train.layouts"):
        for _ in range(2):
            names = {s.name for s in discover_sources(monuseg)}
    assert gone not in names and len(names) == 3
    said = [r.getMessage() for r in caplog.records]
    assert sum(gone in m and "left out" in m for m in said) == 1
    assert sum("TCGA-DD-0005" in m and "not in split.csv" in m for m in said) == 1
    with pytest.raises(InputError, match="--data-mpp: pixel size 100"):
        discover_sources(monuseg, data_mpp=100)
    text = (monuseg / "split.csv").read_text().replace(",0.2468", ",0.2468um")
    (monuseg / "split.csv").write_text(text)
    with pytest.raises(InputError, match="'0.2468um' is not a number"):
        discover_sources(monuseg)
    with open(monuseg / "split.csv", "w", newline="") as fh:  # no pixel-size column
        fh.write("name,split\nTCGA-AA-0001-01Z-00-DX1,train\nTCGA-CC-0004-01A-01-TS1,test\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wsiseg.train.layouts"):
        mpps = {s.mpp for s in discover_sources(monuseg)}
    assert mpps == {MONUSEG_MPP}
    assert any("2 of 2 images without a pixel size" in r.getMessage() for r in caplog.records)


def test_split_and_target_need_a_known_layout(small_synthetic) -> None:
    with pytest.raises(InputError, match="--split needs a layout"):
        discover_sources(small_synthetic.image.parent, split="train")
    with pytest.raises(InputError, match="three-class needs the GlaS layout"):
        discover_sources(small_synthetic.image.parent, target="three-class")


def test_broken_glas_folders_name_what_is_missing(glas) -> None:
    """A GlaS folder without masks/ or images/, or whose names carry no split prefix,
    is refused with what is missing, not as an unknown layout."""
    import shutil

    root, _ = glas
    shutil.move(root / "masks", root.parent / "masks-away")
    with pytest.raises(InputError, match="grade.csv makes this a GlaS folder, but masks/ is"):
        discover_sources(root, split="test")
    shutil.move(root.parent / "masks-away", root / "masks")
    for folder in ("images", "masks"):
        for f in (root / folder).iterdir():
            f.rename(f.with_name(f.name.replace("testA_", "TestA_").replace("train_", "Train_")))
    with pytest.raises(InputError, match="named train_\\*, testA_\\* or testB_\\*"):
        discover_sources(root, split="test")
    (root / "grade.csv").unlink()
    with pytest.raises(InputError, match="images/, masks/, grade.csv"):
        discover_sources(root, split="test")
    with pytest.raises(InputError, match="without grade.csv .GlaS. or split.csv"):
        discover_sources(root)


def test_patient_split_is_disjoint_and_deterministic(glas) -> None:
    root, _ = glas
    sources = discover_sources(root, split="train")
    train, val = split_by_patient(sources, 0.34, seed=3)
    assert val and train
    assert not {s.group for s in train} & {s.group for s in val}
    assert sorted(s.name for s in train + val) == sorted(s.name for s in sources)
    again = split_by_patient(list(reversed(sources)), 0.34, seed=3)[1]
    assert sorted(s.name for s in again) == sorted(s.name for s in val)
    seen = {tuple(sorted(s.name for s in split_by_patient(sources, 0.34, k)[1])) for k in range(8)}
    assert len(seen) > 1, "the seed must change the split"
    with pytest.raises(InputError, match="between 0 and 1"):
        split_by_patient(sources, 1.0)


def test_cli_train_val_split_and_evaluate_on_glas_layout(glas, tmp_path: Path, capsys) -> None:
    root, _ = glas
    out = tmp_path / "run"
    main(["train", "--config", "tiny", "--data", str(root), "-o", str(out), "--steps", "2"])
    said = capsys.readouterr().out
    assert "validation:" in said and "(1 patient) held out" in said
    meta = json.loads((out / "best.json").read_text())["config"]
    assert [c["name"] for c in meta["model"]["classes"]] == ["Not gland", "Gland"]
    data = meta["data"]
    assert data["layout"] == "glas" and data["split"] == "train" and data["target"] == "binary"
    assert not set(data["train_images"]) & set(data["val_images"])
    assert all(n.startswith("train_") for n in data["train_images"] + data["val_images"])
    assert data["val_patients"] and data["data_mpp"] is None
    ev = tmp_path / "eval"
    main(["evaluate", "--model", str(out / "best.safetensors"), "--data", str(root), "-o", str(ev)])
    result = json.loads((ev / "eval.json").read_text())
    assert result["n_slides"] == 2  # test A only, binary target found from the model's classes
    assert result["data"] == {
        "folder": str(root.resolve()),
        "layout": "glas",
        "split": "test",
        "target": "binary",
        "mpp": {"testA_1": GLAS_MPP, "testA_2": GLAS_MPP},
        "seen_in_training": {},
    }
    # every pixel of each test image once, as the real-tissue benchmark scores it
    net = load_model(out / "best.safetensors", device="cpu")
    tests = discover_sources(root, split="test", target="binary")
    cm = confusion_per_image(net, tests).sum(0)
    assert result["unit"] == "image" and result["slides"] == [s.name for s in tests]
    assert np.array_equal(np.array(result["models"]["learned (best)"]["confusion"]), cm)
    assert cm.sum() == sum(s.size[0] * s.size[1] for s in tests)
    md = (ev / "eval.md").read_text()
    assert "Dice Gland" in md and "split test" in md and "0.62 µm/px" in md
    assert "Not a test score" not in md
    # Scoring the model on images it was trained or validated on is said, and recorded.
    capsys.readouterr()
    ev_all = tmp_path / "eval-all"
    main(
        ["evaluate", "--model", str(out / "best.safetensors"), "--data", str(root)]
        + ["--split", "all", "-o", str(ev_all)]
    )
    err = capsys.readouterr().err
    assert "warning: 6 of the 8 images were used to train or select" in err, err
    seen = json.loads((ev_all / "eval.json").read_text())["data"]["seen_in_training"]
    assert sorted(seen["learned (best)"]) == sorted(n for n, _, _ in GLAS if n.startswith("train"))
    assert (
        "Not a test score for learned (best):** 6 of these images"
        in (ev_all / "eval.md").read_text()
    )
    # Training on a test split is said; a used folder is refused before the data is read.
    main(
        ["train", "--config", "tiny", "--data", str(root), "--data-mpp", "0.5"]
        + ["--split", "test", "-o", str(tmp_path / "on-test"), "--steps", "1"]
    )
    said = capsys.readouterr()
    assert "warning: training on split 'test'" in said.err
    assert "validation: none held out" in said.out
    meta = json.loads((tmp_path / "on-test" / "best.json").read_text())["config"]
    assert meta["data"]["data_mpp"] == 0.5
    with pytest.raises(SystemExit) as refused:
        main(["train", "--config", "tiny", "--data", str(tmp_path / "absent"), "-o", str(out)])
    assert refused.value.code != 0
    assert "is not empty (use --resume" in capsys.readouterr().err  # not "no such data folder"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "evaluate",
                "--model",
                str(out / "best.safetensors"),
                "--data",
                str(root),
                "--target",
                "three-class",
                "-o",
                str(ev),
            ]
        )
    assert exc.value.code != 0
    assert "error:" in capsys.readouterr().err


def test_real_glas_and_monuseg_folders(shared_data: Path) -> None:
    labeled = shared_data / "labeled"
    if not (labeled / "glas-full" / "grade.csv").is_file():
        pytest.skip(f"glas-full not found under {labeled}")
    glas = read_layout(labeled / "glas-full")
    assert glas is not None and glas.kind == "glas"
    assert len(glas.select("train")) == 85 and len(glas.select("test")) == 60
    assert {im.mpp for im in glas.images} == {GLAS_MPP}
    train, val = split_by_patient(glas.select("train"), 0.2, seed=0)
    assert not {im.patient for im in train} & {im.patient for im in val}
    assert 10 <= len(val) <= 25
    items = {im.name: im for im in glas.images}
    for name, value in (("testA_2", 1), ("testA_3", 2)):  # benign, malignant (grade.csv)
        _, binary = glas.load(items[name], "binary")
        _, three = glas.load(items[name], "three-class")
        assert set(np.unique(binary)) == {0, 1}
        np.testing.assert_array_equal(three, binary * value)

    if not (labeled / "monuseg" / "split.csv").is_file():
        pytest.skip(f"monuseg not found under {labeled}")
    mono = read_layout(labeled / "monuseg")
    assert mono is not None and mono.kind == "monuseg"
    assert len(mono.select("train")) == 30 and len(mono.select("test")) == 7
    mpp = {im.name: im.mpp for im in mono.images}
    assert mpp["TCGA-21-5784-01Z-00-DX1"] == pytest.approx(0.2527)
    assert mpp["TCGA-18-5592-01Z-00-DX1"] == pytest.approx(MONUSEG_MPP)  # blank in split.csv
    assert len({im.patient for im in mono.images}) == 37
    train_m, val_m = split_by_patient(mono.select("train"), 0.2, seed=0)
    assert len(val_m) == 6 and not {i.patient for i in train_m} & {i.patient for i in val_m}
    test_src = discover_sources(labeled / "monuseg", split="test")
    assert len(test_src) == 7 and all(0.24 < s.mpp < 0.26 for s in test_src)


def test_seen_in_training_of_a_benchmark_model(glas) -> None:
    """A model whose record only names its data set (the bundled glas model: counts, not
    names) saw every image of that data set's official training split, and no other."""
    from wsiseg.train.evaluate import seen_in_training

    root, _ = glas
    layout = read_layout(root)
    record = {"dataset": "glas", "train_images": 68, "val_images": 17}
    names = [n for n, _, _ in GLAS]
    assert seen_in_training(record, names, layout) == [n for n in names if n.startswith("train")]
    assert seen_in_training(record, ["testA_1"], layout) == []
    assert seen_in_training({"dataset": "monuseg"}, names, layout) == []
    assert seen_in_training({"train_images": ["testA_2"]}, names, layout) == ["testA_2"]
