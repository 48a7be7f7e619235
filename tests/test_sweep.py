"""r2.sweep / train/sweep.py: grid parsing, trial naming and sampling, ranking, and real sweeps on a tiny demo cache
(a 2x2 grid with two trials at a time, and a sweep whose trials fail)."""
import json
from pathlib import Path

import pandas as pd
import pytest

from r2.sweep import SweepConfig, make_trials, parse_grid, rank, run_sweep, to_markdown
from tests.helpers import FAST, load_cli

REPO = Path(__file__).resolve().parents[1]


def _sweep_cli():
    return load_cli("train/sweep.py")  # demo_cache (the session's 8-video demo cache): tests/conftest.py


# ----------------------------------------------------------------------------------------------- grid


def test_parse_grid_types_values_with_the_field_type():
    grid = parse_grid(["lr=1e-4,2.5e-4", "batch-size=4,8", "nms=hard,none", "progress=false,TRUE"])
    assert grid["lr"] == [("1e-4", 1e-4), ("2.5e-4", 2.5e-4)] and isinstance(grid["lr"][0][1], float)
    assert grid["batch_size"] == [("4", 4), ("8", 8)] and isinstance(grid["batch_size"][0][1], int)
    assert grid["nms"] == [("hard", "hard"), ("none", "none")]
    assert grid["progress"] == [("false", False), ("TRUE", True)]
    assert list(grid) == ["lr", "batch_size", "nms", "progress"]  # flag order is kept
    off = parse_grid(["lr-drop=20,none", "unit=none,2"])  # "none" is off for the numbers that can be turned off
    assert off == {"lr_drop": [("20", 20), ("none", "none")], "unit": [("none", "none"), ("2", 2.0)]}
    assert isinstance(off["lr_drop"][0][1], int) and isinstance(off["unit"][1][1], float)


