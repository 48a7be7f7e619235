"""The benchmark scripts run end to end (--quick) and print their one table: every expected row, positive numbers
where a number cannot be anything else. No timing assertions: the full runs are for the README."""
import contextlib
import importlib.util
import io
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # the benchmark scripts run end to end (about 1.5 minutes in all)

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """bench/<name>.py as a module; its `from common import ...` finds bench/common.py, as it does when the script
    runs (python puts the script's folder first on the path)."""
    if name != "common" and "common" not in sys.modules:
        sys.modules["common"] = load_script("common")
    spec = importlib.util.spec_from_file_location(name if name == "common" else f"bench_{name}",
                                                  REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_quick(name: str, work: Path, *flags: str) -> str:
    """stdout of `python bench/<name>.py --quick --work WORK FLAGS`, run in this process through its main()."""
    bench = load_script(name)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench.main(bench.get_args_parser().parse_args(["--quick", "--work", str(work), *flags]))
    return out.getvalue()


def printed_rows(text: str) -> dict[str, tuple[float, str]]:
    """measure -> (value, unit) from the first printed markdown table (the main one); checks its header and that
    every row has 4 cells."""
    all_lines = text.splitlines()
    first = next(i for i, line in enumerate(all_lines) if line.startswith("|"))
    lines = []
    for line in all_lines[first:]:
        if not line.startswith("|"):
            break
        lines.append(line)
    assert lines[0] == "| measure | value | unit | note |" and lines[1] == "|---|---|---|---|"
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == 4, line
        rows[cells[0]] = (float(cells[1]), cells[2])
    return rows


def check_numbers(rows: dict[str, tuple[float, str]], may_be_negative: set[str]):
    for measure, (value, _) in rows.items():
        assert math.isfinite(value), measure
        if measure not in may_be_negative:
            assert value > 0, measure


@pytest.fixture(scope="module")
def extract_output(tmp_path_factory) -> str:
    return run_quick("extract", tmp_path_factory.mktemp("bench") / "extract")


@pytest.fixture(scope="module")
def train_output(tmp_path_factory) -> str:
    return run_quick("train", tmp_path_factory.mktemp("bench") / "train")


def test_extract_bench_prints_one_table_with_every_row(extract_output):
    assert re.search(r"^### bench/extract.py --quick on .+, \d+ cores, .+load average", extract_output, re.M)
    assert extract_output.count("### ") == 1
    rows = printed_rows(extract_output)
    assert {m: unit for m, (_, unit) in rows.items()} == {
        "decode @ 0.5 fps": "frames/s", "decode @ 0.5 fps, speed": "x realtime",
        "decode @ 0.5 fps, ffmpeg CPU": "CPU ms/frame", "decode @ 2 fps": "frames/s",
        "decode @ 2 fps, speed": "x realtime", "decode @ 2 fps, ffmpeg CPU": "CPU ms/frame",
        "encoder fp32": "frames/s", "encoder fp32, CPU": "CPU ms/frame", "encoder bf16 autocast": "frames/s",
        "encoder bf16 / fp32": "ratio", "CLIP load + checksum": "s", "end to end, whole run": "frames/s",
        "end to end, marginal": "frames/s", "end to end / encoder fp32": "ratio",
        "end to end, extractor CPU": "CPU ms/frame", "end to end, ffmpeg CPU": "CPU ms/frame",
        "CPU-bound ceiling of end to end / encoder": "ratio", "cache bytes/frame, video_feats": "x raw",
        "cache bytes/frame, all files": "x raw", "cache write": "MB/s",
        "extract, new process: first run": "s", "extract, new process: re-run, nothing to do": "s",
    }
    # the marginal rows are differences of two extraction runs: at --quick sizes on a busy machine, noise
    check_numbers(rows, {"end to end, marginal", "end to end / encoder fp32", "end to end, extractor CPU",
                         "end to end, ffmpeg CPU", "CPU-bound ceiling of end to end / encoder"})
    # a 10 s video gives 5 frames at 0.5 fps, 20 at 2 fps
    assert "10 s: 5 frames" in extract_output and "10 s: 20 frames" in extract_output
    # the feature dataset holds exactly the raw fp16 bytes (uncompressed, one frame per chunk); the files more
    assert rows["cache bytes/frame, video_feats"][0] == pytest.approx(1.0)
    assert rows["cache bytes/frame, all files"][0] > 1.0


def test_train_bench_prints_one_table_with_every_row(train_output):
    assert re.search(r"^### bench/train.py --quick on .+, \d+ cores, .+load average", train_output, re.M)
    assert train_output.count("### ") == 1
    rows = printed_rows(train_output)
    expected = {"synthetic cache read once (page cache warm)": "MB/s"} | STEP_ROWS
    for name in ("(a) stream", "(b) preload", "(d) CLIP in the loop"):
        expected |= {f"{name}: steps/s": "steps/s", f"{name}: samples/s": "samples/s"}
    expected |= {"(c) = (a) / (b)": "ratio", "(b) / (d) speed-up of cached features": "x"}
    for name in ("(a) stream", "(b) preload"):  # no worker rows: on a CPU the loader runs in-process, as in fit.py
        expected |= {f"{name}: peak RSS, main process": "MB"}
    expected |= {"sweep: seconds per trial": "s/trial", "sweep: a trial's own seconds": "s/trial",
                 "sweep: overhead per trial": "% of a trial", "separate train/fit.py: seconds per trial": "s/trial",
                 "sweep speed-up per trial": "x"}
    assert {m: unit for m, (_, unit) in rows.items()} == expected  # no GPU rows without a GPU
    check_numbers(rows, set())
    for name in ("(a) stream", "(b) preload", "(d) CLIP in the loop"):  # samples/s = batch (4) x steps/s
        assert rows[f"{name}: samples/s"][0] == pytest.approx(4 * rows[f"{name}: steps/s"][0], rel=1e-3)
    assert rows["(c) = (a) / (b)"][0] == pytest.approx(
        rows["(a) stream: samples/s"][0] / rows["(b) preload: samples/s"][0], rel=1e-2)
    assert rows["sweep: seconds per trial"][0] >= rows["sweep: a trial's own seconds"][0]  # a trial is in the sweep


STEP_ROWS = {"step, fast path: s/step": "s", "step, plain eager path: s/step": "s", "step: fast / plain eager": "ratio",
             "step, fast path: samples/s": "samples/s", "step, plain eager path: samples/s": "samples/s",
             "step, fast path: GFLOP/s": "GFLOP/s", "step, plain eager path: GFLOP/s": "GFLOP/s",
             "nominal fp32 peak": "GFLOP/s", "measured sgemm 2048^3": "GFLOP/s"}


def test_train_bench_step_comparison(train_output):
    """The step rows agree with each other, and each path's per-op table follows the main table."""
    rows = printed_rows(train_output)
    assert rows["step: fast / plain eager"][0] > 0
    for path in ("fast path", "plain eager path"):  # samples/s = batch (4) / s per step
        assert rows[f"step, {path}: samples/s"][0] == pytest.approx(4 / rows[f"step, {path}: s/step"][0], rel=1e-3)
    for name in ("fast", "plain eager"):
        head = f"Per-op self time, one training step, {name} (torch.profiler):"
        assert head in train_output
        table = train_output.split(head, 1)[1].split("\n\n")[1]
        lines = table.splitlines()
        assert lines[0] == "| op | self ms | share | calls |" and len(lines) >= 4
        assert lines[-1].startswith("| total |") and "aten::" in table


COMPILE_ROWS = {"step, torch.compile: s/step": "s", "step: torch.compile / fast": "ratio",
                "step, torch.compile: samples/s": "samples/s", "step, torch.compile: first step": "s",
                "step, torch.compile: graph breaks": "count"}


def test_train_bench_step_only_with_compile(tmp_path):
    """--step-only is the step comparison alone; --compile adds torch.compile(model) to it: its rows, no graph break,
    its per-op table. Compiled with dynamo's eager backend (the same trace; inductor's code generation takes over
    two minutes on a 2-core CPU, and inductor's compiled == eager is tests/test_model.py's)."""
    out = run_quick("train", tmp_path / "w", "--step-only", "--compile", "eager", "--ab-rounds", "1", "--ops", "3")
    rows = printed_rows(out)
    assert {m: unit for m, (_, unit) in rows.items()} == (
        {"synthetic cache read once (page cache warm)": "MB/s"} | STEP_ROWS | COMPILE_ROWS)
    check_numbers(rows, {"step, torch.compile: graph breaks"})
    assert rows["step, torch.compile: graph breaks"][0] == 0
    assert rows["step, torch.compile: samples/s"][0] == pytest.approx(4 / rows["step, torch.compile: s/step"][0],
                                                                       rel=1e-3)
    assert "Per-op self time, one training step, torch.compile (torch.profiler):" in out
    assert "bench/train.py --quick --step-only --compile eager on " in out
    assert "torch.compile(model, backend='eager'); 0 graph breaks" in out


def test_train_bench_qvhighlights_records_load(tmp_path):
    """The synthetic cache is a valid qvhighlights cache: every record loads, with 12-20 query tokens."""
    from r2 import clip
    from r2.cache import Cache
    from r2.data import GroundingDataset

    bench = load_script("train")
    entry = tmp_path / "b.h5"
    bench.write_cache(entry, bench.arch_dims(clip.TINY_ARCH), n_videos=3, n_frames=5, queries_per_video=2)
    cache = Cache(entry)
    dataset = GroundingDataset(cache, "train", train=True)
    assert cache.dataset == "qvhighlights" and len(dataset) == 6 and dataset.missing == 0
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample.video.shape == (4, 5, cache.dims["tokens"], 192)  # (K, T, P+1, Dv)
        assert 12 <= sample.query.shape[1] <= 20 and sample.saliency.max() > 0
        record = cache.records("train")[i]
        assert record["duration"] == 10 and record["relevant_windows"] and record["saliency_scores"]


def test_compact_bench_prints_its_table(tmp_path):
    """bench/compact.py on the smallest sets: a row per (set, run), compact stores at <= 0.51x the fp16 bytes, fp8
    decoding further from fp16 than int8, same-weights columns for both splits with their query counts."""
    out = run_quick("compact", tmp_path / "w", "--demo-videos", "6", "--custom-videos", "6", "--epochs", "1")
    assert re.search(r"^### bench/compact.py --quick: demo 6 \+ custom 6 videos, .*1 epochs .*on .+ cores", out, re.M)
    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split(" | ")))) for line in lines[2:]]
    labels = ["fp16", "int8", "fp8", "fp16, seed + 1"]
    assert [(r["set"], r["store"]) for r in rows] == [(s, label) for s in ("demo", "custom") for label in labels]
    same = [f"Δ {m}, same weights, {split}" for split in ("val", "train") for m in ("MR-full-R1@0.5", "MR-full-mAP")]
    errors = [f"s.e. R1 / mAP, same weights, {split}" for split in ("val", "train")]
    for r in rows:
        assert re.fullmatch(r"\d+ / \d+", r["queries val / train"])
        if r["store"] in ("int8", "fp8"):
            assert float(r["bytes / fp16"]) <= 0.51 and all(math.isfinite(float(r[c])) for c in same)
            assert all(re.fullmatch(r"\d+\.\d\d / \d+\.\d\d", r[c]) for c in errors)
        else:  # fp16 is the reference; the spread row has no same-weights comparison
            assert all(r[c] == "-" for c in errors)
            if r["store"] == "fp16, seed + 1":
                assert all(r[c] == "-" for c in same)
    for name in ("demo", "custom"):
        err = {r["store"]: float(r["mean abs err"]) for r in rows if r["set"] == name}
        assert 0 < err["int8"] < err["fp8"] < 0.05


