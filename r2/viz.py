"""See a prediction: a PNG plot, an HTML page, WebVTT chapters and mp4 cuts.

Everything here reads a prediction as plain data, the dict `r2.predict.Prediction.to_json()` gives (and the
`<video>.json` files r2.predict writes):

    {"video": path, "duration": seconds, "fps": frames sampled per second, "n_frames": T,
     "windows": [[first, end), ...] frames per model call, "window_frames": W,
     "queries": [{"query": text, "pred_relevant_windows": [[start, end, score], ...] by score, descending,
                  "pred_saliency_scores": [T floats]}, ...]}

Frame i's score covers [i / fps, (i + 1) / fps). Only moments with a positive score are drawn (hard NMS leaves the
suppressed ones at 0 in the tail). Moment colours follow their rank in `MOMENT_COLOURS`, the same on the plot, the
page's curve and its buttons, so overlapping moments stay apart.

- `plot_prediction`: per query, the saliency curve on a fixed scale that includes 0..1 (its own min-max range
  written in the panel), the top moments shaded in their colours, the ground truth as a band, the legend beside
  the panels, and a strip of frame thumbnails under them.
- `write_html`: one page with the video (a relative link from the page, or embedded with `embed_video`), per query
  an inline SVG curve with a time axis and a score scale, and per moment a button (`data-start` / `data-end`) that
  seeks the player and pauses at the moment's end plus a `#t=start,end` link; loading the page with such a
  fragment plays that moment. When the video cannot be loaded the page says so and why. No external resource.
- `write_chapters`: WebVTT chapters of the top moments, for players and editors.
- `export_moments` / `export_reel`: ffmpeg cuts (argument lists, re-encoded H.264 + AAC, the audio track kept when
  the video has one): one mp4 per top moment, or one highlight reel per query of its most salient clips.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import quote

import numpy as np
from matplotlib.figure import Figure

from r2.errors import R2Error
from r2.video import ffmpeg_exe

__all__ = ["EMBED_LIMIT_BYTES", "MOMENT_COLOURS", "ExportError", "export_moments", "export_reel", "has_audio",
           "plot_prediction", "prediction_figure", "reel_clips", "saliency_svg", "thumbnails", "time_ticks", "top_moments",
           "write_chapters", "write_html"]

SVG_WIDTH, SVG_HEIGHT = 960, 170  # viewBox units of one curve
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 20, 8, 24  # SVG plot margins: score labels left, time axis below
# One colour per moment rank (matplotlib's tab10 without its blue, which draws the curve).
MOMENT_COLOURS = ("#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                  "#17becf")
THUMBNAILS = 10  # frames in the plot's strip
EMBED_LIMIT_BYTES = 256 * 2**20  # larger videos are linked, not embedded (a page of GBs does not open)
_MIME = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
         ".mkv": "video/x-matroska", ".ogv": "video/ogg", ".avi": "video/x-msvideo"}


class ExportError(R2Error):
    """A cut, page or thumbnail that cannot be written; the message names the file and the reason."""


def top_moments(query: dict, top: int) -> list[list[float]]:
    """The first `top` [start, end, score] of a query with a positive score."""
    return [list(m) for m in query["pred_relevant_windows"] if m[2] > 0][:max(top, 0)]


def colour(rank: int) -> str:
    """The colour of the moment at 0-based `rank`."""
    return MOMENT_COLOURS[rank % len(MOMENT_COLOURS)]


def _truth(ground_truth: dict[str, list[list[float]]] | None, query: str) -> list[list[float]]:
    return (ground_truth or {}).get(query, [])


def _steps(saliency: list[float], fps: float, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """Step curve of per-frame scores: x (2T,) seconds, y (2T,): frame i held over [i / fps, (i + 1) / fps)."""
    scores = np.asarray(saliency, dtype=float)  # (T,)
    starts = np.arange(len(scores)) / fps  # (T,)
    ends = np.minimum(starts + 1 / fps, max(duration, starts[-1] + 1 / fps if len(starts) else 0))  # (T,)
    x = np.stack([starts, ends], axis=1).reshape(-1)  # (T, 2) -> (2T,)
    y = np.repeat(scores, 2)  # (2T,)
    return x, y


def score_range(saliency: list[float]) -> tuple[float, float]:
    """The y range of a curve: at least [0, 1] (saliency scores are cosines and sigmoids), widened to the data, so a
    flat curve of small values looks flat instead of being stretched over the panel."""
    scores = np.asarray(saliency, dtype=float)
    return min(0.0, float(scores.min())), max(1.0, float(scores.max()))


def time_ticks(duration: float, most: int = 10) -> list[float]:
    """Round tick positions in seconds from 0 to `duration`: a step of 1, 2, 5, 10, 15, 30 s, 1, 2, 5, 10, 15,
    30 min or hours giving at most `most` + 1 ticks."""
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200]
    step = next((s for s in steps if duration / s <= most), 3600 * math.ceil(duration / 3600 / most))
    return [i * step for i in range(int(duration // step) + 1)]


def clock(seconds: float) -> str:
    """12.5 -> '0:12', 3725 -> '1:02:05'."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# ----------------------------------------------------------------------------------------------- thumbnails


