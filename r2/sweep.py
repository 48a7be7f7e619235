"""Hyperparameter sweep over one cache: every combination of a grid (or a random sample of them), one run folder
per trial, a ranked results table.

The cache is opened, and by default its features read into memory, once; every trial's `Trainer` gets both, so a
trial skips the interpreter start, the cache opening and the feature reads that a separate `train/fit.py` run pays.
With `trials_parallel` N > 1, N trials run at once in forked processes that share the preloaded tensors
copy-on-write, each with 1/N of the torch threads and its console output in `<trial>/output.log`.

A sweep folder (default `runs/sweep-<cache name>-<time>/`) holds:
    sweep.json               the grid, the fixed TrainConfig overrides, the trials
    <NN>_<key>=<value>_.../  one run folder per trial (see r2/train.py) plus trial.json (its outcome)
    results.csv, results.md  the trials ranked by the dataset's headline metric (best epoch); failed trials last,
                             with their error
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import random
import signal
import subprocess
import sys
import time
import traceback
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from r2 import errors, metrics
from r2.cache import Cache
from r2.data import Preloaded
from r2.errors import ConfigError
from r2.train import Trainer
from r2.train_config import TrainConfig

__all__ = ["SweepConfig", "SweepResult", "Trial", "bench_per_trial", "field_type", "make_trials", "parse_grid",
           "parse_value", "rank", "run_sweep", "to_markdown"]

# TrainConfig fields the sweep sets itself: the cache is shared, run folders are per trial, trials start fresh,
# and the features are preloaded (or not) once for all trials (SweepConfig.preload).
RESERVED = ("cache", "out", "resume", "preload")
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal a process gets when its parent dies


@dataclass
class SweepConfig:
    cache: str = field(metadata={"help": "the cache entry file every trial trains on", "metavar": "FILE"})
    grid: dict[str, list] = field(default_factory=dict)  # TrainConfig field -> values (typed), in flag order
    fixed: dict = field(default_factory=dict)  # TrainConfig overrides shared by every trial
    samples: int | None = field(default=None, metadata={
        "help": "run this many combinations drawn at random", "default": "all of them", "metavar": "N"})
    sample_seed: int = field(default=0, metadata={"help": "seed of the --samples draw", "metavar": "N"})
    trials_parallel: int = field(default=1, metadata={
        "help": "trials run at once (forked processes sharing the preloaded features), each with its share of the "
                "torch threads", "metavar": "N"})
    preload: bool = field(default=True, metadata={
        "help": "read the cache's features into memory once for all trials (--no-preload: trials share the file)"})
    out: str | None = field(default=None, metadata={
        "help": "the sweep folder", "default": "runs/sweep-<cache name>-<time>", "metavar": "DIR"})


@dataclass
class Trial:
    name: str  # folder name: <index>_<key>=<value>_...
    params: dict  # grid key -> typed value
    out: Path  # its run folder


@dataclass
class SweepResult:
    out: Path  # the sweep folder
    table: pd.DataFrame  # ranked trials (what results.csv holds)
    failed: int  # trials recorded as failed


# ----------------------------------------------------------------------------------------------- the grid


def field_type(name: str) -> type:
    """The scalar type of a TrainConfig field a trial can vary (`int | None` -> int); other names raise listing the
    fields."""
    if name not in typing.get_type_hints(TrainConfig) or name in RESERVED:
        allowed = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in RESERVED]
        raise ConfigError(f"--grid {name}: not a TrainConfig field a trial can vary; one of {', '.join(allowed)}")
    return errors.field_type(TrainConfig, name)


def parse_value(name: str, text: str):
    """One grid value, parsed as its flag would be (`r2.errors.scalar_parser`): lr '1e-4' -> 0.0001, lr_drop 'none'
    -> 'none' (off); a bool as true/yes/1 or false/no/0."""
    kind = field_type(name)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        raise ConfigError(f"--grid {name}={text}: {text!r} is not a boolean (true/false)")
    parse = errors.scalar_parser(TrainConfig, name)
    try:
        return parse(text)
    except ValueError:
        raise ConfigError(f"--grid {name}={text}: {text!r} is not a valid {parse.__name__}") from None


def parse_grid(specs: list[str]) -> dict[str, list[tuple[str, object]]]:
    """['lr=1e-4,5e-4', 'dropout=0.3'] -> {'lr': [('1e-4', 0.0001), ('5e-4', 0.0005)], 'dropout': [('0.3', 0.3)]}.

    Keys may be spelt with dashes (batch-size); each value keeps its text, which names the trial folders."""
    grid: dict[str, list[tuple[str, object]]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--grid {spec!r}: expected KEY=V1,V2,... e.g. --grid lr=1e-4,2.5e-4")
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice; put all its values in one --grid {key}=V1,V2,...")
        texts = [v.strip() for v in values.split(",")]
        if any(not t for t in texts):
            raise ConfigError(f"--grid {spec!r}: empty value; expected KEY=V1,V2,...")
        parsed = [(t, parse_value(key, t)) for t in texts]
        if len({v for _, v in parsed}) != len(parsed):
            raise ConfigError(f"--grid {spec!r}: a value appears twice")
        grid[key] = parsed
    return grid


def _folder_text(text: str) -> str:
    return text.replace(os.sep, "-").replace(" ", "-")


def make_trials(grid: dict[str, list[tuple[str, object]]], out: Path, samples: int | None = None,
                sample_seed: int = 0) -> list[Trial]:
    """Every combination of the grid in flag order (the last key varies fastest), or `samples` of them drawn at
    random (kept in grid order)."""
    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys)))
    if samples is not None:
        if not 1 <= samples <= len(combos):
            raise ConfigError(f"--samples {samples}: the grid has {len(combos)} combinations; pick 1..{len(combos)}")
        picked = sorted(random.Random(sample_seed).sample(range(len(combos)), samples))
        combos = [combos[i] for i in picked]
    width = len(str(len(combos) - 1))
    trials = []
    for i, combo in enumerate(combos):
        name = f"{i:0{width}d}_" + "_".join(f"{k}={_folder_text(text)}" for k, (text, _) in zip(keys, combo))
        trials.append(Trial(name=name, params={k: value for k, (_, value) in zip(keys, combo)}, out=out / name))
    return trials


# ----------------------------------------------------------------------------------------------- one trial


def _trial_config(cfg: SweepConfig, trial: Trial, progress: bool | None) -> TrainConfig:
    values = {**cfg.fixed, **trial.params, "cache": cfg.cache, "out": str(trial.out)}
    if progress is not None:
        values["progress"] = progress
    return TrainConfig(**values)


def run_trial(cfg: SweepConfig, trial: Trial, cache: Cache, features: Preloaded | None,
              progress: bool | None = None) -> dict:
    """Train one trial on the shared cache; its outcome (also written to <trial>/trial.json). An exception ends
    this trial only: it is recorded as failed with its message, the traceback goes to <trial>/error.txt.
    `progress` (not None) overrides the progress bars of the trial's config."""
    start = time.time()
    outcome = {"trial": trial.name, "params": trial.params, "status": "ok", "metric": metrics.headline(cache.dataset),
               "value": None, "best_epoch": None, "epochs": None, "error": ""}
    trial.out.mkdir(parents=True, exist_ok=True)
    try:
        trainer = Trainer(_trial_config(cfg, trial, progress), cache=cache, features=features)
        best = trainer.fit()
        outcome.update(value=best["value"], best_epoch=best["epoch"], epochs=trainer.epoch)
    except Exception as e:  # recorded in the table and error.txt; the sweep goes on with the other trials
        (trial.out / "error.txt").write_text(traceback.format_exc())
        outcome.update(status="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        print(f"trial {trial.name} failed: {outcome['error']} (traceback in {trial.out / 'error.txt'})",
              file=sys.stderr)
    outcome["seconds"] = round(time.time() - start, 2)
    _write_atomic(trial.out / "trial.json", json.dumps(outcome, indent=2))  # whole or absent, even under Ctrl-C
    return outcome


