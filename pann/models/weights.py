"""Named pretrained weights, in the manner of torchvision's weights API.

Each name (``resnet20_cifar10`` ... ``resnet56_cifar10``) is a :class:`PretrainedWeights` entry: the
published checkpoint's URL and sha256, the model it fits, its input normalisation, the accuracy the
source reports and its licence. :func:`fetch` turns a name into a local file of the converted
state dict, in this order:

1. ``data_dir/<name>.pt`` (the converted files of an offline data folder such as ``../shared/data``);
2. the torch hub cache (``torch.hub.get_dir()/checkpoints``): the original checkpoint, downloaded
   once from ``base_url`` (the source, or a mirror) with :func:`torch.hub.download_url_to_file`,
   whose sha256 is checked on download and again before every use, and next to it
   ``<name>.pt``, the converted state dict written from the verified original.

A download that fails its hash check leaves nothing in the cache; a cached original that fails it
is removed and downloaded again. Every error names the URL and the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

# The input normalisation the CIFAR builders use and named weights carry (torchvision's ImageNet statistics).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

logger = logging.getLogger(__name__)

SOURCE_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_LICENCE = "BSD-2-Clause, Copyright (c) 2018, Yerlan Idelbayev"
_PROBE_TIMEOUT_S = 10.0


class DownloadError(OSError):
    """Weights that could not be downloaded, or whose download failed its hash check."""


@dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint: where it comes from, how to check and convert it, what it scores.

    ``accuracy`` is the top-1 test accuracy (%) the source records in the checkpoint (``best_prec1``).
    """

    name: str
    model: str
    file: str
    sha256: str
    accuracy: float
    num_classes: int = 10
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    licence: str = _LICENCE

    def url(self, base_url: str | None = None) -> str:
        """The checkpoint's URL at ``base_url`` (a mirror's folder), by default at the source."""
        return (base_url or SOURCE_URL).rstrip("/") + "/" + self.file


WEIGHTS: dict[str, PretrainedWeights] = {w.name: w for w in (
    PretrainedWeights("resnet20_cifar10", "resnet20", "resnet20-12fca82f.th",
                      "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 91.78),
    PretrainedWeights("resnet32_cifar10", "resnet32", "resnet32-d509ac18.th",
                      "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 92.78),
    PretrainedWeights("resnet44_cifar10", "resnet44", "resnet44-014dd654.th",
                      "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4", 93.14),
    PretrainedWeights("resnet56_cifar10", "resnet56", "resnet56-4bfd9763.th",
                      "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", 93.62),
)}


def get_weights(name: str) -> PretrainedWeights:
    """The entry of ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in WEIGHTS:
        raise ValueError(f"unknown weights {name!r}; known: {', '.join(WEIGHTS)}")
    return WEIGHTS[name]


def cache_dir() -> Path:
    """Where downloaded checkpoints live: ``torch.hub.get_dir()/checkpoints``, as torchvision's do."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def convert(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The source's checkpoint -> a plain state dict of :class:`pann.models.builders.CifarResNet`.

    Takes ``checkpoint['state_dict']``, removes the DataParallel prefix ``module.`` and adds the
    BatchNorm ``num_batches_tracked`` buffers the source omits (zero, as after loading into a fresh
    model), so that the result loads strictly. Tensor values are unchanged.
    """
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ValueError("not a checkpoint of the source's format (a dict with a 'state_dict')")
    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    for key in [k for k in state if k.endswith(".running_mean")]:
        state.setdefault(key.removesuffix("running_mean") + "num_batches_tracked", torch.tensor(0))
    return state


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _probe(url: str, path: Path, timeout: float) -> None:
    """Fail fast, naming the URL, when it does not answer (torch.hub's download has no timeout)."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "pann"})
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"cannot download {url} to {path}: {getattr(exc, 'reason', exc)}") from exc


def _verified_original(entry: PretrainedWeights, base_url: str | None, folder: Path, progress: bool) -> Path:
    """The original checkpoint in ``folder``, downloaded when missing or failing its hash check."""
    path, url = folder / entry.file, entry.url(base_url)
    if path.is_file():
        if _sha256(path) == entry.sha256:
            return path
        logger.warning("cached %s fails its sha256 check; removed, downloading %s again", path, url)
        path.unlink()
    _probe(url, path, _PROBE_TIMEOUT_S)
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", url, path)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=entry.sha256, progress=progress)
    except RuntimeError as exc:  # torch.hub's hash check; the download is already removed
        raise DownloadError(f"download of {url} failed its sha256 check, not cached as {path}: {exc}") from exc
    except OSError as exc:
        raise DownloadError(f"cannot download {url} to {path}: {exc}") from exc
    return path


def _in_data_folder(name: str, data_dir: str | Path | None) -> Path | None:
    path = None if data_dir is None else Path(data_dir) / f"{name}.pt"
    return path if path is not None and path.is_file() else None


def cached(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The local copy :func:`fetch` would use without the network (not hash-checked here), or None."""
    original = cache_dir() / get_weights(name).file
    return _in_data_folder(name, data_dir) or (original if original.is_file() else None)


def fetch(name: str, data_dir: str | Path | None = None, base_url: str | None = None,
          progress: bool = False) -> Path:
    """A local file holding the converted state dict of the weights ``name`` (see the module doc).

    ``data_dir``: an offline data folder tried first; ``base_url``: a mirror of the source's folder.
    Raises ``ValueError`` for an unknown name and :class:`DownloadError` (an ``OSError``) naming the
    URL and file when the weights can be neither found nor downloaded and verified.
    """
    entry = get_weights(name)
    if _in_data_folder(name, data_dir):
        return _in_data_folder(name, data_dir)
    folder = cache_dir()
    original = _verified_original(entry, base_url, folder, progress)
    converted = folder / f"{name}.pt"
    if not converted.is_file() or converted.stat().st_mtime < original.stat().st_mtime:
        state = convert(torch.load(original, map_location="cpu", weights_only=True))
        temporary = converted.with_name(f".{converted.name}.{os.getpid()}.tmp")
        try:
            torch.save(state, temporary)
            os.replace(temporary, converted)
        finally:
            temporary.unlink(missing_ok=True)
    return converted


def resolve(weights: str | Path | None, data_dir: str | Path | None = None, base_url: str | None = None,
            model: str | None = None) -> Path | None:
    """A weights argument -> a local file: an existing path as it is, a known name through :func:`fetch`.

    ``model``: the model the weights must fit, checked for named weights. ``FileNotFoundError``
    (listing the known names) for something that is neither a file nor a name.
    """
    if weights is None or Path(weights).is_file():
        return None if weights is None else Path(weights)
    if str(weights) not in WEIGHTS:
        raise FileNotFoundError(f"weights file not found: {weights} (named weights: {', '.join(WEIGHTS)})")
    entry = WEIGHTS[str(weights)]
    if model is not None and entry.model != model:
        raise ValueError(f"weights {entry.name} are for {entry.model}, not {model}")
    return fetch(entry.name, data_dir, base_url)
