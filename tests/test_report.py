"""python -m r2.report on fake run folders, a sweep folder and a runs/ folder as a user leaves it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from r2.report import ReportError, curve_columns, get_args_parser, main
from r2.sweep import rank

REPO = Path(__file__).resolve().parents[1]


def _run(path, dataset, metrics, log_rows):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"dataset": dataset, "cache": "cache/x.h5"}))
    (path / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame(log_rows).to_csv(path / "log.csv", index=False)
    return path


def test_report_two_runs(tmp_path, capsys):
    qvh = _run(tmp_path / "qvh_run", "qvhighlights",
               {"MR-full-R1@0.5": 60.5, "MR-full-R1@0.7": 40.0, "MR-full-mAP": 39.1, "MR-full-mAP@0.5": 58.0,
                "MR-full-mAP@0.75": 37.2, "HL-min-VeryGood-mAP": 38.0, "HL-min-VeryGood-Hit1": 61.0},
               [{"epoch": 1, "loss_cls": 1.0, "MR-full-mAP": 20.0}, {"epoch": 2, "loss_cls": 0.5, "MR-full-mAP": 39.1}])
    yt = _run(tmp_path / "yt_dog", "youtube", {"mAP-dog": 0.71234, "mAP": 0.71234},
              [{"epoch": 1, "loss_sal": 0.3, "mAP": 0.7}])
    out = tmp_path / "out"
    table = main(get_args_parser().parse_args([str(qvh), str(yt), "--out", str(out), "--plot"]))
    text = capsys.readouterr().out
    assert "qvh_run" in text and "paper Tables 5/9 (val)" in text and "68.71" in text  # paper val R1@0.5
    assert list(table["run"]) == ["qvh_run", "R²-Tuning, paper Tables 5/9 (val)", "yt_dog", "R²-Tuning, paper Table 3"]
    row = table.set_index("run").loc["yt_dog"]
    assert row["Dog"] == 71.23 and row["Avg."] == 71.23  # fractions shown as the paper's percentages
    assert table.set_index("run").loc["R²-Tuning, paper Table 3", "Dog"] == 75.6
    csv = pd.read_csv(out / "report.csv")
    assert len(csv) == 4 and csv.loc[0, "R1@0.5"] == 60.5
    assert (out / "report.md").read_text().count("|") > 10
    assert (out / "qvh_run_curves.png").stat().st_size > 0 and (out / "yt_dog_curves.png").is_file()


def test_curve_columns_picks_losses_paper_metrics_headline_first_and_lr():
    log = pd.DataFrame({"epoch": [1, 2], "lr": [1e-4, 2e-4], "train_loss_cls": [1.0, 0.5], "train_loss": [2.0, 1.0],
                        "val_MR-full-R1@0.7": [1.0, 2.0], "val_MR-full-mAP": [3.0, 4.0], "val_MR-full-R5@0.3": [0, 1],
                        "test_MR-full-R1@0.5": [5.0, 6.0], "seconds": [9.0, 8.0]})
    panels = curve_columns(log, "demo", "val", "MR-full-mAP")
    assert panels["losses"] == [("train_loss_cls", "train_loss_cls", 1), ("train_loss", "train_loss", 1)]
    # headline first; columns of another split, non-paper metrics and seconds are left out
    assert panels["metrics"] == [("val_MR-full-mAP", "mAP (headline)", 1), ("val_MR-full-R1@0.7", "R1@0.7", 1)]
    assert panels["lr"] == [("lr", "lr", 1)]
    yt = pd.DataFrame({"epoch": [1], "val_mAP": [0.5], "val_mAP-dog": [0.5], "train_loss": [1.0]})
    assert curve_columns(yt, "youtube", "val", "mAP")["metrics"] == [("val_mAP", "Avg. (headline)", 100),
                                                                     ("val_mAP-dog", "Dog", 100)]
    assert curve_columns(yt, "youtube", "val", "mAP")["lr"] == []


def _qvh(path, map_value):
    return _run(path, "qvhighlights", {"MR-full-mAP": map_value, "MR-full-R1@0.5": 50.0},
                [{"epoch": 1, "loss_cls": 1.0, "MR-full-mAP": map_value}])


def _sweep(folder):
    """A train/sweep.py folder: two finished trials ranked by results.csv (the better one second by name) and a
    failed one."""
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"grid": {"lr": [1e-4, 1e-3, 1e-2]}}))
    _qvh(folder / "00_lr=1e-4", 30.0)
    _qvh(folder / "01_lr=1e-3", 40.0)
    (folder / "02_lr=1e-2").mkdir()
    outcomes = [{"trial": name, "params": {"lr": lr}, "metric": "MR-full-mAP", "value": value, "best_epoch": 1,
                 "epochs": 1, "seconds": 1.0, "status": status, "error": error}
                for name, lr, value, status, error in (("00_lr=1e-4", 1e-4, 30.0, "ok", None),
                                                       ("01_lr=1e-3", 1e-3, 40.0, "ok", None),
                                                       ("02_lr=1e-2", 1e-2, None, "failed", "loss is NaN"))]
    rank(outcomes, ["lr"], "val").to_csv(folder / "results.csv", index=False)
    return folder


def test_report_reads_a_runs_folder_with_a_sweep_links_and_strays(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    _sweep(runs / "sweep-demo")
    _qvh(runs / "demo-1", 20.0)
    (runs / "demo-latest").symlink_to("demo-1")  # the same run again
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / "config.json").write_text(json.dumps({"dataset": "demo"}))
    (runs / "notes.txt").write_text("a stray file")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    table = main(get_args_parser().parse_args(sorted(str(p) for p in runs.iterdir())))
    err = capsys.readouterr().err
    assert list(table["run"])[:3] == ["demo-1", "sweep-demo/01_lr=1e-3", "sweep-demo/00_lr=1e-4"]  # ranked order
    assert list(table.set_index("run").loc[["sweep-demo/01_lr=1e-3", "sweep-demo/00_lr=1e-4"], "mAP"]) == [40.0, 30.0]
    assert "sweep-demo/02_lr=1e-2: trial failed (loss is NaN)" in err and "unfinished: no metrics.json" in err
    assert "notes.txt: not a run folder" in err
    # beside the runs, with the manifest of what it wrote there (a later report may replace those, nothing else)
    assert sorted(p.name for p in (runs / "report").iterdir()) == [".r2-report.json", "report.csv", "report.md"]
    assert not list(cwd.iterdir())  # never the current folder
    main(get_args_parser().parse_args(sorted(str(p) for p in runs.iterdir()) + ["--plot"]))  # runs/* again
    assert "report: not a run folder" not in capsys.readouterr().err  # its own folder is not a run
    assert (runs / "report" / "sweep-demo__01_lr=1e-3_curves.png").is_file()


def test_one_unreadable_run_is_a_note_and_the_others_are_reported(tmp_path, capsys):
    good, bad, no_log = _qvh(tmp_path / "good", 10.0), _qvh(tmp_path / "bad", 1.0), _qvh(tmp_path / "no_log", 5.0)
    (bad / "config.json").write_text(json.dumps({"cache": "x.h5"}))  # no dataset
    (no_log / "log.csv").unlink()
    table = main(get_args_parser().parse_args([str(good), str(bad), str(no_log), "--plot"]))
    err = capsys.readouterr().err
    assert list(table["run"])[:2] == ["good", "no_log"]
    assert f"note: bad: left out: {bad / 'config.json'}: field 'dataset' missing" in err
    assert f"note: no_log: no curves: {no_log / 'log.csv'} not found" in err
    assert (tmp_path / "report" / "good_curves.png").is_file()


def _report_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "r2.report", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def closed_pipe_stderr(command: list[str], cwd) -> tuple[int, str]:
    """Run `command` with its stdout a pipe whose reader has already gone (as `| head` leaves it)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(), err


