"""Moment retrieval metrics, value for value as Moment-DETR's `standalone_eval/eval.py` (QVHighlights) and its
UniVTG / R2-Tuning extension (`vtg_eval`: R1@0.3, mIoU, R5; Charades-STA, TACoS, Ego4D-NLQ).

Conventions kept from the official code (SPEC §8):
- R1@θ: only the FIRST LISTED prediction counts (not the highest scored). It is compared with the GT window of highest
  true IoU to it (first on ties; NaN, from two zero-length windows, wins as numpy's argmax does), and the hit test uses
  the "convex hull" IoU: intersection / (max end - min start), 0 when that span is 0.
- mAP: the first 10 LISTED windows, stable-sorted by score; per IoU threshold in 0.50:0.05:0.95 each prediction, in
  score order, takes the still-unmatched GT window of highest true IoU (numpy argsort order on IoU ties); a
  prediction whose best free GT is below θ is a false positive. VOC all-point interpolated AP per query, mean over
  queries, then over thresholds for "mAP".
- Length buckets short (0, 10], middle (10, 30], long (30, 150] (QVHighlights) or (30, inf) (vtg) keep only the GT
  windows of that length and the queries with at least one; an empty bucket scores the full set, as vtg does
  (`empty_buckets` names them; `python -m r2.metrics` prints their keys as "n/a").
- Every reported number is float(f"{100 * x:.2f}").
Inputs are never mutated.
"""
import numpy as np

__all__ = ["empty_buckets", "eval_moments", "iou_cross", "iou_hull", "mr_ap", "mr_r1", "mr_r5"]

MAP_THRESHOLDS = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))
R1_THRESHOLDS = tuple(float(f"{t:.2f}") for t in np.linspace(0.3, 0.95, 14))
BUCKETS = {"short": (0.0, 10.0), "middle": (10.0, 30.0), "long": (30.0, None), "full": (0.0, None)}


def _pct(x: float) -> float:
    return float(f"{100 * x:.2f}")


def iou_cross(spans1: np.ndarray, spans2: np.ndarray) -> np.ndarray:
    """True IoU of every pair, (N, 2) x (M, 2) -> (N, M); NaN where both windows have zero length."""
    spans1 = np.asarray(spans1, dtype=np.float64)
    spans2 = np.asarray(spans2, dtype=np.float64)
    areas1 = spans1[:, 1] - spans1[:, 0]  # (N,)
    areas2 = spans2[:, 1] - spans2[:, 0]  # (M,)
    left = np.maximum(spans1[:, None, 0], spans2[None, :, 0])  # (N, M)
    right = np.minimum(spans1[:, None, 1], spans2[None, :, 1])  # (N, M)
    inter = np.clip(right - left, 0, None)  # (N, M)
    union = areas1[:, None] + areas2[None, :] - inter  # (N, M)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def iou_hull(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Paired IoU with the convex hull as union: (N, 2), (N, 2) -> (N,); 0 where the hull has zero length."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    inter = np.maximum(0, np.minimum(pred[:, 1], gt[:, 1]) - np.maximum(pred[:, 0], gt[:, 0]))  # (N,)
    hull = np.maximum(pred[:, 1], gt[:, 1]) - np.minimum(pred[:, 0], gt[:, 0])  # (N,)
    return np.divide(inter, hull, out=np.zeros_like(inter), where=hull != 0)


