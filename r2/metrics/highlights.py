"""Highlight detection / summarization metrics, value for value as the official evaluators (SPEC §8).

- QVHighlights HD (Moment-DETR `eval_highlight`): GT matrix int(duration / 2) clips x annotators, unlisted clips 0,
  binarized at >= 2 (Fair), >= 3 (Good), >= 4 (VeryGood). Predictions cut or zero-padded to that length. AP per
  (query, annotator) is scikit-learn's `precision_recall_curve` made monotone, averaged at the points where recall
  changes (`sklearn_interpolated_ap`), 0 when the annotator marks nothing, 1 when everything; mean x 100.
  HIT@1: numpy argmax of the raw predicted scores (first on ties), hit when any annotator marks that clip.
- YouTube Highlights (UMT / R2-Tuning `YouTubeHighlights.evaluate`): clips ranked by torch.argsort(descending) of the
  float32 scores, label = match > 0, trapezoid AP starting from precision 1; 0 with no positive; mean per domain,
  round(., 5) as a fraction.
- TVSum (UMT / R2-Tuning `TVSum.evaluate`): per annotator, label = score > that annotator's torch (lower) median over
  the video; the labels of the 5 top-ranked clips; the same trapezoid AP with num_gt = positives among those 5;
  0 with none; mean over the domain's videos, then over annotators; round(., 5).
Ties in predicted scores are broken exactly by the same library calls as the official code (torch.argsort on CPU,
numpy argsort/argmax), so results equal the official ones computed on this machine. Inputs are never mutated.
"""
import numpy as np

__all__ = ["eval_highlights", "eval_tvsum", "eval_youtube", "sklearn_interpolated_ap", "trapezoid_ap"]

HL_LEVELS = (("Fair", 2), ("Good", 3), ("VeryGood", 4))


