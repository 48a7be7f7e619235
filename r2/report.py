"""python -m r2.report RUN_DIR|SWEEP_DIR... [--out DIR] [--plot]

One row per run with the paper's columns for its dataset, next to the paper's published R²-Tuning numbers.
A run folder holds config.json ("dataset", optional "eval_split"), metrics.json (flat {key: value}, the best epoch's
eval metrics) and log.csv (one row per epoch). A sweep folder (train/sweep.py: sweep.json, results.csv) stands for
its trials, in the order of its ranked results.csv, each named <sweep>/<trial>; failed trials are listed, not
scored. Other paths (files, folders that are not runs, runs with no metrics.json yet) are skipped with a note, and a
run reached twice (a runs/<name>-latest link) is reported once. Writes report.md and report.csv to --out (default:
a report/ folder beside the runs, never the current folder); --plot also writes <run>_curves.png per run from its
log.csv: losses, the paper's metrics (headline thick, best epoch marked), LR. Exit code 0, or 2 with a one-line
error when no run can be reported.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd

from .errors import R2Error, command, not_a_folder
from .recipes import DATASETS, recipe

class ReportError(R2Error):
    """A run folder that cannot be reported; the message names the file and what is wrong."""


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ReportError(f"{path} not found: a run folder needs config.json and metrics.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: not readable JSON ({err}); re-run or remove that run") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _sweep_trials(sweep: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(label, trial folder) of a sweep's scored trials in its ranked order, and notes on the others."""
    table = sweep / "results.csv"
    if table.is_file():
        try:
            ranked = pd.read_csv(table, dtype={"trial": str})
        except (OSError, ValueError) as err:
            raise ReportError(f"{table}: not a readable results table ({err})") from None
        if "trial" not in ranked:
            raise ReportError(f"{table}: column 'trial' missing (a train/sweep.py results table has it)")
        rows = ranked.to_dict("records")
    else:  # an interrupted sweep: its trial folders in name order
        rows = [{"trial": p.name} for p in sorted(sweep.iterdir()) if (p / "config.json").is_file()]
    runs, notes = [], []
    for row in rows:
        label, folder = f"{sweep.name}/{row['trial']}", sweep / str(row["trial"])
        if str(row.get("status", "ok")) != "ok":
            notes.append(f"{label}: trial failed ({row.get('error')}), not scored")
        elif not (folder / "metrics.json").is_file():
            notes.append(f"{label}: no metrics.json (the trial did not finish an epoch), not scored")
        else:
            runs.append((label, folder))
    return runs, notes


def find_runs(paths: list[Path], skip: Path | None = None) -> tuple[list[tuple[str, Path]], list[str]]:
    """Command-line paths -> (label, run folder) in order, each folder once, and one note per path left out.
    A sweep folder stands for its trials; `skip` (the report's own folder) is left out silently."""
    runs, notes, seen = [], [], set()
    for path in paths:
        path = Path(path)
        if skip is not None and path.resolve() == skip.resolve():
            continue
        if (path / "sweep.json").is_file() or (path / "results.csv").is_file():
            found, more = _sweep_trials(path)
            notes += more
        elif (path / "config.json").is_file() and not (path / "metrics.json").is_file():
            found = []
            notes.append(f"{path}: no metrics.json (the run has not finished an epoch), not scored")
        elif (path / "config.json").is_file():
            found = [(path.name, path)]
        else:
            found = []
            notes.append(f"{path}: not a run folder (no config.json)")
        for label, folder in found:
            if folder.resolve() not in seen:
                seen.add(folder.resolve())
                runs.append((label, folder))
    return runs, notes


def default_out(paths: list[Path]) -> Path:
    """report/ beside the runs: in the deepest folder holding all of them."""
    parents = [str(Path(p).absolute().parent) for p in paths]
    return Path(os.path.commonpath(parents)) / "report"


def run_row(run_dir: Path, label: str | None = None) -> dict:
    """{"run", "dataset", "split", <paper columns>...} of one run folder (named `label`, default its name)."""
    config = _read_json(run_dir / "config.json")
    if "dataset" not in config:
        raise ReportError(f"{run_dir / 'config.json'}: field 'dataset' missing")
    dataset = config["dataset"]
    if not isinstance(dataset, str) or dataset.lower() not in DATASETS:
        raise ReportError(f"{run_dir / 'config.json'}: dataset {dataset!r} unknown; one of {', '.join(DATASETS)}")
    dataset = recipe(dataset).name
    metrics = _read_json(run_dir / "metrics.json")
    split = config.get("eval_split", recipe(dataset).info.eval_split)
    row = {"run": label or run_dir.name, "dataset": dataset, "split": split}
    for column, key, scale in recipe(dataset).columns:
        if key in metrics:
            row[column] = round(metrics[key] * scale, 2)
    return row


