"""r2's command lines: one error wrapper, flags and help built from the configs' field metadata, console scripts."""
import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from r2 import cli
from r2.errors import ConfigError, command
from r2.train import TrainConfig
from tests.helpers import REPO


def test_command_prints_an_r2_error_on_one_line_and_keeps_bugs(capsys):
    @command
    def refuses(args):
        raise ConfigError("--lr -1: must be a number > 0")

    @command
    def warns(args):
        warnings.warn("the LR never drops")

    @command
    def buggy(args):
        raise KeyError("a bug")

    shown = warnings.showwarning
    assert refuses(None) == 2
    assert capsys.readouterr().err == "error: --lr -1: must be a number > 0\n"
    assert warns(None) == 0
    assert capsys.readouterr().err == "warning: the LR never drops\n"
    with pytest.raises(KeyError):  # not an R2Error: a bug, with its traceback
        buggy(None)
    assert warnings.showwarning is shown  # the wrapper puts the caller's printer back


def parsers() -> dict[str, argparse.ArgumentParser]:
    from r2 import app, convert, download, report
    from r2.predict import cli as predict
    from r2.metrics import __main__ as metrics_cli

    return {"extract": cli.extract_parser(), "merge": cli.merge_parser(), "import": cli.import_parser(),
            "fit": cli.fit_parser(), "evaluate": cli.evaluate_parser(), "sweep": cli.sweep_parser(),
            "predict": predict.get_args_parser(), "report": report.get_args_parser(),
            "metrics": metrics_cli.get_args_parser(), "convert": convert.get_args_parser(),
            "download": download.get_args_parser(), "app": app.get_args_parser()}


def test_every_flag_of_every_command_says_what_it_does():
    bare = [f"{name} {action.option_strings[0]}" for name, parser in parsers().items() for action in parser._actions
            if action.option_strings and action.dest != "help" and len(action.help or "") < 10]
    assert not bare


def test_train_flags_say_their_real_default_or_the_recipe_value():
    """Every optional TrainConfig flag states its default; a None default names the recipe's values per dataset."""
    helps = {a.dest: a.help for a in cli.fit_parser()._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name != "cache":
            assert "(default: " in helps[f.name], f.name
    assert helps["lr"].endswith("(default: the recipe's lr: 5e-4 qvhighlights, youtube, tvsum; 2.5e-4 charades, "
                                "tacos, ego4d; 1e-3 demo, custom)")
    assert helps["grad_clip"].endswith("(default: 35.0)") and helps["preload"].endswith("(default: none)")


def test_the_same_flag_means_the_same_in_fit_and_sweep():
    fit = {a.option_strings[0]: a.help for a in cli.fit_parser()._actions if a.option_strings}
    sweep = {a.option_strings[0]: a.help for a in cli.sweep_parser()._actions if a.option_strings}
    shared = set(fit) & set(sweep) - {"-h", "--cache", "--out", "--preload"}  # the sweep's own cache, folder, preload
    assert len(shared) > 25 and all(fit[k] == sweep[k] for k in shared)


def test_a_field_without_help_text_is_refused():
    @dataclasses.dataclass
    class Bare:
        size: int = 1

    with pytest.raises(TypeError, match="'size' has no metadata help text"):
        cli.add_fields(argparse.ArgumentParser(), Bare)


def test_shard_flag_errors_are_config_errors():
    assert cli.shard("1/4") == (1, 4)
    with pytest.raises(ConfigError, match="need 0 <= I < N"):
        cli.shard("4/4")


@pytest.mark.slow  # new Python processes importing r2 (~8 s)
def test_r2_imports_from_any_folder_and_console_scripts_run(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import r2; r2.Predictor; print(r2.__version__)"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == __import__("r2").__version__
    script = shutil.which("r2-fit")
    if script is None:
        pytest.skip("r2-fit is not on PATH: install r2 with `pip install -r requirements.txt` (or `pip install -e .`)")
    shown = subprocess.run([script, "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert shown.returncode == 0 and "--cache FILE" in shown.stdout and "(default: the recipe's lr" in shown.stdout


def test_no_entry_point_edits_sys_path():
    for path in [*REPO.glob("extract/*.py"), *REPO.glob("train/*.py"), *Path(REPO / "r2").rglob("*.py")]:
        assert "sys.path.insert" not in path.read_text(encoding="utf-8"), path
