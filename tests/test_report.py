"""python -m r2.report on two fake run folders."""
import json

import pandas as pd

from r2.report import get_args_parser, main


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