def thumbnails(video: str | Path, times: list[float], width: int = 160) -> list[np.ndarray | None]:
    """One RGB frame (H, width, 3) uint8 per time in seconds (ffmpeg seeks to it), None where none decodes."""
    from matplotlib.image import imread

    source = "file:" + str(Path(video).resolve())
    frames = []
    for t in times:
        proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-ss", f"{t:.3f}",
                               "-i", source, "-frames:v", "1", "-vf", f"scale={width}:-2", "-f", "image2pipe",
                               "-c:v", "png", "pipe:1"], capture_output=True)
        frames.append(imread(io.BytesIO(proc.stdout), format="png")[..., :3] if proc.stdout else None)
    return frames


def _thumbnail_strip(ax, pred: dict):
    """Frames at the centres of THUMBNAILS equal spans of the video, each drawn over its span."""
    duration = pred["duration"]
    span = duration / THUMBNAILS
    centres = [(i + 0.5) * span for i in range(THUMBNAILS)]
    for i, frame in enumerate(thumbnails(pred["video"], centres)):
        if frame is not None:
            ax.imshow(frame, extent=(i * span, (i + 1) * span, 0, 1), aspect="auto")
    ax.set_xlim(0, duration)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel("frames", rotation=0, ha="right", va="center", fontsize=8)


# ----------------------------------------------------------------------------------------------- PNG


def prediction_figure(pred: dict, ground_truth: dict[str, list[list[float]]] | None = None, top: int = 3,
                      with_thumbnails: bool = True) -> Figure:
    """One panel per query (saliency, top moments in their colours, ground truth band), the legend beside the
    panels, and (`with_thumbnails`) a strip of frames under them on the same time axis."""
    queries = pred["queries"]
    ratios = [3] * len(queries) + ([1] if with_thumbnails else [])
    fig = Figure(figsize=(12, 2.4 * len(queries) + (0.9 if with_thumbnails else 0)), layout="constrained")
    axes = fig.subplots(len(ratios), 1, squeeze=False, sharex=True, gridspec_kw={"height_ratios": ratios})[:, 0]
    for ax, q in zip(axes, queries):
        _plot_query(ax, pred, q, _truth(ground_truth, q["query"]), top)
    if with_thumbnails:
        _thumbnail_strip(axes[-1], pred)
    axes[-1].set_xlabel("time (s)")
    return fig


