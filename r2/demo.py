"""The built-in `demo` dataset: small synthetic videos with QVHighlights-format annotations, generated offline.

Each video concatenates 3–5 segments drawn from ffmpeg's lavfi sources, each segment one visual "concept" (a red
screen, colour bars, a zooming fractal, TV static, ...), 16–32 s in all. Every concept a video shows is asked once,
in words; its ground truth is every segment of that concept (in ~30% of videos one concept appears twice, so that
query has two windows). Segments are multiples of 2 s, so windows lie on QVHighlights' 2 s clip grid. Short videos
with several queries each keep the frame count (what CLIP extraction costs) small for the number of training
queries: the default 70 videos are ~850 frames and ~270 queries.

Everything is a pure function of (seed, video index): video i is the same whatever `n_videos` is, and the same
seed gives the same annotation bytes (and, with the same ffmpeg build, the same video bytes).
The concepts differ in colour and texture and their names use distinct words, so a model fed features from an
untrained CLIP can still learn them.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from r2.errors import ConfigError
from r2.video import ffmpeg_exe

__all__ = ["CONCEPTS", "DEFAULT_VIDEOS", "GENERATOR_VERSION", "DemoQuery", "DemoVideo", "annotation", "demo_video", "make_demo"]

DEFAULT_VIDEOS = 70  # the demo's size unless --demo-videos says otherwise
GENERATOR_VERSION = 2  # bump whenever the content generated for a given seed changes
CLIP_SECONDS = 2  # QVHighlights clip length: windows and segments lie on this grid
WIDTH, HEIGHT, RATE = 160, 120, 4  # small and slow: generation is fast, still plenty for 0.5–2 fps sampling
VAL_FRACTION = 0.2
REPEAT_PROBABILITY = 0.3  # videos in which one concept appears in two separate segments
MAX_SEGMENTS = 5  # qids: video i's queries are 5i, 5i+1, ...

# concept name -> (lavfi source, `{seed}` filled per segment; query phrasings, distinct words per concept)
CONCEPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "red": ("color=c=red", ("a red screen", "the screen turns completely red", "a plain red frame")),
    "green": ("color=c=lime", ("a green screen", "the picture is bright green", "a plain green frame")),
    "blue": ("color=c=blue", ("a blue screen", "the screen turns completely blue", "a plain blue frame")),
    "yellow": ("color=c=yellow", ("a yellow screen", "the picture is bright yellow", "a plain yellow frame")),
    "bars": ("smptebars", ("colour bars", "vertical stripes of colour bars", "a broadcast colour bar chart")),
    "testcard": ("testsrc", ("a test pattern with a counter", "a numbered test card", "a test card with digits")),
    "fractal": ("mandelbrot", ("a fractal zooming in", "a mandelbrot set zoom", "a swirling fractal")),
    "life": (
        "life=seed={seed}:ratio=0.3:mold=10:life_color=white:death_color=black",
        ("cells of the game of life", "a grid of living cells evolving", "conway cells blinking"),
    ),
    "automaton": (
        "cellauto=seed={seed}:rule=30:scroll=1:random_fill_ratio=0.5",
        ("a cellular automaton scrolling up", "a triangle pattern automaton", "rule thirty automaton rows"),
    ),
    "static": (
        "color=c=gray,noise=c0s=100:c0f=t+u:c0_seed={seed}",
        ("tv static noise", "grey snow of a detuned television", "random noisy static"),
    ),
    "gradient": (
        "gradients=c0=0xFF00AA:c1=0xFFAA00:x0=0:y0=0:x1=160:y1=120:speed=0.05:seed=1",
        ("a smooth colour gradient", "soft blended hues drifting", "a gradient of mixed colours"),
    ),  # explicit colours and end points (left random, ffmpeg draws them from the clock) and one fixed seed: some
    # seeds still render an almost flat orange field, indistinguishable from "yellow"
    "checkerboard": (
        "color=c=black,geq=lum='255*mod(floor(X/20)+floor(Y/20)+floor(T*2),2)':cb=128:cr=128",
        ("a black and white checkerboard", "flashing chess squares", "a checkered board pattern"),
    ),
}


@dataclass(frozen=True)
class DemoQuery:
    qid: int
    concept: str
    query: str


@dataclass(frozen=True)
class DemoVideo:
    vid: str
    segments: tuple[tuple[str, int, int], ...]  # (concept, seconds, source seed) in play order
    queries: tuple[DemoQuery, ...]

    @property
    def duration(self) -> int:
        return sum(seconds for _, seconds, _ in self.segments)

    def windows(self, concept: str) -> list[list[int]]:
        """[start, end] seconds of every segment showing `concept`."""
        out, start = [], 0
        for name, seconds, _ in self.segments:
            if name == concept:
                out.append([start, start + seconds])
            start += seconds
        return out


def _video_rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * 1_000_003 + index)


def demo_video(seed: int, index: int) -> DemoVideo:
    """The content of demo video `index` for `seed`: 3–5 segments, 16–32 s, one query per concept shown."""
    rng = _video_rng(seed, index)
    n_segments = rng.randint(3, 5)
    n_clips = rng.randint(max(8, 2 * n_segments), 16)  # 16–32 s; every segment gets at least 2 clips (4 s)
    clips = [2] * n_segments
    for _ in range(n_clips - 2 * n_segments):
        clips[rng.randrange(n_segments)] += 1
    concepts = rng.sample(sorted(CONCEPTS), n_segments)
    if rng.random() < REPEAT_PROBABILITY:
        first = rng.randrange(n_segments - 2)
        second = rng.randrange(first + 2, n_segments)  # never adjacent: the two windows stay separate
        concepts[second] = concepts[first]
    segments = tuple((c, k * CLIP_SECONDS, rng.randrange(1 << 16)) for c, k in zip(concepts, clips))
    asked = list(dict.fromkeys(concepts))  # every concept shown, in order of first appearance
    queries = tuple(
        DemoQuery(qid=MAX_SEGMENTS * index + j, concept=c, query=rng.choice(CONCEPTS[c][1]))
        for j, c in enumerate(asked)
    )
    return DemoVideo(vid=f"demo_{index:05d}", segments=segments, queries=queries)


def _saliency(rng: random.Random, n_clips: int) -> list[list[int]]:
    """Three annotators' 2–4 scores for the clips of one window: 2 at the edges, rising to 4 in the middle,
    each annotator off by one now and then."""
    rows = []
    for j in range(n_clips):
        base = 2 + min(j, n_clips - 1 - j, 2)  # (clips from the nearest edge) -> 2, 3, 4
        rows.append([min(4, max(2, base + rng.choice((-1, 0, 0, 1)))) for _ in range(3)])
    return rows


def annotation(video: DemoVideo, query: DemoQuery, seed: int) -> dict:
    """One QVHighlights-format record (same keys and order as `highlight_*_release.jsonl`)."""
    rng = random.Random(f"{seed}/{query.qid}")
    windows = video.windows(query.concept)
    clip_ids, scores = [], []
    for start, end in windows:
        ids = list(range(start // CLIP_SECONDS, end // CLIP_SECONDS))  # clip k covers [2k, 2k+2)
        clip_ids += ids
        scores += _saliency(rng, len(ids))
    return {
        "qid": query.qid,
        "query": query.query,
        "duration": video.duration,
        "vid": video.vid,
        "relevant_clip_ids": clip_ids,
        "saliency_scores": scores,
        "relevant_windows": windows,
    }


def _ffmpeg_command(video: DemoVideo, out_path: Path) -> list[str]:
    """One ffmpeg call (an argument list): every segment a lavfi source cut to its length, concatenated, H.264."""
    inputs, labels = [], []
    for k, (concept, seconds, source_seed) in enumerate(video.segments):
        source = CONCEPTS[concept][0].format(seed=source_seed)
        head, _, rest = source.partition(",")  # size and rate go on the source itself, before any filter
        opts = f"s={WIDTH}x{HEIGHT}:r={RATE}"
        head = f"{head}:{opts}" if "=" in head else f"{head}={opts}"
        inputs += ["-f", "lavfi", "-t", str(seconds), "-i", head + ("," + rest if rest else "")]
        labels.append(f"[{k}:v]setsar=1,format=yuv420p[s{k}];")
    graph = "".join(labels) + "".join(f"[s{k}]" for k in range(len(labels)))
    graph += f"concat=n={len(labels)}:v=1:a=0[out]"
    return [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *inputs,
        "-filter_complex", graph, "-map", "[out]",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
        "-threads", "1",  # one encoder thread per video; videos run in parallel (and x264 stays deterministic)
        "-movflags", "+faststart", "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
        "-f", "mp4", str(out_path),
    ]


def _write_video(video: DemoVideo, videos_dir: Path) -> None:
    final = videos_dir / f"{video.vid}.mp4"
    partial = videos_dir / f"{video.vid}.partial.mp4"
    done = subprocess.run(_ffmpeg_command(video, partial), stdin=subprocess.DEVNULL, capture_output=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        err = " ".join(done.stderr.decode("utf-8", errors="replace").split())[-400:]
        raise RuntimeError(f"ffmpeg failed writing demo video {final}: {err}")
    os.replace(partial, final)  # a killed run never leaves a half video under the final name


def _split(seed: int, n_videos: int) -> set[int]:
    """Indices of the validation videos: a seeded 20% of the videos."""
    return set(random.Random(f"split/{seed}").sample(range(n_videos), round(VAL_FRACTION * n_videos)))


def _write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".partial")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def make_demo(root: Path, seed: int = 0, n_videos: int = DEFAULT_VIDEOS, progress: bool = True) -> Path:
    """Write the demo dataset into `root`: `videos/<vid>.mp4`, `train.jsonl`, `val.jsonl`, `manifest.json`.

    Resumable: when `manifest.json` already records this seed, n_videos and generator version and every file
    exists, nothing is done; otherwise only the missing videos are generated. Returns `root`.
    """
    if n_videos < 1:
        raise ConfigError(f"n_videos must be >= 1, got {n_videos}")
    root = Path(root)
    videos_dir = root / "videos"
    manifest_path = root / "manifest.json"
    params = {"seed": seed, "n_videos": n_videos, "generator_version": GENERATOR_VERSION}
    videos = [demo_video(seed, i) for i in range(n_videos)]
    video_paths = [videos_dir / f"{v.vid}.mp4" for v in videos]
    outputs = [root / "train.jsonl", root / "val.jsonl", *video_paths]

    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: is a file; the demo dataset needs a folder there (it is made beside the cache: "
                          f"pass another --out)")
    if not manifest_path.exists() and root.is_dir() and any(root.iterdir()):
        raise ConfigError(f"{root}: holds files but no manifest.json, so it is not a demo folder r2 made; r2 never "
                          f"writes over them: move them, or pass another --out (the demo is made beside the cache)")
    if manifest_path.exists():
        recorded = json.loads(manifest_path.read_text())
        if (recorded.get("seed"), recorded.get("generator_version")) != (seed, GENERATOR_VERSION):
            raise ConfigError(
                f"{manifest_path} records seed {recorded.get('seed')} / generator version "
                f"{recorded.get('generator_version')}, not {seed} / {GENERATOR_VERSION}: use another folder or delete it"
            )
        complete = recorded.get("complete") and all(recorded.get(k) == v for k, v in params.items())
        if complete and all(p.exists() for p in outputs):
            return root

    # Recorded before any video is written, so a later run with another seed cannot reuse these videos.
    root.mkdir(parents=True, exist_ok=True)
    _write_json(manifest_path, {**params, "complete": False})
    videos_dir.mkdir(parents=True, exist_ok=True)
    todo = [v for v, p in zip(videos, video_paths) if not p.exists()]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        jobs = [pool.submit(_write_video, v, videos_dir) for v in todo]
        for job in tqdm(as_completed(jobs), total=len(jobs), desc="demo videos", disable=not progress):
            job.result()

    val = _split(seed, n_videos)
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for i, video in enumerate(videos):
        for query in video.queries:
            splits["val" if i in val else "train"].append(annotation(video, query, seed))
    for name, records in splits.items():
        _write_jsonl(root / f"{name}.jsonl", records)
    manifest = {
        **params,
        "complete": True,
        "clip_seconds": CLIP_SECONDS,
        "resolution": [WIDTH, HEIGHT],
        "frame_rate": RATE,
        "concepts": sorted(CONCEPTS),
        "counts": {
            "videos": {"train": n_videos - len(val), "val": len(val)},
            "queries": {name: len(records) for name, records in splits.items()},
        },
    }
    _write_json(manifest_path, manifest)
    return root
