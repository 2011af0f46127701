"""CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich, ICLR 2019) in their official layout.

The official archives unpack to one folder holding `<corruption>.npy` files, each 50,000 x 32 x 32 x 3
uint8 (the 10,000 test images at severity 1, then severity 2, ..., then 5), and `labels.npy` (50,000
int labels: the test labels, once per severity). Files are memory-mapped, so a severity block or a
subset of it costs only the bytes it reads.

Names: the 15 corruptions of the benchmark, plus the 4 "extra" ones the archives also ship
(speckle_noise, gaussian_blur, spatter, saturate; the paper's preset uses two of them).

Specs (`--corruptions`, task defaults): comma-separated items, each one of
- `all`: the 15 benchmark corruptions at every severity (1-5); `all:3`: the 15 at severity 3;
- `paper`: Zhang et al.'s 9 (brightness, fog, frost, gaussian_blur, impulse_noise, jpeg_compression,
  shot_noise, snow, speckle_noise) at severity 3;
- `<name>`: that corruption at every severity; `<name>:<s>`: at severity s.
Duplicates are dropped, first occurrence kept. Parsing validates names and severities before any
file is opened; `check_folder` validates the files (presence, shape, labels) before any compute.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from suite.errors import UserError, did_you_mean

BENCHMARK = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
KNOWN = BENCHMARK + EXTRA
PAPER = ("brightness", "fog", "frost", "gaussian_blur", "impulse_noise", "jpeg_compression", "shot_noise",
         "snow", "speckle_noise")
PAPER_SEVERITY = 3
SEVERITIES = (1, 2, 3, 4, 5)

DOWNLOADS = {
    "CIFAR-10-C": "https://zenodo.org/record/2535967",
    "CIFAR-100-C": "https://zenodo.org/record/3555552",
}


def parse_spec(spec: str | Sequence[str]) -> list[tuple[str, int]]:
    """'paper', 'all', 'all:3', 'fog', 'fog:3', or a comma-separated list / sequence of them ->
    [(name, severity), ...] in order, without duplicates."""
    items = [spec] if isinstance(spec, str) else list(spec)
    parts = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    if not parts:
        raise UserError("empty corruption spec: write e.g. 'paper', 'all', 'fog:3' or 'fog,snow:2'")
    out: list[tuple[str, int]] = []
    for part in parts:
        name, colon, sev = part.partition(":")
        name = name.strip()
        if colon:
            try:
                s = int(sev.strip())
            except ValueError:
                s = -1
            if s not in SEVERITIES:
                raise UserError(f"corruption spec {part!r}: severity must be one of 1-5, got {sev.strip()!r}")
            severities = (s,)
        else:
            severities = SEVERITIES
        if name == "paper":
            if colon:
                raise UserError(f"corruption spec {part!r}: the paper preset has its severity ({PAPER_SEVERITY}); "
                                f"write 'paper'")
            out += [(c, PAPER_SEVERITY) for c in PAPER]
        elif name == "all":
            out += [(c, s) for c in BENCHMARK for s in severities]
        elif name in KNOWN:
            out += [(name, s) for s in severities]
        else:
            hint = did_you_mean(name, KNOWN + ("all", "paper"), quote=True)
            raise UserError(f"unknown corruption {name!r}.{hint} Known: all, paper, {', '.join(KNOWN)}")
    seen: set[tuple[str, int]] = set()
    return [x for x in out if not (x in seen or seen.add(x))]


def _missing(folder: Path, what: str, dataset: str) -> UserError:
    url = DOWNLOADS.get(dataset, DOWNLOADS["CIFAR-10-C"])
    return UserError(f"{dataset} not found in {folder}: {what}; download from {url}")


def _open(path: Path, dataset: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(f"{dataset}: cannot read {path}: {e}") from None


def _labels(folder: Path, dataset: str) -> np.ndarray:
    path = folder / "labels.npy"
    if not path.is_file():
        raise _missing(folder, "expected labels.npy next to the <corruption>.npy files", dataset)
    labels = _open(path, dataset)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) == 0 or len(labels) % len(SEVERITIES):
        raise UserError(f"{dataset}: {path} has shape {labels.shape} and dtype {labels.dtype}; expected "
                        f"integer labels, 5 blocks of one per test image (50000 for the official files)")
    return labels


def _images(folder: Path, name: str, n_labels: int, dataset: str) -> np.ndarray:
    if name not in KNOWN:
        raise UserError(f"unknown corruption {name!r}; known: {', '.join(KNOWN)}")
    path = folder / f"{name}.npy"
    if not path.is_file():
        raise UserError(f"{dataset}: {path} is missing (this corruption's file); download from "
                        f"{DOWNLOADS.get(dataset, DOWNLOADS['CIFAR-10-C'])}")
    arr = _open(path, dataset)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or arr.shape[0] != n_labels:
        raise UserError(f"{dataset}: {path} has shape {arr.shape} and dtype {arr.dtype}; expected uint8 "
                        f"({n_labels}, H, W, 3) like labels.npy (official: 50000 x 32 x 32 x 3)")
    return arr


def check_folder(folder: str | Path, items: Sequence[tuple[str, int]], dataset: str = "CIFAR-10-C") -> None:
    """Every file the (name, severity) items need is present and well-formed (reads headers only)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        names = sorted({n for n, _ in items}) or ["fog"]
        raise _missing(folder, f"expected {names[0]}.npy ... labels.npy", dataset)
    n = len(_labels(folder, dataset))
    for name in dict.fromkeys(n for n, _ in items):
        _images(folder, name, n, dataset)