def test_compact_bench_per_query_values_average_to_the_metrics():
    """bench/compact.py's standard errors rest on R1@0.5 and mAP being means of its per-query values: a window equal
    to the GT scores 100 / 100, one of IoU 0.6 scores 100 / 30 (matched at the thresholds 0.5, 0.55, 0.6 of ten),
    one of IoU 0.25 scores 0 / 0."""
    from r2.metrics import moments

    gt = [{"qid": q, "relevant_windows": [[0, 10]]} for q in (1, 2, 3)]
    preds = [{"qid": 1, "pred_relevant_windows": [[0, 10, 0.9]]}, {"qid": 3, "pred_relevant_windows": [[0, 2.5, 0.8]]},
             {"qid": 2, "pred_relevant_windows": [[0, 6, 0.7], [20, 30, 0.1]]}]
    values = load_script("compact").per_query(preds, gt)
    assert {q: v.tolist() for q, v in values.items()} == {1: [100, 100], 3: [0, 0], 2: [100, 30]}
    table = np.stack(list(values.values()))
    assert table[:, 0].mean() == pytest.approx(moments.mr_r1(preds, gt)[0]["0.5"], abs=0.01)
    assert table[:, 1].mean() == pytest.approx(moments.mr_ap(preds, gt)["average"], abs=0.01)


