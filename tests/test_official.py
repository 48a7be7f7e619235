"""The authors' release: nncore checkpoints (both ways), zoo names, and their feature layout imported as a cache."""
import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from r2 import official
from r2.cache import Cache
from r2.checkpoint import build_model, check_compatible, load_checkpoint
from r2.errors import CheckpointError, R2Error
from r2.official_features import ImportConfig, import_features
from tests.helpers import REFERENCE

if not REFERENCE.is_dir():  # a skip on a user's machine; in CI (tests/conftest.py) a skip is a failure
    pytest.skip(f"the authors' golden files are not at {REFERENCE}: set R2_REFERENCE to the folder holding "
                f"official_qvh_vitb32.pth and the official_*_case.pt files", allow_module_level=True)
REPO = Path(__file__).resolve().parents[1]
QVH_PTH = REFERENCE / "official_qvh_vitb32.pth"


def run(*args, **kwargs):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO, **kwargs)


@pytest.fixture(scope="module")
def qvh_official():
    return torch.load(QVH_PTH, map_location="cpu", weights_only=True)


def nncore_file(path: Path, state_dict: dict, **extra) -> Path:
    torch.save({"meta": {"nncore_version": "0.4.4", "create_time": "2024-01-01 00:00:00"},
                "state_dict": OrderedDict(state_dict), **extra}, path)
    return path


# ----------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.slow  # converts the reference checkpoint both ways (~7 s)
def test_convert_both_ways_is_lossless(qvh_official, tmp_path):
    to_r2 = run("-m", "r2.convert", QVH_PTH, "--dataset", "qvhighlights", "--out", tmp_path / "run" / "best.pt")
    assert to_r2.returncode == 0, to_r2.stderr
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")  # now an r2 checkpoint: no --dataset needed
    assert ckpt["dataset"] == "qvhighlights" and ckpt["format_version"] == 2 and "official" in ckpt
    assert isinstance(ckpt["torch_version"], str) and ckpt["r2_version"]
    back = run("-m", "r2.convert", tmp_path / "run" / "best.pt", "--to-official", "--out", tmp_path / "back.pth")
    assert back.returncode == 0, back.stderr
    again = torch.load(tmp_path / "back.pth", map_location="cpu", weights_only=True)
    assert again["meta"] == qvh_official["meta"]
    assert list(again["state_dict"]) == list(qvh_official["state_dict"])  # same names, same file order
    for key, value in qvh_official["state_dict"].items():
        assert torch.equal(again["state_dict"][key], value), key
    before = (tmp_path / "run" / "best.pt").read_bytes()  # a finished run's checkpoint is never replaced
    over = run("-m", "r2.convert", QVH_PTH, "--dataset", "qvhighlights", "--out", tmp_path / "run" / "best.pt")
    assert over.returncode == 2 and over.stderr.count("\n") == 1 and "exists; r2 never overwrites" in over.stderr
    assert (tmp_path / "run" / "best.pt").read_bytes() == before
    assert again["state_dict"]["loss._loss_sal.scale"].item() == pytest.approx(np.log(1 / 0.07))


@pytest.mark.parametrize("case", ["official_small_train_case.pt", "official_tvsum_small_case.pt"])
def test_name_mapping_round_trips_the_small_models(case):
    weights = torch.load(REFERENCE / case, map_location="cpu", weights_only=True)["weights"]
    back = official.to_official_state_dict(official.to_r2_state_dict(weights, case))
    assert list(back) == list(weights) and all(torch.equal(back[k], weights[k]) for k in weights)


def test_nncore_variants_load_to_the_same_model(qvh_official, tmp_path):
    """A DDP `module.` prefix, the frozen clip.* weights of an init=True model and a CheckpointHook's optimizer
    state and schedule meta are all read; the weights are the same."""
    state = qvh_official["state_dict"]
    plain = load_checkpoint(QVH_PTH, "qvhighlights")["model"]
    prefixed = nncore_file(tmp_path / "ddp.pth", {f"module.{k}": v for k, v in state.items()})
    with_clip = nncore_file(tmp_path / "init.pth", {"clip.visual.conv1.weight": torch.zeros(3), **state})
    hook = nncore_file(tmp_path / "epoch_3.pth", state, optimizer={"state": {0: {"step": torch.tensor(3.0)}},
                                                                    "param_groups": [{"lr": 5e-4, "params": [0]}]})
    for path in (prefixed, with_clip, hook):
        got = load_checkpoint(path, "qvhighlights")["model"]
        assert list(got) == list(plain) and all(torch.equal(got[k], plain[k]) for k in plain), path.name


