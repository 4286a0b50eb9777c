import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cluster import Cluster  # noqa: E402


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Three real nodes for the whole test run."""
    c = Cluster(3)
    try:
        yield c
    finally:
        c.stop()
