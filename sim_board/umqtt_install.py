"""Install micropython-lib's `umqtt.simple` into a board's flash, straight from PyPI.

pip cannot install `micropython-umqtt.simple` (its sdists have no setup.py), so this reads PyPI's
JSON API, downloads the pinned sdist it lists, checks the sha256 PyPI gives, caches the archive
(under $ENERGO_CACHE or ~/.cache/energo) and copies `umqtt/simple.py` into `<flash>/lib/umqtt/`.
The code stays micropython-lib's; none of it is kept in this repository.
"""
import hashlib
import io
import json
import os
import tarfile
import urllib.request

PACKAGE = "micropython-umqtt.simple"
VERSION = "1.3.4"
JSON_URL = f"https://pypi.org/pypi/{PACKAGE}/json"
_DOWNLOAD_BYTES_MAX = 1024 * 1024
_TIMEOUT_S = 30


class InstallError(ValueError):
    """The package could not be fetched or did not match what PyPI lists."""


def cache_dir():
    return os.environ.get("ENERGO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "energo")


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            data = response.read(_DOWNLOAD_BYTES_MAX + 1)
    except OSError as exc:
        raise InstallError(f"cannot fetch {url}: {exc}") from None
    if len(data) > _DOWNLOAD_BYTES_MAX:
        raise InstallError(f"{url} is larger than {_DOWNLOAD_BYTES_MAX} bytes")
    return data


def sdist_info(version=VERSION):
    """(url, sha256 hex, filename) of the sdist PyPI lists for `version`."""
    try:
        meta = json.loads(_get(JSON_URL))
        files = meta["releases"][version]
    except (ValueError, KeyError, TypeError):
        raise InstallError(f"PyPI lists no release {version} of {PACKAGE}") from None
    for entry in files:
        if entry.get("packagetype") == "sdist":
            return entry["url"], entry["digests"]["sha256"], entry["filename"]
    raise InstallError(f"PyPI lists no sdist for {PACKAGE} {version}")


def fetch_sdist(version=VERSION):
    """The verified sdist bytes, from the cache when its hash still matches."""
    url, sha256_hex, filename = sdist_info(version)
    if not filename.endswith(".tar.gz") or "/" in filename:
        raise InstallError(f"unexpected sdist name {filename!r}")
    path = os.path.join(cache_dir(), filename)
    if os.path.exists(path):
        with open(path, "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() == sha256_hex:
            return data
    data = _get(url)
    if hashlib.sha256(data).hexdigest() != sha256_hex:
        raise InstallError(f"sha256 of {filename} does not match PyPI's")
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return data


def extract_simple(sdist):
    """`umqtt/simple.py` from the sdist bytes."""
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith("/umqtt/simple.py"):
                return tar.extractfile(member).read()
    raise InstallError("the sdist has no umqtt/simple.py")


def install(flash_dir, version=VERSION):
    """Copy umqtt/simple.py into `<flash_dir>/lib/umqtt/`; returns the host path written."""
    source = extract_simple(fetch_sdist(version))
    target_dir = os.path.join(flash_dir, "lib", "umqtt")
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, "simple.py")
    with open(target, "wb") as f:
        f.write(source)
    return target
