"""Checkpoint files: which weights a ``ckpt_path`` names, checked before anything runs, and loaded.

A ``ckpt_path`` is one ``model.pt``, a list of them, or a folder: a fold ensemble's folder (its
``fold<k>/model.pt``, as ``run training_folds`` writes them) or one holding a ``model.pt``.
Several files make an ensemble: one network per member in a :class:`torch.nn.ModuleList`, which
:class:`scripts.inferers.WindowInferer` runs on each batch. Every file is checked against the
config's network first, so a missing, unreadable or foreign file is one line naming it.

MONAI's ``CheckpointLoader`` handler loads one file into one network when the engine starts,
after the run has begun; here the files are resolved and checked up front, several at once.
"""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import InputError, user_errors
from .files import atomic_path
from .folds import fold_members
from .handlers import MODEL_FILE, RECORD_FILE, read_record

__all__ = [
    "check_checkpoint",
    "checkpoint_files",
    "ensemble",
    "load_initial_weights",
    "read_weights",
    "recorded_setting",
    "save_half_precision",
]

TRAIN_FIRST = (
    "train first (python -m monai.bundle run training --config_file bundle/configs/train.yaml) or pass --ckpt_path"
)


def checkpoint_files(ckpt_path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The weight files a ``ckpt_path`` names.

    Args:
        ckpt_path: a file, a list of files, or a folder (its ``fold<k>/model.pt``, else its ``model.pt``).

    Returns:
        The files, in the order given (folds in fold order).
    """
    if isinstance(ckpt_path, (str, os.PathLike)):
        path = Path(ckpt_path)
        if path.is_dir():
            members = fold_members(path) or ([path / MODEL_FILE] if (path / MODEL_FILE).is_file() else [])
            if not members:
                raise InputError(
                    f"checkpoint folder {path} holds neither fold<k>/{MODEL_FILE} nor {MODEL_FILE}: {TRAIN_FIRST}"
                )
            return members
        paths = [path]
    else:
        paths = [Path(item) for item in ckpt_path]
        if not paths:
            raise InputError(f"ckpt_path is an empty list: {TRAIN_FIRST}")
    for path in paths:
        if not path.is_file():
            raise InputError(f"checkpoint {path} not found: {TRAIN_FIRST}")
    return paths


@user_errors
def recorded_setting(ckpt_path: str | os.PathLike | Sequence[str | os.PathLike], key: str) -> object:
    """What training recorded for ``key`` beside the model (``best.json``), so a run works as the model
    was trained without the user setting it; every member of an ensemble must agree.

    Args:
        ckpt_path: what inference loads (see :func:`checkpoint_files`).
        key: the setting, e.g. ``working_mpp``.

    Returns:
        The recorded value, or None where no member recorded one (a model without the record is taken
        as it is, as :func:`ensemble` takes it).
    """
    records = {path: read_record(path.parent) or {} for path in checkpoint_files(ckpt_path)}
    values = {str(path): record[key] for path, record in records.items() if key in record}
    if len(set(map(repr, values.values()))) > 1:
        listing = ", ".join(f"{path}: {value}" for path, value in values.items())
        raise InputError(
            f"the members of {ckpt_path} were trained with different {key} ({listing}); ensemble only "
            f"models trained with the same {key}"
        )
    return next(iter(values.values()), None)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A checkpoint's weights (``weights_only``: nothing in the file runs), from a ``model.pt`` or a ``last.pt``."""
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:  # not a checkpoint file
        raise InputError(
            f"checkpoint {path} cannot be read as PyTorch weights ({type(error).__name__}): pass a "
            "model.pt saved by training"
        ) from None
    if isinstance(weights, dict) and isinstance(weights.get("model"), dict):  # a last.pt, as MONAI's loader reads it
        weights = weights["model"]
    return weights


def _checked_weights(path: Path, network: torch.nn.Module) -> dict[str, torch.Tensor]:
    weights = read_weights(path)
    mismatch = _weights_mismatch(weights, network.state_dict())
    if mismatch:
        raise InputError(
            f"checkpoint {path} holds the weights of another network ({mismatch}): run with the network recipe it "
            "was trained with merged over this config (e.g. --config_file \"['bundle/configs/inference.yaml',"
            "'bundle/configs/flexunet_resnext.yaml']\") or pass the checkpoint of this network"
        )
    return weights


@user_errors
def check_checkpoint(
    ckpt_path: str | os.PathLike | Sequence[str | os.PathLike], network: torch.nn.Module | None = None
) -> str | os.PathLike | Sequence[str | os.PathLike]:
    """Fail with one line when a checkpoint to load is missing, unreadable, or holds the weights
    of another network (a model trained with a recipe, run without it), instead of the loader's traceback.

    Args:
        ckpt_path: what to load (see :func:`checkpoint_files`).
        network: the config's network, to check the weights against; a TorchScript network
            (``inference_ts.yaml``) carries its own weights and is not checked.

    Returns:
        ``ckpt_path``.
    """
    paths = checkpoint_files(ckpt_path)
    if network is not None and not isinstance(network, torch.jit.ScriptModule):
        for path in paths:
            _checked_weights(path, network)
    return ckpt_path


def _check_settings(path: Path, settings: dict) -> None:
    """Fail when the record saved beside a model (``best.json``) names other values of ``settings``
    than this run's; a model without a record (or without the setting) is taken as it is."""
    record = read_record(path.parent) or {}
    for key, value in settings.items():
        if key in record and record[key] != value:
            raise InputError(
                f"checkpoint {path} was trained with {key} {record[key]} ({path.parent / RECORD_FILE}), "
                f"this run works at {key} {value}: pass --{key} {record[key]}, or only checkpoints "
                f"trained with {key} {value}"
            )


@user_errors
def ensemble(
    network: torch.nn.Module, ckpt_path: str | os.PathLike | Sequence[str | os.PathLike], settings: dict | None = None
) -> torch.nn.Module:
    """The network with the checkpoint's weights, or one copy of it per member of an ensemble.

    Every file is checked before any is loaded, so nothing runs when one of them is bad.

    Args:
        network: the config's network (on its device); a single checkpoint is loaded into it.
        ckpt_path: what to load (see :func:`checkpoint_files`).
        settings: this run's values of what a model must match (e.g. ``downscale``), checked against
            what training recorded beside each model.

    Returns:
        ``network`` itself for one file; a :class:`torch.nn.ModuleList` of its copies, in the
        files' order, for several.
    """
    paths = checkpoint_files(ckpt_path)
    for path in paths:
        _check_settings(path, settings or {})
    weights = [_checked_weights(path, network) for path in paths]
    members = [network] + [copy.deepcopy(network) for _ in paths[1:]]
    for member, state in zip(members, weights, strict=True):
        member.load_state_dict(state)  # half-precision weights are copied into the network's own dtype
    return network if len(members) == 1 else torch.nn.ModuleList(members)


@user_errors
def load_initial_weights(
    network: torch.nn.Module, init_ckpt: str | os.PathLike | None, settings: dict | None = None
) -> None:
    """Start training from given weights (fine-tuning) instead of from scratch.

    A resumed run (its ``last.pt``) goes on from where it stopped instead: the trainer loads that
    afterwards.

    Args:
        network: the network to train (DistributedDataParallel is unwrapped).
        init_ckpt: one ``model.pt`` (or ``last.pt``), or a folder holding one model; None: from scratch.
        settings: this run's values of what the model must match (its scale), checked against what
            training recorded beside it: a model learnt at another scale would be fine-tuned on
            glomeruli of another size.
    """
    if init_ckpt is None:
        return
    paths = checkpoint_files(init_ckpt)
    if len(paths) > 1:
        raise InputError(
            f"init_ckpt {init_ckpt} holds an ensemble of {len(paths)}; fine-tuning starts from one model: "
            f"pass one of its files, e.g. {paths[0]}"
        )
    _check_settings(paths[0], settings or {})
    module = getattr(network, "module", network)
    module.load_state_dict(_checked_weights(paths[0], module))
    print(f"training starts from the weights of {paths[0]}")


def save_half_precision(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Write a checkpoint's weights as half precision (floating-point tensors only), atomically.

    Args:
        source: a ``model.pt`` or ``last.pt``.
        target: the file to write.

    Returns:
        ``target``.
    """
    weights = {key: value.half() if value.is_floating_point() else value for key, value in read_weights(source).items()}
    with atomic_path(target) as tmp:
        torch.save(weights, tmp)
    return Path(target)


def _weights_mismatch(weights: object, expected: dict[str, torch.Tensor]) -> str:
    """What keeps ``weights`` from loading into a network whose state dict is ``expected`` ("" when nothing)."""
    if not isinstance(weights, dict) or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        return "not a dictionary of weights"
    missing, extra = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    reshaped = [key for key in sorted(expected.keys() & weights.keys()) if weights[key].shape != expected[key].shape]
    if missing or extra:
        return f"{len(missing)} of the network's weights missing, {len(extra)} unknown, e.g. {(missing or extra)[0]!r}"
    if reshaped:
        key = reshaped[0]
        return (
            f"{len(reshaped)} weights of another shape, e.g. {key!r}: {tuple(weights[key].shape)} "
            f"instead of {tuple(expected[key].shape)}"
        )
    return ""
