"""Joining a Ray cluster by address: what stands between this driver and the cluster, found out in
seconds and said in one line, before ``ray.init`` (which waits for minutes on an address where no
head answers, and reports a refused token only as "Failed to connect", the cause in its own log).

Checked in order: the address is ``HOST:PORT``; something accepts a TCP connection there (within
``JOIN_TIMEOUT_S``); a driver with ``RAY_AUTH_MODE=token`` has a token; the head's GCS answers a
cluster-id request with the token this driver would send (none unless ``RAY_AUTH_MODE=token``).
Ray's own names for the token: ``RAY_AUTH_TOKEN`` (the token itself), else the file
``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. ``auto`` and ``ray://`` (Ray Client) addresses
go to Ray unchecked. The token is sent only where Ray would send it: evolveopt never turns token
mode on for an address the user gave, so a token is not handed to a host unasked.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from evolveopt.errors import EvolveOptError

JOIN_TIMEOUT_S = 10.0  # how long a head may take to accept a connection and answer


class JoinError(EvolveOptError, RuntimeError):
    """A Ray cluster named by address cannot be joined from here (nothing answers, or it refuses us)."""


TOKEN_HELP = ("RAY_AUTH_TOKEN=<the cluster's token>, or RAY_AUTH_TOKEN_PATH=<a file holding it> "
              "(default ~/.ray/auth_token; a head's token is in its ~/.ray/auth_token)")


def check_join(address: str, source: str) -> None:
    """Raise :class:`JoinError` (one line: what, where, what to set) unless a Ray head at ``address``
    answers this driver; ``source`` says where the address came from (``--address``, ``RAY_ADDRESS``)."""
    if address == "auto" or "://" in address:
        return
    where = f"{address} ({source})"
    host, port = _host_port(address, where)
    _check_tcp(host, port, where)
    if _token_mode() and not _has_token(where):
        raise JoinError(f"cannot join the Ray cluster at {where}: RAY_AUTH_MODE=token but this machine has no "
                        f"token; set {TOKEN_HELP}")
    _check_gcs(f"{host}:{port}", where)


def token_source() -> str:
    """Where this driver's token comes from, in Ray's order of precedence."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return f"RAY_AUTH_TOKEN_PATH={path}" if path else str(Path.home() / ".ray" / "auth_token")


def _host_port(address: str, where: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise JoinError(f"Ray address {where}: expected HOST:PORT of a Ray head, e.g. 10.0.0.5:6379")
    return host, int(port)


def _check_tcp(host: str, port: int, where: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=JOIN_TIMEOUT_S):
            pass
    except socket.gaierror as exc:
        raise JoinError(f"cannot join the Ray cluster at {where}: unknown host {host!r} ({exc.strerror})") from None
    except (TimeoutError, socket.timeout):
        raise JoinError(f"cannot join the Ray cluster at {where}: no answer within {JOIN_TIMEOUT_S:g} s (a firewall, "
                        f"or no such machine?)") from None
    except OSError as exc:
        raise JoinError(f"cannot join the Ray cluster at {where}: {exc.strerror or exc}; is a head running there "
                        f"(`ray start --head --port={port}`) and is the port open to this machine?") from None


def _token_mode() -> bool:
    from ray._raylet import AuthenticationMode, get_authentication_mode

    return get_authentication_mode() == AuthenticationMode.TOKEN


def _has_token(where: str) -> bool:
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # the environment may have changed since it last looked
    try:
        return loader.has_token(ignore_auth_mode=True)
    except AuthenticationError:  # RAY_AUTH_TOKEN_PATH names a file that is missing or empty
        raise JoinError(f"cannot join the Ray cluster at {where}: RAY_AUTH_MODE=token but this machine has no "
                        f"token (RAY_AUTH_TOKEN_PATH={os.environ.get('RAY_AUTH_TOKEN_PATH')}: no such file, or "
                        f"empty); set {TOKEN_HELP}") from None


def _check_gcs(address: str, where: str) -> None:
    """Ask the head's GCS for the cluster id, as ``ray.init`` does first, with a deadline. Ray's C++
    client logs each failed try to stderr: those lines are kept out of the one-line error."""
    import ray._raylet
    from ray.exceptions import AuthenticationError

    try:
        with _stderr_aside():
            ray._raylet.InnerGcsClient.standalone(address, None, int(JOIN_TIMEOUT_S * 1000))
    except AuthenticationError:
        if _token_mode():
            raise JoinError(f"cannot join the Ray cluster at {where}: it refused this machine's token (from "
                            f"{token_source()}); set {TOKEN_HELP}") from None
        raise JoinError(f"cannot join the Ray cluster at {where}: it uses token authentication; set "
                        f"RAY_AUTH_MODE=token and {TOKEN_HELP}") from None
    except Exception as exc:  # Ray's RpcError and friends
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise JoinError(f"cannot join the Ray cluster at {where}: the port accepts connections but no Ray head "
                        f"answered ({first}); is it the head's GCS port (`ray start --head --port`, "
                        f"default 6379)?") from None


@contextmanager
def _stderr_aside() -> Iterator[None]:
    """File descriptor 2 goes to a scratch file for the block (C++ code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
