"""TrainConfig validation: every field is checked when the config is built, before any cache is opened; a bad value
is one ConfigError line naming the flag and the values it allows."""
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r2.errors import R2Error
from r2.train import ConfigError, TrainConfig, pick_device, saved_config

REPO = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


BAD = [
    ("nms", "foo", "hard, soft, none"),
    ("passes", 0, ">= 1"),
    ("batch_size", -4, ">= 1"),
    ("batch_size", 0, ">= 1"),
    ("precision", "foo", "auto, fp32, bf16, fp16"),
    ("device", "foo", "auto, cpu, cuda or cuda:N"),
    ("device", "cuda:x", "auto, cpu, cuda or cuda:N"),
    ("epochs", 0, ">= 1"),
    ("epochs", -3, ">= 1"),
    ("lr", -1e-4, "> 0"),
    ("lr", 0.0, "> 0"),
    ("lr", math.nan, "> 0"),
    ("lr", math.inf, "> 0"),
    ("lr_drop", 0, ">= 1, or none for no LR drop"),
    ("lr_drop", -1, ">= 1, or none for no LR drop (since r2 0.3, -1 no longer means off)"),  # r2 0.2's "never"
    ("lr_drop", "never", ">= 1, or none for no LR drop"),
    ("warmup_iters", -1, ">= 0"),
    ("warmup_ratio", 1.5, "0 and 1"),
    ("warmup_ratio", -0.1, "0 and 1"),
    ("weight_decay", -1e-4, ">= 0"),
    ("grad_clip", 0.0, "> 0"),
    ("dropout", 1.0, "[0, 1)"),
    ("dropout", -0.1, "[0, 1)"),
    ("droppath", 1.2, "[0, 1)"),
    ("hidden", 0, "multiple of 8"),
    ("hidden", 60, "multiple of 8"),
    ("cls_weight", -1.0, ">= 0"),
    ("reg_weight", math.nan, ">= 0"),
    ("sal_weight", -0.5, ">= 0"),
    ("video_nce_weight", -1.0, ">= 0"),
    ("layer_nce_weight", math.inf, ">= 0"),
    ("nms_iou", 0.0, "(0, 1]"),
    ("nms_iou", 1.5, "(0, 1]"),
    ("unit", -2.0, "> 0, or none for no rounding"),
    ("unit", 0.0, "> 0, or none for no rounding (since r2 0.3, 0.0 no longer means off)"),  # r2 0.2's "no rounding"
    ("unit", "off", "> 0, or none for no rounding"),
    ("seed", -1, "0 .. 2**32 - 1"),
    ("seed", 2 ** 32, "0 .. 2**32 - 1"),
    ("workers", -1, ">= 0"),
    ("out", "", "a folder path"),
    ("resume", "", "a run folder"),
    ("domain", "", "a domain name"),
    ("train_split", "", "a split name"),
    ("eval_split", "", "a split name"),
]


