"""The HTML run report: self-contained, escaped, every slide shown; loads in Chromium."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import tempfile
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from wsiseg.export import report
from wsiseg.export.overlay import render_overlay, write_png
from wsiseg.pipeline.outputs import RunRecord, SlideRecord, SlideSummary


def _entries(slides: list[dict[str, Any]]) -> list[tuple[SlideRecord, SlideSummary | None]]:
    """Slide dicts (as in run.json, with their summary) as the records the report reads."""
    return [
        (
            SlideRecord.from_json(s),
            SlideSummary.from_json(s["summary"]) if isinstance(s.get("summary"), dict) else None,
        )
        for s in slides
    ]


def render_report(run: dict[str, Any], slides: list[dict[str, Any]]) -> str:
    return report.render_report(RunRecord.from_json(run), _entries(slides))


def write_report(path: Path, run: dict[str, Any], slides: list[dict[str, Any]]) -> Path:
    return report.write_report(path, RunRecord.from_json(run), _entries(slides))


CLASSES = [
    {"name": "Background", "color": [255, 255, 255]},
    {"name": "Stroma", "color": [150, 200, 150]},
    {"name": "Benign gland", "color": [20, 120, 220]},
    {"name": "Tumor", "color": [200, 0, 0]},
]
EVIL_PATH = '/slides/<b>evil & "slide"</b>.svs'
EVIL_NAME = '<img src=x onerror=alert(1)> & "glass".svs'  # no "/": the whole file name
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr", "col", "area", "base"}


def _run() -> dict[str, Any]:
    return {
        "model": "/models/default.safetensors",
        "model_sha256": "8ceea18ff3ae646c32aaef4aea194134a785f0a6a9e9c32135d603da0c3578ff",
        "model_config": {
            "sampler": "learned",
            "classes": CLASSES,
            "task_mpp": 0.5,
            "region_px": 1024,
            "sample_px": 64,
        },
        "segment_config": {"output_mpp": None, "device": "cpu", "thumb_mpp": 8.0},
        "cluster": "local",
        "workers": 2,
        "slides": [],
        "wall_seconds": 12.5,
    }


def _summary(**extra: Any) -> dict[str, Any]:
    return {
        "sampler": "learned",
        "slide_mpp": 0.25,
        "output_mpp": 2.0,
        "regions": 34,
        "classes": {
            "Background": {"area_mm2": 20.5, "fraction_of_tissue": None},
            "Stroma": {"area_mm2": 3.54594, "fraction_of_tissue": 0.790204},
            "Benign gland": {"area_mm2": 0.85564, "fraction_of_tissue": 0.190677},
            "Tumor": {"area_mm2": 0.085792, "fraction_of_tissue": 0.019119},
        },
        "tissue_area_mm2": 4.487372,
        "pixels_decoded_per_tissue_pixel": 0.107079,
        "seconds": {
            "read": 3.1,
            "saliency": 0.4,
            "sampling": 2.2,
            "segmenter": 17.9,
            "backprojection": 0.6,
            "write": 1.064,
        },
        "features": 149,
        "wall_seconds": 14.373,
        **extra,
    }


def _slide_folder(folder: Path) -> Path:
    """A slide output folder with a small thumbnail and a real overlay (mask + density)."""
    folder.mkdir(parents=True)
    h, w = 60, 90
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - 30) / 22.0) ** 2 + ((xx - 45) / 38.0) ** 2 < 1
    thumb = np.full((h, w, 3), 244, np.uint8)
    thumb[inside] = (214, 140, 190)
    labels = np.where(inside, 1, 0).astype(np.uint8)
    labels[inside & (((yy - 30) ** 2 + (xx - 30) ** 2) < 64)] = 2
    labels[inside & (((yy - 28) ** 2 + (xx - 60) ** 2) < 36)] = 3
    density = np.exp(-(((yy - 30) / 15.0) ** 2 + ((xx - 50) / 20.0) ** 2)).astype(np.float32)
    colours = [tuple(c["color"]) for c in CLASSES]
    Image.fromarray(thumb).save(folder / "thumbnail.png")
    overlay = render_overlay(
        thumb, labels, colours, density=density, legend=[c["name"] for c in CLASSES]
    )
    write_png(folder / "overlay.png", overlay)
    return folder


def _slides(tmp_path: Path) -> list[dict[str, Any]]:
    good = _slide_folder(tmp_path / "out" / "biopsy-01")
    return [
        {
            "slide": "/slides/biopsy-01.svs",
            "status": "done",
            "message": "",
            "out": str(good),
            "summary": _summary(mpp_source="override"),
        },
        {
            "slide": EVIL_PATH,
            "status": "failed",
            "message": f"{EVIL_PATH}: truncated file <tile 12> & more",
            "out": None,
            "summary": {},
        },
        {
            "slide": EVIL_NAME,
            "status": "no tissue",
            "message": "no tissue found on the slide",
            "out": None,
            "summary": {},
        },
    ]


class _Page(HTMLParser):
    """Collects slide sections, images and links, and checks that tags are balanced."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.hrefs: list[str] = []
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and "slide" in (a.get("class") or "").split():
            self.sections.append(a.get("id") or "")
        if tag == "img":
            self.images.append(a)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"] or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
            return
        self.stack.pop()


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    assert not page.errors, page.errors
    assert not page.stack, f"unclosed tags: {page.stack}"
    return page


