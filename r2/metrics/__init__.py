"""Official-equivalent metrics for the six benchmarks (SPEC §8), submission files and the QVHighlights zip.

`evaluate(dataset, submission, ground_truth)` is the one call the trainer makes: `submission` holds QVHighlights-format
prediction dicts (`qid`, `vid`, `pred_relevant_windows` [[start, end, score], ...], `pred_saliency_scores`), and
`ground_truth` holds `Record.to_json()` dicts (or the benchmark's own jsonl dicts). Keys:
- qvhighlights: Moment-DETR's brief keys (`MR-full-mAP`, `MR-full-mAP@0.5`, `MR-full-mAP@0.75`, `MR-{short,middle,
  long}-mAP`, `MR-full-R1@{0.5,0.7}`, `HL-min-{Fair,Good,VeryGood}-{mAP,Hit1}`), percent, 2 decimals.
- charades, tacos, ego4d, demo, custom: UniVTG / R2-Tuning `vtg_eval` brief keys (the above MR keys plus
  `MR-full-R1@0.3`, `MR-{short,middle,long,full}-mIoU`, `MR-full-R5@{0.3,0.5,0.7}`), with the HL keys when the GT
  has saliency scores.
- youtube, tvsum: `mAP-<domain>` and `mAP` (mean over the domains present), fractions rounded to 5 decimals as the
  official evaluators return them.
"""
import json
import math
import zipfile
from pathlib import Path

from ..datasets import TVSUM_SPLITS, YOUTUBE_SPLITS, dataset_info
from ..errors import NotFoundError, R2Error
from ..recipes import recipe
from .highlights import eval_highlights, eval_tvsum, eval_youtube, sklearn_interpolated_ap, trapezoid_ap
from .moments import eval_moments, iou_cross, iou_hull

__all__ = [
    "MetricsError", "QVH_SUBMISSION_FILES", "check_saliency_predictions", "check_submission", "eval_highlights", "eval_moments",
    "eval_qvhighlights", "eval_tvsum", "eval_youtube", "evaluate", "headline", "iou_cross", "iou_hull",
    "pack_qvhighlights", "read_jsonl", "sklearn_interpolated_ap", "trapezoid_ap", "write_submission",
]

QVH_SUBMISSION_FILES = ("hl_val_submission.jsonl", "hl_test_submission.jsonl")
SALIENCY_LENGTH_TOLERANCE = 5  # clips; QVHighlights-style predictions may be cut/padded by less (reference's check)


class MetricsError(R2Error, ValueError):
    """A submission or ground truth that cannot be scored; the message names the entry and what is wrong."""


def headline(dataset: str) -> str:
    """The metric key that picks best.pt (see r2.datasets for the reasons)."""
    return dataset_info(dataset).headline


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_submission(submission: list[dict], ground_truth: list[dict], moments: bool = True,
                     saliency: bool = False, clip_len: float = 2.0) -> None:
    """Raise ValueError naming the first offending qid when submission and GT are inconsistent: qid sets differ,
    duplicate qids, missing/empty/malformed windows ([start, end, score] finite numbers), GT without windows,
    malformed saliency scores or a saliency length off by >= 5 clips from int(duration / clip_len)."""
    if not submission:
        raise MetricsError("submission is empty: expected one prediction dict per GT qid")
    seen, gt = set(), {}
    for d in ground_truth:
        if d["qid"] in gt:
            raise MetricsError(f"ground truth: qid {d['qid']!r} appears twice")
        gt[d["qid"]] = d
    for i, d in enumerate(submission, 1):
        if not isinstance(d, dict) or "qid" not in d:
            raise MetricsError(f"submission: entry {i} has no 'qid': expected one QVHighlights-format prediction "
                               f"dict per line (qid, vid, pred_relevant_windows, pred_saliency_scores)")
        qid = d["qid"]
        if qid in seen:
            raise MetricsError(f"submission: qid {qid!r} appears twice")
        seen.add(qid)
        if qid not in gt:
            raise MetricsError(f"submission: qid {qid!r} is not in the ground truth (qid sets must be equal)")
    missing = [q for q in gt if q not in seen]
    if missing:
        raise MetricsError(f"submission: qid {missing[0]!r} of the ground truth has no prediction "
                           f"({len(missing)} missing; qid sets must be equal)")
    for d in submission:
        qid, g = d["qid"], gt[d["qid"]]
        if moments:
            windows = d.get("pred_relevant_windows")
            if not isinstance(windows, list) or not windows:
                raise MetricsError(f"submission: qid {qid!r}: 'pred_relevant_windows' must be a non-empty list of "
                                   f"[start, end, score]")
            for w in windows:
                if not isinstance(w, list) or len(w) < 3 or not all(_is_number(x) for x in w[:3]):
                    raise MetricsError(f"submission: qid {qid!r}: window {w!r} must be [start, end, score] with "
                                       f"finite numbers")
            if not g.get("relevant_windows"):
                raise MetricsError(f"ground truth: qid {qid!r} has no 'relevant_windows'")
        if saliency:
            scores = d.get("pred_saliency_scores")
            if not isinstance(scores, list) or not scores or not all(_is_number(x) for x in scores):
                raise MetricsError(f"submission: qid {qid!r}: 'pred_saliency_scores' must be a non-empty list of "
                                   f"finite numbers, one per {clip_len:g} s clip")
            n = int(g["duration"] / clip_len)
            if abs(len(scores) - n) >= SALIENCY_LENGTH_TOLERANCE:
                raise MetricsError(f"submission: qid {qid!r}: {len(scores)} saliency scores for a {g['duration']} s "
                                   f"video; expected {n} (one per {clip_len:g} s clip)")
            if not isinstance(g.get("saliency_scores"), list) or not isinstance(g.get("relevant_clip_ids"), list):
                raise MetricsError(f"ground truth: qid {qid!r} has no 'saliency_scores' / 'relevant_clip_ids'")