def _die_with_parent(parent: int):
    """Ask Linux to SIGKILL this process when the sweep that forked it dies (even by SIGKILL), so no trial goes on
    training unseen; if the parent is already gone, stop now."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent's own handlers still stop its trials
        pass
    if os.getppid() != parent:
        os._exit(1)


def _trial_process(cfg: SweepConfig, trial: Trial, cache: Cache, features: Preloaded | None, threads: int,
                   parent: int):
    """Body of a forked trial process: its share of the threads, its output in <trial>/output.log."""
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    trial.out.mkdir(parents=True, exist_ok=True)
    with open(trial.out / "output.log", "w", buffering=1) as log:
        os.dup2(log.fileno(), 1)  # output written below Python (C libraries, warnings from native code)
        os.dup2(log.fileno(), 2)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            run_trial(cfg, trial, cache, features, progress=False)


def _outcome_of_process(trial: Trial, cache: Cache, exitcode: int, seconds: float) -> dict:
    """What a finished trial process wrote to trial.json, or a failure when it died first (killed, out of memory)."""
    path = trial.out / "trial.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"trial": trial.name, "params": trial.params, "status": "failed", "metric": metrics.headline(cache.dataset),
            "value": None, "best_epoch": None, "epochs": None, "seconds": round(seconds, 2),
            "error": f"trial process exited with code {exitcode} (see {trial.out / 'output.log'})"}


def _run_parallel(cfg: SweepConfig, trials: list[Trial], cache: Cache, features: Preloaded | None,
                  finished: typing.Callable[[dict], None]):
    """At most cfg.trials_parallel forked trial processes at a time; each outcome goes to `finished` as it comes."""
    ctx = mp.get_context("fork")  # fork: children see the preloaded tensors without a copy (copy-on-write)
    threads = max(1, torch.get_num_threads() // cfg.trials_parallel)
    pending = list(trials)
    running: dict[int, tuple[mp.Process, Trial, float]] = {}  # process sentinel -> (process, trial, start)
    try:
        while pending or running:
            while pending and len(running) < cfg.trials_parallel:
                trial = pending.pop(0)
                proc = ctx.Process(target=_trial_process, args=(cfg, trial, cache, features, threads, os.getpid()),
                                   name=f"trial-{trial.name}")
                proc.start()
                running[proc.sentinel] = (proc, trial, time.time())
                print(f"trial {trial.name}: started (pid {proc.pid}, {threads} threads, log "
                      f"{trial.out / 'output.log'})")
            for sentinel in mp.connection.wait(list(running)):
                proc, trial, start = running.pop(sentinel)
                proc.join()
                outcome = _outcome_of_process(trial, cache, proc.exitcode, time.time() - start)
                print(f"trial {trial.name}: {_summary(outcome)}")
                finished(outcome)
    finally:
        for proc, _, _ in running.values():  # interrupted: stop the trials this sweep started
            proc.terminate()
            proc.join()


def _summary(outcome: dict) -> str:
    if outcome["status"] != "ok":
        return f"failed ({outcome['error']})"
    return (f"{outcome['metric']} {outcome['value']:.2f} at epoch {outcome['best_epoch']} "
            f"({outcome['seconds']:.1f} s)")


# ----------------------------------------------------------------------------------------------- the table


def rank(outcomes: list[dict], grid_keys: list[str], eval_split: str) -> pd.DataFrame:
    """Trials ranked by their best headline value (highest first; ties keep trial order); failed trials last, with
    rank left empty. Columns: rank, trial, <grid keys>, <split> <metric>, best_epoch, epochs, seconds, status,
    error."""
    if not outcomes:
        raise ValueError("rank: no trial outcomes")
    metric = f"{eval_split} {outcomes[0]['metric']}"
    rows = [{"trial": o["trial"], **{k: o["params"][k] for k in grid_keys}, metric: o["value"],
             "best_epoch": o["best_epoch"], "epochs": o["epochs"], "seconds": o["seconds"], "status": o["status"],
             "error": o["error"]} for o in outcomes]
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: -r[metric])  # stable: ties keep order
    failed = [r for r in rows if r["status"] != "ok"]
    table = pd.DataFrame([{"rank": i + 1, **r} for i, r in enumerate(ok)] + [{"rank": None, **r} for r in failed])
    table["rank"] = table["rank"].astype("Int64")
    for column in ("best_epoch", "epochs"):
        table[column] = table[column].astype("Int64")
    return table


def to_markdown(table: pd.DataFrame, title: str) -> str:
    """The ranked table as a markdown table under a `### title` line (floats to 4 significant digits)."""
    def cell(v) -> str:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = [f"### {title}", "", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- the sweep


def _check(cfg: SweepConfig):
    if not cfg.grid:
        raise ConfigError("sweep: empty grid; give at least one --grid KEY=V1,V2,...")
    for key in cfg.grid:
        field_type(key)
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(RESERVED)
    unknown = sorted(set(cfg.fixed) - fields)
    if unknown:
        raise ConfigError(f"sweep: fixed {', '.join(unknown)} not TrainConfig fields a sweep passes on "
                          f"(the sweep sets {', '.join(RESERVED)} itself)")
    both = sorted(set(cfg.grid) & set(cfg.fixed))
    if both:
        raise ConfigError(f"sweep: {', '.join(both)} both fixed and in --grid; keep one")
    for flag, value in (("--trials-parallel", cfg.trials_parallel), ("--samples", cfg.samples)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{flag} {value!r}: must be a whole number >= 1")
    if isinstance(cfg.sample_seed, bool) or not isinstance(cfg.sample_seed, int):
        raise ConfigError(f"--sample-seed {cfg.sample_seed!r}: must be a whole number")


def run_sweep(cfg: SweepConfig, grid_texts: dict[str, list[str]] | None = None) -> SweepResult:
    """Run every trial of the grid on the one shared cache, ranking the finished trials in results.csv / .md after
    each one (an interrupted sweep keeps its table). The same command on the same --out resumes: finished trials
    are kept, an interrupted trial's folder is set aside (renamed *.interrupted-<time>) and the trial run again.

    `cfg.grid` holds typed values; `grid_texts` (key -> the values as typed on the command line) names the trial
    folders, default str(value)."""
    _check(cfg)
    grid = {k: list(zip(grid_texts[k] if grid_texts else map(str, values), values)) for k, values in cfg.grid.items()}
    out = Path(cfg.out) if cfg.out else Path("runs") / f"sweep-{Path(cfg.cache).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    trials = make_trials(grid, out, cfg.samples, cfg.sample_seed)
    for trial in trials:  # every trial's config is built (and checked) before any trial runs
        try:
            _trial_config(cfg, trial, None)
        except ConfigError as e:
            raise ConfigError(f"sweep trial {trial.name}: {e}") from None
    spec = {"cache": str(cfg.cache), "grid": cfg.grid, "fixed": cfg.fixed, "samples": cfg.samples,
            "sample_seed": cfg.sample_seed, "trials": [{"name": t.name, "params": t.params} for t in trials]}
    done = _resume(out, json.loads(json.dumps(spec)), trials)
    cache = Cache(cfg.cache)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({**spec, "trials_parallel": cfg.trials_parallel,
                                                "preload": cfg.preload}, indent=2))
    todo = [t for t in trials if t.name not in done]
    table = _Table(out, trials, list(cfg.grid), cache.dataset, done)
    if done:
        print(f"sweep folder {out}: resuming, {len(done)} of {len(trials)} trials already finished")
    features = None
    if cfg.preload and todo:
        features = Preloaded.whole(cache)
        print(f"preloaded {cache.entry}: {len(cache.videos)} videos, {len(cache.texts)} queries, "
              f"{features.nbytes / 1e9:.2f} GB in {features.seconds:.1f} s (shared by {len(todo)} trials)")
    print(f"sweep folder {out} | {len(todo)} trials to run, {cfg.trials_parallel} at a time")
    try:
        if cfg.trials_parallel == 1:
            for i, trial in enumerate(todo):
                print(f"trial {i + 1}/{len(todo)}: {trial.name}")
                table.add(run_trial(cfg, trial, cache, features))
        else:
            _run_parallel(cfg, todo, cache, features, table.add)
    except KeyboardInterrupt:
        table.catch_up()  # a trial that wrote its trial.json just before the interrupt is ranked too
        raise
    return SweepResult(out=out, table=table.frame, failed=int((table.frame["status"] != "ok").sum()))


def _resume(out: Path, spec: dict, trials: list[Trial]) -> dict[str, dict]:
    """The outcomes of the trials an earlier run of this same sweep finished in `out` (empty for a new folder).
    A folder holding anything else is refused, and so is a file or a dangling link there; an interrupted trial's
    folder is renamed, never deleted."""
    if errors.not_a_folder(out):
        raise ConfigError(f"--out {out}: is a file or a dangling link, not a sweep folder; pass another --out")
    if not out.exists() or not any(out.iterdir()):
        return {}
    recorded = out / "sweep.json"
    if not recorded.is_file():
        raise ConfigError(f"sweep folder {out} already holds files that are not a sweep; pass another --out")
    old = json.loads(recorded.read_text())
    differ = [k for k in spec if old.get(k) != spec[k]]
    if differ:
        raise ConfigError(f"sweep folder {out} holds another sweep ({', '.join(differ)} differ); pass another --out, "
                          f"or the same flags to resume it")
    done = {}
    for trial in trials:
        outcome = trial.out / "trial.json"
        if outcome.is_file():
            done[trial.name] = json.loads(outcome.read_text())
        elif trial.out.exists():
            aside = trial.out.with_name(f"{trial.out.name}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}")
            trial.out.rename(aside)
            print(f"trial {trial.name}: interrupted earlier; its folder is kept as {aside.name}, the trial runs again")
    return done


class _Table:
    """results.csv / results.md, rewritten (atomically) each time a trial finishes."""

    def __init__(self, out: Path, trials: list[Trial], grid_keys: list[str], dataset: str, done: dict[str, dict]):
        self.out, self.trials, self.grid_keys, self.dataset = out, trials, grid_keys, dataset
        self.outcomes = dict(done)
        self.frame = pd.DataFrame()
        if done:
            self._write()

    def add(self, outcome: dict):
        self.outcomes[outcome["trial"]] = outcome
        self._write()

    def catch_up(self):
        """Add the trials whose trial.json is on disk but not yet in the table (finished as the sweep was stopped)."""
        missed = {}
        for trial in self.trials:
            if trial.name not in self.outcomes and (trial.out / "trial.json").is_file():
                missed[trial.name] = json.loads((trial.out / "trial.json").read_text())
        if missed:
            self.outcomes.update(missed)
            self._write()

    def _write(self):
        finished = [self.outcomes[t.name] for t in self.trials if t.name in self.outcomes]
        eval_split = _eval_split(self.trials)
        self.frame = rank(finished, self.grid_keys, eval_split)
        headline = metrics.headline(self.dataset)
        count = f"{len(finished)} trials" if len(finished) == len(self.trials) else \
            f"{len(finished)} of {len(self.trials)} trials (the others not finished)"
        _write_atomic(self.out / "results.csv", self.frame.to_csv(index=False))
        _write_atomic(self.out / "results.md", to_markdown(
            self.frame, f"{self.dataset}: {count} ranked by {eval_split} {headline} (best epoch)"))


def _write_atomic(path: Path, text: str):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _eval_split(trials: list[Trial]) -> str:
    """The split the trials were evaluated on, from the first run folder that got as far as config.json."""
    for trial in trials:
        config = trial.out / "config.json"
        if config.is_file():
            return json.loads(config.read_text())["eval_split"]
    return "eval"


# ----------------------------------------------------------------------------------------------- benchmark


def bench_per_trial(cache: str | Path, out: str | Path, n_trials: int = 2, **fixed) -> dict:
    """Wall seconds per trial of `n_trials` identical-workload trials (seeds 1..n) run as one sweep versus as
    separate `train/fit.py` processes, with the same TrainConfig overrides `fixed` (e.g. epochs=1, hidden=64).
    The sweep's time includes opening and preloading the cache; each fit.py run pays its own start-up. The sweep's
    overhead is its wall time per trial less the trials' own mean time (`run_trial`: build the Trainer, fit, write
    trial.json), as a fraction of the latter: what the sweep adds around its trials (checking every trial's config,
    opening and preloading the cache, ranking and rewriting results.csv / .md after each trial)."""
    out = Path(out)
    seeds = list(range(1, n_trials + 1))
    start = time.time()
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        result = run_sweep(SweepConfig(cache=str(cache), grid={"seed": seeds}, fixed={"progress": False, **fixed},
                                       out=str(out / "sweep")))
    sweep_s = (time.time() - start) / n_trials
    if result.failed:
        raise RuntimeError(f"bench_per_trial: {result.failed} sweep trials failed; see {result.out}/results.md")
    trial_s = float(result.table["seconds"].mean())
    fit = Path(__file__).resolve().parents[1] / "train" / "fit.py"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in fixed.items() if not isinstance(v, bool)]
    flags += [f"--{'' if v else 'no-'}{k.replace('_', '-')}" for k, v in fixed.items() if isinstance(v, bool)]
    start = time.time()
    for seed in seeds:
        subprocess.run([sys.executable, str(fit), "--cache", str(cache), "--seed", str(seed), "--no-progress",
                        "--out", str(out / f"fit-seed{seed}"), *flags], check=True, capture_output=True)
    fit_s = (time.time() - start) / n_trials
    return {"trials": n_trials, "sweep_s_per_trial": round(sweep_s, 2), "fit_s_per_trial": round(fit_s, 2),
            "trial_s": round(trial_s, 2), "overhead": (sweep_s - trial_s) / trial_s,
            "saved_s_per_trial": round(fit_s - sweep_s, 2), "speedup": round(fit_s / sweep_s, 2)}
