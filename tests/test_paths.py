"""Slide paths: spaces, unicode, leading dashes, dots; outputs stay inside OUT under safe,
deterministic names; OUT's other content is never touched; colliding names never
overwrite each other; --overwrite replaces only that slide's own outputs."""

from __future__ import annotations

import json
import random
import shutil
import unicodedata
from pathlib import Path

import pytest

from tests.segment_helpers import (
    assert_clean_failure,
    error_lines,
    run_cli,
    segment_cli,
    snapshot,
)
from wsiseg.errors import InputError
from wsiseg.io.names import (
    MAX_NAME_BYTES,
    assign_output_names,
    folder_claim,
    path_hash,
    safe_name,
    slide_checksum,
)
from wsiseg.pipeline.run import OUTPUT_FILES
from wsiseg.synthetic import SynthSpec, write_synthetic_slide


# -- names ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Präparat 1 – ü.tiff", "Präparat_1_ü"),
        ("標本 2.svs", "標本_2"),
        ("슬라이드.ndpi", "슬라이드"),
        ("-x.tiff", "x"),
        ("--", "slide-"),
        ("a..b.tiff", "a..b"),
        ("sub/../slide.tiff", "slide"),
        ("./slide.tiff", "slide"),
        ("..tiff", "slide-"),
        (".hidden.svs", "hidden"),
        ("my slide (1) [HE].svs", "my_slide_1_HE"),
        ("new\nline\ttab.tiff", "new_line_tab"),
        ("back\\slash.tiff", "back_slash"),
        ("case.OME.TIFF", "case"),
        ("séance.ome.tif", "séance"),
    ],
)
def test_safe_name(given: str, expected: str) -> None:
    name = safe_name(given)
    if expected.endswith("-"):
        assert name == expected.replace("-", "") + "-" + path_hash(given)
    else:
        assert name == expected
    _assert_safe(name)


def _assert_safe(name: str) -> None:
    assert name and name not in (".", "..")
    assert "/" not in name and "\\" not in name and "\0" not in name
    assert not name.startswith((".", "-")), name
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES + 9
    assert name == unicodedata.normalize("NFC", name)
    assert all(c.isalnum() or c in "._+-" for c in name), name


def test_safe_name_is_deterministic_and_normalised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nfc = unicodedata.normalize("NFC", "Präparat ü.tiff")
    nfd = unicodedata.normalize("NFD", "Präparat ü.tiff")
    assert nfc != nfd and safe_name(nfc) == safe_name(nfd) == "Präparat_ü"
    # Relative and absolute forms of one path give one name, also for the hashed form.
    monkeypatch.chdir(tmp_path)
    assert safe_name("..tiff") == safe_name(tmp_path / "..tiff")
    assert safe_name("sub/../..tiff") == safe_name(tmp_path / "..tiff")
    long = "Ä" * 300 + ".svs"
    a, b = safe_name(long), safe_name("Ä" * 299 + "B.svs")
    assert len(a.encode()) <= MAX_NAME_BYTES and a != b  # truncated, still distinct


def test_safe_name_fuzz() -> None:
    rng = random.Random(0)
    alphabet = "aZ09 -_.+/\\:*?\"<>|~'`$&;(){}[]#%!@^=,\t\n\u00e4\u4e2d\u0301\u200b\U0001f600"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        _assert_safe(safe_name(text + ".svs"))


def _slide(folder: Path, name: str, seed: int) -> Path:
    """A small synthetic slide saved as ``folder/name`` (12 tissue regions for the tiny model)."""
    src = write_synthetic_slide(
        folder / ".src", f"s{seed}", SynthSpec(width_px=512, height_px=384, seed=seed)
    ).image
    dest = folder / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest)
    return dest


def test_assign_names_disambiguates_collisions(tmp_path: Path) -> None:
    slides = [
        tmp_path / "a" / "s.tiff",
        tmp_path / "b" / "s.tiff",
        tmp_path / "a" / "s.svs",
        tmp_path / "a" / "S.tiff",
        tmp_path / "a" / "run.json.svs",
        tmp_path / "a" / "report.html.tiff",
        tmp_path / "a" / "other.tiff",
    ]
    out = tmp_path / "out"
    names = assign_output_names(slides, out, OUTPUT_FILES)
    assert names[0] == "s" and names[-1] == "other"
    for slide, name in zip(slides[1:4], names[1:4], strict=True):
        assert name == f"{safe_name(slide)}-{path_hash(slide)}"
    assert names[4] == f"run.json-{path_hash(slides[4])}"
    assert names[5] == f"report.html-{path_hash(slides[5])}"
    assert len({n.casefold() for n in names}) == len(names)
    assert assign_output_names(slides, out, OUTPUT_FILES) == names  # deterministic
    assert not out.exists()  # naming creates nothing


