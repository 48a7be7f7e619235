"""See a prediction (`r2.predict.Prediction`): a PNG plot, a self-contained HTML page, and mp4 cuts.

- `plot_prediction`: per query, the saliency curve over time (each frame's score held over its clip
  [i / fps, (i + 1) / fps)), the top moments shaded (darker = higher rank) and the ground truth as a band.
- `write_html`: one page with the video (by relative path from the page), per query an inline SVG of the curve
  with the moments and ground truth, and one button per moment (`data-start` / `data-end` seconds) that seeks
  the player and pauses at the moment's end; clicking the curve seeks to that time. No external resource.
- `export_moments` / `export_reel`: ffmpeg cuts (argument lists, re-encoded H.264 so cuts are frame-exact): one mp4
  per top moment, or one highlight reel per query made of its most salient clips in time order.
"""
from __future__ import annotations

import html
import json
import os
import subprocess
from pathlib import Path
from urllib.parse import quote

import numpy as np
from matplotlib.figure import Figure

from r2.errors import R2Error
from r2.predict import Moment, Prediction
from r2.video import ffmpeg_exe

__all__ = ["ExportError", "export_moments", "export_reel", "plot_prediction", "reel_clips", "saliency_svg",
           "write_html"]

SVG_WIDTH, SVG_HEIGHT = 960, 150  # viewBox units of one curve


class ExportError(R2Error):
    """ffmpeg could not cut a clip; the message names the output and ffmpeg's last error line."""


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


# ----------------------------------------------------------------------------------------------- PNG