@pytest.mark.parametrize("specs, message", [
    (["learning_rate=1e-4"], "not a TrainConfig field a trial can vary; one of domain, batch_size"),
    (["out=a,b"], "not a TrainConfig field"),
    (["resume=a"], "not a TrainConfig field"),
    (["lr=1e-4", "lr=5e-4"], "given twice"),
    (["lr=abc"], "'abc' is not a valid float"),
    (["epochs=1.5"], "'1.5' is not a valid int"),
    (["epochs=none"], "'none' is not a valid int"),  # epochs cannot be off
    (["progress=maybe"], "not a boolean"),
    (["lr"], "expected KEY=V1,V2"),
    (["lr=1e-4,,2e-4"], "empty value"),
    (["lr=1e-4,0.0001"], "a value appears twice"),
])
def test_parse_grid_errors(specs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_grid(specs)


def test_make_trials_all_combinations_last_key_fastest(tmp_path):
    grid = parse_grid(["lr=1e-4,5e-4", "dropout=0.3,0.5"])
    trials = make_trials(grid, tmp_path)
    assert [t.name for t in trials] == ["0_lr=1e-4_dropout=0.3", "1_lr=1e-4_dropout=0.5",
                                        "2_lr=5e-4_dropout=0.3", "3_lr=5e-4_dropout=0.5"]
    assert trials[2].params == {"lr": 5e-4, "dropout": 0.3} and trials[2].out == tmp_path / trials[2].name


def test_make_trials_samples_a_deterministic_subset(tmp_path):
    grid = parse_grid(["lr=1,2,3,4", "seed=1,2,3"])  # 12 combinations -> names padded to two digits
    full = make_trials(grid, tmp_path)
    assert full[11].name == "11_lr=4_seed=3"
    a = make_trials(grid, tmp_path, samples=5, sample_seed=7)
    b = make_trials(grid, tmp_path, samples=5, sample_seed=7)
    assert [t.params for t in a] == [t.params for t in b]
    assert len(a) == 5 and len({tuple(t.params.items()) for t in a}) == 5
    full_params = [t.params for t in full]
    assert [full_params.index(t.params) for t in a] == sorted(full_params.index(t.params) for t in a)  # grid order
    assert [t.params for t in make_trials(grid, tmp_path, samples=12)] == full_params
    with pytest.raises(ValueError, match="the grid has 12 combinations; pick 1..12"):
        make_trials(grid, tmp_path, samples=13)


def _outcome(name, lr, value, status="ok", error=""):
    return {"trial": name, "params": {"lr": lr}, "status": status, "metric": "MR-full-mAP", "value": value,
            "best_epoch": None if value is None else 3, "epochs": None if value is None else 5, "seconds": 1.5,
            "error": error}


def test_rank_best_first_ties_in_trial_order_failed_last():
    table = rank([_outcome("a", 1e-4, 20.0), _outcome("b", 2e-4, None, "failed", "ValueError: boom"),
                  _outcome("c", 3e-4, 35.5), _outcome("d", 4e-4, 20.0)], ["lr"], "val")
    assert list(table["trial"]) == ["c", "a", "d", "b"]
    assert list(table["rank"].astype(object).where(table["rank"].notna(), None)) == [1, 2, 3, None]
    assert list(table.columns) == ["rank", "trial", "lr", "val MR-full-mAP", "best_epoch", "epochs", "seconds",
                                   "status", "error"]
    assert table.loc[3, "error"] == "ValueError: boom" and pd.isna(table.loc[3, "val MR-full-mAP"])
    md = to_markdown(table, "t").splitlines()
    assert md[0] == "### t" and md[2].startswith("| rank | trial | lr |")
    assert md[4] == "| 1 | c | 0.0003 | 35.5 | 3 | 5 | 1.5 | ok |  |"
    assert md[7].startswith("| - | b | 0.0002 | - | - | - |")


def test_sweep_config_errors(tmp_path):
    with pytest.raises(ValueError, match="empty grid"):
        run_sweep(SweepConfig(cache="x.h5", out=str(tmp_path / "s")))
    with pytest.raises(ValueError, match="lr both fixed and in --grid"):
        run_sweep(SweepConfig(cache="x.h5", grid={"lr": [1e-4]}, fixed={"lr": 1e-3}))
    with pytest.raises(ValueError, match="fixed out not TrainConfig fields a sweep passes on"):
        run_sweep(SweepConfig(cache="x.h5", grid={"lr": [1e-4]}, fixed={"out": "x"}))
    (tmp_path / "notes.txt").write_text("mine")  # was a NotADirectoryError traceback
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    for taken in ("notes.txt", "link"):
        with pytest.raises(ValueError, match=rf"^--out .*{taken}: is a file or a dangling link, not a sweep folder"):
            run_sweep(SweepConfig(cache="x.h5", grid={"lr": [1e-4]}, out=str(tmp_path / taken)))
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------------------- real sweeps


@pytest.mark.slow  # four trials in forked processes
def test_sweep_2x2_parallel_ranks_its_trials(demo_cache, tmp_path, capsys):
    cli = _sweep_cli()
    out = tmp_path / "sweep"
    rc = cli.main(cli.get_args_parser().parse_args(
        ["--cache", str(demo_cache), "--grid", "lr=1e-4,5e-4", "--grid", "dropout=0.3,0.5", "--trials-parallel", "2",
         "--out", str(out), *FAST]))
    assert rc == 0
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and list(table["rank"]) == [1, 2, 3, 4] and set(table["status"]) == {"ok"}
    metric = "val MR-full-mAP"
    assert list(table[metric]) == sorted(table[metric], reverse=True)
    assert set(zip(table["lr"], table["dropout"])) == {(1e-4, 0.3), (1e-4, 0.5), (5e-4, 0.3), (5e-4, 0.5)}
    for _, row in table.iterrows():
        run = out / row.trial
        config = json.loads((run / "config.json").read_text())
        assert (config["lr"], config["dropout"], config["model_config"]["dropout"]) == (row.lr, row.dropout,
                                                                                     row.dropout)
        assert (config["seed"], config["epochs"], config["model_config"]["hidden"]) == (42, 1, 64)  # same seed
        best = json.loads((run / "metrics.json").read_text())
        assert best["MR-full-mAP"] == row[metric] and best["epoch"] == row.best_epoch == 1
        log = pd.read_csv(run / "log.csv")
        assert log["val_MR-full-mAP"].max() == best["MR-full-mAP"]
        assert (run / "best.pt").is_file() and "epoch 1/1" in (run / "output.log").read_text()
    assert (out / "results.md").read_text().startswith("### demo: 4 trials ranked by val MR-full-mAP (best epoch)")
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["grid"] == {"lr": [1e-4, 5e-4], "dropout": [0.3, 0.5]} and sweep["fixed"]["hidden"] == 64
    assert "| rank | trial | lr | dropout |" in capsys.readouterr().out


def test_failed_trials_are_recorded_and_the_exit_code_says_so(demo_cache, tmp_path):
    cli = _sweep_cli()
    out = tmp_path / "sweep"
    rc = cli.main(cli.get_args_parser().parse_args(
        ["--cache", str(demo_cache), "--grid", "eval_split=dev,holdout", "--out", str(out), "--epochs", "1",
         "--no-progress"]))  # valid configs that fail once a trial runs: the cache has no such split
    assert rc == 1
    table = pd.read_csv(out / "results.csv")
    assert list(table["status"]) == ["failed", "failed"] and table["rank"].isna().all()
    assert "dev" in table.loc[0, "error"] and "split" in table.loc[0, "error"]
    assert "Traceback" in (out / "0_eval_split=dev" / "error.txt").read_text()
    assert json.loads((out / "1_eval_split=holdout" / "trial.json").read_text())["status"] == "failed"
    # the same folder again is refused, the sweep's results are never overwritten
    assert cli.main(cli.get_args_parser().parse_args(
        ["--cache", str(demo_cache), "--grid", "hidden=64", "--out", str(out)])) == 2


def test_sequential_sample_without_preload(demo_cache, tmp_path):
    result = run_sweep(SweepConfig(cache=str(demo_cache), grid={"lr": [1e-4, 5e-4], "seed": [1, 2]}, samples=1,
                                   sample_seed=3, preload=False, out=str(tmp_path / "s"),
                                   fixed={"epochs": 1, "batch_size": 4, "hidden": 64, "workers": 0,
                                          "progress": False}))
    assert result.failed == 0 and len(result.table) == 1
    row = result.table.iloc[0]
    config = json.loads((result.out / row["trial"] / "config.json").read_text())
    assert (config["lr"], config["seed"]) == (row["lr"], row["seed"]) and config["epochs"] == 1
    assert row["val MR-full-mAP"] == json.loads((result.out / row["trial"] / "metrics.json").read_text())["MR-full-mAP"]
    assert not (result.out / row["trial"] / "output.log").exists()  # one at a time: output stays on the console
