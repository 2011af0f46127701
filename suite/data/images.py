"""Image classification datasets read from their official on-disk formats, decoded once, kept in memory.

Every reader returns uint8 images `x` (N, 3, H, W) and int64 labels `y` (N,) as numpy arrays;
`as_tensor_dataset` wraps them as a `TensorDataset` (the image adapter turns uint8 into [0, 1]
floats on the device). Formats:

- CIFAR-10 `cifar-10-batches-py/` (data_batch_1..5, test_batch) and CIFAR-100 `cifar-100-python/`
  (train, test; fine labels): the pickles torchvision's CIFAR10 / CIFAR100 read, read the same way
  (pickle with latin1 encoding, rows of 3072 bytes = 3 x 32 x 32 planes) without torchvision.
- An image folder `train/<class>/*`, `test/<class>/*` read as torchvision's ImageFolder reads it:
  classes are the sub-folders sorted by name, index = position in that order; files are found by
  a sorted recursive walk and kept if their extension is an image one. A task that knows the
  standard class order (CIFAR-10: airplane .. truck) passes it and the folder names must match.
- Tiny ImageNet `tiny-imagenet-200/`: `wnids.txt`; `train/<wnid>/images/*.JPEG`;
  `val/images/*.JPEG` with labels in `val/val_annotations.txt`. Class index = position of the wnid
  in *sorted* wnids.txt (the order ImageFolder gives `train/`; the file itself is not sorted). Val
  examples come in the annotation file's order (val_0, val_1, ...). Grayscale images become RGB
  (the grey channel repeated, PIL's convert("RGB")).

Decoding tens of thousands of JPEGs takes seconds (about 110-170 us per 32x32 image with PIL on one
core here; two threads or two processes were slower on this shared 2-core machine, so decoding is
serial), so decoded arrays are cached as `.npz` in `$SUITE_CACHE_DIR/decoded/` (default
`~/.cache/suite/decoded/`), keyed by a fingerprint of the file list with sizes and modification
times. Nothing is ever written into the data directory except a download the user asked for
(`SUITE_DOWNLOAD=1`, official URLs with the MD5 sums torchvision checks).

Every load reports which copy was read, as `<copy>:<content hash>` (e.g. `cifar-10-batches-py:3f..`
or `cifar10_jpeg:9a..`), so records and leaderboards can tell a lossy JPEG copy from the official
pixels.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from suite.errors import UserError, one_line

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The fine label names of CIFAR-100 in label order (the `fine_label_names` of its `meta` file), which
# is alphabetical, so an image folder of CIFAR-100 indexes classes the same way.
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

# torchvision's IMG_EXTENSIONS (compared lower-case, as ImageFolder does)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Official archives and the MD5 sums torchvision checks.
CIFAR_SOURCES = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "archive_md5": "c58f30108f718f92721af3b95e74349a",
        "train": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
        "test": ("test_batch",),
        "label_key": "labels",
        "classes": CIFAR10_CLASSES,
        "image_folders": ("cifar10_jpeg", "cifar10", "cifar-10", "CIFAR-10-images"),
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "archive_md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "train": ("train",),
        "test": ("test",),
        "label_key": "fine_labels",
        "classes": CIFAR100_CLASSES,
        "image_folders": ("cifar100_jpeg", "cifar100", "cifar-100"),
    },
}
TINY_IMAGENET = {
    "folder": "tiny-imagenet-200",
    "url": "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    "archive_md5": "90528d7ca1a48142e341f4ef8d21d0de",
}
CACHE_FORMAT = "1"  # bump when the decoded arrays of the same files would change


@dataclass
class ImageSplits:
    """Decoded splits of one dataset copy."""
    splits: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (x uint8 N,3,H,W; y int64 N)
    classes: tuple[str, ...]
    copy: str                     # which copy: the official folder name or the image folder's name
    path: Path
    content_hash: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return f"{self.copy}:{self.content_hash}"


def content_hash(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """sha256 of every split's pixels and labels (in split-name order), 16 hex digits."""
    h = hashlib.sha256()
    for name in sorted(splits):
        x, y = splits[name]
        h.update(name.encode())
        h.update(repr(x.shape).encode())
        h.update(np.ascontiguousarray(x).data)
        h.update(np.ascontiguousarray(y.astype("<i8")).data)
    return h.hexdigest()[:16]