def plot_prediction(pred: Prediction, path: str | Path, ground_truth: dict[str, list[list[float]]] | None = None,
                    top: int = 3) -> Path:
    """Write a PNG: one panel per query (saliency curve, top moments shaded, ground truth band)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(10, 2.4 * len(pred.queries)), layout="constrained")
    axes = fig.subplots(len(pred.queries), 1, squeeze=False)[:, 0]
    for ax, q in zip(axes, pred.queries):
        x, y = _steps(q.saliency, pred.fps, pred.duration)
        ax.plot(x, y, color="tab:blue", linewidth=1.2, label="saliency")
        moments = q.top(top)
        for rank, m in enumerate(moments):
            ax.axvspan(m.start, m.end, color="tab:orange", alpha=0.45 - 0.3 * rank / max(len(moments), 1),
                       label="predicted moments" if rank == 0 else None)
            ax.text((m.start + m.end) / 2, 1.0, f"#{rank + 1}", transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=8)
        for i, (start, end) in enumerate(_truth(ground_truth, q.query)):
            ax.axvspan(start, end, ymin=0, ymax=0.06, color="tab:green", label="ground truth" if i == 0 else None)
        ax.set_xlim(0, pred.duration)
        ax.set_title(q.query, fontsize=10, loc="left", pad=12)
        ax.set_ylabel("saliency")
        ax.legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel("seconds")
    fig.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------------------------------------- HTML


def saliency_svg(pred: Prediction, index: int, ground_truth: dict[str, list[list[float]]] | None = None,
                 top: int = 5) -> str:
    """Inline SVG of query `index`: curve, top moments (rects with data-start/data-end), ground truth, playhead."""
    q = pred.queries[index]
    width, height, duration = SVG_WIDTH, SVG_HEIGHT, max(pred.duration, 1e-9)
    x, y = _steps(q.saliency, pred.fps, pred.duration)
    low, high = min(0.0, float(y.min())), float(y.max())
    high = high if high > low else low + 1
    px = x / duration * width  # (2T,)
    py = (height - 12) - (y - low) / (high - low) * (height - 24)  # (2T,) 12 units of margin top and bottom
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py))
    parts = [f'<svg class="curve" viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="none" '
             f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="saliency of {html.escape(q.query)}">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa"/>']
    for rank, m in enumerate(q.top(top)):
        opacity = 0.45 - 0.3 * rank / max(top, 1)
        parts.append(f'<rect class="moment-band" data-start="{m.start:.2f}" data-end="{m.end:.2f}" '
                     f'x="{m.start / duration * width:.1f}" y="0" width="{(m.end - m.start) / duration * width:.1f}" '
                     f'height="{height}" fill="orange" fill-opacity="{opacity:.2f}"><title>#{rank + 1} '
                     f'{m.start:.1f}-{m.end:.1f} s ({m.score:.3f})</title></rect>')
    for start, end in _truth(ground_truth, q.query):
        parts.append(f'<rect class="truth" x="{start / duration * width:.1f}" y="{height - 8}" '
                     f'width="{(end - start) / duration * width:.1f}" height="8" fill="green"/>')
    parts.append(f'<polyline fill="none" stroke="steelblue" stroke-width="1.5" points="{points}"/>')
    parts.append(f'<line class="playhead" x1="0" x2="0" y1="0" y2="{height}" stroke="crimson" stroke-width="1.5"/>')
    parts.append("</svg>")
    return "\n".join(parts)


_PAGE_SCRIPT = """
const player = document.getElementById("player");
const duration = %(duration)s, width = %(width)s;
let stopAt = null;
function seek(start, end) { player.currentTime = start; stopAt = end; player.play(); }
document.querySelectorAll("[data-start]").forEach(el => el.addEventListener("click", ev => {
  ev.stopPropagation(); seek(parseFloat(el.dataset.start), parseFloat(el.dataset.end));
}));
document.querySelectorAll("svg.curve").forEach(svg => svg.addEventListener("click", ev => {
  const box = svg.getBoundingClientRect(); seek((ev.clientX - box.left) / box.width * duration, null);
}));
player.addEventListener("timeupdate", () => {
  if (stopAt !== null && player.currentTime >= stopAt) { player.pause(); stopAt = null; }
  const x = Math.min(player.currentTime / duration, 1) * width;
  document.querySelectorAll(".playhead").forEach(l => { l.setAttribute("x1", x); l.setAttribute("x2", x); });
});
"""

_PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1000px; color: #222; }
video { width: 100%; max-height: 60vh; background: #000; }
section { margin-top: 1.2em; } h2 { font-size: 1.05em; margin: 0.3em 0; }
svg.curve { cursor: pointer; border: 1px solid #ddd; height: 150px; }
button.moment { margin: 0.2em 0.3em 0 0; cursor: pointer; } .meta { color: #666; font-size: 0.9em; }
"""


def _video_src(video: Path, page: Path) -> str:
    """The video as a URL relative to the page's folder (a file:// URL when no relative path exists)."""
    try:
        return quote(Path(os.path.relpath(video.resolve(), page.resolve().parent)).as_posix())
    except ValueError:  # another drive (Windows)
        return video.resolve().as_uri()


