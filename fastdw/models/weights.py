"""Pretrained weights: torchvision's weight enums, resolved through the torch hub cache.

A checkpoint lives where torchvision itself would put it, <torch.hub.get_dir()>/checkpoints/
<basename of the enum's URL>, so a file torchvision downloaded is reused and vice versa. It is
downloaded only when missing; when that fails (offline), the error says which file to put where.
"""
import os
import re
from urllib.parse import urlparse

import torch
from torchvision.models import WeightsEnum


class WeightsUnavailableError(RuntimeError):
    """A pretrained checkpoint is neither in the hub cache nor downloadable, or cannot be loaded."""


def resolve(weights, enum_cls):
    """weights= argument -> a member of enum_cls, a local file path (str), or None.

    Accepts a member of enum_cls, its name ("IMAGENET1K_V1", "DEFAULT", or qualified
    "MobileNet_V2_Weights.IMAGENET1K_V1"), or a path to an existing checkpoint file.
    """
    if weights is None or isinstance(weights, enum_cls):
        return weights
    if isinstance(weights, WeightsEnum):
        raise ValueError(f"weights {weights} belong to another model; expected a member of "
                         f"{enum_cls.__name__} ({_names(enum_cls)})")
    if isinstance(weights, os.PathLike) or (isinstance(weights, str) and os.path.isfile(weights)):
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"weights file {os.fspath(weights)!r} does not exist")
        return os.fspath(weights)
    if not isinstance(weights, str):
        raise TypeError(f"weights must be None, a {enum_cls.__name__} member, its name or a file "
                        f"path, got {type(weights).__name__}")
    prefix, _, name = weights.rpartition(".")
    if prefix in ("", enum_cls.__name__) and name in enum_cls.__members__:
        return enum_cls[name]
    raise ValueError(f"unknown weights {weights!r} for {enum_cls.__name__}: not a file and not "
                     f"one of {_names(enum_cls)}")


def _names(enum_cls):
    return ", ".join(enum_cls.__members__)


def cache_path(weights: WeightsEnum) -> str:
    """Where torchvision keeps (and fastdw looks for) this checkpoint."""
    return os.path.join(torch.hub.get_dir(), "checkpoints",
                        os.path.basename(urlparse(weights.url).path))


def state_dict(weights, progress=True):
    """The checkpoint's state_dict, from a file path or a weights enum via the hub cache."""
    if isinstance(weights, str):
        return _load(weights, "pass weights= a complete PyTorch checkpoint file")
    path = cache_path(weights)
    if not os.path.isfile(path):
        _download(weights, path, progress)
    return _load(path, "delete it to have it downloaded again, or replace it with a complete "
                       "copy")


def _load(path, remedy):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's errors do not name the file; an empty one's is blank
        raise WeightsUnavailableError(
            f"cannot load checkpoint {path} ({type(err).__name__}: "
            f"{str(err) or 'the file is empty or truncated'}); {remedy}") from err


def _download(weights, path, progress):
    """Download weights' checkpoint to path; on failure, remove the directories made for it."""
    directory = os.path.dirname(path)
    new_dirs = _missing_dirs(directory)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:  # TORCH_HOME unwritable, or under a file
        _remove_empty(new_dirs)
        raise _unavailable(weights, path, f"{directory} cannot be created", err) from err
    # torchvision names checkpoints <name>-<sha256 prefix>.pth; verify what we download.
    match = re.search(r"-([a-f0-9]+)\.", os.path.basename(path))
    try:
        torch.hub.download_url_to_file(weights.url, path, match and match.group(1),
                                       progress=progress)
    except Exception as err:  # offline, proxy, DNS, HTTP or hash errors all end the same way
        _remove_empty(new_dirs)
        raise _unavailable(weights, path, f"it could not be downloaded from {weights.url}",
                           err) from err


def _unavailable(weights, path, problem, err):
    directory, name = os.path.split(path)
    return WeightsUnavailableError(
        f"{weights} needs {name}, which is not in {directory}, and {problem} "
        f"({type(err).__name__}: {err}). Copy the file into that directory, or set TORCH_HOME / "
        f"torch.hub.set_dir to a writable directory (or one whose checkpoints/ holds it), or "
        f"pass weights=<path to the file>.")


def _missing_dirs(directory):
    """directory and those of its ancestors that do not exist yet, deepest first."""
    missing = []
    while directory and not os.path.exists(directory):  # "": the top of a relative path
        missing.append(directory)
        directory = os.path.dirname(directory)
    return missing


def _remove_empty(dirs):
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:  # makedirs stopped above it, or another process has used it since
            pass


def num_classes_for(weights, num_classes):
    """num_classes to build with: must match the enum's categories when weights are an enum."""
    if isinstance(weights, WeightsEnum):
        expected = len(weights.meta["categories"])
        if num_classes != expected:
            raise ValueError(f"num_classes={num_classes} does not match {weights}, which has "
                             f"{expected} classes")
    return num_classes


def load(model, weights, progress):
    if weights is not None:
        model.load_state_dict(state_dict(weights, progress))
    return model