def sklearn_interpolated_ap(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """AP of Moment-DETR's `get_ap(interpolate=True)` on top of sklearn's precision_recall_curve.

    sklearn's curve: sort scores descending (stable mergesort, reversed), one point per DISTINCT score (ties form one
    threshold), tps/fps cumulated to it, precision = tps / (tps + fps), recall = tps / P; listed from the lowest
    threshold up, then the point (precision 1, recall 0) appended. get_ap makes precision a running max along that
    list, casts recall to float32 and averages the precision at every index whose recall differs from the next one's.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if len(set(y_true.tolist())) == 1:
        return 0.0 if y_true[0] == 0 else 1.0
    order = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[order], y_true[order]
    threshold_idx = np.r_[np.where(np.diff(y_score))[0], y_true.size - 1]
    tps = np.cumsum(y_true == 1, dtype=np.float64)[threshold_idx]
    fps = 1 + threshold_idx - tps
    precision = np.hstack((tps / (tps + fps))[::-1].tolist() + [1.0])
    recall = np.hstack((tps / tps[-1])[::-1].tolist() + [0.0]).astype(np.float32)
    precision = np.maximum.accumulate(precision)
    return float(np.mean(precision[np.where(np.diff(recall))]))


def _gt_matrix(d: dict, clip_len: float) -> np.ndarray:
    """(int(duration / clip_len), annotators) raw scores, unlisted clips 0."""
    n = int(d["duration"] / clip_len)
    scores = np.asarray(d["saliency_scores"], dtype=np.float64)  # (n_listed, A)
    full = np.zeros((n, scores.shape[1]))
    full[np.asarray(d["relevant_clip_ids"], dtype=np.int64)] = scores
    return full


def eval_highlights(submission: list[dict], ground_truth: list[dict], clip_len: float = 2.0) -> dict[str, float]:
    """{"HL-min-Fair-mAP", "HL-min-Fair-Hit1", ..., "HL-min-VeryGood-Hit1"} in percent."""
    gt = {d["qid"]: _gt_matrix(d, clip_len) for d in ground_truth}
    out = {}
    for name, level in HL_LEVELS:
        ap = np.zeros((len(submission), next(iter(gt.values())).shape[1]))  # (Q, A)
        hit = np.zeros_like(ap)  # (Q, A)
        for i, d in enumerate(submission):
            binary = (gt[d["qid"]] >= level).astype(float)  # (n, A)
            scores = np.asarray(d["pred_saliency_scores"], dtype=np.float64)
            top = int(np.argmax(scores))
            if top < len(binary):
                hit[i] = binary[top]
            fitted = np.zeros(len(binary))
            fitted[:min(len(binary), len(scores))] = scores[:len(binary)]
            for a in range(binary.shape[1]):
                ap[i, a] = sklearn_interpolated_ap(binary[:, a], fitted)
        out[f"HL-min-{name}-mAP"] = float(f"{100 * np.mean(ap):.2f}")
        out[f"HL-min-{name}-Hit1"] = float(f"{100 * np.mean(np.max(hit, 1)):.2f}")
    return out


def trapezoid_ap(labels: list[float], num_gt: float | None = None) -> float:
    """Σ Δrecall x (previous precision + precision) / 2 over the ranked labels, starting at precision 1, recall 0."""
    num_gt = sum(labels) if num_gt is None else num_gt
    if num_gt == 0:
        return 0
    hits = ap = rec = 0
    prc = 1
    for i, gt in enumerate(labels):
        hits += gt
        _rec = hits / num_gt
        _prc = hits / (i + 1)
        ap += (_rec - rec) * (prc + _prc) / 2
        rec, prc = _rec, _prc
    return ap


def _ranking(scores: list[float]):
    import torch
    return torch.argsort(torch.Tensor(scores), descending=True)


def _by_domain(pred: dict, anno: dict, order: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """Domain -> the predicted videos of that domain, in the official split order where given."""
    domains: dict[str, list[str]] = {}
    for vid in pred:
        domains.setdefault(anno[vid]["domain"], []).append(vid)
    if order:
        for dom, vids in domains.items():
            rank = {v: i for i, v in enumerate(order.get(dom, []))}
            vids.sort(key=lambda v: rank.get(v, len(rank)))
    return domains


def _summary(per_domain: dict[str, float]) -> dict[str, float]:
    out = {f"mAP-{dom}": round(v, 5) for dom, v in per_domain.items()}
    out["mAP"] = round(sum(per_domain.values()) / len(per_domain), 5)
    return out


def eval_youtube(pred: dict[str, list[float]], anno: dict, order: dict[str, list[str]] | None = None
                 ) -> dict[str, float]:
    """pred {vid: one score per clip}; anno youtube_anno.json-style {vid: {"match": [...], "domain": ...}}.
    Returns {"mAP-<domain>": .., "mAP": mean over the domains} as fractions rounded to 5 decimals."""
    import torch
    per_domain = {}
    for dom, vids in _by_domain(pred, anno, order).items():
        collected = []
        for vid in vids:
            inds = _ranking(pred[vid])
            label = torch.Tensor([1 if s > 0 else 0 for s in anno[vid]["match"]])[inds].tolist()
            collected.append(trapezoid_ap(label))
        per_domain[dom] = sum(collected) / len(collected)
    return _summary(per_domain)


def eval_tvsum(pred: dict[str, list[float]], anno: dict, order: dict[str, list[str]] | None = None, k: int = 5
               ) -> dict[str, float]:
    """pred {vid: one score per clip}; anno tvsum_anno.json-style {vid: {"anno": clips x 20, "domain": ...}}.
    Returns {"mAP-<domain>": top-5 mAP, "mAP": mean over the domains}, fractions rounded to 5 decimals."""
    import torch
    per_domain = {}
    for dom, vids in _by_domain(pred, anno, order).items():
        matrices = {vid: torch.Tensor(anno[vid]["anno"]) for vid in vids}  # (clips, annotators)
        n_annotators = next(iter(matrices.values())).shape[1]
        collected = []
        for a in range(n_annotators):
            video_ap = []
            for vid in vids:
                inds = _ranking(pred[vid])
                label = matrices[vid][:, a]
                label = torch.where(label > label.median(), 1.0, 0.0)
                label = label[inds].tolist()[:k]
                video_ap.append(trapezoid_ap(label))
            collected.append(sum(video_ap) / len(video_ap))
        per_domain[dom] = sum(collected) / len(collected)
    return _summary(per_domain)
