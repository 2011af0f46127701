"""Segmentation data: readers for the official on-disk layouts, datasets, joint image/mask augmentation.

Every dataset yields `(image, mask)`: image uint8 (3, H, W), mask uint8 (H, W) holding class indices
and `IGNORE_INDEX` (255) for unlabelled pixels; the segmentation adapter turns them into float [0, 1]
and int64 on the device.

Readers (each validates the folder before anything is decoded and stops with one line naming the
files it expected):
- CamVid, SegNet's 11-class version: `<root>/{train,val,test}/NAME.{png,jpg}` with label maps
  `<root>/{train,val,test}annot/NAME.png` (one byte per pixel, 0..10, 11 = void -> ignore).
  Pairs are matched by file name and sorted (never directory order).
- PASCAL VOC 2012: `VOCdevkit/VOC2012/JPEGImages/ID.jpg`, `SegmentationClass/ID.png` (palette PNGs:
  the palette *indices* are the labels, 0..20, 255 = boundary/ignore) and
  `ImageSets/Segmentation/{train,val}.txt`. The SBD-augmented training set in its common layout:
  `SegmentationClassAug/ID.png` (grey-level index PNGs) listed by
  `ImageSets/Segmentation/train_aug.txt` (10,582 ids, disjoint from val).
- Stanford Background (Gould et al., ICCV 2009): `iccv09Data/images/ID.jpg` and
  `iccv09Data/labels/ID.regions.txt` (one integer per pixel, rows of space-separated values,
  0..7, -1 = unknown -> ignore).

Augmentation (`JointAugment`): random scale, crop (images padded with 0, masks with the ignore
index) and horizontal flip, applied to image and mask together. It is a pure function of four
uniform numbers per image, so the same code runs
- per batch on the device (`BatchAugment`, the trainer's `train_transform(batch, generator)`, for
  datasets whose images share one size, e.g. CamVid): the numbers come from the trainer's generator
  seeded per (seed, epoch);
- per sample in a dataset's `__getitem__` (`SegmentationDataset(..., augment=...)`, for datasets
  whose images differ in size: VOC, Stanford Background): the numbers come from torch's global RNG,
  which the trainer seeds, checkpoints and restores, and which DataLoader workers seed from the
  loader's per-(seed, epoch) generator; so both paths are deterministic and resumable.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from suite.config import IGNORE_INDEX
from suite.data.labels import CAMVID_CLASSES, STANFORD_CLASSES, VOC_CLASSES
from suite.errors import UserError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# --- joint augmentation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class JointAugment:
    """Random scale in `scale`, then a `crop` (height, width) window (padding where the scaled image
    is smaller), then a horizontal flip with probability 1/2, for an image and its mask together."""

    crop: tuple[int, int]
    scale: tuple[float, float] = (1.0, 1.0)
    flip: bool = True
    ignore_index: int = IGNORE_INDEX

    def apply(self, x: torch.Tensor, mask: torch.Tensor, u: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """x float (C, H, W), mask integer (H, W); `u` four numbers in [0, 1) choosing the scale, the
        crop's top and left offsets and the flip. Returns (C, crop_h, crop_w) and (crop_h, crop_w)."""
        h, w = x.shape[-2:]
        s = self.scale[0] + float(u[0]) * (self.scale[1] - self.scale[0])
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) != (h, w):
            # bilinear for the image (antialiased when shrinking), nearest-exact for labels: both map
            # output pixel centres to the same input positions, so image and mask stay aligned
            x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=s < 1)[0]
            mask = F.interpolate(mask[None, None].float(), size=(nh, nw), mode="nearest-exact")[0, 0].to(mask.dtype)
        ch, cw = self.crop
        ph, pw = max(0, ch - nh), max(0, cw - nw)
        if ph or pw:  # pad bottom and right: image with 0, mask with the ignore index
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            mask = F.pad(mask, (0, pw, 0, ph), value=self.ignore_index)
        top = min(int(float(u[1]) * (nh + ph - ch + 1)), nh + ph - ch)
        left = min(int(float(u[2]) * (nw + pw - cw + 1)), nw + pw - cw)
        x = x[:, top:top + ch, left:left + cw]
        mask = mask[top:top + ch, left:left + cw]
        if self.flip and float(u[3]) < 0.5:
            x, mask = x.flip(-1), mask.flip(-1)
        return x, mask

    def sample(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One uint8 sample, random numbers from torch's global RNG (for `__getitem__`)."""
        u = torch.rand(4).tolist()
        x, m = self.apply(image.float(), mask, u)
        return x.round_().clamp_(0, 255).to(torch.uint8), m


class BatchAugment:
    """`train_transform(batch, generator)` for a batch already on the device: every image of the batch
    gets its own scale, crop and flip, drawn from the trainer's generator."""

    def __init__(self, augment: JointAugment):
        self.augment = augment

    def __call__(self, batch, generator: torch.Generator):
        x, mask = batch
        u = torch.rand((x.shape[0], 4), generator=generator, device=generator.device).cpu().tolist()
        out = [self.augment.apply(xi, mi, ui) for xi, mi, ui in zip(x, mask, u)]
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])

    def __repr__(self) -> str:
        return f"BatchAugment({self.augment})"