def test_folder_claims(tmp_path: Path) -> None:
    mine = _slide(tmp_path / "slides", "mine.tiff", 1)
    theirs = _slide(tmp_path / "slides", "theirs.tiff", 2)
    out = tmp_path / "out"
    assert folder_claim(out / "mine", mine, OUTPUT_FILES) == "free"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "mask.ome.tif").write_bytes(b"partial")  # an unfinished run
    (out / "mine" / ".summary.json.0123abcd.partial").write_text("{")
    assert folder_claim(out / "mine", mine, OUTPUT_FILES) == "free"
    summary = {"slide": str(mine), "slide_id": slide_checksum(mine)}
    (out / "mine" / "summary.json").write_text(json.dumps(summary))
    assert folder_claim(out / "mine", mine, OUTPUT_FILES) == "own"
    assert folder_claim(out / "mine", theirs, OUTPUT_FILES) == "other"
    moved = tmp_path / "moved.tiff"  # the same content elsewhere is the same slide
    shutil.copy(mine, moved)
    assert folder_claim(out / "mine", moved, OUTPUT_FILES) == "own"
    (out / "user").mkdir()
    (out / "user" / "notes.txt").write_text("keep")
    assert folder_claim(out / "user", mine, OUTPUT_FILES) == "other"
    (out / "afile").write_text("x")
    assert folder_claim(out / "afile", mine, OUTPUT_FILES) == "other"
    (out / "link").symlink_to(tmp_path)
    assert folder_claim(out / "link", mine, OUTPUT_FILES) == "other"
    assert assign_output_names([theirs], out, OUTPUT_FILES) == ["theirs"]
    renamed = tmp_path / "x" / "mine.tiff"  # another slide named "mine"
    _slide(tmp_path / "x", "mine.tiff", 3)
    assert assign_output_names([renamed], out, OUTPUT_FILES) == [f"mine-{path_hash(renamed)}"]


def test_no_free_name_is_an_error(tmp_path: Path) -> None:
    slide = tmp_path / "s.tiff"
    out = tmp_path / "out"
    for name in ("s", f"s-{path_hash(slide)}"):
        (out / name).mkdir(parents=True)
        (out / name / "user.txt").write_text("keep")
    with pytest.raises(InputError, match="no free output folder name"):
        assign_output_names([slide], out, OUTPUT_FILES)


# -- segment --------------------------------------------------------------------------
NAMES = {  # slide file -> expected output folder (None: the name plus its path hash)
    "Präparat 1 – ü.tiff": "Präparat_1_ü",
    "標本 2.tiff": "標本_2",
    "-x.tiff": "x",
    "x.tiff": None,  # "x" is taken by -x.tiff, which sorts first
    "a..b.tiff": "a..b",
    "user.tiff": None,  # OUT/user holds the user's own files
}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, model: Path, cluster: str) -> Path:
    """Slides with awkward names segmented into an OUT that already holds user files."""
    root = tmp_path_factory.mktemp("paths")
    slides = root / "slides"
    for seed, name in enumerate(NAMES, start=10):
        _slide(slides, name, seed)
    out = root / "out"
    (out / "user").mkdir(parents=True)
    (out / "user" / "notes.txt").write_text("mine\n")
    (out / "readme.txt").write_text("mine too\n")
    from wsiseg.cli import main

    main(["segment", str(slides), "-o", str(out), "--model", str(model), "--cluster", cluster])
    return root


def _expected(root: Path, slide: str) -> str:
    name = NAMES[slide]
    path = root / "slides" / slide
    return name if name is not None else f"{safe_name(path)}-{path_hash(path)}"


def test_awkward_names_land_in_safe_folders(first_run: Path) -> None:
    out = first_run / "out"
    run = json.loads((out / "run.json").read_text())
    got = {Path(s["slide"]).name: (s["status"], Path(s["out"])) for s in run["slides"]}
    assert set(got) == set(NAMES)
    for slide, (status, folder) in got.items():
        assert status == "done", slide
        assert folder == out / _expected(first_run, slide), slide
        summary = json.loads((folder / "summary.json").read_text())
        assert Path(summary["slide"]).name == slide
    # Everything is inside OUT; the user's files are as they were.
    expected = {_expected(first_run, s) for s in NAMES} | {
        "user",
        "readme.txt",
        "run.json",
        "report.html",
    }
    assert {p.name for p in out.iterdir()} == expected
    assert (out / "user" / "notes.txt").read_text() == "mine\n"
    assert [p.name for p in (out / "user").iterdir()] == ["notes.txt"]
    assert (out / "readme.txt").read_text() == "mine too\n"
    # Nothing was written beside the slides.
    assert sorted(p.name for p in (first_run / "slides").iterdir()) == sorted([".src", *NAMES])


