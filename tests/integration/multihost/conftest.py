"""One scale-out cluster (tests/support/cluster.py) per module, torn down after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, build_cluster
from tests.support.netns import network


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with network() as net:
        yield build_cluster(net, tmp_path_factory.mktemp("cluster"))
