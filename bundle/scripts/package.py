"""Packing the bundle as the MONAI Model Zoo takes it: ``<name>_v<version>.zip`` holding the
bundle's configs, code, docs and license, with the weights declared in ``large_files.yml``
(path, download address, SHA-256) instead of stored in the zip.

    cd bundle && python -m scripts.package --url https://host/path/model.pt --out ../dist
"""

from __future__ import annotations

import argparse
import hashlib
import json
import zipfile
from pathlib import Path

import yaml

__all__ = ["large_files", "pack"]

BUNDLE = Path(__file__).resolve().parents[1]
INCLUDED = ("LICENSE", "configs", "docs", "scripts", "models/.gitkeep")
WEIGHTS = ("models/model.pt", "models/model.ts", "models/fold*/model.pt")  # the single model, its export, the ensemble


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def large_files(bundle: Path, url: str) -> dict:
    """The ``large_files.yml`` content for the weights present in ``bundle``.

    Args:
        bundle: the bundle folder.
        url: where the weights will be downloaded from; ``{name}`` is replaced by each file's path under
            ``models/`` with ``_`` for ``/`` (``model.pt``, ``fold0_model.pt``).

    Returns:
        ``{"large_files": [{"path", "url", "hash_val", "hash_type"}, ...]}``.
    """
    weights = [path.relative_to(bundle).as_posix() for pattern in WEIGHTS for path in sorted(bundle.glob(pattern))]
    return {
        "large_files": [
            {
                "path": weight,
                "url": url.format(name=weight.removeprefix("models/").replace("/", "_")),
                "hash_val": sha256(bundle / weight),
                "hash_type": "sha256",
            }
            for weight in weights
        ]
    }


def pack(bundle: Path, out: Path, url: str) -> Path:
    """Write ``<name>_v<version>.zip`` (name and version from ``configs/metadata.json``).

    Args:
        bundle: the bundle folder.
        out: folder for the zip.
        url: download address of the weights (see :func:`large_files`).

    Returns:
        The zip's path.
    """
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    name = metadata["name"].lower().replace(" ", "_")
    root = f"{name}_v{metadata['version']}"
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{root}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for entry in INCLUDED:
            for path in sorted([bundle / entry] if (bundle / entry).is_file() else (bundle / entry).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    archive.write(path, f"{root}/{path.relative_to(bundle)}")
        archive.writestr(f"{root}/large_files.yml", yaml.safe_dump(large_files(bundle, url), sort_keys=False))
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default="https://example.org/{name}", help="weights download address, {name} = file name"
    )
    parser.add_argument("--out", default=str(BUNDLE.parent / "dist"))
    arguments = parser.parse_args()
    print(pack(BUNDLE, Path(arguments.out), arguments.url))
