"""The Hugging Face hub, offline-first: is offline mode on, and can the hub be reached at all?"""
from __future__ import annotations

import os


def hf_offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0", "false", "False")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection to the hub, so that an offline machine fails in seconds rather than
    after the hub client's retries (about 25 s per file)."""
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants
        url = urlparse(constants.ENDPOINT)
    except ImportError:
        url = urlparse("https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False
