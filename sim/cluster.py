"""Connecting to a Dask distributed scheduler, for sweeps and sharded network runs.

:func:`connect` fails at once, with one message naming the address, when nothing listens
there (Dask's own client retries a refused connection until its time-out) or when the
``distributed`` package is missing.
"""

from __future__ import annotations

import socket

__all__ = ["ClusterError", "connect", "probe"]


class ClusterError(ValueError):
    """The scheduler cannot be used (names the address and the reason)."""


def probe(address: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`ClusterError` when nothing listens at a ``tcp://host:port`` address;
    other address forms go to Dask as they are."""
    from urllib.parse import urlsplit

    if "://" not in address:
        address = "tcp://" + address
    url = urlsplit(address)
    try:
        port = url.port
    except ValueError:                      # not a number: Dask reports it
        return
    if url.scheme != "tcp" or not url.hostname or port is None:
        return
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def connect(address: str, timeout_s: float = 30.0):
    """A ``distributed.Client`` of the scheduler at *address*."""
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError("the Dask distributed package is not installed "
                           "(pip install 'dask[distributed]')") from None
    probe(address)
    try:
        return Client(address, timeout=timeout_s)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