def _interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC all-point interpolated AP (VOCdevkit 2011)."""
    mprec = np.hstack([[0], precision, [0]])
    mrec = np.hstack([[0], recall, [1]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]  # precision envelope, non-increasing in recall
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def _query_ap(gt_windows: list, pred_windows: list, thresholds: tuple[float, ...]) -> np.ndarray:
    """AP of one query at each threshold. gt: [[s, e], ...]; pred: [[s, e, score], ...] (already cut to 10)."""
    ap = np.zeros(len(thresholds))
    if not pred_windows:
        return ap
    preds = sorted(pred_windows, key=lambda w: -w[2])  # stable, as list.sort in the official code
    gts = np.asarray([w[:2] for w in gt_windows], dtype=np.float64)  # (G, 2)
    matched = np.zeros((len(thresholds), len(gts)), dtype=bool)
    tp = np.zeros((len(thresholds), len(preds)))
    fp = np.zeros((len(thresholds), len(preds)))
    for i, w in enumerate(preds):
        ious = iou_cross(np.asarray([w[:2]], dtype=np.float64), gts).reshape(-1)  # (G,)
        order = ious.argsort()[::-1]
        for t, thd in enumerate(thresholds):
            for j in order:
                if ious[j] < thd:
                    break
                if matched[t, j]:
                    continue
                tp[t, i] = 1
                matched[t, j] = True
                break
            if tp[t, i] == 0:
                fp[t, i] = 1
    tp_cum = np.cumsum(tp, axis=1).astype(float)  # (n_thr, P)
    fp_cum = np.cumsum(fp, axis=1).astype(float)  # (n_thr, P)
    recall = tp_cum / float(len(gts))
    precision = tp_cum / (tp_cum + fp_cum)
    for t in range(len(thresholds)):
        ap[t] = _interpolated_ap(precision[t], recall[t])
    return ap


def mr_ap(submission: list[dict], ground_truth: list[dict], max_pred_windows: int = 10) -> dict[str, float]:
    """{"0.5": .., ..., "0.95": .., "average": ..} in percent."""
    gt_by_qid = {d["qid"]: d["relevant_windows"] for d in ground_truth}
    aps = [_query_ap(gt_by_qid.get(d["qid"], []), d["pred_relevant_windows"][:max_pred_windows], MAP_THRESHOLDS)
           for d in submission if d["pred_relevant_windows"][:max_pred_windows]]
    ap_thds = np.array(aps).mean(0)  # (n_thr,)
    out = {str(t): v for t, v in zip(MAP_THRESHOLDS, ap_thds)}
    out["average"] = np.mean(ap_thds)
    return {k: _pct(v) for k, v in out.items()}


def _best_gt_ious(submission: list[dict], ground_truth: list[dict]) -> np.ndarray:
    """Hull IoU of each query's first listed window with its best (true-IoU) GT window, in submission order."""
    pred = {d["qid"]: d["pred_relevant_windows"][0][:2] for d in submission}
    best = {}
    for d in ground_truth:
        gts = d["relevant_windows"]
        k = int(np.argmax(iou_cross(np.asarray([pred[d["qid"]]], dtype=np.float64), np.asarray(gts))[0]))
        best[d["qid"]] = gts[k]
    qids = list(pred)
    return iou_hull(np.array([pred[q] for q in qids]).astype(float), np.array([best[q] for q in qids]).astype(float))


def mr_r1(submission: list[dict], ground_truth: list[dict],
          thresholds: tuple[float, ...] = R1_THRESHOLDS) -> tuple[dict[str, float], float]:
    """({"0.3": R1@0.3, ...}, mIoU), percent."""
    ious = _best_gt_ious(submission, ground_truth)
    return {str(t): _pct(np.mean(ious >= t)) for t in thresholds}, _pct(np.mean(ious))


def mr_r5(submission: list[dict], ground_truth: list[dict],
          thresholds: tuple[float, ...] = R1_THRESHOLDS) -> dict[str, float]:
    """R5@θ as vtg: among the first 5 listed windows x GT windows, the first pair (row-major) of highest true IoU
    (NaN counted as 0), scored with the hull IoU."""
    pred = {d["qid"]: [w[:2] for w in d["pred_relevant_windows"][:5]] for d in submission}
    best_pred, best_gt = {}, {}
    for d in ground_truth:
        gts = d["relevant_windows"]
        ious = iou_cross(np.asarray(pred[d["qid"]], dtype=np.float64), np.asarray(gts))  # (<=5, G)
        ious[np.isnan(ious)] = 0
        rows, cols = np.where(ious == np.max(ious))
        best_pred[d["qid"]] = pred[d["qid"]][rows[0]]
        best_gt[d["qid"]] = gts[cols[0]]
    qids = list(pred)
    ious = iou_hull(np.array([best_pred[q] for q in qids]).astype(float),
                    np.array([best_gt[q] for q in qids]).astype(float))
    return {str(t): _pct(np.mean(ious >= t)) for t in thresholds}