def test_dataset_and_variant_come_from_the_zoo_name_and_the_shapes(tmp_path):
    weights = torch.load(REFERENCE / "official_tvsum_small_case.pt", weights_only=True)["weights"]
    path = nncore_file(tmp_path / "r2_tuning_tvsum_bk-00000000.pth", weights)
    ckpt = load_checkpoint(path)
    assert ckpt["dataset"] == "tvsum" and ckpt["config"]["domain"] == "BK"
    cfg = ckpt["model_config"]
    assert (cfg["video_dim"], cfg["query_dim"], cfg["hidden"], cfg["layers"]) == (64, 48, 96, 4)
    assert not cfg["tef"] and not cfg["boundary"] and tuple(cfg["strides"]) == (1,)
    assert official.dataset_from_name("r2_tuning_youtube_ska-dad28398.pth") == ("youtube", "skating")
    assert official.dataset_from_name("r2_tuning_charades-1de02112.pth") == ("charades", None)
    assert official.dataset_from_name("best.pt") is None
    with pytest.raises(CheckpointError, match="not the qvhighlights model.*--dataset"):
        load_checkpoint(path, "qvhighlights")  # TVSum weights (no boundary head) cannot be the QVH model


@pytest.mark.parametrize("make, message", [
    (lambda p: nncore_file(p, {"adapter.unknown.weight": torch.zeros(2)}), "unknown official parameter 'adapter.unknown"),
    (lambda p: nncore_file(p, {"loss._loss_sal.scale": torch.tensor([1.0])}), "log\\(1/0.07\\)"),
    (lambda p: torch.save({"meta": {}, "state_dict": {}}, p), "lacks 'adapter.video_map.0.weight'"),
    (lambda p: torch.save({"weights": 1}, p), "not an r2 checkpoint.*and not an official one"),
    (lambda p: p.write_bytes(b"\x00garbage"), "not an r2 or R²-Tuning checkpoint"),
])
def test_foreign_files_are_one_line_refusals(tmp_path, make, message):
    path = tmp_path / "x.pth"
    make(path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path, "qvhighlights")
    assert "\n" not in str(err.value)


def test_official_file_without_a_dataset_asks_for_one():
    with pytest.raises(CheckpointError, match="pass --dataset NAME"):
        load_checkpoint(QVH_PTH)


# ----------------------------------------------------------------------------------------------- zoo


@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/served."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_zoo_name_downloads_verifies_and_caches(file_server, tmp_path, monkeypatch):
    root, url = file_server
    payload = QVH_PTH.read_bytes()
    stem = f"r2_tuning_qvhighlights-{hashlib.sha256(payload).hexdigest()[:8]}"
    (root / f"{stem}.pth").write_bytes(payload)
    (root / "r2_tuning_tacos-00000000.pth").write_bytes(payload)  # served under a name whose hash is wrong
    monkeypatch.setitem(official.ZOO, "qvhighlights", stem)
    monkeypatch.setitem(official.ZOO, "tacos", "r2_tuning_tacos-00000000")
    monkeypatch.setenv("R2_ZOO_URL", url)
    monkeypatch.setenv("R2_ZOO_CACHE", str(tmp_path / "zoo"))

    ckpt = load_checkpoint("r2-tuning:qvhighlights")
    assert ckpt["dataset"] == "qvhighlights" and (tmp_path / "zoo" / f"{stem}.pth").is_file()
    (root / f"{stem}.pth").unlink()  # the second use reads the verified local copy
    assert load_checkpoint("r2-tuning:qvhighlights")["model"].keys() == ckpt["model"].keys()

    with pytest.raises(CheckpointError, match="SHA-256 .* expected 00000000"):
        load_checkpoint("r2-tuning:tacos")
    assert sorted(p.name for p in (tmp_path / "zoo").iterdir()) == [f"{stem}.pth"]  # nothing half-written left
    with pytest.raises(CheckpointError, match="no such zoo checkpoint.*r2-tuning:tvsum_bk"):
        load_checkpoint("r2-tuning:nope")