def _text_of(html: str, tag: str) -> str:
    """The text of the page's first ``tag`` element, tags removed, entities decoded."""
    start = html.index(f"<{tag}")
    part = html[start : html.index(f"</{tag}>", start)]
    return unescape(re.sub(r"<[^>]+>", " ", part))


def test_report_sections_images_and_escaping(tmp_path: Path) -> None:
    slides = _slides(tmp_path)
    path = write_report(tmp_path / "report.html", _run(), slides)
    text = path.read_text(encoding="utf-8")
    page = _parse(text)

    # One section per slide, unique ids, each linked from the overview table.
    assert len(page.sections) == 3
    assert len(set(page.sections)) == 3 and all(page.sections)
    assert {f"#{s}" for s in page.sections} <= set(page.hrefs)

    # The done slide's two images, embedded as decodable PNG data URIs of the right size.
    assert len(page.images) == 2
    sizes = []
    for img in page.images:
        src = img["src"] or ""
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            sizes.append(im.size)
        assert img.get("alt")
    assert sizes[0] == (90, 60)
    assert sizes[1] == Image.open(tmp_path / "out" / "biopsy-01" / "overlay.png").size

    # Nothing from the network.
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower()

    # Text escaped: the evil names never appear raw, the escaped forms do.
    assert "<b>evil" not in text and "<img src=x" not in text
    assert "&lt;b&gt;evil &amp; &quot;slide&quot;&lt;/b&gt;.svs" in text
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;glass&quot;.svs" in text
    assert "truncated file &lt;tile 12&gt; &amp; more" in text

    # Warnings, statuses, settings, class table.
    assert "Failed" in text and "No tissue found" in text
    assert "--mpp" in text and "Pixel size given by hand" in text
    assert "1/256 of pixels" in text and "sha256 8ceea18ff3ae" in text
    assert "rgb(200, 0, 0)" in text and "Tumor" in text
    assert "3.55" in text and "79.0&#8201;%" in text and "0.0858" in text
    assert "0.107" in text  # pixels decoded per tissue pixel


def test_refusals_forced_warnings_and_notice(tmp_path: Path) -> None:
    """Refused and forced slides, admission warnings and the model card's notice (escaped)."""
    from wsiseg.models.checkpoint import DEFAULT_NOTICE

    good = _slide_folder(tmp_path / "out" / "forced")
    coarse = "pixel size 16.8 µm/px is 33.6x coarser than the model's 0.5 µm/px <x>"
    slides = [
        {
            "slide": "/slides/dapi.ndpi",
            "status": "refused",
            "message": "refused: not a brightfield scan (fluorescence: ...)",
            "refusals": ["not a brightfield scan (fluorescence: ...)"],
            "out": None,
        },
        {
            "slide": "/slides/coarse.dcm",
            "status": "done",
            "out": str(good),
            "refusals": [coarse],
            "warnings": ["tissue colour is far from the model's training images"],
            "forced": True,
            "summary": _summary(),
        },
    ]
    run = {**_run(), "notice": 'Research model <GlaS terms> & "not for diagnosis"'}
    text = render_report(run, slides)
    _parse(text)
    escaped = "Research model &lt;GlaS terms&gt; &amp; &quot;not for diagnosis&quot;"
    assert text.count(escaped) == 4  # printed page foot, header, both slide sections
    assert "Refused." in text and "not a brightfield scan (fluorescence: ...)" in text
    assert "Segmented with --force." in text and "33.6x coarser" in text
    assert "&lt;x&gt;" in text and "<x>" not in text
    assert "<strong>Warning.</strong>tissue colour is far from the model&#x27;s" in text
    # A run recorded before notices existed: the default notice.
    assert DEFAULT_NOTICE in render_report(_run(), slides)


