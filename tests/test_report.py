"""python -m r2.report on two fake run folders."""
import json

import pandas as pd

from r2.report import curve_columns, get_args_parser, main


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