# --- datasets --------------------------------------------------------------------------------------
class SegmentationDataset(Dataset):
    """(image uint8 (3, H, W), mask uint8 (H, W)) pairs, held in memory (`images`, `masks`: sequences
    of tensors or stacked tensors) or read on access (`load(i) -> (image, mask)`, for sets too large
    to keep decoded, e.g. VOC), optionally augmented per sample."""

    def __init__(self, images=None, masks=None, *, load: Callable[[int], tuple] | None = None,
                 length: int | None = None, augment: JointAugment | None = None):
        if load is None and (images is None or masks is None or len(images) != len(masks)):
            raise ValueError("give images and masks of equal length, or load (and its length)")
        self.images, self.masks, self.load = images, masks, load
        self.length = len(images) if load is None else int(len(load) if length is None else length)
        self.augment = augment

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i):
        if self.load is not None:
            image, mask = self.load(i)
        else:
            image, mask = self.images[i], self.masks[i]
        if self.augment is not None:
            image, mask = self.augment.sample(image, mask)
        return image, mask


class FilePairs:
    """`load(i)` for `SegmentationDataset`: reads pair i of (image, label) paths with `read(image, label)`.
    A class rather than a lambda so that DataLoader workers can be spawned (it pickles)."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], read: Callable):
        self.pairs, self.read = list(pairs), read

    def __len__(self) -> int:
        return len(self.pairs)

    def __call__(self, i: int):
        return self.read(*self.pairs[i])


def pad_collate(samples):
    """Stack samples of different sizes by padding each to the largest height and width of the batch
    (bottom and right; image 0, mask ignore). With equal sizes it is plain stacking. Padding is only
    needed for evaluation batches larger than one image on a dataset whose images differ in size:
    the padded pixels are never scored, but the model sees (and an attack may perturb) them, so such
    a batch size changes predictions near the image border slightly; the tasks evaluate those
    datasets one image at a time (eval_batch_size=1)."""
    h = max(s[0].shape[-2] for s in samples)
    w = max(s[0].shape[-1] for s in samples)
    xs, ms = [], []
    for x, m in samples:
        ph, pw = h - x.shape[-2], w - x.shape[-1]
        xs.append(F.pad(x, (0, pw, 0, ph), value=0) if ph or pw else x)
        ms.append(F.pad(m, (0, pw, 0, ph), value=IGNORE_INDEX) if ph or pw else m)
    return torch.stack(xs), torch.stack(ms)


# --- decoding helpers ------------------------------------------------------------------------------
def _undecodable(path: Path, e: Exception) -> UserError:
    """A damaged or foreign file, in one line that names it and says what to do."""
    return UserError(f"{path}: cannot decode ({type(e).__name__}: {one_line(e, 160)}); replace it with an intact "
                     "copy of the dataset's file")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise _undecodable(path, e) from None


def read_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3); `size` (width, height) resizes (PIL bilinear, antialiased when shrinking).
    A damaged file (truncated, not an image) is one line naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != tuple(size):
                im = im.resize(tuple(size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise _undecodable(path, e) from None


def read_index_png(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """The index values of a label PNG (palette 'P' or grey 'L' mode; never the palette's RGB colours),
    uint8 (H, W); `size` (width, height) resizes with nearest neighbour."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise UserError(f"label file {path} is a {im.mode!r} image; expected one index per pixel "
                                "(a palette 'P' or grey 'L' PNG)")
            if size is not None and im.size != tuple(size):
                im = im.resize(tuple(size), Image.NEAREST)
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise _undecodable(path, e) from None


def check_same_size(dataset: str, image: Path, label: Path) -> None:
    """An image and its label map cover the same pixels (read from the headers, before any resizing)."""
    (w, h), (lw, lh) = image_size(image), image_size(label)
    if (w, h) != (lw, lh):
        raise UserError(f"{dataset}: {image} is {w}x{h} but its label map {label} is {lw}x{lh}; the pair must "
                        "have one size (replace the label map with the dataset's own)")


