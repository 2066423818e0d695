"""Runs on the device: sha256 of each relative path given on stdin as JSON (null when absent). argv: workdir."""

from __future__ import annotations

import hashlib
import json
import os
import sys

from testbed.devices.helpers.prelude import say


def sha256_or_none(path: str) -> str | None:
    """Hex sha256 of a file, read in 1 MiB blocks; None when it cannot be read."""
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return None


say(json.dumps({rel: sha256_or_none(os.path.join(sys.argv[1], rel)) for rel in json.load(sys.stdin)}))