def read_rows(runs: list[tuple[str, Path]]) -> tuple[list[dict], list[str]]:
    """`run_row` of each (label, folder); a run that cannot be read is a note naming its file instead."""
    rows, notes = [], []
    for label, folder in runs:
        try:
            rows.append(run_row(folder, label))
        except ReportError as err:
            notes.append(f"{label}: left out: {err}")
    return rows, notes


def build_table(runs: list[Path] | list[tuple[str, Path]]) -> pd.DataFrame:
    """Runs (folders, or (label, folder) pairs) grouped by dataset, each dataset's paper row (when published) after
    its runs."""
    return table_of([run_row(Path(r)) if isinstance(r, (str, Path)) else run_row(Path(r[1]), r[0]) for r in runs])


def table_of(rows: list[dict]) -> pd.DataFrame:
    """Rows of `run_row` grouped by dataset, each dataset's paper row (when published) after its runs."""
    out = []
    for dataset, split in dict.fromkeys((r["dataset"], r["split"]) for r in rows):
        group = [r for r in rows if (r["dataset"], r["split"]) == (dataset, split)]
        out.extend(group)
        if split in recipe(dataset).paper:
            source, values = recipe(dataset).paper[split]
            # per-domain runs: only the domains reported (and the average); the others: every published column
            present = {c for r in group for c in r} if recipe(dataset).highlight_only else set(values)
            out.append({"run": f"R²-Tuning, {source}", "dataset": dataset, "split": split,
                        **{c: v for c, v in values.items() if c in present or c == "Avg."}})
    return pd.DataFrame(out)


def _markdown(table: pd.DataFrame) -> str:
    parts = []
    for (dataset, split), group in table.groupby(["dataset", "split"], sort=False):
        columns = ["run"] + [c for c, _, _ in recipe(dataset).columns if c in group and group[c].notna().any()]
        lines = [f"### {dataset} ({split})", "", "| " + " | ".join(columns) + " |",
                 "|" + "---|" * len(columns)]
        for _, r in group.iterrows():
            cells = [str(r["run"])] + ["-" if pd.isna(r[c]) else f"{r[c]:.2f}" for c in columns[1:]]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def curve_columns(log: pd.DataFrame, dataset: str, split: str, headline: str) -> dict[str, list[tuple]]:
    """Which log.csv columns each panel of the curves plot draws, as (column, label, scale):
    losses: every numeric column with "loss" in its name; metrics: the paper's columns for the dataset (the eval
    split's `<split>_<key>` column, or a bare `<key>`), the headline first; lr: the learning rate."""
    numeric = [c for c in log.columns if c != "epoch" and pd.api.types.is_numeric_dtype(log[c])]
    losses = [(c, c, 1) for c in numeric if "loss" in c.lower()]
    columns = recipe(dataset).columns
    paper = {key: (label, scale) for label, key, scale in columns}
    label, scale = paper.get(headline, (headline, 1))
    wanted = [(f"{label} (headline)", headline, scale)]
    wanted += [(label, key, scale) for label, key, scale in columns if key != headline]
    shown = []
    for label, key, scale in wanted:
        for column in (f"{split}_{key}", key):
            if column in numeric:
                shown.append((column, label, scale))
                break
    return {"losses": losses, "metrics": shown, "lr": [("lr", "lr", 1)] if "lr" in numeric else []}