def check_pairs(pairs: Sequence[tuple[Path, Path]], read: Callable, what: str) -> None:
    """Decode every (image, label) pair with `read` (which checks sizes and label values) before anything
    trains, so a damaged pair is one line now rather than a failure mid-run. The pass over a dataset that
    is read on access (VOC) is remembered in the cache folder, keyed by every file's path, size and
    modification time, so an unchanged copy is checked once."""
    from suite.data.images import cache_dir, files_key

    key = files_key([p for pair in pairs for p in pair], extra=f"pairs|{what}")
    marker = cache_dir().parent / "checked" / f"{what}-{key}"
    if marker.is_file():
        return
    for image, label in pairs:
        read(image, label)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass  # an unwritable cache only means checking again next time


def check_labels(mask: np.ndarray, num_classes: int, where) -> None:
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        raise UserError(f"{where}: label {int(mask[bad][0])} is outside 0..{num_classes - 1} "
                        f"(and not the ignore value {IGNORE_INDEX}); replace the label map with the dataset's own")


def to_tensors(images: list[np.ndarray], masks: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack equal-size HWC images and HW masks into uint8 (N, 3, H, W) and (N, H, W)."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.stack(masks))


def array_fingerprint(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _first_root(candidates: list[Path], required: Sequence[str]) -> Path | None:
    for c in candidates:
        if all((c / r).exists() for r in required):
            return c
    return None


def _need_dir(data_dir) -> Path:
    if data_dir is None:
        raise UserError("this task reads its data from --data-dir (or SUITE_DATA_DIR); none was given")
    return Path(data_dir).expanduser()


# --- CamVid ----------------------------------------------------------------------------------------
CAMVID_VOID = 11
CAMVID_SPLITS = ("train", "val", "test")


def find_camvid(data_dir) -> Path:
    base = _need_dir(data_dir)
    required = [s for split in ("train", "test") for s in (split, f"{split}annot")]
    root = _first_root([base / "camvid", base / "CamVid", base], required)
    if root is None:
        raise UserError(f"camvid needs the SegNet CamVid layout in {base / 'camvid'}: train/, trainannot/, "
                        "test/, testannot/ (images NAME.png|jpg, label maps NAME.png with values 0..11); "
                        "pass --data-dir")
    return root


def camvid_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    images = sorted(p for p in (root / split).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"camvid: no images in {root / split}")
    pairs = []
    for p in images:
        label = root / f"{split}annot" / f"{p.stem}.png"
        if not label.exists():
            raise UserError(f"camvid: image {p} has no label map {label}")
        pairs.append((p, label))
    return pairs


def load_camvid(root: Path, split: str, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split decoded to uint8 tensors ((N, 3, H, W), (N, H, W)), void mapped to the ignore index;
    `size` (width, height) resizes every image (bilinear) and label map (nearest)."""
    images, masks = [], []
    for img, lab in camvid_pairs(root, split):
        check_same_size("camvid", img, lab)  # before `size` resizes both and hides a mismatch
        m = read_index_png(lab, size)
        check_labels(np.where(m == CAMVID_VOID, IGNORE_INDEX, m), len(CAMVID_CLASSES), lab)
        masks.append(np.where(m == CAMVID_VOID, IGNORE_INDEX, m).astype(np.uint8))
        images.append(read_image(img, size))
        if images[-1].shape[:2] != masks[-1].shape:
            raise UserError(f"camvid: {img} is {images[-1].shape[1]}x{images[-1].shape[0]} but its label map "
                            f"{lab} is {masks[-1].shape[1]}x{masks[-1].shape[0]}")
    if len({a.shape for a in images}) > 1:
        raise UserError(f"camvid {split}: images differ in size; pass a common size to resize them to")
    return to_tensors(images, masks)


# --- PASCAL VOC 2012 -------------------------------------------------------------------------------
def find_voc(data_dir) -> Path:
    base = _need_dir(data_dir)
    required = ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation/train.txt",
                "ImageSets/Segmentation/val.txt"]
    root = _first_root([base / "VOCdevkit" / "VOC2012", base / "VOC2012", base / "voc" / "VOCdevkit" / "VOC2012",
                        base], required)
    if root is None:
        raise UserError(f"voc needs PASCAL VOC 2012 in {base / 'VOCdevkit' / 'VOC2012'}: JPEGImages/, "
                        "SegmentationClass/, ImageSets/Segmentation/train.txt and val.txt; pass --data-dir")
    return root


def voc_ids(root: Path, list_name: str) -> list[str]:
    path = root / "ImageSets" / "Segmentation" / f"{list_name}.txt"
    if not path.exists():
        hint = " (the SBD train_aug list; see the voc_aug task's description)" if list_name == "train_aug" else ""
        raise UserError(f"voc: missing {path}{hint}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(f"voc: {path} lists no image")
    return ids


def voc_pairs(root: Path, list_name: str) -> list[tuple[Path, Path]]:
    """(image, label) paths of a list; train_aug reads labels from SegmentationClassAug. Checks that
    every file exists (cheap, before any decoding)."""
    labels = root / ("SegmentationClassAug" if list_name == "train_aug" else "SegmentationClass")
    if not labels.is_dir():
        raise UserError(f"voc: missing label folder {labels}")
    pairs = [(root / "JPEGImages" / f"{i}.jpg", labels / f"{i}.png") for i in voc_ids(root, list_name)]
    for img, lab in pairs:
        for p in (img, lab):
            if not p.exists():
                raise UserError(f"voc: {list_name}.txt lists {p.stem} but {p} is missing")
    check_pairs(pairs, read_voc_pair, f"voc-{list_name}")  # decoded on access later: every pair checked now
    return pairs


def read_voc_pair(img: Path, lab: Path) -> tuple[torch.Tensor, torch.Tensor]:
    mask = read_index_png(lab)
    check_labels(mask, len(VOC_CLASSES), lab)
    image = read_image(img)
    if image.shape[:2] != mask.shape:
        raise UserError(f"voc: {img} is {image.shape[1]}x{image.shape[0]} but its label map {lab} is "
                        f"{mask.shape[1]}x{mask.shape[0]}; the pair must have one size (replace the label map "
                        "with the dataset's own)")
    return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask)


def files_fingerprint(pairs: Sequence[tuple[Path, Path]]) -> str:
    """Names and sizes of every file read (hashing the contents of a 2 GB dataset would take minutes)."""
    h = hashlib.sha256()
    for img, lab in pairs:
        for p in (img, lab):
            h.update(f"{p.parent.name}/{p.name}:{p.stat().st_size};".encode())
    return h.hexdigest()[:16]


# --- Stanford Background ---------------------------------------------------------------------------


def find_stanford(data_dir) -> Path:
    base = _need_dir(data_dir)
    root = _first_root([base / "iccv09Data", base / "stanford_background" / "iccv09Data",
                        base / "stanford_background", base], ["images", "labels"])
    if root is None:
        raise UserError(f"stanford_background needs the iccv09Data folder in {base}: iccv09Data/images/*.jpg and "
                        "iccv09Data/labels/*.regions.txt; pass --data-dir")
    return root


def stanford_pairs(root: Path) -> list[tuple[Path, Path]]:
    images = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"stanford_background: no images in {root / 'images'}")
    pairs = []
    for p in images:
        label = root / "labels" / f"{p.stem}.regions.txt"
        if not label.exists():
            raise UserError(f"stanford_background: image {p} has no label file {label}")
        pairs.append((p, label))
    return pairs


def read_regions(path: Path) -> np.ndarray:
    """A regions.txt file as uint8 (H, W): 0..7, and -1 (unknown) mapped to the ignore index."""
    try:
        a = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise UserError(f"stanford_background: cannot parse {path}: {one_line(e, 160)}") from None
    if a.size and (a.min() < -1 or a.max() >= len(STANFORD_CLASSES)):
        raise UserError(f"stanford_background: {path} holds values outside -1..{len(STANFORD_CLASSES) - 1}")
    return np.where(a < 0, IGNORE_INDEX, a).astype(np.uint8)


def load_stanford(pairs: Sequence[tuple[Path, Path]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    images, masks = [], []
    for img, lab in pairs:
        x, m = read_image(img), read_regions(lab)
        if x.shape[:2] != m.shape:
            raise UserError(f"stanford_background: {img} is {x.shape[1]}x{x.shape[0]} but {lab} holds "
                            f"{m.shape[1]}x{m.shape[0]} labels; the pair must have one size (replace the label "
                            "file with the dataset's own)")
        images.append(torch.from_numpy(x).permute(2, 0, 1).contiguous())
        masks.append(torch.from_numpy(m))
    return images, masks


def holdout(indices: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded validation part of a training split: (the rest, the held-out part), each sorted. The
    held-out part is round(fraction * n) of the indices, chosen by a numpy RandomState(seed + 1)
    permutation (another stream than the train/test split's)."""
    indices = np.asarray(indices)
    perm = np.random.RandomState(seed + 1).permutation(len(indices))
    k = round(fraction * len(indices))
    return np.sort(indices[perm[k:]]), np.sort(indices[perm[:k]])


def stanford_split(n: int, train_fraction: float = 0.8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the *sorted* file list: a numpy RandomState(seed) permutation, the first
    round(0.8 n) for training (572 of the 715 images), the rest for testing; each part sorted."""
    perm = np.random.RandomState(seed).permutation(n)
    k = round(train_fraction * n)
    return np.sort(perm[:k]), np.sort(perm[k:])