def test_compact_bench_standard_error_is_of_the_paired_differences():
    """Differences store - fp16 per qid (whatever order each lists them in): R1 (0, 0, 100) has sample std 57.735,
    s.e. 57.735 / sqrt(3) = 33.33; AP (1, 2, 3) -> std 1, s.e. 0.58. Unpaired, or a population std, differs."""
    standard_error = load_script("compact").standard_error
    fp16 = {"per query": {1: np.array([100.0, 50]), 2: np.array([0.0, 40]), 3: np.array([0.0, 30])}}
    store = {"per query": {3: np.array([100.0, 33]), 1: np.array([100.0, 51]), 2: np.array([0.0, 42])}}
    assert standard_error(store, fp16) == "33.33 / 0.58"
    assert standard_error(fp16, fp16) == "0.00 / 0.00"
    with pytest.raises(ValueError, match="different queries"):
        standard_error({"per query": {1: np.zeros(2)}}, fp16)


def test_non_empty_work_folder_is_refused(tmp_path):
    (tmp_path / "left-over.h5").write_text("")
    for name in ("extract", "train", "compact"):
        bench = load_script(name)
        with pytest.raises(SystemExit, match="not empty"):
            bench.main(bench.get_args_parser().parse_args(["--quick", "--work", str(tmp_path)]))


def _gpu_sh(*flags: str, env: dict | None = None) -> str:
    import os
    import subprocess

    done = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), *flags], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_gpu_sh_says_no_gpu_without_a_gpu():
    out = _gpu_sh(env={"CUDA_VISIBLE_DEVICES": ""})  # no visible device, also on a GPU machine
    assert out.strip().startswith("bench/gpu.sh: no GPU") and "nothing measured" in out and "|" not in out


def test_gpu_sh_checks_run_end_to_end_on_the_cpu():
    """--cpu-smoke: the same checks on the CPU at toy sizes print one table with every check's rows."""
    out = _gpu_sh("--cpu-smoke")
    assert out.count("### ") == 1
    rows = printed_rows(out)
    assert rows["AMP bf16 vs fp32: gradient cosine"][0] >= 0.99
    for name in ("fp32", "bf16"):
        for path in ("fast", "plain eager"):
            assert rows[f"step {name}, {path}: samples/s"][0] > 0
    assert rows["GPU-resident features, bf16 fast: samples/s"][0] > 0
    assert "r2.data.DeviceFeatures: 4 samples of 2 videos resident" in out  # the trainer's --preload cuda class
    assert rows["extraction tiny fp32: frames/s"][0] > 0
