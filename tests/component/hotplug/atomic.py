"""kubelet's AtomicWriter as the tests use it: a new ``..<ts>`` dir, then a ``..data`` swap.

Same steps as k8s.io/kubernetes/pkg/volume/util/atomic_writer.go: write the payload
into a fresh hidden timestamped directory, symlink ``..data_tmp`` to it, rename that
over ``..data``, make sure each user-visible name is a symlink to ``..data/<name>``,
then remove the old timestamped directory.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

_counter = itertools.count()


def atomic_write(directory: Path, payload: dict[str, bytes]) -> None:
    """Project ``payload`` into ``directory`` the way kubelet does."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    ts = directory / f"..2026_11_23_{os.getpid()}.{next(_counter)}"
    ts.mkdir()
    for name, content in payload.items():
        (ts / name).write_bytes(content)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(ts.name)
    os.rename(tmp, data)
    for name in payload:
        visible = directory / name
        if not visible.is_symlink():
            visible.symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(directory / old)
