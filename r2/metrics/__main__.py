"""python -m r2.metrics --dataset qvhighlights|charades|tacos|ego4d|demo|custom --gt GT.jsonl --pred PRED.jsonl
python -m r2.metrics --dataset youtube|tvsum --gt ANNO.json --pred PRED.json [--split val|train|none]

Prints the metrics as JSON on stdout (see r2.metrics for the keys). For youtube / tvsum, PRED.json is
{video_id: [one score per clip]}; with --split val (default) its videos must be exactly the fixed val videos of
every domain it covers; --split none scores whatever videos it holds. A moment-length bucket (short, middle, long)
that no ground-truth window falls in shows "n/a" (the evaluator would repeat the full set's value there).
"""
import argparse
import json
import sys
from pathlib import Path

from ..datasets import DATASETS, TVSUM_SPLITS, YOUTUBE_SPLITS, read_json_videos
from ..errors import check_new_file, command
from ..recipes import recipe
from . import MetricsError, check_saliency_predictions, evaluate, eval_tvsum, eval_youtube, read_jsonl
from .moments import empty_buckets


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m r2.metrics", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASETS, help="the dataset whose evaluator scores the file")
    p.add_argument("--gt", required=True, type=Path, help="GT jsonl (QVHighlights format) or YouTube/TVSum anno json")
    p.add_argument("--pred", required=True, type=Path, help="submission jsonl, or {vid: scores} json")
    p.add_argument("--split", default="val", choices=("val", "train", "none"),
                   help="youtube/tvsum: the fixed split the predicted videos must equal, per domain")
    p.add_argument("--out", type=Path, help="also write the metrics JSON here")
    return p


def _domain_metrics(args) -> dict:
    anno, pred = read_json_videos(args.gt), read_json_videos(args.pred)
    column = "match" if args.dataset == "youtube" else "anno"
    check_saliency_predictions(pred, anno, args.dataset, column)
    splits = YOUTUBE_SPLITS if args.dataset == "youtube" else TVSUM_SPLITS
    order = None
    if args.split != "none":
        order = {dom: [v for v in s[args.split] if v in anno] for dom, s in splits.items()}
        for dom in sorted({anno[v]["domain"] for v in pred}):
            want = order.get(dom, [])
            extra = [v for v in pred if anno[v]["domain"] == dom and v not in want]
            missing = [v for v in want if v not in pred]
            if extra or missing:
                vid = (extra or missing)[0]
                raise MetricsError(f"prediction: video {vid!r} ({dom}) is {'not in' if extra else 'missing from'} the "
                                   f"fixed {args.split} split; pass --split none to score any set of videos")
    return (eval_youtube if args.dataset == "youtube" else eval_tvsum)(pred, anno, order)


def shown(metrics: dict, empty: list[str]) -> dict:
    """The metrics as printed: "n/a" for every key of an empty length bucket (MR-<bucket>-...)."""
    return {k: "n/a" if any(k.startswith(f"MR-{b}-") for b in empty) else v for k, v in metrics.items()}


def main(args) -> dict:
    """The metrics (the evaluator's values); prints and writes them with empty buckets as "n/a"."""
    if args.out is not None:
        check_new_file(args.out)  # before any work: never over the predictions, the GT or anything else
    if recipe(args.dataset).highlight_only:
        metrics, empty = _domain_metrics(args), []
    else:
        gt = read_jsonl(args.gt)
        metrics = evaluate(args.dataset, read_jsonl(args.pred), gt)
        empty = empty_buckets(gt, "qvhighlights" if args.dataset == "qvhighlights" else args.dataset)
    text = json.dumps(shown(metrics, empty), indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return metrics


@command
def _cli() -> None:
    """The `r2-metrics` console script and `python -m r2.metrics`."""
    main(get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(_cli())
