"""Touching untrusted slide files in a child process, so that a crash in a native decoder
(cuCIM kills its process on some TIFFs) costs one slide, not the run.

The parent calls :func:`run_isolated`; the child is ``python -m scripts.isolated COMMAND ARGS`` and
imports only what its command needs, so a probe starts in a fraction of a second. This module names
no other of the bundle's: a module that needs a child of its own passes ``module:function``.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["run_isolated"]

TIMEOUT = 3600  # seconds one child may spend on one slide
BUNDLE = Path(__file__).resolve().parents[1]  # on the child's path, so it can import this package


def run_isolated(command: str, *args: str) -> str | None:
    """Run a command in a child process.

    Args:
        command: ``probe`` (read a few regions with cuCIM; ``args`` ``PATH LEVEL``), or
            ``module:function``, which the child imports and calls with ``args`` (strings); it fails
            by raising or by ``sys.exit`` with one line.
        args: its arguments.

    Returns:
        ``None`` on success, else one line saying what went wrong (a crash names its signal).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BUNDLE), os.environ.get("PYTHONPATH")]))}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "scripts.isolated", command, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return f"{command} took over {TIMEOUT} s"
    if result.returncode == 0:
        return None
    if result.returncode < 0:
        return f"the reader crashed ({signal.Signals(-result.returncode).name})"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def _probe(path: str, level: int) -> None:
    """Read the corners and the centre at level 0 and at ``level`` with cuCIM."""
    import numpy as np

    # the probe reads on the CPU: keep cuCIM from importing CuPy, which on a GPU machine also loads
    # CUDA's solver library (about a second of the probe there; 0.2 s on a CPU machine)
    sys.modules["cupy"] = None
    from cucim import CuImage

    image = CuImage(path)
    for lvl in sorted({0, level}):
        width, height = image.resolutions["level_dimensions"][lvl]
        scale = image.resolutions["level_downsamples"][lvl]
        for y, x in ((0, 0), (height // 2, width // 2), (max(height - 64, 0), max(width - 64, 0))):
            np.asarray(
                image.read_region(location=(int(x * scale), int(y * scale)), size=(64, 64), level=lvl, device="cpu")
            )


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "probe":
        _probe(arguments[0], int(arguments[1]))
    else:
        module, _, function = command.partition(":")
        getattr(importlib.import_module(module), function)(*arguments)
