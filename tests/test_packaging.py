"""The package as a newcomer installs it (pyproject.toml): the tree is clean under ruff, and a command
prints nothing of the codec libraries nvImageCodec (a cuCIM dependency) looks for at import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


def run(*command: str) -> subprocess.CompletedProcess:
    """``command`` run in the repository root with this interpreter, output captured."""
    return subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_tree_passes_ruff_lint_and_format():
    lint = run("-m", "ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout[-3000:] + lint.stderr[-1000:]
    formatted = run("-m", "ruff", "format", "--check", ".")
    assert formatted.returncode == 0, "run `ruff format .`: " + formatted.stdout[-3000:] + formatted.stderr[-1000:]


@pytest.mark.slow
def test_importing_monai_prints_nothing_of_nvimagecodec():
    """MONAI's import loads nvImageCodec, whose GPU codec extensions print "Failed to load" lines (three
    of them red [ERROR]s) unless the nvJPEG, nvJPEG2000 and nvTIFF libraries are installed, which the
    package's dependencies do: the libraries load without a GPU."""
    result = run("-c", "import monai, cucim; print('imported')")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "imported"
    noise = [
        line
        for line in result.stderr.splitlines()
        if "Failed to load" in line or "[ERROR]" in line or "nvjpeg" in line.lower() or "nvtiff" in line.lower()
    ]
    assert not noise, "\n".join(noise)