def _limits(name: str, qvh: bool) -> tuple[float, float | None]:
    """(low, high] window lengths of a bucket; Moment-DETR caps QVHighlights' long bucket at 150 s."""
    low, high = BUCKETS[name]
    if qvh and name == "long":
        high = 150.0
    return low, high


def _bucket_gt(ground_truth: list[dict], low: float, high: float | None) -> list[dict]:
    """The records with a window of length in (low, high], keeping only those windows."""
    gt_in = []
    for d in ground_truth:
        kept = [w for w in d["relevant_windows"] if low < w[1] - w[0] and (high is None or w[1] - w[0] <= high)]
        if kept:
            gt_in.append({**d, "relevant_windows": kept})
    return gt_in


def _bucket(submission: list[dict], ground_truth: list[dict], low: float, high: float | None
            ) -> tuple[list[dict], list[dict]]:
    if low == 0 and high is None:
        return submission, ground_truth
    gt_in = _bucket_gt(ground_truth, low, high)
    qids = {d["qid"] for d in gt_in}
    sub_in = [d for d in submission if d["qid"] in qids]
    if not gt_in:  # vtg: an empty bucket is scored on the full set
        return submission, ground_truth
    return sub_in, gt_in


def empty_buckets(ground_truth: list[dict], dataset: str = "qvhighlights") -> list[str]:
    """The length buckets with no ground-truth window: `eval_moments` scores them on the full set (as vtg does), so
    their values repeat the full set's and mean nothing; `python -m r2.metrics` prints them as "n/a"."""
    qvh = dataset == "qvhighlights"
    return [name for name in BUCKETS if name != "full" and not _bucket_gt(ground_truth, *_limits(name, qvh))]


def eval_moments(submission: list[dict], ground_truth: list[dict], dataset: str = "qvhighlights") -> dict[str, float]:
    """Brief MR metrics. dataset "qvhighlights": Moment-DETR's keys (long bucket capped at 150 s); any other name:
    vtg's keys (R1@0.3, R5, per-bucket mIoU). Inputs must already be consistent (see `check_submission`)."""
    qvh = dataset == "qvhighlights"
    per = {}
    for name in BUCKETS:
        sub, gt = _bucket(submission, ground_truth, *_limits(name, qvh))
        r1, miou = mr_r1(sub, gt, MAP_THRESHOLDS if qvh else R1_THRESHOLDS)
        per[name] = {"mAP": mr_ap(sub, gt), "R1": r1, "mIoU": miou, "R5": None if qvh else mr_r5(sub, gt)}
    brief = {
        "MR-full-mAP": per["full"]["mAP"]["average"],
        "MR-full-mAP@0.5": per["full"]["mAP"]["0.5"],
        "MR-full-mAP@0.75": per["full"]["mAP"]["0.75"],
        "MR-short-mAP": per["short"]["mAP"]["average"],
        "MR-middle-mAP": per["middle"]["mAP"]["average"],
        "MR-long-mAP": per["long"]["mAP"]["average"],
        "MR-full-R1@0.5": per["full"]["R1"]["0.5"],
        "MR-full-R1@0.7": per["full"]["R1"]["0.7"],
    }
    if not qvh:
        brief.update({f"MR-{name}-mIoU": per[name]["mIoU"] for name in BUCKETS})
        brief["MR-full-R1@0.3"] = per["full"]["R1"]["0.3"]
        brief.update({f"MR-full-R5@{t}": per["full"]["R5"][t] for t in ("0.3", "0.5", "0.7")})
    return dict(sorted(brief.items()))
