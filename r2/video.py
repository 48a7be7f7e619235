"""Video decoding shared by feature extraction and prediction (SPEC §1), plus a background prefetcher.

One ffmpeg graph turns a video into CLIP-ready frames: `fps` filter at the dataset rate, scale so the SHORT side is
`size` (aspect kept), centre crop `size`×`size`, rgb24 rawvideo on a pipe, read with `np.frombuffer`. Extraction
and prediction both call `decode`/`iter_decode`, so their frames can never drift apart.

Frame counts follow ffmpeg's `fps` filter with its default rounding (`round=near`): a source of D seconds gives
round-half-up(D·fps) frames (a 150 s QVHighlights clip at 0.5 fps gives 75), frame i is the source frame nearest to
i / fps. A source too short for that to give any frame (shorter than half a sample period, or a single-frame file)
gives exactly one frame, its first.

Truncated files: when the container index survives (e.g. an mp4 written with `+faststart`, cut short) ffmpeg
decodes the frames before the cut; they are returned, `Frames.truncated` is True and `Frames.duration` is the span
those frames cover (T / fps) instead of the container's header duration. When nothing decodes (the index was at
the end of the lost part: "moov atom not found") a `VideoDecodeError` is raised.
"""
from __future__ import annotations

import collections
import os
import queue
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import ffmpeg
import numpy as np

from r2.errors import R2Error

__all__ = ["Frames", "FrameStream", "VideoDecodeError", "decode", "ffmpeg_exe", "iter_decode", "prefetch"]

_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_KEEP_ERROR_LINES = 8  # the last ffmpeg error lines kept for a failure message (stderr is never held whole)
MAX_ASPECT = 4  # frames wider (or taller) than this are centre-cropped to it before scaling
# ffmpeg's wrappers around the real error ("Error opening input file X.", "Conversion failed!"): never a reason
_GENERIC_ERROR = re.compile(r"Error opening (input|output) files?\b.*|Conversion failed!?|Error opening input\s*$")


class VideoDecodeError(R2Error):
    """A video that gives no frame. `path` is the file, `reason` one line saying why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = " ".join(reason.split())  # one line, whatever ffmpeg printed
        super().__init__(f"cannot decode video {self.path}: {self.reason}")

    def __reduce__(self):  # picklable, so it can cross process boundaries like any exception
        return (VideoDecodeError, (self.path, self.reason))


@dataclass
class Frames:
    """Decoded frames of one video."""

    frames: np.ndarray  # (T, size, size, 3) uint8 RGB
    times: np.ndarray  # (T,) float64 seconds from the start: i / fps
    fps: float  # the sampling rate asked for
    duration: float  # seconds: the container's "Duration:", or T / fps when absent or when truncated
    truncated: bool  # fewer frames decoded than the container's duration promises (cut or damaged file)


def ffmpeg_exe() -> str:
    """The ffmpeg binary: the system `ffmpeg` on PATH, else the one bundled with imageio-ffmpeg."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as err:
        raise RuntimeError(f"no ffmpeg found: install ffmpeg on PATH or `pip install imageio-ffmpeg` ({err})") from err


def _decode_threads() -> int:
    """Decoder threads: half the cores, 1 to 4. Decoding overlaps a CLIP that wants the other cores, and extra
    decoder threads cost CPU for the same frames (measured on 2 cores: 2 threads use ~50% more CPU than 1; the
    frames are byte-identical whatever the count)."""
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def _expected_frames(duration: float, fps: float) -> int:
    """Frames the fps filter (round=near) gives for `duration` seconds: round half up of duration·fps."""
    return int(np.floor(duration * fps + 0.5))


