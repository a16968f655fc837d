"""The local Ray that a study starts: the state-API address its workers use."""

from __future__ import annotations

import os

import ray


@ray.remote
def _state_api_from_worker() -> tuple[str | None, int]:
    from ray.util.state import list_nodes

    return os.environ.get("RAY_API_SERVER_ADDRESS"), len(list_nodes(timeout=20))


def test_workers_query_own_dashboard(local_ray: None) -> None:
    address, nodes = ray.get(_state_api_from_worker.remote())

    assert address == f"http://{ray.worker.get_dashboard_url()}"
    assert nodes == 1


def test_driver_environment_unchanged(local_ray: None) -> None:
    # A `ray job submit` started from the driver must keep its own --address.
    assert "RAY_API_SERVER_ADDRESS" not in os.environ
