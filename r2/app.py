"""python -m r2.app --checkpoint CKPT [--host 127.0.0.1] [--port 7860] [--top 5]

An interactive demo on top of `r2.Predictor`: pick a video, type queries (one per line), see each query's top
moments as a table, the saliency plot (moments shaded, frame thumbnails) and the prediction as JSON. The checkpoint
and its CLIP load once, when the app starts; encoded videos go to the same feature cache as `r2.predict`, so a new
query on a video already seen costs only the text encoder.

Needs the app extra (gradio): `pip install -e .[app]`. The core install never imports gradio; without it this
command says how to install it. The app's function is also an API (`/predict`: video, queries, top -> table, plot,
JSON), e.g. for `gradio_client`.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from r2.errors import R2Error, command

__all__ = ["AppError", "answer", "build_app", "get_args_parser", "main", "parse_queries"]

TABLE_HEADERS = ["query", "rank", "start (s)", "end (s)", "score"]


class AppError(R2Error):
    """The app cannot start (gradio missing) or cannot answer (no video, no query); the message says what to do."""


def _gradio():
    try:
        import gradio
    except ImportError:
        raise AppError("the app needs gradio, which the core install leaves out: pip install -e .[app]") from None
    return gradio


def parse_queries(text: str | None) -> list[str]:
    """One query per non-empty line."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def answer(predictor, video: str | None, queries_text: str | None, top: int, folder: Path) -> tuple[list, str, dict]:
    """(table rows [query, rank, start, end, score], plot PNG path, the printed JSON) for one request."""
    from r2 import viz
    from r2.predict.cli import display_json

    if not video:
        raise AppError("no video: pick or drop a video file first")
    queries = parse_queries(queries_text)
    if not queries:
        raise AppError("no query: type at least one query, one per line")
    top = int(top)
    if top < 1:
        raise AppError(f"top {top}: show at least 1 moment per query")
    pred = predictor.predict(video, queries)
    shown = display_json(pred, top)
    rows = [[q["query"], rank, start, end, score] for q in shown["queries"]
            for rank, (start, end, score) in enumerate(q["moments"], start=1)]
    plot = viz.plot_prediction(pred.to_json(), Path(tempfile.mkdtemp(dir=folder)) / f"{Path(video).stem}.png",
                               top=top)
    return rows, str(plot), shown


def build_app(predictor, top: int = 5, folder: str | Path | None = None):
    """The gradio Blocks app around a loaded `r2.Predictor`; plots are written under `folder` (default a temporary
    folder)."""
    gr = _gradio()
    folder = Path(folder or tempfile.mkdtemp(prefix="r2-app-"))

    def respond(video, queries_text, shown_top):
        try:
            return answer(predictor, video, queries_text, shown_top, folder)
        except R2Error as err:
            raise gr.Error(str(err)) from None

    with gr.Blocks(title="r2: moments and highlights") as app:
        gr.Markdown(f"### r2 — moments and highlights\ncheckpoint `{predictor.checkpoint}` ({predictor.dataset}, "
                    f"{predictor.fps:g} fps). Pick a video, type queries (one per line), press Find.")
        with gr.Row():
            video = gr.Video(label="video", sources=["upload"])
            with gr.Column():
                queries = gr.Textbox(label="queries (one per line)", lines=4)
                shown_top = gr.Slider(1, 20, value=top, step=1, label="moments per query")
                find = gr.Button("Find", variant="primary")
        table = gr.Dataframe(headers=TABLE_HEADERS, label="top moments", interactive=False)
        plot = gr.Image(label="saliency and moments", type="filepath")
        result = gr.JSON(label="prediction")
        find.click(respond, [video, queries, shown_top], [table, plot, result], api_name="predict")
    return app


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m r2.app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="as for r2.predict: a run's best.pt, an official .pth, or "
                   "a zoo name")
    p.add_argument("--dataset", help="an official checkpoint's dataset when its file name does not say it")
    p.add_argument("--clip", help="the checkpoint's CLIP, when it is not where its fingerprint says")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: reachable from the network)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    p.add_argument("--top", type=int, default=5, help="moments per query shown at first")
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    _gradio()  # before the checkpoint loads: a missing extra is said at once
    from r2.predict import Predictor

    predictor = Predictor(args.checkpoint, clip=args.clip, device=args.device, dataset=args.dataset)
    app = build_app(predictor, args.top)
    app.launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
