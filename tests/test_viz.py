"""r2.viz on hand-built plain predictions: the plot, the SVG curve, the page in headless Chromium, WebVTT chapters."""
import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.colors
import pytest

from r2 import video, viz

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
                None)


def _pred(path: str = "x.mp4", duration: float = 10.0) -> dict:
    return {"video": path, "duration": duration, "fps": 0.5, "n_frames": 5, "windows": [[0, 5]], "window_frames": 5,
            "queries": [{"query": "a <b> query", "pred_relevant_windows": [[2.0, 6.0, 0.8], [4.0, 8.0, 0.6],
                                                                           [0.0, 2.0, 0.0]],
                         "pred_saliency_scores": [0.01, 0.03, 0.06, 0.02, 0.04]}]}


def _video(path: Path, seconds: int = 10) -> Path:
    subprocess.run([video.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", f"testsrc=s=64x48:r=10:d={seconds}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def test_viz_imports_no_predictor():
    code = "import r2.viz, sys; assert 'r2.predict' not in sys.modules, 'r2.viz imported r2.predict'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_time_ticks_are_round_and_cover_the_video():
    assert viz.time_ticks(10) == list(range(0, 11))
    assert viz.time_ticks(150) == list(range(0, 151, 15)) and viz.time_ticks(160) == list(range(0, 151, 30))
    assert viz.time_ticks(7200)[:3] == [0, 900, 1800] and len(viz.time_ticks(7200)) <= 11
    assert viz.clock(75) == "1:15" and viz.clock(3725) == "1:02:05"


def test_svg_has_axis_scale_and_moments_coloured_apart():
    svg = viz.saliency_svg(_pred(), 0, {"a <b> query": [[4.0, 8.0]]}, top=5)
    bands = re.findall(r'class="moment-band"[^>]*fill="(#[0-9a-f]{6})"', svg)
    assert len(bands) == 2 and bands[0] != bands[1]  # the zero-score window is left out; overlapping ones differ
    assert re.findall(r'class="time-label"[^>]*>([^<]+)<', svg) == [f"0:{s:02d}" for s in range(11)]
    assert re.findall(r'class="score-label"[^>]*>([^<]+)<', svg) == ["0.00", "0.50", "1.00"]  # fixed 0..1 scale
    assert 'class="truth"' in svg and "&lt;b&gt;" in svg


def test_plot_has_thumbnails_fixed_scale_outside_legend_and_moment_colours(tmp_path):
    source = _video(tmp_path / "v.mp4")
    fig = viz.prediction_figure(_pred(str(source)), {"a <b> query": [[4.0, 8.0]]}, top=5)
    curve, strip = fig.axes
    assert len(strip.images) == viz.THUMBNAILS and strip.get_xlim() == (0, 10.0)
    assert curve.get_ylim() == (0.0, 1.0)  # a 0.01-0.06 curve is not stretched over the panel
    assert any("range 0.01 to 0.06" in t.get_text() for t in curve.texts)
    fig.canvas.draw()
    assert curve.get_legend().get_window_extent().x0 >= curve.get_window_extent().x1  # beside, not over, the curve
    spans = [matplotlib.colors.to_hex(p.get_facecolor()) for p in curve.patches][:2]
    assert spans == [viz.MOMENT_COLOURS[0], viz.MOMENT_COLOURS[1]]
    path = viz.plot_prediction(_pred(str(source)), tmp_path / "p.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_chapters_are_webvtt_cues_in_time_order(tmp_path):
    pred = _pred()
    pred["queries"].append({"query": "x --> y & z", "pred_relevant_windows": [[0.5, 1.25, 0.9]],
                            "pred_saliency_scores": [0.0] * 5})
    text = viz.write_chapters(pred, tmp_path / "c.vtt", top=5).read_text()
    assert text == ("WEBVTT\n\n"
                    "1\n00:00:00.500 --> 00:00:01.250\nx -&gt; y &amp; z #1 (0.90)\n\n"
                    "2\n00:00:02.000 --> 00:00:06.000\na &lt;b&gt; query #1 (0.80)\n\n"
                    "3\n00:00:04.000 --> 00:00:08.000\na &lt;b&gt; query #2 (0.60)\n")


def test_embedding_refuses_a_video_over_the_limit(tmp_path, monkeypatch):
    source = _video(tmp_path / "v.mp4")
    monkeypatch.setattr(viz, "EMBED_LIMIT_BYTES", 100)
    with pytest.raises(viz.ExportError, match="too large to embed.*without --embed-video"):
        viz.write_html(_pred(str(source)), tmp_path / "p.html", embed_video=True)


# ----------------------------------------------------------------------------------------------- in a browser

_OBSERVER = """<script>
const probed = document.getElementById("player");
probed.addEventListener("seeking", () => { document.body.dataset.fromFragment = probed.currentTime; }, {once: true});
setTimeout(() => {
  const player = document.getElementById("player");
  document.querySelectorAll("button[data-start]")[1].click();
  document.body.dataset.afterClick = player.currentTime;
  document.body.dataset.ready = player.readyState;
}, 1500);
</script></body>"""


def _render(page: Path, fragment: str = "") -> str:
    """The page's DOM after its scripts ran in headless Chromium (with a probe that records the player's time)."""
    probe = page.with_name(page.stem + "-probe.html")
    probe.write_text(page.read_text().replace("</body>", _OBSERVER))
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--mute-audio",
                           "--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=5000",
                           "--dump-dom", probe.resolve().as_uri() + fragment],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _data(dom: str, name: str) -> str:
    return html.unescape(re.search(rf'data-{name}="([^"]*)"', dom).group(1))


def _error_text(dom: str) -> str | None:
    tag = re.search(r'<p id="video-error"([^>]*)>(.*?)</p>', dom, re.S)
    return None if "hidden" in tag.group(1) else html.unescape(tag.group(2))


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to load the page in: install it with "
                                             "`apt-get install -y chromium` (.ci/run does)")
@pytest.mark.slow  # starts headless Chromium (~5 s)
def test_page_in_headless_chromium(tmp_path):
    source = _video(tmp_path / "v.mp4")
    page = viz.write_html(_pred(str(source)), tmp_path / "page.html")
    dom = _render(page, "#t=2.50,6.00")
    assert _error_text(dom) is None and int(_data(dom, "ready")) >= 1  # the linked video loaded
    assert float(_data(dom, "from-fragment")) == 2.5  # #t=start,end seeks the player
    assert float(_data(dom, "after-click")) == 4.0  # the second moment's button
    assert dom.count('class="moment-link" href="#t=') == 2

    moved = tmp_path / "elsewhere" / "page.html"
    moved.parent.mkdir()
    shutil.copy(page, moved)
    error = _error_text(_render(moved))
    assert error is not None and "could not be loaded" in error and "v.mp4" in error and "--embed-video" in error

    embedded = viz.write_html(_pred(str(source)), tmp_path / "embedded.html", embed_video=True)
    shutil.move(embedded, moved)
    dom = _render(moved, "#t=2.50,6.00")
    assert _error_text(dom) is None and int(_data(dom, "ready")) >= 1 and float(_data(dom, "from-fragment")) == 2.5