def write_html(pred: Prediction, path: str | Path, ground_truth: dict[str, list[list[float]]] | None = None,
               top: int = 5) -> Path:
    """Write one self-contained HTML page: the video, each query's curve and clickable moments."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = html.escape(Path(pred.video).name)
    sections = []
    for i, q in enumerate(pred.queries):
        buttons = "".join(
            f'<button class="moment" data-start="{m.start:.2f}" data-end="{m.end:.2f}" data-score="{m.score:.4f}">'
            f'#{rank} {m.start:.1f}&ndash;{m.end:.1f} s ({m.score:.3f})</button>'
            for rank, m in enumerate(q.top(top), start=1))
        truth = "; ".join(f"{s:.1f}&ndash;{e:.1f} s" for s, e in _truth(ground_truth, q.query))
        sections.append(
            f'<section class="query" data-query="{html.escape(q.query)}"><h2>{html.escape(q.query)}</h2>\n'
            f'{saliency_svg(pred, i, ground_truth, top)}\n'
            f'<div class="moments">{buttons or "<span class=meta>no moments (saliency-only model)</span>"}</div>'
            + (f'<div class="meta">ground truth: {truth}</div>' if truth else "") + "</section>")
    script = _PAGE_SCRIPT % {"duration": json.dumps(pred.duration), "width": SVG_WIDTH}
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_PAGE_STYLE}</style></head><body>\n<h1>{title}</h1>\n"
            f'<video id="player" controls preload="metadata" src="{_video_src(Path(pred.video), path)}"></video>\n'
            f'<p class="meta">{pred.duration:.1f} s, {pred.n_frames} frames at {pred.fps:g} fps; '
            f"{len(pred.windows)} model window(s) of {pred.window_frames} frames. Click a moment or the curve to "
            f"play from there.</p>\n" + "\n".join(sections) + f"\n<script>{script}</script>\n</body></html>\n")
    path.write_text(page, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- mp4 cuts

_ENCODE = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-movflags", "+faststart"]
_EVEN = "scale=trunc(iw/2)*2:trunc(ih/2)*2"  # yuv420p needs even sides


def _ffmpeg(args: list[str], out: Path):
    proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args, str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        lines = proc.stderr.strip().splitlines()
        raise ExportError(f"ffmpeg could not write {out}: {lines[-1] if lines else f'exit code {proc.returncode}'}")


def export_moments(pred: Prediction, folder: str | Path, top: int = 3) -> list[Path]:
    """Cut each query's top moments to `folder/<stem>_q<query>_<rank>_<start>-<end>s.mp4` (audio kept if any)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = "file:" + str(Path(pred.video).resolve())
    stem = Path(pred.video).stem
    written = []
    for qi, q in enumerate(pred.queries, start=1):
        for rank, m in enumerate(q.top(top), start=1):
            out = folder / f"{stem}_q{qi}_{rank}_{m.start:.1f}-{m.end:.1f}s.mp4"
            _ffmpeg(["-ss", f"{m.start:.3f}", "-i", source, "-t", f"{m.end - m.start:.3f}", "-map", "0:v:0",
                     "-map", "0:a:0?", "-vf", _EVEN, *_ENCODE, "-c:a", "aac"], out)
            written.append(out)
    return written


def reel_clips(saliency: list[float], fps: float, duration: float, seconds: float) -> list[Moment]:
    """The most salient clips filling about `seconds` (at least one clip), in time order, adjacent clips joined.
    Clip i spans [i / fps, (i + 1) / fps) cut at the duration; the score of a joined run is its best clip's."""
    scores = np.asarray(saliency, dtype=float)  # (T,)
    count = min(len(scores), max(1, round(seconds * fps)))
    chosen = np.sort(np.argsort(-scores, kind="stable")[:count])  # (count,) frame indices in time order
    runs: list[Moment] = []
    for i in chosen.tolist():
        start, end = i / fps, min((i + 1) / fps, duration)
        if runs and abs(runs[-1].end - start) < 1e-9:
            runs[-1] = Moment(runs[-1].start, end, max(runs[-1].score, float(scores[i])))
        else:
            runs.append(Moment(start, end, float(scores[i])))
    return runs


def export_reel(pred: Prediction, folder: str | Path, seconds: float = 30.0) -> list[Path]:
    """One highlight reel per query, `folder/<stem>_q<query>_reel.mp4`: its most salient clips (`reel_clips`)
    played back to back (video only)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = "file:" + str(Path(pred.video).resolve())
    stem = Path(pred.video).stem
    written = []
    for qi, q in enumerate(pred.queries, start=1):
        keep = "+".join(f"between(t,{m.start:.3f},{m.end - 1e-3:.3f})"
                        for m in reel_clips(q.saliency, pred.fps, pred.duration, seconds))
        out = folder / f"{stem}_q{qi}_reel.mp4"
        _ffmpeg(["-i", source, "-vf", f"select='{keep}',setpts=N/FRAME_RATE/TB,{_EVEN}", "-an", *_ENCODE], out)
        written.append(out)
    return written
