"""Python code of the glomerulus segmentation bundle: what MONAI lacks for HuBMAP whole slides.

The configs in ``../configs`` import this package as ``scripts`` (MONAI puts the bundle root on
``sys.path`` when a bundle runs). Modules, lowest first: ``errors``, ``files``, ``rle``,
``layout``, ``annotations``, ``pyramid``, ``slides``, ``tissue``, ``prepare``, ``sampling``,
``datasets``, ``transforms``, ``metrics``, ``handlers``, ``outputs``, ``wsi_inference``,
``demo``, ``workflow``.
"""

from pathlib import Path

BUNDLE_ROOT = str(Path(__file__).resolve().parent.parent)
"""The bundle folder (holding ``configs/``, ``models/``, ``docs/``): the default ``bundle_root``."""