def test_zoo_offline_names_the_url_and_the_alternative(tmp_path, monkeypatch):
    monkeypatch.setenv("R2_ZOO_URL", "http://127.0.0.1:9/")  # discard port: nothing listens
    monkeypatch.setenv("R2_ZOO_CACHE", str(tmp_path / "zoo"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint("r2-tuning:charades")
    message = str(err.value)
    assert "http://127.0.0.1:9/r2_tuning_charades-1de02112.pth" in message and "--checkpoint PATH" in message
    assert not list((tmp_path / "zoo").iterdir())
    assert official.ZOO_URL + "r2_tuning_charades-1de02112.pth" == \
        "https://huggingface.co/yeliudev/R2-Tuning/resolve/main/checkpoints/r2_tuning_charades-1de02112.pth"
    assert len(official.ZOO) == 20


# ----------------------------------------------------------------------------------------------- features


def qvh_label(qid, vid, query, duration, window):
    clips = list(range(int(window[0] // 2), int(window[1] // 2)))
    return {"qid": qid, "query": query, "vid": vid, "duration": duration, "relevant_windows": [window],
            "relevant_clip_ids": clips, "saliency_scores": [[2, 3, 4]] * len(clips)}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A small QVHighlights-format set in the authors' layout: 4 videos, 6 queries (two sharing a text), with
    video v3's file and qid 5's file damaged."""
    root = tmp_path_factory.mktemp("release")
    rng = np.random.default_rng(0)
    vid_dir, txt_dir = root / "clip_b32_vid_k4", root / "clip_b32_txt_k4"
    vid_dir.mkdir()
    txt_dir.mkdir()
    labels = {"train": [qvh_label(0, "v0", "a red ball", 30.0, [4, 12]), qvh_label(1, "v1", "a blue ball", 20.0, [0, 8])],
              "val": [qvh_label(2, "v2", "a red ball", 24.0, [6, 14]), qvh_label(3, "v2", "the end", 24.0, [16, 24]),
                      qvh_label(4, "v3", "a green cube", 20.0, [2, 6]), qvh_label(5, "v1", "broken", 20.0, [2, 6])]}
    for split, rows in labels.items():
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    for vid, duration in (("v0", 30.0), ("v1", 20.0), ("v2", 24.0)):
        np.save(vid_dir / f"{vid}.npy", rng.normal(size=(int(duration / 2), 4, 50, 768)).astype(np.float16))
    np.save(vid_dir / "v3.npy", np.zeros((10, 4, 50, 512), np.float16))  # wrong width: malformed
    text = {}
    for r in labels["train"] + labels["val"]:
        text.setdefault(r["query"], rng.normal(size=(len(r["query"].split()) + 2, 4, 512)).astype(np.float16))
        np.save(txt_dir / f"{r['qid']}.npy", text[r["query"]])
    (txt_dir / "5.npy").write_bytes(b"not numpy")
    return root


@pytest.mark.slow  # imports generated official features and evaluates (~20 s)
def test_import_official_then_evaluate_the_authors_checkpoint(release, tmp_path):
    entry = tmp_path / "cache" / "qvh.h5"
    args = ["extract/import_official.py", "--dataset", "qvhighlights", "--features", release, "--annotations",
            release / "train.jsonl", release / "val.jsonl", "--out", entry, "--no-progress"]
    first = run(*args)
    assert first.returncode == 1, first.stderr  # v3 and qid 5 are logged and skipped, the rest imported
    assert "videos: 3 done, 0 skipped, 1 failed" in first.stdout and "queries failed: 1" in first.stdout
    assert "queries: 5 (4 distinct texts)" in first.stdout  # qids 0 and 2 share "a red ball"; qid 5 is broken
    failures = [json.loads(line) for line in (tmp_path / "cache" / "qvh.parts" / "failures.jsonl").read_text().splitlines()]
    assert {f.get("vid") for f in failures} >= {"v3"} and {f.get("qid") for f in failures} >= {5}
    assert "expected (N, 4, 50, 768)" in next(f["error"] for f in failures if f.get("vid") == "v3")
    again = run(*args)  # resumable: nothing left to do but the broken files
    assert "videos: 0 done, 3 skipped, 1 failed" in again.stdout

    cache = Cache(entry)
    assert cache.fingerprint == official.official_fingerprint("qvhighlights", [9, 10, 11, 12])
    assert cache.dims == {"video_dim": 768, "query_dim": 512, "tokens": 50, "layers": [9, 10, 11, 12]}
    assert cache.has_query("a red ball") and not cache.has_query("broken")  # one text for qids 0 and 2
    np.testing.assert_array_equal(cache.video("v0"), np.load(release / "clip_b32_vid_k4" / "v0.npy"))
    verify = run("-m", "r2.cache", "verify", entry)
    assert verify.returncode == 1 and "videos 3/4" in verify.stdout, verify.stdout + verify.stderr
    assert "valid but incomplete" in verify.stdout and "'v3'" in verify.stdout

    zoo_named = tmp_path / "r2_tuning_qvhighlights-ed516355.pth"  # the dataset comes from the zoo name
    shutil.copy(QVH_PTH, zoo_named)
    out = tmp_path / "eval"
    ev = run("train/evaluate.py", "--checkpoint", zoo_named, "--cache", entry, "--out", out)
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads((out / "val_metrics.json").read_text())
    assert metrics["scored"] == 2 and metrics["missing"] == 2 and "MR-full-mAP" in metrics
    preds = [json.loads(line) for line in (out / "hl_val_submission.jsonl").read_text().splitlines()]
    assert sorted(p["qid"] for p in preds) == [2, 3] and all(len(p["pred_saliency_scores"]) == 12 for p in preds)

    converted = tmp_path / "run" / "best.pt"  # the same file converted to r2's format gives the same predictions
    assert run("-m", "r2.convert", zoo_named, "--out", converted).returncode == 0
    ev2 = run("train/evaluate.py", "--checkpoint", converted, "--cache", entry, "--out", tmp_path / "eval2")
    assert ev2.returncode == 0, ev2.stderr
    assert (tmp_path / "eval2" / "hl_val_submission.jsonl").read_text() == (out / "hl_val_submission.jsonl").read_text()


def test_import_refuses_a_folder_without_the_release_layout(tmp_path):
    with pytest.raises(R2Error, match="clip_b32_vid_k<K>"):
        import_features(ImportConfig(dataset="qvhighlights", features=tmp_path, out=tmp_path / "c.h5"))
    assert not (tmp_path / "c.h5").exists()
    with pytest.raises(R2Error, match="released features for"):
        import_features(ImportConfig(dataset="demo", features=tmp_path, out=tmp_path / "c.h5"))


def test_feature_source_is_told_apart_unless_allowed(tmp_path):
    """An official checkpoint on r2-extracted ViT-B/32 features: refused, with the flag that allows it; another
    CLIP or other layers stay refused with the flag."""
    ckpt = load_checkpoint(QVH_PTH, "qvhighlights")

    class FakeCache:
        entry = tmp_path / "mine.h5"
        dims = ckpt["dims"]
        fingerprint = {"clip": "ViT-B/32", "clip_sha256": "ab" * 32, "layers": [9, 10, 11, 12], "fps": 0.5,
                       "frame_size": 224, "dtype": "float16", "ffmpeg": "ffmpeg version 6", "precision": "fp32"}

    with pytest.raises(CheckpointError, match="source: 'official' vs None.*--allow-feature-source"):
        check_compatible(ckpt, FakeCache, "ckpt")
    with pytest.warns(UserWarning, match="used anyway"):
        check_compatible(ckpt, FakeCache, "ckpt", allow_feature_source=True)
    FakeCache.fingerprint = {**FakeCache.fingerprint, "layers": [8, 9, 10, 11]}
    with pytest.raises(CheckpointError) as err:
        check_compatible(ckpt, FakeCache, "ckpt", allow_feature_source=True)
    assert "--allow-feature-source" not in str(err.value)


def test_converted_model_is_the_official_one(qvh_official):
    model = build_model(load_checkpoint(QVH_PTH, "qvhighlights"))
    assert sum(p.numel() for p in model.parameters()) == 2_836_242
    assert official.to_official_state_dict(model.state_dict()).keys() == qvh_official["state_dict"].keys()


@pytest.mark.slow
def test_predict_with_the_authors_checkpoint(vit_b32_file, tmp_path):
    """r2.predict on a new video with an official file: ViT-B/32 taps (a random-weight OpenAI-format file here,
    as the real weights cannot be downloaded in CI) feed the authors' model."""
    from r2 import video

    vit = vit_b32_file
    clip_file = tmp_path / "v.mp4"
    subprocess.run([video.ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=s=96x64:r=4:d=12",
                    "-pix_fmt", "yuv420p", str(clip_file)], check=True)
    zoo_named = tmp_path / "r2_tuning_qvhighlights-ed516355.pth"
    shutil.copy(QVH_PTH, zoo_named)
    out = tmp_path / "out"
    res = run("-m", "r2.predict", "--checkpoint", zoo_named, "--clip", vit, "--video", clip_file, "--query",
              "a test pattern", "--out", out, "--no-feature-cache")
    assert res.returncode == 0, res.stderr
    assert "without a checksum to compare" in res.stderr  # the release records the CLIP by name only
    written = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(written) == 1
    query = written[0]["queries"][0]
    assert query["query"] == "a test pattern" and len(query["pred_saliency_scores"]) == 6  # 12 s at 0.5 fps
    assert query["pred_relevant_windows"] and all(0 <= s <= e <= 12 for s, e, _ in query["pred_relevant_windows"])