def test_header_and_table_describe_the_model_of_the_results(tmp_path: Path) -> None:
    """Slides kept from a run with another model: the header takes that model's sampler and
    pixel size from the summaries (budget "varies"), and the table its classes, not the
    settings of this run's model, which only refused a slide."""
    other = {
        "model": "/models/glas.safetensors",
        "model_sha256": "f" * 64,
        "notice": "Research use only (GlaS)",
        "task_mpp": 0.62,
        "region_px": 512,
        "sample_px": 128,
        "colours": {"Not gland": [255, 255, 255], "Gland": [20, 120, 220]},
        "classes": {
            "Not gland": {"area_mm2": 0.9, "fraction_of_tissue": None},
            "Gland": {"area_mm2": 0.06, "fraction_of_tissue": 0.0591},
        },
    }
    slides = [
        {
            "slide": "/slides/cmu.svs",
            "status": "skipped",
            "out": str(_slide_folder(tmp_path / "out" / "cmu")),
            "summary": _summary(**other),
        },
        {
            "slide": "/slides/dapi.ndpi",
            "status": "refused",
            "message": "refused: dark",
            "out": None,
        },
    ]
    text = render_report(_run(), slides)
    _parse(text)
    header = _text_of(text, "header")
    assert "glas.safetensors" in header and "1/256" not in header
    header = " ".join(header.split())
    assert "Budget 1/16 of pixels (128² samples per 512² region)" in header
    assert "Task pixel size 0.620 µm/px" in header and "0.500 µm/px" not in header
    # the results' own class colours, in the table and in the slide's class areas
    blue = "rgb(20, 120, 220)"
    assert blue in text[text.index("<table") : text.index("</table>")]
    assert blue in text[text.index('<section class="slide') :]
    section = " ".join(text[text.index('<section class="slide') :].split())
    assert "learned, 1/16 of pixels" in unescape(re.sub(r"<[^>]+>", " ", section))
    table = _text_of(text, "table")
    assert "Gland" in table and "5.9" in table
    assert "Tumor" not in table and "Not gland" not in table
    # A summary written before the budget was recorded, beside one of another model:
    # the header cannot name one budget.
    old = dict(slides[0], summary=_summary(**{**other, "region_px": 0, "sample_px": 0}))
    header = " ".join(_text_of(render_report(_run(), [old, *slides]), "header").split())
    assert "Budget varies" in header
    # With the run's own model the run's settings are shown, as before.
    own = _summary(model="/models/default.safetensors", model_sha256=_run()["model_sha256"])
    slides[0]["summary"] = own
    header = _text_of(render_report(_run(), slides), "header")
    assert "1/256 of pixels" in header and "0.500 µm/px" in header


def test_missing_and_broken_images_give_notes(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "s"
    folder.mkdir(parents=True)
    (folder / "overlay.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    slides = [
        {"slide": "/x/s.svs", "status": "done", "message": "", "out": str(folder), "summary": {}},
        {"slide": "/x/t.svs", "status": "skipped", "message": "", "out": None, "summary": {}},
    ]
    text = write_report(tmp_path / "r.html", _run(), slides).read_text()
    page = _parse(text)
    assert len(page.sections) == 2 and not page.images
    assert "thumbnail.png not found" in text
    assert "overlay.png could not be read" in text
    assert "No output folder recorded" in text


def test_large_thumbnail_is_downscaled(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 2400, 3), np.uint8)).save(folder / "thumbnail.png")
    slides = [{"slide": "big.svs", "status": "done", "message": "", "out": str(folder)}]
    page = _parse(render_report(_run(), slides))
    (img,) = page.images
    src = img["src"] or ""
    assert src.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
        assert im.size == (1600, 200)


