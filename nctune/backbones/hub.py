"""The network and the hubs: a one-second reachability probe, Hugging Face offline mode,
the ``NCTUNE_OFFLINE`` / ``NCTUNE_ONLINE`` switches and the "no weights here" error.

Sources look these up as ``hub.reachable(...)`` (module attribute), so a test can stand in
for the probe in one place.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

import huggingface_hub.constants as hfc
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

from nctune.errors import BackboneError

__all__ = ["PROBE_TIMEOUT_S", "env_true", "hf_offline", "no_weights", "reachable"]

# Seconds allowed for the "is the hub reachable?" probe before we call the machine offline.
PROBE_TIMEOUT_S = 1.0
#: what huggingface_hub raises for a file missing from the cache in offline mode
HF_CACHE_MISSES: tuple[type[BaseException], ...] = (LocalEntryNotFoundError, OfflineModeIsEnabled)


def env_true(name: str) -> bool:
    """Whether environment variable ``name`` is set to 1/true/yes/on."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the URL's host (or the HTTPS proxy) opens within ``timeout``.

    ``NCTUNE_OFFLINE`` answers False and ``NCTUNE_ONLINE`` True without probing. Runs in a
    daemon thread: a stuck DNS lookup can outlast any socket timeout, and we must answer
    in about a second either way.
    """
    if env_true("NCTUNE_OFFLINE"):
        return False
    if env_true("NCTUNE_ONLINE"):  # a slow network the probe would misjudge: trust the hub
        return True
    parsed = urlparse(url if "://" in url else f"https://{url}")
    proxy = next(
        (
            os.environ[k]
            for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
            if os.environ.get(k)
        ),
        None,
    )
    if proxy:
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="nctune-net-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
    """Temporarily put huggingface_hub in offline mode (cached files load, nothing retries)."""
    old = hfc.HF_HUB_OFFLINE
    hfc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hfc.HF_HUB_OFFLINE = old


def no_weights(spec: str, cache: str, host: str) -> BackboneError:
    """The one-line error for pretrained weights neither cached nor downloadable."""
    # NCTUNE_OFFLINE skips the probe: say so, not that a host nobody tried is unreachable
    why = (
        "downloads are off (NCTUNE_OFFLINE is set; unset it to download)"
        if env_true("NCTUNE_OFFLINE")
        else f"no network to download them ({host} unreachable)"
    )
    return BackboneError(
        f"backbone.name: no pretrained weights for {spec} on this machine: not in the local "
        f"cache ({cache}) and {why}; pass a local "
        "file with backbone.weights=PATH (--set backbone.weights=PATH) or set "
        "backbone.pretrained=false"
    )