def plot_run(run_dir: Path, out_dir: Path, name: str | None = None) -> Path:
    """<run>_curves.png from log.csv against the epoch: losses (left); the paper's metrics for the dataset on the
    eval split with the headline drawn thick and its best epoch marked (middle); the learning rate (right).
    `name`: the run's label (default the folder name; a sweep trial's <sweep>/<trial> becomes <sweep>__<trial>)."""
    name = name or run_dir.name
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    path = run_dir / "log.csv"
    if not path.is_file():
        raise ReportError(f"{path} not found: --plot needs the per-epoch log.csv of each run")
    log = pd.read_csv(path)
    if "epoch" not in log:
        raise ReportError(f"{path}: column 'epoch' missing")
    config = _read_json(run_dir / "config.json")
    dataset = config["dataset"]
    split = config.get("eval_split", recipe(dataset).info.eval_split)
    headline = config.get("headline", recipe(dataset).info.headline)
    panels = curve_columns(log, dataset, split, headline)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4), gridspec_kw={"width_ratios": [2, 2, 1]})
    for ax, (title, columns) in zip(axes, panels.items()):
        for i, (column, label, scale) in enumerate(columns):
            thick = (title == "metrics" and i == 0) or column.lower() in ("train_loss", "loss")
            ax.plot(log["epoch"], log[column] * scale, label=label, linewidth=2.5 if thick else 1, marker=".")
        if title == "metrics" and columns:
            column, label, scale = columns[0]
            best = log.loc[log[column].idxmax()]
            ax.axvline(best["epoch"], color="grey", linestyle=":")
            ax.annotate(f"best {best[column] * scale:.2f} @ {int(best['epoch'])}",
                        (best["epoch"], best[column] * scale), fontsize=8)
        if title == "lr" and columns:
            ax.set_yscale("log")
        ax.set_title(f"{name}: {title}" + (f" ({split})" if title == "metrics" else ""), fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if columns and title != "lr":
            ax.legend(fontsize=7)
    out = out_dir / curves_name(name)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m r2.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders and sweep folders (runs/* works)")
    p.add_argument("--out", type=Path, help="where report.md / report.csv (and PNGs) go (default: report/ beside "
                   "the runs)")
    p.add_argument("--plot", action="store_true", help="also write <run>_curves.png from each log.csv")
    return p


MANIFEST = ".r2-report.json"  # in the output folder: the files r2.report wrote there, which a new report may replace


def curves_name(label: str) -> str:
    return f"{label.replace('/', '__')}_curves.png"


def written_before(out: Path) -> set[str]:
    """The names of the files r2.report wrote into `out` before (its manifest); empty for a new folder."""
    return set(_read_json(out / MANIFEST).get("written", [])) if (out / MANIFEST).is_file() else set()


def check_out(out: Path, names: list[str]):
    """The output folder may take `names`: each is absent or was written there by r2.report (its manifest lists
    it); anything else of that name (the user's own report.md, ...) is never replaced."""
    if not_a_folder(out):
        raise ReportError(f"--out {out}: is a file or a dangling link, not a folder; pass the path of a folder")
    ours = written_before(out)
    clash = [name for name in names if ((out / name).exists() or (out / name).is_symlink()) and name not in ours]
    if clash:
        raise ReportError(f"--out {out}: {clash[0]} is there and was not written by r2.report; pass another --out, "
                          f"or move it away")


def main(args) -> pd.DataFrame:
    out = args.out or default_out(args.runs)
    runs, notes = find_runs(args.runs, skip=out)
    rows, unreadable = read_rows(runs)
    if not rows:
        for note in notes + unreadable:
            print(f"note: {note}", file=sys.stderr)
        raise ReportError(f"no run to report among {len(args.runs)} path(s): give run folders (with config.json "
                          f"and metrics.json) or sweep folders" + (f"; {unreadable[0]}" if unreadable else ""))
    table = table_of(rows)
    reported = {row["run"] for row in rows}
    plotted = [label for label, _ in runs if args.plot and label in reported]
    check_out(out, ["report.md", "report.csv", *map(curves_name, plotted)])
    out.mkdir(parents=True, exist_ok=True)
    text = _markdown(table)
    (out / "report.md").write_text(text)
    table.to_csv(out / "report.csv", index=False, float_format="%.2f")
    written = [out / "report.md", out / "report.csv"]
    for label, folder in runs:
        if label in plotted:
            try:
                written.append(plot_run(folder, out, label))
            except ReportError as err:
                notes.append(f"{label}: no curves: {err}")
    (out / MANIFEST).write_text(json.dumps({"written": sorted(written_before(out) | {p.name for p in written})}))
    for note in notes + unreadable:
        print(f"note: {note}", file=sys.stderr)
    print(text)
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return table


@command
def _cli() -> None:
    """The `r2-report` console script and `python -m r2.report`."""
    main(get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(_cli())
