"""Fixtures of the stage-one tests: a hand-built store, and a store already indexed and mined."""
from pathlib import Path

import numpy as np
import pytest

from tests.stage_one.index_mine_cli import index_and_mine_faces_with_a_duplicate
from tests.stage_one.stores import write_store


@pytest.fixture
def random_store(tmp_path: Path) -> Path:
    """300 random rows of 20 identities, with different flip views and four skipped rows (3, 64, 65, 299)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 20, 300)
    skipped = np.zeros(300, bool)
    skipped[[3, 64, 65, 299]] = True
    return write_store(tmp_path / "store.h5", rng.normal(size=(300, 16)), labels,
                       flip_view=rng.normal(size=(300, 16)), skipped=skipped)


@pytest.fixture(scope="session")
def mined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The params.yaml of a store of faces with a duplicate, after `facekd index` and `facekd mine`."""
    return index_and_mine_faces_with_a_duplicate(tmp_path_factory.mktemp("mined"))