def plot_prediction(pred: dict, path: str | Path, ground_truth: dict[str, list[list[float]]] | None = None,
                    top: int = 3, with_thumbnails: bool = True) -> Path:
    """Write `prediction_figure` as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prediction_figure(pred, ground_truth, top, with_thumbnails).savefig(path, dpi=100)
    return path


def _plot_query(ax, pred: dict, query: dict, truth: list[list[float]], top: int):
    saliency = query["pred_saliency_scores"]
    x, y = _steps(saliency, pred["fps"], pred["duration"])
    low, high = score_range(saliency)
    ax.plot(x, y, color="tab:blue", linewidth=1.2, label="saliency")
    for rank, (start, end, score) in enumerate(top_moments(query, top)):
        ax.axvspan(start, end, color=colour(rank), alpha=0.3, label=f"#{rank + 1} {start:.1f}-{end:.1f} s "
                                                                     f"({score:.2f})")
        ax.text((start + end) / 2, 1.0, f"#{rank + 1}", transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=8, color=colour(rank))
    for i, (start, end) in enumerate(truth):
        ax.axvspan(start, end, ymin=0, ymax=0.06, color="black", label="ground truth" if i == 0 else None)
    ax.set_xlim(0, pred["duration"])
    ax.set_ylim(low, high)
    ax.set_title(query["query"], fontsize=10, loc="left", pad=12)
    ax.set_ylabel("saliency score")
    ax.text(1.0, 1.0, f"curve range {min(saliency):.2f} to {max(saliency):.2f}", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=8, color="dimgrey")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)


# ----------------------------------------------------------------------------------------------- HTML


def saliency_svg(pred: dict, index: int, ground_truth: dict[str, list[list[float]]] | None = None,
                 top: int = 5) -> str:
    """Inline SVG of query `index`: score scale, time axis, curve, top moments (rects with data-start/data-end
    in their colours), ground truth, playhead."""
    q = pred["queries"][index]
    duration = max(pred["duration"], 1e-9)
    plot_w, plot_h = SVG_WIDTH - _LEFT - _RIGHT, SVG_HEIGHT - _TOP - _BOTTOM
    low, high = score_range(q["pred_saliency_scores"])

    def sx(t: float) -> float:
        return _LEFT + t / duration * plot_w

    def sy(v: float) -> float:
        return _TOP + (high - v) / (high - low) * plot_h

    x, y = _steps(q["pred_saliency_scores"], pred["fps"], pred["duration"])
    points = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(x, y))
    parts = [f'<svg class="curve" viewBox="0 0 {SVG_WIDTH} {SVG_HEIGHT}" width="100%" preserveAspectRatio="none" '
             f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="saliency of {html.escape(q["query"])}">',
             f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa"/>']
    for value in sorted({low, 0.0, (low + high) / 2, high}):
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{sy(value):.1f}" '
                     f'y2="{sy(value):.1f}" stroke="#ddd"/><text class="score-label" x="{_LEFT - 4}" '
                     f'y="{sy(value) + 4:.1f}" text-anchor="end" font-size="11">{value:.2f}</text>')
    for t in time_ticks(duration):
        parts.append(f'<line class="tick" x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{_TOP + plot_h}" '
                     f'y2="{_TOP + plot_h + 4}" stroke="#444"/><text class="time-label" x="{sx(t):.1f}" '
                     f'y="{SVG_HEIGHT - 6}" text-anchor="middle" font-size="11">{clock(t)}</text>')
    for rank, (start, end, score) in enumerate(top_moments(q, top)):
        parts.append(f'<rect class="moment-band" data-start="{start:.2f}" data-end="{end:.2f}" '
                     f'x="{sx(start):.1f}" y="{_TOP}" width="{sx(end) - sx(start):.1f}" height="{plot_h}" '
                     f'fill="{colour(rank)}" fill-opacity="0.3" stroke="{colour(rank)}"><title>#{rank + 1} '
                     f'{start:.1f}-{end:.1f} s ({score:.3f})</title></rect>')
    for start, end in _truth(ground_truth, q["query"]):
        parts.append(f'<rect class="truth" x="{sx(start):.1f}" y="{_TOP + plot_h - 8}" '
                     f'width="{sx(end) - sx(start):.1f}" height="8" fill="black"/>')
    parts.append(f'<polyline fill="none" stroke="steelblue" stroke-width="1.5" points="{points}"/>')
    parts.append(f'<line class="playhead" x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{_TOP + plot_h}" '
                 f'stroke="crimson" stroke-width="1.5"/>')
    parts.append("</svg>")
    return "\n".join(parts)


_PAGE_SCRIPT = """
const player = document.getElementById("player");
const problem = document.getElementById("video-error");
const duration = %(duration)s, width = %(width)s, left = %(left)s, plotWidth = %(plot_width)s;
const linked = %(linked)s;
let stopAt = null;
function seek(start, end) {
  player.currentTime = start; stopAt = end;
  player.play().catch(() => {});  // autoplay may be refused: the player still shows the moment
}
const reasons = {1: "loading was aborted", 2: "a network error", 3: "the file could not be decoded",
                 4: "the file was not found, or this browser cannot play its format"};
