"""    python -m r2.predict --checkpoint runs/x/best.pt --video clip.mp4 [more.mp4 | FOLDER ...] \\
        --query "a man opens the fridge" [--query ...] [--out out/] [--plot] [--html [--embed-video]] \\
        [--export-chapters] [--export-clips [moments|reel]]

The command loads the checkpoint and CLIP once for every video given. Each video's outputs are named after it:
OUT/<video>.json (the prediction: moments with a positive score unless --all-moments), .png, .html, .vtt and
clips/<video>_q<N>_...mp4; a name that another video already holds in OUT (same file name, other folder) becomes
<video>-2, -3, ..., so nothing a user has is overwritten. The table and JSON printed show times to 0.01 s and scores
to 1e-4. A video that cannot be decoded is one error line and the others go on (exit 1; 2 when none worked).

`python -m r2.predict` and the `r2-predict` console script run `run()`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from r2 import video
from r2.errors import ConfigError, R2Error, command
from r2.predict import Prediction, PredictError, Predictor, read_ground_truth

__all__ = ["display_json", "format_table", "get_args_parser", "main", "output_stem", "run", "video_files"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m r2.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="best.pt / last.pt of a training run, an official R²-Tuning .pth, or a zoo name "
                        "(r2-tuning:qvhighlights, ...)")
    p.add_argument("--dataset", help="an official checkpoint's dataset when its file name does not say it")
    p.add_argument("--video", required=True, type=Path, nargs="+", action="extend",
                   help="video files, or folders of videos (their files with a video extension, sorted); CLIP and "
                        "the model are loaded once for all of them")
    p.add_argument("--query", action="append", default=[], help="a query text; repeat for several")
    p.add_argument("--annotations", type=Path, help="QVHighlights-format jsonl: ground truth of the videos' "
                   "queries for the plot and page (and their queries when no --query is given)")
    p.add_argument("--vid", help="the video's id in --annotations (default: the file name without extension; "
                   "one video only)")
    p.add_argument("--out", type=Path, default=Path("out"),
                   help="folder for OUT/<video>.json, .png, .html, .vtt and clips/; a name already used by another "
                        "video gets -2, -3, ...")
    p.add_argument("--top", type=int, default=5, help="moments shown per query (table, plot, page, chapters, clips)")
    p.add_argument("--all-moments", action="store_true", help="write every decoded window to OUT/<video>.json "
                   "(the reference's full list, suppressed ones at score 0); default: those with score > 0")
    p.add_argument("--plot", action="store_true", help="write OUT/<video>.png: saliency, moments, frames")
    p.add_argument("--html", action="store_true", help="write OUT/<video>.html: player, curves, moments")
    p.add_argument("--embed-video", action="store_true", help="with --html: put the video inside the page, so "
                   "it opens anywhere (videos up to 256 MiB)")
    p.add_argument("--export-chapters", action="store_true",
                   help="write OUT/<video>.vtt: WebVTT chapters of the top moments")
    p.add_argument("--export-clips", nargs="?", const="moments", choices=("moments", "reel"),
                   help="cut OUT/clips/*.mp4 (with audio): the top moments (default) or a reel of the most salient "
                        "clips")
    p.add_argument("--reel-seconds", type=float, default=30.0, help="length of a highlight reel")
    p.add_argument("--clip", help="the checkpoint's CLIP, when it is not where its fingerprint says (name or path)")
    p.add_argument("--fps", type=float, help="sampling rate, only for checkpoints trained at per-video rates")
    p.add_argument("--window", type=int, help="frames per model call (default: the model's trained length)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--feature-cache", default="auto", help="folder of encoded videos reused by later predictions "
                   "(auto: $R2_PREDICT_CACHE, else ~/.cache/r2/features)")
    p.add_argument("--no-feature-cache", action="store_true", help="neither read nor write encoded videos")
    return p


def video_files(specs: Sequence[Path]) -> list[Path]:
    """--video arguments -> video files: a file as given, a folder as its files with a video extension (sorted)."""
    from r2.datasets import VIDEO_EXTENSIONS

    files: list[Path] = []
    for spec in specs:
        if spec.is_dir():
            found = sorted(p for p in spec.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            if not found:
                raise PredictError(f"--video {spec}: the folder holds no {'/'.join(VIDEO_EXTENSIONS)} file")
            files.extend(found)
        elif spec.is_file():
            files.append(spec)
        else:
            raise video.VideoDecodeError(spec, "file not found" if not spec.exists() else "not a regular file")
    return list(dict.fromkeys(files))


def output_stem(out: Path, video_path: Path, taken: set[str]) -> str:
    """The name of a video's outputs in `out`: its stem, or stem-2, stem-3, ... when that name is taken by another
    video of this call, or OUT/<name>.json holds the prediction of another file."""
    stem, number = video_path.stem, 1
    while True:
        name = stem if number == 1 else f"{stem}-{number}"
        if name not in taken and _json_video(out / f"{name}.json") in (None, str(video_path.resolve())):
            return name
        number += 1


def _json_video(path: Path) -> str | None:
    """The video a prediction file is of ("" when it is not a prediction file), None when there is no file."""
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["video_file"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def display_json(pred: Prediction, top: int) -> dict:
    """What is printed: per query its first `top` moments with a positive score, seconds to 0.01, scores to 1e-4 (a
    window clamped to the video's end shows as the duration, not 29.966667)."""
    return {"video": pred.video, "queries": [
        {"query": q.query, "moments": [[round(m.start, 2), round(m.end, 2), round(m.score, 4)] for m in q.top(top)]}
        for q in pred.queries]}


def format_table(pred: Prediction, top: int) -> str:
    """The top moments of each query as aligned text."""
    lines = [f"{pred.video}: {pred.duration:.1f} s, {pred.n_frames} frames at {pred.fps:g} fps, "
             f"{len(pred.windows)} window(s) of {pred.window_frames} frames"
             + (" (truncated file)" if pred.truncated else "")]
    for q in pred.queries:
        lines.append(f"query: {q.query!r}")
        moments = q.top(top)
        best = f"most salient clip at {int(np.argmax(q.saliency)) / pred.fps:.1f} s"
        if top == 0:
            lines.append(f"  {best} (moments not shown: --top 0)")
        elif not q.moments:
            lines.append(f"  no moments (saliency-only model); {best}")
        elif not moments:
            lines.append(f"  no moment with a score > 0; {best}")
        else:
            lines.append(f"  {'rank':>4} {'start':>9} {'end':>9} {'score':>7}")
            lines.extend(f"  {rank:>4} {m.start:>9.2f} {m.end:>9.2f} {m.score:>7.4f}"
                         for rank, m in enumerate(moments, 1))
    return "\n".join(lines)


def _write_outputs(args: argparse.Namespace, pred: Prediction, record: dict, truth: dict, stem: str) -> list[Path]:
    """OUT/<stem>.json and the outputs the flags ask for."""
    from r2 import viz

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plain = pred.to_json()
    saved = {**record, "video_file": str(Path(pred.video).resolve()), **pred.to_json(args.all_moments)}
    written = [out / f"{stem}.json"]
    written[0].write_text(json.dumps(saved))
    if args.plot:
        written.append(viz.plot_prediction(plain, out / f"{stem}.png", truth, args.top))
    if args.html:
        written.append(viz.write_html(plain, out / f"{stem}.html", truth, args.top, embed_video=args.embed_video))
    if args.export_chapters:
        written.append(viz.write_chapters(plain, out / f"{stem}.vtt", args.top))
    if args.export_clips == "moments":
        written.extend(viz.export_moments(plain, out / "clips", args.top, stem=stem))
    elif args.export_clips == "reel":
        written.extend(viz.export_reel(plain, out / "clips", args.reel_seconds, stem=stem))
    return written


def _check_args(args: argparse.Namespace, videos: list[Path]):
    if args.top < 0:
        raise ConfigError(f"--top {args.top}: must be >= 0 (0 shows no moments)")
    if args.reel_seconds <= 0:
        raise ConfigError(f"--reel-seconds {args.reel_seconds:g}: must be > 0")
    if args.vid and len(videos) > 1:
        raise ConfigError(f"--vid names one video, but --video gives {len(videos)}: each video's id in --annotations "
                          f"is then its file name without extension")
    if args.embed_video and not args.html:
        raise ConfigError("--embed-video is for the page: add --html")
    if args.annotations and not args.annotations.is_file():
        raise ConfigError(f"--annotations {args.annotations}: file not found")
    if any(not q.strip() for q in args.query):
        raise ConfigError("--query '': a query needs some text")


def _predict_one(args: argparse.Namespace, predictor: Predictor, path: Path, taken: set[str]) -> list[Path]:
    vid = args.vid or path.stem
    truth = read_ground_truth(args.annotations, vid) if args.annotations else {}
    queries = args.query or list(truth)
    if not queries:
        raise PredictError(f"{path}: no query: pass --query TEXT (or --annotations with records of this video: none "
                         f"has vid {vid!r})")
    pred = predictor.predict(path, queries)
    stem = output_stem(args.out, path, taken)
    taken.add(stem)
    written = _write_outputs(args, pred, {"checkpoint": str(args.checkpoint),
                                          "window_source": predictor.window_source}, truth, stem)
    print(format_table(pred, args.top))
    print(json.dumps(display_json(pred, args.top)), flush=True)
    return written


@command
def main(args: argparse.Namespace) -> int:
    """Exit code: 0 every video predicted; 1 some failed (each named on one line); 2 none (or a bad argument).
    Warnings are printed as one "warning: ..." line each."""
    videos = video_files(args.video)
    _check_args(args, videos)
    predictor = Predictor(args.checkpoint, clip=args.clip, fps=args.fps, device=args.device, dataset=args.dataset,
                          window_frames=args.window, feature_cache=None if args.no_feature_cache else args.feature_cache)
    taken: set[str] = set()
    failed = 0
    for path in videos:
        try:
            written = _predict_one(args, predictor, path, taken)
        except (R2Error, OSError) as err:  # OSError: an output that cannot be written
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    if failed:
        print(f"{len(videos) - failed} of {len(videos)} videos predicted, {failed} failed", file=sys.stderr)
    return 0 if not failed else 1 if failed < len(videos) else 2


def run() -> int:
    """The `r2-predict` console script."""
    return main(get_args_parser().parse_args())