def block_labels(folder: str | Path, dataset: str = "CIFAR-10-C") -> np.ndarray:
    """The labels of one severity block (int64): the test labels in the official test order, from
    which an evaluation subset of `indices` can be chosen (e.g. with suite.subsets)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise _missing(folder, "expected fog.npy ... labels.npy", dataset)
    labels = _labels(folder, dataset)
    return np.asarray(labels[: len(labels) // len(SEVERITIES)]).astype(np.int64)


def load_corruption(folder: str | Path, name: str, severity: int, indices=None, *, dataset: str = "CIFAR-10-C"):
    """One corruption at one severity as a TensorDataset(uint8 N x 3 x H x W, int64 labels).

    `indices` (optional) picks test images within the severity block (0 .. block size - 1), e.g. the
    evaluation subset; only those bytes are read. The images stay uint8 (the image adapter scales
    them to [0, 1] on the device).
    """
    import torch
    from torch.utils.data import TensorDataset

    folder = Path(folder).expanduser()
    if severity not in SEVERITIES:
        raise UserError(f"corruption {name!r}: severity must be one of 1-5, got {severity!r}")
    check_folder(folder, [(name, severity)], dataset)
    labels = _labels(folder, dataset)
    arr = _images(folder, name, len(labels), dataset)
    block = len(labels) // len(SEVERITIES)
    lo = (severity - 1) * block
    if indices is None:
        pick = np.arange(lo, lo + block)
    else:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= block):
            raise UserError(f"{dataset}: indices must lie in [0, {block}) (images per severity), "
                            f"got {idx.min()}..{idx.max()}")
        pick = lo + idx
    images = np.ascontiguousarray(np.asarray(arr[pick]).transpose(0, 3, 1, 2))  # N, H, W, C -> N, C, H, W
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(np.asarray(labels[pick]).astype(np.int64)))


def datasets(folder: str | Path, spec: str | Sequence[str], indices=None, *, dataset: str = "CIFAR-10-C"):
    """[(name, severity, TensorDataset)] for a spec, the folder checked once up front. The datasets are
    built one at a time as the caller iterates, so only one is in memory at once."""
    items = parse_spec(spec)
    check_folder(folder, items, dataset)
    return ((name, severity, load_corruption(folder, name, severity, indices, dataset=dataset))
            for name, severity in items)