@pytest.mark.parametrize("name,value,allowed", BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_bad_value_is_one_line_naming_the_flag_and_allowed_values(name, value, allowed):
    values = {"cache": "cache/demo.h5", name: value}
    with pytest.raises(ConfigError) as e:
        TrainConfig(**values)
    message = str(e.value)
    assert message.startswith(flag(name) + " ") and allowed in message and "\n" not in message
    assert isinstance(e.value, R2Error)


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_checks_its_type(name):
    """A value of the wrong type is refused for every field (a field added later is covered here too)."""
    values = {"cache": "cache/demo.h5", name: [1]}
    with pytest.raises(ConfigError, match=f"^{flag(name)} "):
        TrainConfig(**values)


def test_bools_are_not_numbers_and_ints_are_numbers():
    with pytest.raises(ConfigError, match="^--epochs True: must be an integer"):
        TrainConfig(cache="c.h5", epochs=True)
    with pytest.raises(ConfigError, match="^--progress 1: must be true or false"):
        TrainConfig(cache="c.h5", progress=1)
    with pytest.raises(ConfigError, match="^--preload gpu: must be one of none, cpu, cuda, auto"):
        TrainConfig(cache="c.h5", preload="gpu")
    cfg = TrainConfig(cache="c.h5", lr=1, dropout=0)  # an int where a float is asked is that float
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.dropout == 0.0


def test_valid_values_pass_unchanged():
    values = dict(cache="c.h5", out="runs/x", domain="BK", batch_size=4, epochs=3, lr=1e-4, lr_drop="none",
                  warmup_iters=0, passes=2, warmup_ratio=0.0, weight_decay=0.0, grad_clip=1.0, dropout=0.0,
                  droppath=0.5, hidden=64, cls_weight=0.0, reg_weight=1.0, sal_weight=2.0, video_nce_weight=0.1,
                  layer_nce_weight=0.1, nms="none", nms_iou=1.0, unit="none", train_split="train",
                  eval_split="val", seed=0, device="cuda:1", precision="bf16", workers=0, preload="cuda",
                  progress=False, resume="runs/y")
    cfg = TrainConfig(**values)
    assert {k: getattr(cfg, k) for k in values} == values
    assert TrainConfig(cache="c.h5", lr_drop=None).lr_drop is None  # None: the recipe's (resolve fills it in)


def test_an_official_checkpoints_config_still_loads():
    """An official nncore checkpoint records no cache (""): predict and evaluate rebuild its config."""
    assert saved_config({"config": {"cache": "", "domain": "BK"}}).domain == "BK"


def test_a_config_saved_with_the_old_preload_flag_still_loads():
    """r2 0.2 saved preload as true/false: true (the split read into RAM) is cpu now, false is none."""
    assert saved_config({"config": {"cache": "c.h5", "preload": True}}).preload == "cpu"
    assert saved_config({"config": {"cache": "c.h5", "preload": False}}).preload == "none"


def test_off_is_none_for_every_setting_and_old_spellings_still_load():
    """--lr-drop none, --unit none, --nms none, --preload none: one word for "off" on the command line and in the
    config; a config saved by r2 <= 0.2 (lr_drop -1, unit 0) reads as none."""
    from r2.cli import fit_parser

    args = fit_parser().parse_args(["--cache", "c.h5", "--lr-drop", "none", "--unit", "none", "--nms", "none",
                                    "--preload", "none"])
    assert (args.lr_drop, args.unit, args.nms, args.preload) == ("none",) * 4
    args = fit_parser().parse_args(["--cache", "c.h5", "--lr-drop", "20", "--unit", "0.5"])
    assert (args.lr_drop, args.unit) == (20, 0.5)
    old = saved_config({"config": {"cache": "c.h5", "lr_drop": -1, "unit": 0.0}})
    assert (old.lr_drop, old.unit) == ("none", "none")
    kept = saved_config({"config": {"cache": "c.h5", "lr_drop": 20, "unit": 2.0}})
    assert (kept.lr_drop, kept.unit) == (20, 2.0)


def test_off_turns_the_lr_drop_and_the_rounding_off():
    from r2.train import lr_factor
    from r2.train_config import decode_config

    never = TrainConfig(cache="c.h5", lr_drop="none", warmup_iters=0)
    assert lr_factor(10_000, 500, never) == 1.0
    drop = dataclasses.replace(never, lr_drop=20)
    assert lr_factor(100, 19, drop) == 1.0 and lr_factor(100, 20, drop) == pytest.approx(0.1)
    off = decode_config("qvhighlights", TrainConfig(cache="c.h5", unit="none", nms="none"))
    assert (off.unit, off.nms) == (None, None)
    assert decode_config("qvhighlights", TrainConfig(cache="c.h5")).unit == 2.0  # the recipe's


def test_a_number_flag_that_can_be_off_names_both_in_its_error(capsys):
    from r2.cli import fit_parser

    with pytest.raises(SystemExit):
        fit_parser().parse_args(["--cache", "c.h5", "--lr-drop", "never"])
    assert "--lr-drop: invalid int or none value: 'never'" in capsys.readouterr().err


def test_fit_refuses_a_bad_flag_before_opening_the_cache(tmp_path):
    """--nms foo used to fail after a full epoch; now before the (here missing) cache is even opened."""
    done = subprocess.run([sys.executable, str(REPO / "train" / "fit.py"), "--cache", str(tmp_path / "none.h5"),
                           "--nms", "foo"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == "error: --nms foo: must be one of hard, soft, none\n"


def test_a_device_this_machine_lacks_is_refused():
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="^--device cuda: .*no CUDA"):
            pick_device("cuda")
    count = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=f"^--device cuda:{count}: "):
        pick_device(f"cuda:{count}")
    assert pick_device("cpu") == torch.device("cpu")


def test_a_resumed_run_may_switch_compile_but_not_the_lr():
    from r2.train import resumed_config

    saved = TrainConfig(cache="c.h5", epochs=3, lr=1e-3, out="runs/x")
    ckpt = {"config": dataclasses.asdict(saved), "epoch": 1}
    resumed = resumed_config(TrainConfig(cache="c.h5", resume="runs/x", compile=True), ckpt)
    assert resumed.compile and resumed.lr == 1e-3 and resumed.epochs == 3
    with pytest.raises(ConfigError, match="^--lr 0.002: --resume runs/x continues the run with its own settings"):
        resumed_config(TrainConfig(cache="c.h5", resume="runs/x", lr=2e-3), ckpt)