def test_dash_names_as_arguments(
    first_run: Path, model: Path, cluster: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """``-x.tiff`` after ``--`` or as ``./-x.tiff``: the same slide, skipped as done."""
    out = first_run / "out"
    before = snapshot(out / "x")
    monkeypatch.chdir(first_run / "slides")
    for form in (["-o", str(out), "--", "-x.tiff"], ["./-x.tiff", "-o", str(out)]):
        code, stdout, err = segment_cli(form, model, cluster, capsys)
        assert code == 0, err
        assert "skipped" in stdout and str(out / "x") in stdout
    code, stdout, err = run_cli(["info", "--json", "--", "-x.tiff"], capsys)
    assert code == 0, err
    assert json.loads(stdout)[0]["dimensions"][0] == [512, 384]
    assert snapshot(out / "x") == before


def test_name_too_long_for_the_file_system(tmp_path: Path, capsys) -> None:
    path = tmp_path / ("ä" * 200 + ".svs")  # 404 bytes: no file system takes it
    code, out, err = run_cli(["info", str(path)], capsys)
    assert code == 1 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    (name,) = assign_output_names([path], tmp_path / "out", OUTPUT_FILES)
    assert len(name.encode()) <= MAX_NAME_BYTES


def test_same_slide_twice_is_segmented_once(
    first_run: Path, model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    slides = first_run / "slides"
    (slides / "sub").mkdir(exist_ok=True)
    out = first_run / "out"
    args = [str(slides / "a..b.tiff"), str(slides / "sub" / ".." / "a..b.tiff"), "-o", str(out)]
    code, stdout, err = segment_cli(args, model, cluster, capsys)
    assert code == 0, err
    lines = [line.split() for line in stdout.splitlines() if line.strip()]
    assert [(w[0], Path(w[-1]).name) for w in lines] == [("skipped", "a..b")]
    # run.json holds every slide of OUT (runs merge into it), this one once.
    run = json.loads((out / "run.json").read_text())
    mine = [s for s in run["slides"] if s["name"] == "a..b"]
    assert [(s["status"], Path(s["out"]).name) for s in mine] == [("skipped", "a..b")]


def test_colliding_slide_in_a_later_run_gets_its_own_folder(
    first_run: Path, model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    """Another slide named like a done one, also with --overwrite: the done one is untouched."""
    out = first_run / "out"
    before = {p.name: snapshot(p) for p in out.iterdir() if p.is_dir()}
    other = _slide(tmp_path / "elsewhere", "標本 2.tiff", 99)
    for extra in ([], ["--overwrite"]):
        code, _, err = segment_cli([str(other), "-o", str(out), *extra], model, cluster, capsys)
        assert code == 0, err
    own = out / f"標本_2-{path_hash(other)}"
    assert json.loads((own / "summary.json").read_text())["slide"] == str(other)
    for name, snap in before.items():
        assert snapshot(out / name) == snap, name


def test_overwrite_replaces_only_that_slides_outputs(
    first_run: Path, model: Path, cluster: str, capsys
) -> None:
    out = first_run / "out"
    slide = first_run / "slides" / "Präparat 1 – ü.tiff"
    target = out / "Präparat_1_ü"
    others = {p.name: snapshot(p) for p in out.iterdir() if p.is_dir() and p != target}
    old = snapshot(target)
    args = [str(slide), "-o", str(out), "--output-mpp", "4.0"]
    code, _, err = segment_cli(args, model, cluster, capsys)  # other settings: refused
    assert code == 1 and "--overwrite" in err
    assert_clean_failure(err)
    assert len(error_lines(err)) == 1 and snapshot(target) == old
    code, _, err = segment_cli([*args, "--overwrite"], model, cluster, capsys)
    assert code == 0, err
    assert json.loads((target / "summary.json").read_text())["output_mpp"] == 4.0
    assert snapshot(target) != old
    for name, snap in others.items():
        assert snapshot(out / name) == snap, name
    assert (out / "readme.txt").read_text() == "mine too\n"


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_out_that_cannot_be_a_folder(where: str, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("mine\n")
    out = blocker if where == "a file" else blocker / "out"
    slide = _slide(tmp_path / "slides", "s.tiff", 1)
    for args in (
        ["segment", str(slide), "-o", str(out)],
        ["info", str(slide), "-o", str(out / "i.json")],
    ):
        code, _, err = run_cli(args, capsys)
        assert code == 1, args
        assert_clean_failure(err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "blocker" in lines[0], lines
    assert blocker.read_text() == "mine\n"


def test_shards_agree_on_names(model: Path, cluster: str, tmp_path: Path, capsys) -> None:
    """Names come from the whole batch: shard 1/2 alone still leaves ``s`` to ``a/s.tiff``."""
    a = _slide(tmp_path / "a", "s.tiff", 21)
    b = _slide(tmp_path / "b", "s.tiff", 22)
    out = tmp_path / "out"
    code, _, err = segment_cli(
        [str(b), str(a), "-o", str(out), "--shard", "1/2"], model, cluster, capsys
    )
    assert code == 0, err
    assert (out / f"s-{path_hash(b)}" / "summary.json").is_file()
    assert not (out / "s").exists()
