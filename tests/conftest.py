"""Shared test setup: the benchmarks' annotation files (../shared/data beside the checkout, or $R2_DATA), and the
fixtures several test modules use: the tiny CLIP, a random-weight ViT-B/32 file, one demo extraction per session
and a checkpoint trained on it."""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

if "R2_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["R2_DATA"] = str(SHARED_DATA)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The benchmarks' annotation root; the tests that need it skip (in CI: fail) when there is none."""
    root = Path(os.environ.get("R2_DATA", SHARED_DATA))
    if not root.is_dir():
        pytest.skip(f"needs the benchmarks' annotation files: set R2_DATA to the folder holding qvhighlights/, "
                    f"charades_sta/, ... (python -m r2.datasets download all --root DIR fetches them); {root} "
                    f"not found")
    return root


@pytest.fixture(scope="module")
def one_thread():
    """These tensors are small: one intra-op thread is faster, and on a loaded machine far faster (no threads
    spinning while they wait for a core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny():
    """The tiny offline CLIP, loaded once per session."""
    from r2 import clip

    return clip.load_clip("tiny")


@pytest.fixture(scope="session")
def vit_b32_file(tmp_path_factory) -> Path:
    """A full-size ViT-B/32 in OpenAI's TorchScript format with random weights (the real weights cannot be downloaded
    here): written once per session (~8 s), read (never written) by the tests of the real architecture."""
    from r2 import clip

    return clip.write_vit_b32_checkpoint(tmp_path_factory.mktemp("vit-b32") / "ViT-B-32.pt")


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory, tiny) -> Path:
    """The demo cache of 8 generated videos with the tiny CLIP: extracted once per session, read (never written)
    by the modules that use it."""
    from r2 import clip
    from r2.extract import ExtractConfig, extract

    out = tmp_path_factory.mktemp("demo") / "demo.h5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clip, "load_clip", lambda spec, device="cpu": tiny)  # the same tiny CLIP, loaded once
        summary = extract(ExtractConfig(dataset="demo", out=out, clip="tiny", demo_videos=8, progress=False))
    assert summary.failed == 0
    return out


@pytest.fixture(scope="module")
def demo(demo_cache, tmp_path_factory):
    """`demo_cache`, a checkpoint trained on it for one epoch, and the demo's video folder and val annotations;
    `root` is this module's own folder (its feature cache and outputs are not shared with other modules)."""
    from r2.cache import Cache
    from r2.train import Trainer, TrainConfig

    root = tmp_path_factory.mktemp("demo-run")
    Trainer(TrainConfig(cache=str(demo_cache), epochs=1, batch_size=4, hidden=64, workers=0, progress=False,
                        out=str(root / "run"))).fit()
    return {"root": root, "cache": Cache(demo_cache), "checkpoint": root / "run" / "best.pt",
            "videos": demo_cache.parent / "demo" / "videos", "val": demo_cache.parent / "demo" / "val.jsonl"}


@pytest.fixture(scope="module")
def predictor(demo, tiny):
    """An `r2.Predictor` on `demo`'s checkpoint with the tiny CLIP and the module's own feature cache."""
    from r2.predict import Predictor

    return Predictor(demo["checkpoint"], clip=tiny, device="cpu", feature_cache=demo["root"] / "features")


# In CI (CI=true) every test must run: a skip there (a missing browser, extra or data folder) is a failure.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


def _fail_skip_in_ci(report):
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"
