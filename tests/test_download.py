"""python -m r2.download against a local file server on 127.0.0.1 that serves the real annotation files (and broken
ones) in GitHub's raw layout."""
import functools
import http.server
import threading
from pathlib import Path

import pytest

from r2 import download
from r2.datasets import dataset_info, load_split
from r2.fetch import file_sha256


class _Server:
    """A static file server on 127.0.0.1 (a free port) that counts the requests it answers."""

    def __init__(self, folder: Path):
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _mirror(folder: Path, data_root: Path, files=download.FILES) -> Path:
    """`folder` laid out as <owner>/<repo>/<commit>/<path>, each file a link to the real one under data_root."""
    for f in files:
        repo, commit = download.SOURCES[f.source]
        target = folder / repo / commit / f.source_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(data_root / f.path)
    return folder


@pytest.fixture
def server(tmp_path, data_root):
    served = _Server(_mirror(tmp_path / "served", data_root))
    yield served
    served.close()


def test_the_table_covers_every_file_the_loaders_read_with_the_real_checksums(data_root):
    wanted = {(name, f"{dataset_info(name).folder}/{file}") for name in download.BENCHMARKS
              for _, file in dataset_info(name).files}
    assert {(f.dataset, f.path) for f in download.FILES} == wanted
    for f in download.FILES:
        assert file_sha256(data_root / f.path) == f.sha256, f.path
    assert download.url_of(download.FILES[0]) == ("https://raw.githubusercontent.com/jayleicn/moment_detr/"
                                                  "b7e553ac3b0c898ee6b85e03ee507c064eab89ca/data/"
                                                  "highlight_train_release.jsonl")


def test_download_all_then_again(tmp_path, server, data_root, capsys):
    root = tmp_path / "data"
    assert download.main(["all", "--root", str(root), "--mirror", server.url]) == 0
    for f in download.FILES:
        assert (root / f.path).read_bytes() == (data_root / f.path).read_bytes()
    assert len(server.requests) == len(download.FILES)
    assert len(load_split("tacos", "test", root=root)) == 4001  # the loaders read what was fetched
    assert "point R2_DATA" in capsys.readouterr().err
    assert download.main(["tvsum", "youtube", "--root", str(root), "--mirror", server.url]) == 0
    assert len(server.requests) == len(download.FILES)  # verified in place, not fetched again
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no temporary file left


def test_a_corrupt_or_missing_file_is_one_line_and_the_rest_is_fetched(tmp_path, server, data_root, capsys):
    bad = next(f for f in download.FILES if f.dataset == "tacos" and f.path.endswith("val.jsonl"))
    repo, commit = download.SOURCES[bad.source]
    served = tmp_path / "served" / repo / commit / bad.source_path
    served.unlink()
    served.write_text('{"qid": 0, "query": "tampered"}\n')
    gone = next(f for f in download.FILES if f.dataset == "ego4d")
    (tmp_path / "served" / download.SOURCES[gone.source][0] / download.SOURCES[gone.source][1]
     / gone.source_path).unlink()
    root = tmp_path / "data"
    assert download.main(["tacos", "ego4d", "charades", "--root", str(root), "--mirror", server.url]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "SHA-256" in errors[0] and bad.source_path in errors[0] and "by hand" in errors[0]
    assert "not found" in errors[1].lower() and gone.source_path in errors[1]
    assert not (root / bad.path).exists() and not (root / gone.path).exists()  # nothing unverified in place
    assert (root / "tacos" / "train.jsonl").is_file() and (root / "charades_sta").is_dir()  # the others arrived

    (root / "tvsum").mkdir()
    (root / "tvsum" / "tvsum_train_sfc.json").write_text("{}")  # a user's own, different file: never replaced
    assert download.main(["tvsum", "--root", str(root), "--mirror", server.url]) == 1
    assert (root / "tvsum" / "tvsum_train_sfc.json").read_text() == "{}"
    assert "delete the file to download it again" in capsys.readouterr().err


def test_bad_arguments_exit_2(tmp_path, monkeypatch, capsys):
    assert download.main(["qvh", "--root", str(tmp_path)]) == 2
    assert "unknown dataset 'qvh': one of qvhighlights, charades" in capsys.readouterr().err
    monkeypatch.delenv("R2_DATA", raising=False)
    assert download.main(["all"]) == 2
    assert "--root DIR" in capsys.readouterr().err
    unreachable = "http://127.0.0.1:9"  # the discard port: nothing listens
    assert download.main(["tvsum", "--root", str(tmp_path), "--mirror", unreachable]) == 1
    assert "could not download tvsum annotations" in capsys.readouterr().err


def test_python_m_r2_datasets_download_is_the_same_command(tmp_path, server):
    import subprocess
    import sys

    root = tmp_path / "data"
    done = subprocess.run([sys.executable, "-m", "r2.datasets", "download", "tvsum", "--root", str(root),
                           "--mirror", server.url], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert (root / "tvsum" / "tvsum_train_sfc.json").is_file()
    usage = subprocess.run([sys.executable, "-m", "r2.datasets"], capture_output=True, text=True,
                           cwd=Path(__file__).parents[1])
    assert usage.returncode == 2 and "download NAME|all" in usage.stderr