player.addEventListener("error", () => {
  const code = player.error ? player.error.code : 0;
  problem.textContent = "The video could not be loaded (" + (reasons[code] || "unknown error") + "). " +
    (linked ? "This page links to it as " + player.getAttribute("src") + ", relative to the page: keep the page " +
              "and the video where they were written, or write the page with --embed-video." :
              "It is embedded in this page.");
  problem.hidden = false;
});
function fromFragment() {
  const m = /^#t=([0-9.]+)(?:,([0-9.]+))?$/.exec(location.hash);
  if (m) seek(parseFloat(m[1]), m[2] === undefined ? null : parseFloat(m[2]));
}
window.addEventListener("hashchange", fromFragment);
if (player.readyState >= 1) fromFragment(); else player.addEventListener("loadedmetadata", fromFragment, {once: true});
document.querySelectorAll("button[data-start], rect[data-start]").forEach(el => el.addEventListener("click", ev => {
  ev.stopPropagation(); seek(parseFloat(el.dataset.start), parseFloat(el.dataset.end));
}));
document.querySelectorAll("svg.curve").forEach(svg => svg.addEventListener("click", ev => {
  const box = svg.getBoundingClientRect();
  const x = (ev.clientX - box.left) / box.width * width;
  seek(Math.min(Math.max((x - left) / plotWidth, 0), 1) * duration, null);
}));
player.addEventListener("timeupdate", () => {
  if (stopAt !== null && player.currentTime >= stopAt) { player.pause(); stopAt = null; }
  const x = left + Math.min(player.currentTime / duration, 1) * plotWidth;
  document.querySelectorAll(".playhead").forEach(l => { l.setAttribute("x1", x); l.setAttribute("x2", x); });
});
"""

_PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1000px; color: #222; }
video { width: 100%; max-height: 60vh; background: #000; }
section { margin-top: 1.2em; } h2 { font-size: 1.05em; margin: 0.3em 0; }
svg.curve { cursor: pointer; border: 1px solid #ddd; height: 170px; }
.moment { display: inline-block; margin: 0.2em 0.6em 0 0; } .moment button { cursor: pointer; }
.moment a { font-size: 0.85em; margin-left: 0.2em; } .meta { color: #666; font-size: 0.9em; }
.error { color: #a00; background: #fee; border: 1px solid #f99; padding: 0.5em; }
"""


def _video_src(video: Path, page: Path, embed: bool) -> str:
    """The video as a data: URL (`embed`), else a URL relative to the page's folder (a file:// URL when no relative
    path exists)."""
    if embed:
        size = video.stat().st_size
        if size > EMBED_LIMIT_BYTES:
            raise ExportError(f"{video} is {size / 2**20:.0f} MiB, too large to embed in {page} (limit "
                              f"{EMBED_LIMIT_BYTES // 2**20} MiB): write the page without --embed-video")
        mime = _MIME.get(video.suffix.lower(), "video/mp4")
        return f"data:{mime};base64," + base64.b64encode(video.read_bytes()).decode("ascii")
    try:
        return quote(Path(os.path.relpath(video.resolve(), page.resolve().parent)).as_posix())
    except ValueError:  # another drive (Windows)
        return video.resolve().as_uri()