class _StderrWatcher(threading.Thread):
    """Drains ffmpeg's stderr line by line (so the pipe never blocks) and keeps only what decoding needs:
    the input's Duration, whether the input has a video stream, and the last few error lines."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream = stream
        self.duration: float | None = None
        self.has_video = False
        self.errors: collections.deque[str] = collections.deque(maxlen=_KEEP_ERROR_LINES)

    def run(self) -> None:
        in_input = False
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()
            if "Input #0" in line:
                in_input = True
            elif "Output #0" in line or "Stream mapping:" in line:
                in_input = False
            if in_input and self.duration is None and (m := _DURATION_RE.search(line)):
                self.duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
            if in_input and re.search(r"Stream #0:\d+.*: Video:", line):
                self.has_video = True
            if "[error]" in line or "[fatal]" in line:
                self.errors.append(re.sub(r"^(\[[^\]]*\]\s*)+", "", line))
        self.stream.close()

    def reason(self, default: str) -> str:
        """ffmpeg's distinct error lines that say something (at most three), e.g. "moov atom not found; Invalid
        data found when processing input", without its generic wrappers; `default` when it printed none."""
        lines: list[str] = []
        for line in self.errors:
            line = re.sub(r"^Error opening input:\s*", "", line)
            if line and not _GENERIC_ERROR.fullmatch(line) and line not in lines:
                lines.append(line)
        return "; ".join(lines[:3]) or default


def _ffmpeg_graph(source: str, fps: float, size: int, first_frame_only: bool):
    """The one decode graph (SPEC §1). `first_frame_only` passes the last frame through at end of stream, so a
    source shorter than half a period still gives one frame, and stops after that frame."""
    fps_args = {"fps": fps, "eof_action": "pass"} if first_frame_only else {"fps": fps}
    stream = (
        ffmpeg.input(
            source,
            nostdin=None,
            hide_banner=None,
            nostats=None,
            loglevel="level+info",  # info level is needed for "Duration:"; stats lines are off (-nostats)
            threads=_decode_threads(),
        )
        .video.filter("fps", **fps_args)  # sample before scaling: only kept frames are scaled
        # A no-op below MAX_ASPECT:1; beyond, the long side is centre-cropped first, so a 2x8000 video is not
        # scaled to 224x896000 (1.5 GB) only to keep its centre: the final crop sees the same middle of the frame.
        .filter("crop", f"min(iw,{MAX_ASPECT}*ih)", f"min(ih,{MAX_ASPECT}*iw)")
        .filter("scale", size, size, force_original_aspect_ratio="increase", flags="bicubic")  # short side = size
        .filter("crop", size, size)  # centred by default
    )
    out_args = {"format": "rawvideo", "pix_fmt": "rgb24", "an": None, "sn": None}
    if first_frame_only:
        out_args["frames:v"] = 1
    return stream.output("pipe:", **out_args)


