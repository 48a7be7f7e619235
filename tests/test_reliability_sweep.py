"""Reliability round 2 for sweeps: an interrupted sweep keeps a table of its finished trials and resumes with the
same command; killing the sweep kills its trial processes too."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import FAST  # demo_cache (the session's 8-video demo cache): tests/conftest.py

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def sweep_cmd(cache: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-u", str(REPO / "train" / "sweep.py"), "--cache", str(cache), "--out", str(out),
            *FAST, *extra]


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0]
    except FileNotFoundError:
        return False
    return state not in "ZX"  # a zombie has stopped; only its exit status is left to collect


@pytest.mark.slow  # sweep processes interrupted and rerun
def test_interrupted_sweep_keeps_its_table_and_the_same_command_resumes(demo_cache, tmp_path):
    out = tmp_path / "sweep"
    cmd = sweep_cmd(demo_cache, out, "--grid", "seed=1,2,3", "--epochs", "3")  # two trials left to interrupt
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "0_seed=1" / "trial.json"
    wait_for(lambda: first.exists() or proc.poll() is not None, 300, "the first trial")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command" in err
    table = pd.read_csv(out / "results.csv")
    assert "0_seed=1" in list(table["trial"]) and len(table) < 3 and set(table["status"]) == {"ok"}
    stamp = first.stat().st_mtime_ns

    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming, {len(table)} of 3 trials already finished" in done.stdout
    table = pd.read_csv(out / "results.csv")
    assert sorted(table["trial"]) == ["0_seed=1", "1_seed=2", "2_seed=3"] and set(table["status"]) == {"ok"}
    assert first.stat().st_mtime_ns == stamp  # the finished trial was not run again
    other = subprocess.run(sweep_cmd(demo_cache, out, "--grid", "seed=4"), cwd=REPO, env=ENV, capture_output=True,
                           text=True, timeout=120)
    assert other.returncode == 2 and "holds another sweep" in other.stderr


def test_a_trial_finished_as_the_sweep_is_interrupted_is_still_ranked(demo_cache, tmp_path, monkeypatch):
    """Ctrl-C can land after a trial wrote its trial.json and before the table took it in (CI hit that window):
    the interrupted sweep still ranks it in results.csv, as its message says."""
    import json

    from r2 import metrics, sweep

    def finish_then_interrupt(cfg, trial, cache, features, progress=None):
        outcome = {"trial": trial.name, "params": trial.params, "status": "ok", "value": 42.0, "best_epoch": 1,
                   "epochs": 1, "error": "", "seconds": 0.1, "metric": metrics.headline(cache.dataset)}
        trial.out.mkdir(parents=True)
        (trial.out / "trial.json").write_text(json.dumps(outcome))
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_trial", finish_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(sweep.SweepConfig(cache=str(demo_cache), grid={"seed": [1, 2]}, out=str(tmp_path / "s")))
    table = pd.read_csv(tmp_path / "s" / "results.csv")
    assert list(table["trial"]) == ["0_seed=1"] and list(table["status"]) == ["ok"]


@pytest.mark.slow  # a parallel sweep process tree
def test_killing_a_parallel_sweep_kills_its_trials(demo_cache, tmp_path):
    out = tmp_path / "sweep"
    cmd = sweep_cmd(demo_cache, out, "--grid", "seed=1,2", "--trials-parallel", "2", "--epochs", "200")
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pids = []
    for line in proc.stdout:
        if ": started (pid " in line:
            pids.append(int(line.split("(pid ")[1].split(",")[0]))
            if len(pids) == 2:
                break
    assert len(pids) == 2, "the sweep did not start its two trial processes"
    time.sleep(1.0)  # both are training now
    proc.kill()
    proc.wait()
    try:
        wait_for(lambda: not any(alive(pid) for pid in pids), 30, "the trial processes to die with the sweep")
    finally:
        for pid in pids:  # never leave a trial training if the check failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
