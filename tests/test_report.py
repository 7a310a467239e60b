"""legend.report / `legend report`: the page is valid HTML, its images are real PNGs, and it renders."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from typer.testing import CliRunner

from legend.cli import app
from legend.directions import Direction
from legend.report import build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
HOSTILE = "<script>alert('x')</script> & <b>bold</b>"


class TagChecker(HTMLParser):
    """Fails on any end tag that does not close the innermost open element; collects <img> sources."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> TagChecker:
    checker = TagChecker()
    checker.feed(page)
    checker.close()
    assert checker.doctype and checker.stack == [], f"unclosed: {checker.stack}"
    return checker


def check_png(payload: bytes) -> np.ndarray:
    assert payload[:8] == PNG_MAGIC and len(payload) > 2000
    pixels = imread(io.BytesIO(payload), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0.01  # not a blank canvas
    return pixels


def write_annotated(folder, n=60, seed=0):
    """An annotated jsonl with sidecar (bin edges, direction path) and a direction folder with a sweep."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(0.3, 1.0, n)
    raw[7] = -9.0  # the most negative pair carries hostile text
    rows = [
        {
            "prompt": f"question {i}?" if i != 7 else HOSTILE,
            "chosen": "safe " * int(rng.integers(1, 30)),
            "rejected": ("unsafe " * int(rng.integers(1, 30))) if i != 7 else HOSTILE,
            "margin_raw": float(m),
            "margin": float(np.searchsorted([0.0, 0.5, 1.2], m)),
        }
        for i, m in enumerate(raw)
    ]
    data = folder / "ann.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sweep = [
        {
            "layer": layer,
            "pooling": pooling,
            "estimator": estimator,
            "accuracy": 0.5 + 0.01 * layer,
            "auc": 0.55 + 0.01 * layer + (0.05 if pooling == "mean" else 0.0),
        }
        for layer in range(5)
        for pooling in ("last", "mean")
        for estimator in ("mean_difference", "pca")
    ]
    sweep.append({"layer": 9, "pooling": "last"})  # incomplete rows are skipped, not fatal
    Direction(
        vector=torch.ones(8) / 8**0.5,
        layer=3,
        pooling="mean",
        model_id="tiny",
        fingerprint="f0",
        hidden_size=8,
        num_layers=4,
        extra={"sweep": sweep},
    ).save(folder / "direction")
    sidecar = {
        "binning": {"levels": 4, "edges": [0.0, 0.5, 1.2], "values": [0, 1, 2, 3]},
        "direction_path": str(folder / "direction"),
        "summary": {"direction": {"name": "safety", "layer": 3, "pooling": "mean"}},
    }
    (folder / "ann.jsonl.legend.json").write_text(json.dumps(sidecar))
    return data, raw


def test_report_is_valid_html_with_real_pngs_embedded_and_on_disk(tmp_path):
    data, raw = write_annotated(tmp_path)
    result = build_report(data, tmp_path / "out" / "report.html", n_bootstrap=100, worst=5)
    page = result.html_path.read_text(encoding="utf-8")
    checker = parse(page)
    assert set(result.images) == {"margins", "agreement", "length", "sweep"}
    assert len(checker.images) == 4
    for source in checker.images:
        assert source.startswith("data:image/png;base64,")
        check_png(base64.b64decode(source.split(",", 1)[1]))
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in checker.images}
    assert {p.read_bytes() for p in result.images.values()} == embedded
    assert all(
        p.parent == result.html_path.parent / f".{result.html_path.name}.figures" for p in result.images.values()
    )
    # Texts are escaped: the hostile string is shown as text, never as markup.
    assert "<script>" not in page and "&lt;script&gt;" in page
    text = "".join(checker.text)
    assert HOSTILE in text
    # The worst pairs are the most negative margins, in order.
    worst_table = page.split('<section id="worst-pairs">', 1)[1]
    rows_shown = [int(m) for m in re.findall(r'<tr><td class="num">(\d+)</td>', worst_table)]
    assert rows_shown == list(np.argsort(raw)[:5] + 1)
    assert result.metrics["metrics"]["share_positive"]["value"] == pytest.approx((raw > 0).mean())
    assert not list(tmp_path.rglob(".*.tmp"))


def test_report_without_sweep_or_labels_says_so(tmp_path):
    data, _ = write_annotated(tmp_path)
    (tmp_path / "ann.jsonl.legend.json").unlink()  # no sidecar: no direction, no bin edges
    result = build_report(data, tmp_path / "plain.html", labels=False, worst=3)
    page = result.html_path.read_text(encoding="utf-8")
    checker = parse(page)
    assert set(result.images) == {"margins", "length"} and len(checker.images) == 2
    assert "No sweep in this direction artifact" in page and "Not computed (--no-labels)" in page
    # A sidecar naming a direction folder that is gone is a note, not an error.
    write_annotated(tmp_path)
    shutil.rmtree(tmp_path / "direction")
    result = build_report(data, tmp_path / "gone.html", n_bootstrap=0)
    assert any("not found" in note for note in result.notes)


def test_cli_report_smoke_and_metrics_file(tmp_path):
    data, _ = write_annotated(tmp_path)
    runner = CliRunner()
    assert (
        runner.invoke(
            app, ["evaluate", "--data", str(data), "--json", str(tmp_path / "m.json"), "--bootstrap", "50"]
        ).exit_code
        == 0
    )
    result = runner.invoke(
        app,
        [
            "report",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "r.html"),
            "--metrics",
            str(tmp_path / "m.json"),
            "--worst",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    parse(page)
    assert "50 resamples" in page  # the given metrics were used, not recomputed with the default 1000
    bad = runner.invoke(
        app,
        ["report", "--data", str(data), "--out", str(tmp_path / "x.html"), "--direction", str(tmp_path / "nowhere")],
    )
    assert bad.exit_code == 2 and "not a direction folder" in bad.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not installed (apt-get install -y chromium): cannot take the headless screenshot of the report",
)
def test_report_screenshot_is_not_blank(tmp_path):
    data, _ = write_annotated(tmp_path)
    result = build_report(data, tmp_path / "report.html", n_bootstrap=50)
    shot = tmp_path / "shot.png"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        result.html_path.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    pixels = check_png(shot.read_bytes())[..., :3]
    not_white = (pixels < 0.95).any(axis=-1).mean()
    assert 0.03 < not_white < 0.9  # text, tables and figures; neither blank nor a solid block
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50  # figures have colours


def test_report_shows_the_random_floor_from_the_differences_beside_the_data(tmp_path):
    from legend.annotation.differences import differences_path, write_differences
    from legend.quality import random_floor

    data, raw = write_annotated(tmp_path)
    rng = np.random.default_rng(1)
    v = np.ones(8) / 8**0.5
    noise = rng.normal(size=(len(raw), 8))
    noise -= np.outer(noise @ v, v)  # orthogonal to the direction: D @ v == raw exactly
    diffs = np.outer(raw, v) + noise
    write_differences(differences_path(data), {"margin_raw": diffs})
    result = build_report(data, tmp_path / "r.html", n_bootstrap=50, n_random=200)
    floor = result.metrics["random_floor"]
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    expected = random_floor(
        diffs.astype(np.float32), raw, [r["chosen"] for r in rows], [r["rejected"] for r in rows], n_directions=200
    )
    assert floor["metrics"]["share_positive"]["floor"] == pytest.approx(expected["metrics"]["share_positive"]["floor"])
    page = (tmp_path / "r.html").read_text()
    assert 'id="random-floor"' in page and "Against the random-direction floor" in page
    assert f"{floor['metrics']['share_positive']['floor']:.4g}" in page


def test_report_without_differences_says_there_is_no_floor_and_warns_on_saturation(tmp_path):
    data, _ = write_annotated(tmp_path)
    config = json.loads((tmp_path / "direction" / "config.json").read_text())
    config["heldout"] = {"accuracy": 1.0, "auc": 1.0, "n_test": 13}
    (tmp_path / "direction" / "config.json").write_text(json.dumps(config))
    result = build_report(data, tmp_path / "r.html", n_bootstrap=0)  # recompute=False: no encoding
    page = (tmp_path / "r.html").read_text()
    assert result.metrics["random_floor"] is None and "No random-direction floor" in page
    assert any("saturates" in note for note in result.notes) and "NOT evidence" in page
