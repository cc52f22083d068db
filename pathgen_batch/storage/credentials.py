"""Which credentials reach which S3 location: named profiles per location prefix.

By default every S3 request uses boto3's standard credential chain (environment, shared
credentials and config files, ``AWS_PROFILE``, instance roles). A job that reads a slide
archive with one identity and writes its output with another names a profile of the shared
files for each location (:func:`use_profiles`); every client for a URI under that location is
then made from that profile, the longest matching prefix winning.

Only profile *names* are held here, in the environment variable :data:`PROFILES_ENV` (JSON
``{"s3://bucket/prefix": "profile"}``), so that child processes (Ray workers) inherit them
and :data:`WORKER_ENV` lists what a cluster's workers need forwarded; keys and secrets stay in
the shared files and are never read into a log, a table or a message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from pathgen_batch.errors import ConfigError
from pathgen_batch.storage.locations import is_s3, normalise

PROFILES_ENV = "PATHGEN_S3_PROFILES"
# what a remote worker needs to make the same clients as the driver: no secret among them
WORKER_ENV: tuple[str, ...] = (
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    PROFILES_ENV,
)


def _covers(prefix: str, uri: str) -> bool:
    return uri == prefix or uri.startswith(prefix.rstrip("/") + "/")


def profiles() -> dict[str, str]:
    """The location prefix -> profile name mapping in force (empty: the standard chain)."""
    text = os.environ.get(PROFILES_ENV)
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{PROFILES_ENV}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigError(f'{PROFILES_ENV}: expected {{"s3://bucket/prefix": "profile"}}')
    return data


def profile_for(uri: str) -> str | None:
    """The profile whose location holds ``uri`` (the longest prefix), else None."""
    hits = [p for p in profiles() if _covers(p, uri)]
    return profiles()[max(hits, key=len)] if hits else None


def check_profile(name: str, what: str) -> None:
    """ConfigError naming ``what`` when no shared credentials/config file defines ``name``."""
    import boto3

    if name not in boto3.session.Session().available_profiles:
        raise ConfigError(
            f"{what}: no profile {name!r} in the shared credentials or config file "
            "(AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE)"
        )


def use_profiles(by_location: Mapping[str, str | None], what: Mapping[str, str]) -> None:
    """Use profile ``by_location[uri]`` for every S3 request under ``uri`` in this process
    and the processes it starts (None or a local location: left to the standard chain).
    ``what[uri]`` names the option in errors (``--archive-profile``)."""
    chosen = profiles()
    for uri, name in by_location.items():
        if name is None:
            continue
        if not is_s3(uri):
            raise ConfigError(f"{what[uri]}: {uri} is not an s3:// location")
        check_profile(name, what[uri])
        chosen[normalise(uri)] = name
    if chosen:
        os.environ[PROFILES_ENV] = json.dumps(chosen, sort_keys=True)