def test_report_never_replaces_a_file_it_did_not_write(tmp_path):
    """report/ may hold the user's own report.md, or --out a file: refused, untouched; the files of an earlier
    report (listed in its manifest) are replaced by the next one."""
    (tmp_path / "runs").mkdir()
    run = _qvh(tmp_path / "runs" / "run", 1.0)
    mine = tmp_path / "runs" / "report" / "report.md"
    mine.parent.mkdir()
    mine.write_text("my notes")
    with pytest.raises(ReportError, match=r"report.md is there and was not written by r2.report; pass another --out"):
        main(get_args_parser().parse_args([str(run)]))
    assert mine.read_text() == "my notes"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ReportError, match=r"--out .*notes.txt: is a file or a dangling link, not a folder"):
        main(get_args_parser().parse_args([str(run), "--out", str(tmp_path / "notes.txt")]))
    out = tmp_path / "out"
    for _ in range(2):  # the second report replaces the first one's files
        main(get_args_parser().parse_args([str(run), "--out", str(out), "--plot"]))
    assert sorted(p.name for p in out.iterdir()) == [".r2-report.json", "report.csv", "report.md", "run_curves.png"]


def test_report_cli_errors_are_one_line_and_a_closed_pipe_is_quiet(tmp_path):
    broken = _qvh(tmp_path / "broken", 1.0)
    (broken / "metrics.json").write_text("{not json")
    proc = _report_cli(str(broken), cwd=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: no run to report")
    assert f"{broken / 'metrics.json'}: not readable JSON" in last
    assert "Traceback" not in proc.stderr
    proc = _report_cli(str(tmp_path / "nothing-here"), cwd=tmp_path)
    assert proc.returncode == 2 and "no run to report" in proc.stderr
    code, err = closed_pipe_stderr([sys.executable, "-m", "r2.report", str(_qvh(tmp_path / "run", 1.0))], tmp_path)
    assert code == 0 and "Traceback" not in err and "BrokenPipe" not in err
    assert (tmp_path / "report" / "report.md").is_file()  # written before printing