class FrameStream:
    """Iterating yields `(frames, times)` chunks: (≤chunk_frames, size, size, 3) uint8 and (≤chunk_frames,)
    float64 seconds. After the iteration ends, `duration`, `truncated` and `n_frames` are set. Closing the iterator
    early (break, `close()`) kills ffmpeg. Raises `VideoDecodeError` when no frame can be decoded."""

    def __init__(self, path: str | os.PathLike, fps: float, size: int = 224, chunk_frames: int = 64):
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps} for {path}")
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.path = Path(path)
        self.fps = float(fps)
        self.size = int(size)
        self.chunk_frames = int(chunk_frames)
        self.n_frames = 0
        self.duration: float | None = None
        self.truncated = False

    def _check_file(self) -> str:
        if not self.path.exists():
            raise VideoDecodeError(self.path, "file not found")
        if not self.path.is_file():
            raise VideoDecodeError(self.path, "not a regular file")
        if self.path.stat().st_size == 0:
            raise VideoDecodeError(self.path, "file is empty (0 bytes)")
        # An absolute path behind the `file:` protocol: no name (':', leading '-', 'pipe:...') is read as an option
        # or another protocol. ffmpeg gets an argument list, never a shell string.
        return "file:" + str(self.path.resolve())

    def _run(self, source: str, first_frame_only: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        frame_bytes = self.size * self.size * 3
        proc = _ffmpeg_graph(source, self.fps, self.size, first_frame_only).run_async(
            cmd=ffmpeg_exe(), pipe_stdout=True, pipe_stderr=True
        )
        watcher = _StderrWatcher(proc.stderr)
        watcher.start()
        try:
            while True:
                buf = proc.stdout.read(self.chunk_frames * frame_bytes)
                n = len(buf) // frame_bytes
                if n:
                    chunk = np.frombuffer(buf, np.uint8, count=n * frame_bytes)
                    chunk = chunk.reshape(n, self.size, self.size, 3)  # (n, H, W, 3)
                    times = (self.n_frames + np.arange(n, dtype=np.float64)) / self.fps  # (n,)
                    self.n_frames += n
                    yield chunk, times
                if len(buf) < self.chunk_frames * frame_bytes:  # EOF (a partial frame at EOF is dropped)
                    break
            proc.wait()
        finally:
            if proc.poll() is None:  # consumer stopped early
                proc.kill()
                proc.wait()
            proc.stdout.close()
            watcher.join()
        self._finish(watcher, proc.returncode)

    def _finish(self, watcher: _StderrWatcher, returncode: int) -> None:
        if self.n_frames == 0:
            if not watcher.has_video and watcher.duration is not None:
                raise VideoDecodeError(self.path, "no video stream (audio-only or data file)")
            if returncode != 0:
                raise VideoDecodeError(self.path, f"ffmpeg cannot read it: {watcher.reason('exit code %d' % returncode)}")
            return  # the caller may retry with first_frame_only
        covered = self.n_frames / self.fps
        header = watcher.duration
        # Tolerance of one frame: a container's duration can exceed the video stream's by a fraction of a period.
        self.truncated = header is not None and self.n_frames < _expected_frames(header, self.fps) - 1
        self.duration = covered if header is None or self.truncated else header

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self.n_frames, self.duration, self.truncated = 0, None, False
        source = self._check_file()
        yield from self._run(source, first_frame_only=False)
        if self.n_frames == 0:  # shorter than half a period: the fps filter rounded it to nothing
            yield from self._run(source, first_frame_only=True)
            if self.n_frames == 0:
                raise VideoDecodeError(self.path, "no frame decoded")


def iter_decode(path: str | os.PathLike, fps: float, size: int = 224, chunk_frames: int = 64) -> FrameStream:
    """Decode `path` at `fps` in chunks of at most `chunk_frames` frames, without holding the whole video.

    `for frames, times in iter_decode(...)`: frames (n, size, size, 3) uint8, times (n,) float64 seconds.
    The returned stream's `duration` / `truncated` / `n_frames` are set once iteration ends.
    """
    return FrameStream(path, fps, size, chunk_frames)


def decode(path: str | os.PathLike, fps: float, size: int = 224) -> Frames:
    """All frames of `path` sampled at `fps`, short side scaled to `size`, centre-cropped `size`×`size`, RGB.

    Raises `VideoDecodeError` for a missing, empty, unreadable, audio-only or frameless file.
    """
    stream = iter_decode(path, fps, size, chunk_frames=256)
    chunks = list(stream)
    frames = np.concatenate([c for c, _ in chunks])  # (T, size, size, 3)
    times = np.concatenate([t for _, t in chunks])  # (T,)
    return Frames(frames=frames, times=times, fps=float(fps), duration=float(stream.duration), truncated=stream.truncated)


_DONE = object()


def prefetch(
    items: Iterable[Any], fn: Callable[[Any], Any], depth: int = 2
) -> Iterator[tuple[Any, Any | Exception]]:
    """Run `fn(item)` for the next `depth` items in a background thread while the caller works on the current one.

    Yields `(item, result)` in the order of `items`; when `fn` raises an `Exception`, it is yielded as the result
    (never raised in the thread, never swallowed). Closing the iterator early (break / `close()`) stops the thread
    once its current `fn` call returns; no further items are started.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                results.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                try:
                    entry = (item, fn(item))
                except Exception as err:  # delivered to the consumer as a value
                    entry = (item, err)
                if not put(entry):
                    return
        except Exception as err:  # the items iterable itself failed: hand that to the consumer too
            put((_DONE, err))
            return
        put((_DONE, None))

    worker = threading.Thread(target=work, name="r2-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, result = results.get()
            if item is _DONE:
                if result is not None:
                    raise result
                return
            yield item, result
    finally:
        stop.set()
        worker.join()