def _moment_items(query: dict, top: int) -> str:
    items = []
    for rank, (start, end, score) in enumerate(top_moments(query, top)):
        items.append(
            f'<span class="moment"><button data-start="{start:.2f}" data-end="{end:.2f}" data-score="{score:.4f}" '
            f'style="border-left: 6px solid {colour(rank)}">#{rank + 1} {start:.1f}&ndash;{end:.1f} s '
            f'({score:.3f})</button><a class="moment-link" href="#t={start:.2f},{end:.2f}">link</a></span>')
    if items:
        return "".join(items)
    if not query["pred_relevant_windows"]:
        return "<span class=meta>no moments (saliency-only model)</span>"
    return "<span class=meta>no moment with a positive score</span>" if top > 0 else ""


def write_html(pred: dict, path: str | Path, ground_truth: dict[str, list[list[float]]] | None = None,
               top: int = 5, embed_video: bool = False) -> Path:
    """Write one HTML page: the video, each query's curve and clickable, linkable moments."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = html.escape(Path(pred["video"]).name)
    sections = []
    for i, q in enumerate(pred["queries"]):
        truth = "; ".join(f"{s:.1f}&ndash;{e:.1f} s" for s, e in _truth(ground_truth, q["query"]))
        sections.append(
            f'<section class="query" data-query="{html.escape(q["query"])}"><h2>{html.escape(q["query"])}</h2>\n'
            f'{saliency_svg(pred, i, ground_truth, top)}\n<div class="moments">{_moment_items(q, top)}</div>'
            + (f'<div class="meta">ground truth: {truth}</div>' if truth else "") + "</section>")
    script = _PAGE_SCRIPT % {"duration": json.dumps(pred["duration"]), "width": SVG_WIDTH, "left": _LEFT,
                             "plot_width": SVG_WIDTH - _LEFT - _RIGHT, "linked": json.dumps(not embed_video)}
    src = _video_src(Path(pred["video"]), path, embed_video)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_PAGE_STYLE}</style></head><body>\n<h1>{title}</h1>\n"
            f'<video id="player" controls preload="metadata" src="{src}"></video>\n'
            f'<p id="video-error" class="error" hidden></p>\n'
            f'<p class="meta">{pred["duration"]:.1f} s, {pred["n_frames"]} frames at {pred["fps"]:g} fps; '
            f'{len(pred["windows"])} model window(s) of {pred["window_frames"]} frames. Click a moment or the curve '
            f"to play from there; each moment's link plays it when opened.</p>\n" + "\n".join(sections)
            + f"\n<script>{script}</script>\n</body></html>\n")
    path.write_text(page, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- WebVTT


def _vtt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def _vtt_text(text: str) -> str:
    """Cue text: one line, no '-->' and the three characters WebVTT escapes."""
    text = " ".join(text.split()).replace("-->", "->")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_chapters(pred: dict, path: str | Path, top: int = 5) -> Path:
    """WebVTT chapters: one cue per top moment of every query ("<query> #rank (score)"), in time order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cues = sorted((start, end, f"{q['query']} #{rank + 1} ({score:.2f})")
                  for q in pred["queries"] for rank, (start, end, score) in enumerate(top_moments(q, top)))
    lines = ["WEBVTT", ""]
    for number, (start, end, text) in enumerate(cues, start=1):
        lines += [str(number), f"{_vtt_time(start)} --> {_vtt_time(end)}", _vtt_text(text), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- mp4 cuts

_ENCODE = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-c:a", "aac",
           "-movflags", "+faststart"]