def check_saliency_predictions(pred: dict, anno: dict, kind: str, column: str) -> None:
    """YouTube (`kind` "youtube", exact length) / TVSum ("tvsum", up to 4 clips short, never longer): raise naming
    the first offending video id."""
    for vid, scores in pred.items():
        if vid not in anno:
            raise MetricsError(f"prediction: video {vid!r} is not in the annotation file")
        if not isinstance(scores, list) or not scores or not all(_is_number(x) for x in scores):
            raise MetricsError(f"prediction: video {vid!r}: expected a non-empty list of finite scores, one per clip")
        n = len(anno[vid][column])
        ok = len(scores) == n if kind == "youtube" else 0 <= n - len(scores) < SALIENCY_LENGTH_TOLERANCE
        if not ok:
            raise MetricsError(f"prediction: video {vid!r}: {len(scores)} scores for {n} annotated clips "
                               f"({'must be equal' if kind == 'youtube' else 'may be at most 4 fewer, never more'})")


def eval_qvhighlights(submission: list[dict], ground_truth: list[dict]) -> dict[str, float]:
    """Moment-DETR `eval_submission(...)["brief"]`: MR keys when predictions have windows, HL keys when they have
    saliency scores."""
    moments = "pred_relevant_windows" in submission[0]
    saliency = "pred_saliency_scores" in submission[0]
    check_submission(submission, ground_truth, moments=moments, saliency=saliency)
    out = eval_moments(submission, ground_truth, "qvhighlights") if moments else {}
    if saliency:
        out.update(eval_highlights(submission, ground_truth))
    return out


def _vtg(submission: list[dict], ground_truth: list[dict], dataset: str) -> dict[str, float]:
    moments = "pred_relevant_windows" in submission[0]
    saliency = "pred_saliency_scores" in submission[0] and isinstance(ground_truth[0].get("saliency_scores"), list)
    check_submission(submission, ground_truth, moments=moments, saliency=saliency,
                     clip_len=dataset_info(dataset).clip_len)
    out = eval_moments(submission, ground_truth, dataset) if moments else {}
    if saliency:
        out.update(eval_highlights(submission, ground_truth, dataset_info(dataset).clip_len))
    return out


def _domain_anno(ground_truth: list[dict], column: str) -> dict:
    """Record.to_json dicts -> {vid: {column: ..., "domain": ...}} (full clip lists, see Record.to_json)."""
    anno = {}
    for d in ground_truth:
        rows = [[0.0] * len(d["saliency_scores"][0]) for _ in range(d["num_clips"])]
        for k, row in zip(d["relevant_clip_ids"], d["saliency_scores"]):
            rows[k] = row
        anno[d["vid"]] = {"domain": d["domain"], column: [r[0] for r in rows] if column == "match" else rows}
    return anno


def evaluate(dataset: str, submission: list[dict], ground_truth: list[dict]) -> dict[str, float]:
    """Metrics of one split; see the module docstring for the keys."""
    info = dataset_info(dataset)
    if not submission or not ground_truth:
        raise MetricsError(f"{dataset}: empty submission or ground truth")
    if dataset == "qvhighlights":
        return eval_qvhighlights(submission, ground_truth)
    if recipe(dataset).highlight_only:
        vids = [d["vid"] for d in ground_truth]
        pred = {d["vid"]: d.get("pred_saliency_scores") for d in submission}
        extra = [v for v in pred if v not in set(vids)]
        missing = [v for v in vids if v not in pred]
        if extra or missing or len(pred) != len(submission):
            raise MetricsError(f"{dataset}: prediction and GT videos differ (first: "
                             f"{(extra or missing or ['duplicate'])[0]!r}); one prediction per GT video")
        column = "match" if dataset == "youtube" else "anno"
        anno = _domain_anno(ground_truth, column)
        check_saliency_predictions(pred, anno, dataset, column)
        splits = YOUTUBE_SPLITS if dataset == "youtube" else TVSUM_SPLITS
        order = {dom: s[info.eval_split] for dom, s in splits.items()}
        return (eval_youtube if dataset == "youtube" else eval_tvsum)(pred, anno, order)
    return _vtg(submission, ground_truth, dataset)


def read_jsonl(path: str | Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise MetricsError(f"{path}:{ln}: not valid JSON ({e.msg})") from None
    return out


def write_submission(path: str | Path, submission: list[dict]) -> Path:
    """One prediction dict per line (QVHighlights jsonl)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for d in submission:
            f.write(json.dumps(d) + "\n")
    return path


def pack_qvhighlights(src: str | Path | list, zip_path: str | Path) -> Path:
    """Zip hl_val_submission.jsonl and hl_test_submission.jsonl at the archive root (no enclosing folder), the layout
    the QVHighlights CodaLab server expected. `src`: a run folder holding both, or the two file paths."""
    files = [Path(src) / name for name in QVH_SUBMISSION_FILES] if isinstance(src, (str, Path)) else \
        [Path(p) for p in src]
    names = sorted(p.name for p in files)
    if names != sorted(QVH_SUBMISSION_FILES):
        raise MetricsError(f"QVHighlights zip needs exactly {QVH_SUBMISSION_FILES}, got {names}")
    for p in files:
        if not p.is_file():
            raise NotFoundError(f"{p} not found: write it with write_submission() first")
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p in files:
            z.write(p, arcname=p.name)
    return zip_path
