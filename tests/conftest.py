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