def test_large_overlay_is_reduced_band_by_band(tmp_path: Path) -> None:
    """An overlay wider than the page's limit, written by wsiseg, is brought to that width
    while it is decoded band by band: about what resizing the whole image gives, with
    temporaries far below the decoded image (PIL held it at 4 bytes a pixel)."""
    import tracemalloc

    folder = tmp_path / "big"
    folder.mkdir()
    h, w = 1500, 7000  # 31 MB of RGB
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx // 7) % 256, (yy // 5) % 256, ((xx + yy) // 50) % 256], -1).astype(np.uint8)
    write_png(folder / "overlay.png", rgb)
    tracemalloc.start()
    try:
        small = report._box_reduced_png(folder / "overlay.png", 3200)  # the decoding part
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert small is not None and small.size == (3200, round(h * 3200 / w))
    # the box-reduced image (k = 2: a quarter of the pixels) and one band
    assert peak < rgb.nbytes / 2, f"peak {peak / 2**20:.1f} MiB"
    emb = report._embed_image(folder / "overlay.png", 3200, photo=False)
    assert emb.uri is not None and (emb.width, emb.height) == (3200, round(h * 3200 / w))
    with Image.open(io.BytesIO(base64.b64decode(emb.uri.split(",", 1)[1]))) as im:
        got = np.asarray(im.convert("RGB"), np.float64)
    want = np.asarray(Image.fromarray(rgb).resize((3200, emb.height), Image.Resampling.LANCZOS))
    assert np.abs(got - want).mean() < 4.0


def test_odd_inputs_do_not_crash(tmp_path: Path) -> None:
    slides: list[dict[str, Any]] = [
        {"slide": "", "status": "weird", "message": None, "out": None, "summary": None},
        {
            "slide": "a.svs",
            "status": "done",
            "out": str(tmp_path),
            "summary": {
                "classes": {"X": "bad", "Y": {"area_mm2": "1", "fraction_of_tissue": float("nan")}},
                "regions": True,
                "seconds": "oops",
                "slide_mpp": None,
            },
        },
    ]
    page = _parse(render_report({"model_config": {"classes": "nope"}}, slides))
    assert len(page.sections) == 2
    page = _parse(render_report({}, []))
    assert page.sections == []


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text("old")
    write_report(path, _run(), [])
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_a_report_knows_itself(tmp_path: Path) -> None:
    """`is_own_report`: a written report, yes; one edited by a byte, no; a report from
    before the checksum (its title), yes; any other file, no."""
    path = write_report(tmp_path / "report.html", _run(), _slides(tmp_path))
    assert report.is_own_report(path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("Segmentation report", "Segmentation report!"), encoding="utf-8")
    assert not report.is_own_report(path)
    older = re.sub(r'<meta name="wsiseg-digest" content="[0-9a-f]*">', "", text)
    path.write_text(older, encoding="utf-8")
    assert report.is_own_report(path)
    path.write_text("<html><title>my notes</title></html>")
    assert not report.is_own_report(path)
    assert not report.is_own_report(tmp_path / "absent.html")


# --------------------------------------------------------------------------- browser
def _chrome() -> Any:
    """A headless Chromium driver; never downloads a browser or a driver."""
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.skip(
            f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("needs selenium (pip install selenium)")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never fetch anything
    user_dir = tempfile.mkdtemp(prefix="wsiseg-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_dir}",
        "--window-size=1200,900",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    driver._wsiseg_user_dir = user_dir  # removed in _quit
    return driver


def _quit(driver: Any) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(driver._wsiseg_user_dir, ignore_errors=True)


@pytest.mark.browser
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    slides = _slides(tmp_path)
    path = write_report(tmp_path / "report.html", _run(), slides)
    sections = _parse(path.read_text()).sections
    driver = _chrome()
    try:
        driver.get(path.resolve().as_uri())
        state = driver.execute_script(
            """
            return {
              ready: document.readyState,
              sections: Array.from(document.querySelectorAll('section.slide')).map(s => s.id),
              images: Array.from(document.images).map(
                i => ({complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                       shown: i.getBoundingClientRect().width})),
              scrollWidth: document.documentElement.scrollWidth,
              innerWidth: window.innerWidth,
              height: document.documentElement.scrollHeight,
            };
            """
        )
        logs = driver.get_log("browser")
        severe = [e for e in logs if e.get("level") == "SEVERE"]
        assert not severe, severe
        assert state["ready"] == "complete"
        assert state["sections"] == sections and len(sections) == 3
        assert len(state["images"]) == 2
        for img in state["images"]:
            assert img["complete"] and img["w"] > 0 and img["h"] > 0 and img["shown"] > 0, img
        # Fits a 1200 px window: no horizontal scrolling.
        assert state["scrollWidth"] <= state["innerWidth"], state
        driver.set_window_size(1200, min(int(state["height"]) + 120, 6000))
        png = driver.get_screenshot_as_png()
    finally:
        _quit(driver)
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32)
    assert shot.shape[1] >= 1000
    assert float(shot.std()) > 10.0, "screenshot is blank"
    assert len(np.unique(shot.reshape(-1, 3)[::7], axis=0)) > 50