_EVEN = "scale=trunc(iw/2)*2:trunc(ih/2)*2"  # yuv420p needs even sides
_AUDIO_STREAM = re.compile(r"Stream #\d+:\d+.*: Audio:")


def _ffmpeg(args: list[str], out: Path):
    proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args, str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        lines = proc.stderr.strip().splitlines()
        raise ExportError(f"ffmpeg could not write {out}: {lines[-1] if lines else f'exit code {proc.returncode}'}")


def has_audio(video: str | Path) -> bool:
    """Whether ffmpeg finds an audio stream in the file."""
    proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", "file:" + str(Path(video).resolve())],
                          capture_output=True, text=True)
    return bool(_AUDIO_STREAM.search(proc.stderr))


def export_moments(pred: dict, folder: str | Path, top: int = 3, stem: str | None = None) -> list[Path]:
    """Cut each query's top moments to `folder/<stem>_q<query>_<rank>_<start>-<end>s.mp4` (audio kept if any);
    stem defaults to the video's."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = "file:" + str(Path(pred["video"]).resolve())
    stem = stem or Path(pred["video"]).stem
    written = []
    for qi, q in enumerate(pred["queries"], start=1):
        for rank, (start, end, _) in enumerate(top_moments(q, top), start=1):
            out = folder / f"{stem}_q{qi}_{rank}_{start:.1f}-{end:.1f}s.mp4"
            _ffmpeg(["-ss", f"{start:.3f}", "-i", source, "-t", f"{end - start:.3f}", "-map", "0:v:0",
                     "-map", "0:a:0?", "-vf", _EVEN, *_ENCODE], out)
            written.append(out)
    return written


def reel_clips(saliency: list[float], fps: float, duration: float, seconds: float) -> list[tuple[float, float, float]]:
    """The most salient clips filling about `seconds` (at least one clip), as (start, end, score) in time order,
    adjacent clips joined. Clip i spans [i / fps, (i + 1) / fps) cut at the duration; the score of a joined run is
    its best clip's."""
    scores = np.asarray(saliency, dtype=float)  # (T,)
    count = min(len(scores), max(1, round(seconds * fps)))
    chosen = np.sort(np.argsort(-scores, kind="stable")[:count])  # (count,) frame indices in time order
    runs: list[tuple[float, float, float]] = []
    for i in chosen.tolist():
        start, end = i / fps, min((i + 1) / fps, duration)
        if runs and abs(runs[-1][1] - start) < 1e-9:
            runs[-1] = (runs[-1][0], end, max(runs[-1][2], float(scores[i])))
        else:
            runs.append((start, end, float(scores[i])))
    return runs


def export_reel(pred: dict, folder: str | Path, seconds: float = 30.0, stem: str | None = None) -> list[Path]:
    """One highlight reel per query, `folder/<stem>_q<query>_reel.mp4`: its most salient clips (`reel_clips`)
    played back to back, with the same spans of the audio track when the video has one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = "file:" + str(Path(pred["video"]).resolve())
    stem = stem or Path(pred["video"]).stem
    audio = has_audio(pred["video"])
    written = []
    for qi, q in enumerate(pred["queries"], start=1):
        keep = "+".join(f"between(t,{start:.3f},{end - 1e-3:.3f})" for start, end, _ in
                        reel_clips(q["pred_saliency_scores"], pred["fps"], pred["duration"], seconds))
        graph = f"[0:v:0]select='{keep}',setpts=N/FRAME_RATE/TB,{_EVEN}[v]"
        maps = ["-map", "[v]"]
        if audio:
            graph += f";[0:a:0]aselect='{keep}',asetpts=N/SR/TB[a]"
            maps += ["-map", "[a]"]
        out = folder / f"{stem}_q{qi}_reel.mp4"
        _ffmpeg(["-i", source, "-filter_complex", graph, *maps, *_ENCODE], out)
        written.append(out)
    return written