def as_tensor_dataset(x: np.ndarray, y: np.ndarray):
    """A TensorDataset of uint8 images and int64 labels (shares memory with the arrays)."""
    import torch
    from torch.utils.data import TensorDataset

    return TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))


# --- CIFAR pickles ------------------------------------------------------------------------------------

def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle as torchvision reads it: `data` rows of 3072 bytes (R, G, B planes of 32x32)."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {e}); expected a pickle "
                        f"with 'data' and '{label_key}' as in the official archive") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise UserError(f"{path}: 'data' has shape {data.shape} for {len(labels)} labels; "
                        "expected (N, 3072) uint8 rows, one label each")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar_python(folder: Path, kind: str) -> ImageSplits:
    """`cifar-10-batches-py` or `cifar-100-python`: {'train', 'test'} in the official order."""
    src = CIFAR_SOURCES[kind]
    folder = Path(folder)
    missing = [f for f in src["train"] + src["test"] if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{folder}: missing {', '.join(missing)} (the official {src['folder']} files)")
    splits = {}
    for split in ("train", "test"):
        parts = [read_cifar_batch(folder / f, src["label_key"]) for f in src[split]]
        splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    n_classes = len(src["classes"])
    for split, (_, y) in splits.items():
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise UserError(f"{folder}: {split} labels outside 0..{n_classes - 1}")
    out = ImageSplits(splits, src["classes"], src["folder"], folder)
    out.content_hash = content_hash(splits)
    return out


# --- image folders ------------------------------------------------------------------------------------

def list_image_folder(root: Path, strays: list[Path] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(classes, [(file, class index)]) exactly as torchvision's ImageFolder finds them. `strays`, when
    given, receives the files ImageFolder would skip silently: those without an image extension that
    are not hidden (a `notes.txt` among the images; `.DS_Store` and other dot-files are left alone)."""
    root = Path(root)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    samples = []
    for index, name in enumerate(classes):
        for dirpath, _, fnames in sorted(os.walk(root / name, followlinks=True)):
            for fname in sorted(fnames):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    samples.append((Path(dirpath) / fname, index))
                elif strays is not None and not fname.startswith("."):
                    strays.append(Path(dirpath) / fname)
    return classes, samples


def check_listing(folder: Path, classes: list[str], samples: list[tuple[Path, int]], strays: list[Path]) -> None:
    """An image folder without holes, checked from its listing before anything is decoded: every class
    folder holds images, and nothing else (a stray file is a sign of a damaged or mixed-up copy)."""
    if strays:
        more = f" (and {len(strays) - 1} more)" if len(strays) > 1 else ""
        raise UserError(f"{strays[0]}{more}: not an image file ({', '.join(IMG_EXTENSIONS)}) in the image folder "
                        f"{folder}; move it out of the dataset")
    counts = np.bincount(np.array([c for _, c in samples], dtype=np.int64), minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise UserError(f"{Path(folder) / empty[0]}{more}: the class folder holds no images; restore its files "
                        "(every class needs images in every split)")


def decode_images(files: list[Path], size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode image files to uint8 (N, 3, H, W) with PIL, converting grey/palette/CMYK to RGB.

    All images must have one size (the first file's, or `size` = (H, W)); a file of another size or
    one PIL cannot read stops with one line naming it.
    """
    from PIL import Image, UnidentifiedImageError

    if not files:
        return np.zeros((0, 3) + (size or (0, 0)), dtype=np.uint8)
    out = None
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                if im.mode != "RGB":
                    im = im.convert("RGB")
                w, h = im.size
                if out is None:
                    size = size or (h, w)
                    out = np.empty((len(files), size[0], size[1], 3), dtype=np.uint8)
                if (h, w) != tuple(out.shape[1:3]):
                    raise UserError(f"{path}: image is {h}x{w}, expected {out.shape[1]}x{out.shape[2]} "
                                    "like the others")
                # tobytes + frombuffer: cheaper than np.asarray(im) for tiny images
                out[i] = np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(h, w, 3)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            raise UserError(f"{path}: cannot decode image ({type(e).__name__}: {one_line(e, 160)}); replace it "
                            "with an intact copy of the dataset's file") from None
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def read_image_folder(root: Path, splits=("train", "test"), classes: tuple[str, ...] | None = None,
                      copy: str | None = None, size: tuple[int, int] | None = None,
                      cache: bool = True, log=None) -> ImageSplits:
    """`root/<split>/<class>/*` for each split. With `classes` (the standard label order), the
    folder names must be exactly those classes and each gets its standard index; without, indices
    are the sorted folder names (ImageFolder)."""
    root = Path(root)
    listed = {}
    for split in splits:
        if not (root / split).is_dir():
            raise UserError(f"{root}: no {split}/ folder (expected {split}/<class>/<image files>)")
        strays: list[Path] = []
        listed[split] = list_image_folder(root / split, strays)
        check_listing(root / split, *listed[split], strays)
    names = listed[splits[0]][0]
    for split in splits:
        if listed[split][0] != names:
            raise UserError(f"{root}: {split}/ has classes {listed[split][0][:5]}... but {splits[0]}/ has "
                            f"{names[:5]}...; every split needs the same class folders")
    if classes is not None:
        if sorted(names) != sorted(classes):
            extra = sorted(set(names) - set(classes))
            lacking = sorted(set(classes) - set(names))
            raise UserError(f"{root}: class folders do not match the standard classes "
                            f"(unexpected: {', '.join(extra[:5]) or 'none'}; missing: "
                            f"{', '.join(lacking[:5]) or 'none'}); expected {', '.join(classes[:10])}"
                            f"{' ...' if len(classes) > 10 else ''}")
        remap = np.array([classes.index(n) for n in names], dtype=np.int64)
    else:
        classes = tuple(names)
        remap = np.arange(len(names), dtype=np.int64)
    files = {s: [p for p, _ in listed[s][1]] for s in splits}
    labels = {s: remap[np.array([c for _, c in listed[s][1]], dtype=np.int64)] if listed[s][1]
              else np.zeros(0, np.int64) for s in splits}
    key = files_key([f for s in splits for f in files[s]], extra=f"folder|{size}|{splits}|{remap.tolist()}")
    copy = copy or root.name

    def decode():
        return {s: (decode_images(files[s], size), labels[s]) for s in splits}

    arrays, chash, note = cached_decode(key, decode, copy, cache=cache, log=log)
    out = ImageSplits(arrays, tuple(classes), copy, root, chash, [note])
    for s in splits:  # a cache hit must describe the same labels as the listing
        if not np.array_equal(out.splits[s][1], labels[s]):
            raise UserError(f"decoded cache for {root} disagrees with the folder listing; delete "
                            f"{cache_dir()} and run again")
    return out


# --- Tiny ImageNet ------------------------------------------------------------------------------------

def read_tiny_imagenet(root: Path, splits=("train", "val"), cache: bool = True, log=None) -> ImageSplits:
    """`tiny-imagenet-200/` (see the module doc for the label and order conventions)."""
    root = Path(root)
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise UserError(f"{root}: no wnids.txt (expected the tiny-imagenet-200 folder: wnids.txt, train/, val/)")
    wnids = sorted(w.strip() for w in wnids_file.read_text().split() if w.strip())
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = {}, {}
    if "train" in splits:
        train_dir = root / "train"
        if not train_dir.is_dir() or not any(train_dir.iterdir()):
            raise UserError(f"Tiny ImageNet train split is missing: {train_dir} not found or empty (expected "
                            "train/<wnid>/images/*.JPEG for the 200 wnids; this copy has only "
                            f"{', '.join(sorted(p.name for p in root.iterdir() if p.is_dir())) or 'no splits'})")
        fs, ls = [], []
        for w in wnids:
            imgs = sorted((train_dir / w / "images").glob("*.JPEG")) if (train_dir / w / "images").is_dir() else []
            if not imgs:
                raise UserError(f"Tiny ImageNet train split incomplete: no {train_dir / w / 'images'}/*.JPEG")
            fs.extend(imgs)
            ls.extend([index[w]] * len(imgs))
        files["train"], labels["train"] = fs, np.array(ls, dtype=np.int64)
    if "val" in splits:
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise UserError(f"Tiny ImageNet val split is missing: no {ann}")
        fs, ls = [], []
        for n, line in enumerate(ann.read_text().splitlines()):
            parts = line.split("\t")
            if not line.strip():
                continue
            if len(parts) < 2 or parts[1] not in index:
                raise UserError(f"{ann}:{n + 1}: expected '<file>\\t<wnid>\\t<box>' with a wnid from wnids.txt")
            fs.append(root / "val" / "images" / parts[0])
            ls.append(index[parts[1]])
        missing = [f for f in fs if not f.is_file()]
        if missing:
            raise UserError(f"Tiny ImageNet val split incomplete: {len(missing)} annotated images missing, "
                            f"e.g. {missing[0]}")
        files["val"], labels["val"] = fs, np.array(ls, dtype=np.int64)
    key = files_key([f for s in files for f in files[s]], extra=f"tiny|{splits}")

    def decode():
        return {s: (decode_images(files[s], (64, 64)), labels[s]) for s in files}

    arrays, chash, note = cached_decode(key, decode, "tiny-imagenet-200", cache=cache, log=log)
    return ImageSplits(arrays, tuple(wnids), root.name, root, chash, [note])


# --- decode cache -------------------------------------------------------------------------------------

def cache_dir() -> Path:
    env = os.environ.get("SUITE_CACHE_DIR")
    base = Path(env).expanduser() if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "suite"
    return base / "decoded"


def files_key(files: list[Path], extra: str = "") -> str:
    """Fingerprint of a file list: paths, sizes and modification times (cheap: one stat per file)."""
    h = hashlib.sha256(f"{CACHE_FORMAT}|{extra}".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def cached_decode(key: str, decode, copy: str, *, cache: bool = True, log=None):
    """(arrays, content hash, note): from `<cache_dir>/<copy>-<key>.npz` when present, else decoded
    and written there (atomically; silently skipped when the cache folder is not writable)."""
    import time

    path = cache_dir() / f"{copy}-{key}.npz"
    if cache and path.is_file():
        try:
            t0 = time.perf_counter()
            with np.load(path, allow_pickle=False) as z:
                names = [str(n) for n in z["splits"]]
                arrays = {n: (z[f"x_{n}"], z[f"y_{n}"]) for n in names}
                chash = str(z["content_hash"])
            return arrays, chash, f"decoded images read from cache {path} in {time.perf_counter() - t0:.1f} s"
        except Exception:  # a damaged cache file is decoded again and replaced
            pass
    t0 = time.perf_counter()
    if log is not None:
        log(f"decoding {copy} images once (cached afterwards in {cache_dir()}) ...")
    arrays = decode()
    chash = content_hash(arrays)
    note = f"decoded {sum(len(v[1]) for v in arrays.values())} images in {time.perf_counter() - t0:.1f} s"
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as f:
                    np.savez(f, splits=np.array(sorted(arrays)), content_hash=np.array(chash),
                             **{f"x_{n}": v[0] for n, v in arrays.items()},
                             **{f"y_{n}": v[1] for n, v in arrays.items()})
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)  # a full cache disk leaves no half-written file behind
            note += f", cached in {path}"
        except OSError:
            note += " (cache folder not writable, not cached)"
    return arrays, chash, note


# --- locating a copy, downloading ---------------------------------------------------------------------

def download_allowed() -> bool:
    return os.environ.get("SUITE_DOWNLOAD", "").strip().lower() in ("1", "true", "yes", "on")


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def download_and_extract(url: str, md5: str, dest: Path, log=None) -> None:
    """Fetch an official archive into `dest`, check its MD5, extract it there."""
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot download into {dest}: {e.strerror}; pass a writable --data-dir") from None
    if not os.access(dest, os.W_OK):
        raise UserError(f"cannot download into {dest}: not writable; pass a writable --data-dir")
    archive = dest / url.rsplit("/", 1)[-1]
    if not (archive.is_file() and _md5(archive) == md5):
        part = archive.with_name(archive.name + ".part")
        if log is not None:
            log(f"downloading {url} to {archive} ...")
        try:
            with urllib.request.urlopen(url, timeout=30) as r, open(part, "wb") as f:
                shutil.copyfileobj(r, f, length=1 << 20)
        except OSError as e:
            part.unlink(missing_ok=True)
            raise UserError(f"download of {url} failed ({e}); put the files in {dest} yourself") from None
        if _md5(part) != md5:
            part.unlink(missing_ok=True)
            raise UserError(f"download of {url}: MD5 mismatch (expected {md5}); try again")
        os.replace(part, archive)
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    else:
        with tarfile.open(archive, "r:gz") as t:
            try:
                t.extractall(dest, filter="data")
            except TypeError:  # Python without extraction filters
                t.extractall(dest)


def _is_cifar_python(folder: Path, kind: str) -> bool:
    src = CIFAR_SOURCES[kind]
    return all((folder / f).is_file() for f in src["train"] + src["test"])


def _is_image_folder(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def locate_cifar(data_dir: Path, kind: str) -> tuple[str, Path]:
    """('python' | 'folder', path) of the first copy found: the official pickles first
    (<data-dir>/cifar-10-batches-py, or <data-dir> itself), then an image folder
    (<data-dir>/cifar10_jpeg and similar names, or <data-dir> itself with train/ and test/)."""
    src = CIFAR_SOURCES[kind]
    d = Path(data_dir).expanduser()
    for cand in (d / src["folder"], d):
        if _is_cifar_python(cand, kind):
            return "python", cand
    for cand in [d / name for name in src["image_folders"]] + [d]:
        if _is_image_folder(cand):
            return "folder", cand
    return "", d


def load_cifar(data_dir: Path, kind: str, log=None) -> ImageSplits:
    """CIFAR-10 or CIFAR-100 from `data_dir` (see `locate_cifar`), downloaded when allowed."""
    src = CIFAR_SOURCES[kind]
    layout, path = locate_cifar(data_dir, kind)
    if not layout and download_allowed():
        download_and_extract(src["url"], src["archive_md5"], Path(data_dir).expanduser(), log=log)
        layout, path = locate_cifar(data_dir, kind)
    if layout == "python":
        return read_cifar_python(path, kind)
    if layout == "folder":
        return read_image_folder(path, ("train", "test"), classes=src["classes"], size=(32, 32), log=log)
    d = Path(data_dir).expanduser()
    raise UserError(
        f"{kind} not found under {d}: expected {d / src['folder']}/ with "
        f"{', '.join(src['train'] + src['test'])} (the official python version), or an image folder "
        f"{d / src['image_folders'][0]}/{{train,test}}/<class>/*.jpg; set SUITE_DOWNLOAD=1 to download "
        f"{src['url']}")


def locate_tiny_imagenet(data_dir: Path) -> Path | None:
    d = Path(data_dir).expanduser()
    for cand in (d / TINY_IMAGENET["folder"], d):
        if (cand / "wnids.txt").is_file():
            return cand
    return None


def load_tiny_imagenet(data_dir: Path, splits=("train", "val"), log=None) -> ImageSplits:
    path = locate_tiny_imagenet(data_dir)
    if path is None and download_allowed():
        download_and_extract(TINY_IMAGENET["url"], TINY_IMAGENET["archive_md5"], Path(data_dir).expanduser(), log=log)
        path = locate_tiny_imagenet(data_dir)
    if path is None:
        d = Path(data_dir).expanduser()
        raise UserError(f"Tiny ImageNet not found under {d}: expected {d / TINY_IMAGENET['folder']}/ with "
                        f"wnids.txt, train/<wnid>/images/*.JPEG and val/images + val/val_annotations.txt; "
                        f"set SUITE_DOWNLOAD=1 to download {TINY_IMAGENET['url']}")
    return read_tiny_imagenet(path, splits, log=log)
