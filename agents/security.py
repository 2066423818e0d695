"""CurveZMQ on the agent's sockets: its run keys, and a ZAP handler that admits only the run's peers.

The controller makes a key pair per run for itself and for every agent, and ships each agent
its own file over SSH (or, for a local agent, writes it readable by this user only):

    {"public": z85, "secret": z85, "controller": z85 (the controller's public key),
     "peers": [z85, ...] (every public key of the run: who may connect to this agent)}

With it, the agent's control socket is a CURVE client of the controller (whose key it
checks), its data socket a CURVE server that admits only the run's keys (ZAP, through
pyzmq's ``ThreadAuthenticator``), and its offloads CURVE clients of the next tier's key
(``Configure.next_key``). Runs on the device: pyzmq, standard library.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

#: what every key file holds
KEY_FIELDS = ("public", "secret", "controller", "peers")


class KeysError(Exception):
    """The key file is missing, readable by others, or malformed."""


def load_keys(path: str) -> dict[str, Any]:
    """The run keys in ``path``; refused when others may read it or a field is missing."""
    try:
        mode = os.stat(path).st_mode
        with open(path) as f:
            keys = json.load(f)
    except (OSError, ValueError) as e:
        raise KeysError(f"cannot read the run keys {path}: {e}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeysError(f"the run keys {path} are readable by others (mode {oct(mode & 0o777)}); they must be 0600")
    if not isinstance(keys, dict) or any(k not in keys for k in KEY_FIELDS):
        raise KeysError(f"the run keys {path} lack {[k for k in KEY_FIELDS if k not in keys]}")
    if not all(isinstance(keys[k], str) and len(keys[k]) == 40 for k in ("public", "secret", "controller")):
        raise KeysError(f"the run keys {path} are not 40-character z85 keys")
    return keys


class _Peers:
    """ZAP credentials provider: a CURVE client is admitted when its public key is one of the run's."""

    def __init__(self, peers: list[str]):
        self.allowed = {p.encode() for p in peers}

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.allowed


def start_zap(ctx: zmq.Context, peers: list[str]) -> ThreadAuthenticator:
    """A ZAP handler on ``ctx`` admitting the CURVE clients whose public key is in ``peers``."""
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_Peers(peers))
    return auth


def curve_server(sock: zmq.Socket, keys: dict[str, Any]) -> None:
    """Make ``sock`` a CURVE server with this side's key pair (set before bind)."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys["secret"].encode())
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys["public"].encode())


def curve_client(sock: zmq.Socket, keys: dict[str, Any], server_public: str) -> None:
    """Make ``sock`` a CURVE client that talks only to the holder of ``server_public`` (set before connect)."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public.encode())
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys["secret"].encode())
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys["public"].encode())
