"""r2.app: the gradio demo on a tiny trained checkpoint, through gradio's own client; gradio stays optional."""
import subprocess
import sys
from pathlib import Path

import pytest

from r2 import app
from r2.predict.cli import display_json

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # one_thread, demo and predictor: tests/conftest.py; slow: a gradio server and client (about 20 s)

REPO = Path(__file__).resolve().parents[1]


def test_core_imports_no_gradio():
    code = ("import sys, r2, r2.predict, r2.viz, r2.app; "
            "assert 'gradio' not in sys.modules, 'the core import path imported gradio'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert app.main(["--checkpoint", str(tmp_path / "never-read.pt")]) == 2
    assert "pip install -e .[app]" in capsys.readouterr().err


def test_answer_refuses_missing_input(predictor, tmp_path):
    with pytest.raises(app.AppError, match="no video"):
        app.answer(predictor, None, "a query", 3, tmp_path)
    with pytest.raises(app.AppError, match="no query"):
        app.answer(predictor, "x.mp4", " \n \n", 3, tmp_path)
    assert app.parse_queries("a red screen\n\n  colour bars \n") == ["a red screen", "colour bars"]


def test_app_api_through_the_gradio_client(demo, predictor, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e .[app])")
    from gradio_client import Client, handle_file

    video = demo["videos"] / f"{demo['cache'].videos[0]}.mp4"
    server = app.build_app(predictor, top=3, folder=tmp_path)
    server.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(server.local_url, verbose=False)
        table, plot, shown = client.predict(handle_file(str(video)), "a red screen\ncolour bars", 2,
                                            api_name="/predict")
        with pytest.raises(Exception, match="no query"):
            client.predict(handle_file(str(video)), "", 2, api_name="/predict")
    finally:
        server.close()
    expected = display_json(predictor.predict(video, ["a red screen", "colour bars"]), 2)
    assert [q["moments"] for q in shown["queries"]] == [q["moments"] for q in expected["queries"]]
    assert table["headers"] == app.TABLE_HEADERS
    assert table["data"] == [[q["query"], rank, *m] for q in expected["queries"]
                             for rank, m in enumerate(q["moments"], start=1)]
    assert Path(plot).read_bytes()[:4] == b"\x89PNG"
