"""Shared test setup: the benchmarks' annotation files live in ../shared/data beside the checkout."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

if "R2_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["R2_DATA"] = str(SHARED_DATA)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("R2_DATA", SHARED_DATA))
    if not root.is_dir():
        pytest.fail(f"annotation root {root} not found: set R2_DATA to the folder holding the six benchmarks")
    return root


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
