"""Image classification tasks: dataset readers (official layouts written here, and the real copies in
../shared/data when present), batch augmentation, architectures, the third-party ResNet-18
checkpoint, and an end-to-end run of every task on tiny data through the runner."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from suite.data import images
from suite.data.augment import CropFlip
from suite.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared"
SAMPLES = SHARED / "data" / "cifar_samples"
CIFAR10_JPEG = SHARED / "data" / "cifar10_jpeg"
TINY = SHARED / "data" / "tiny-imagenet-200"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"{SAMPLES} not present")


pytestmark = pytest.mark.usefixtures("cache_in_tmp")  # caches in tmp_path, no downloads (conftest)


def load_samples(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """The real PNGs `<prefix>_NN_L.png` as (N, 32, 32, 3) uint8 in test-index order, and labels."""
    files = sorted(SAMPLES.glob(f"{prefix}_*.png"), key=lambda f: int(f.stem.split("_")[1]))
    x = np.stack([np.array(Image.open(f).convert("RGB")) for f in files])
    y = np.array([int(f.stem.split("_")[2]) for f in files])
    return x, y


def write_batch(path: Path, x_hwc: np.ndarray, labels, label_key="labels", **extra) -> None:
    """A CIFAR python batch as the official archive has it: rows of R, G, B planes, 3072 bytes each."""
    rows = x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), -1).astype(np.uint8)
    entry = {"batch_label": "test", "data": rows, label_key: [int(v) for v in labels],
             "filenames": [f"img_{i}.png" for i in range(len(rows))], **extra}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def fake_cifar10(root: Path, n_per_batch=4, test_x=None, test_y=None, seed=0) -> dict:
    """`root/cifar-10-batches-py` with random training images (and the given test images)."""
    rng = np.random.RandomState(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = []
    for k in range(1, 6):
        x = rng.randint(0, 256, (n_per_batch, 32, 32, 3)).astype(np.uint8)
        y = rng.randint(0, 10, n_per_batch)
        write_batch(folder / f"data_batch_{k}", x, y)
        train.append((x, y))
    if test_x is None:
        test_x = rng.randint(0, 256, (8, 32, 32, 3)).astype(np.uint8)
        test_y = np.arange(8) % 10
    write_batch(folder / "test_batch", test_x, test_y)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(images.CIFAR10_CLASSES)}, f, protocol=2)
    return {"train": train, "test": (test_x, test_y)}


# --- readers ------------------------------------------------------------------------------------------

@needs_samples
def test_cifar10_pickles_give_back_the_exact_official_pixels(tmp_path):
    x, y = load_samples("cifar10")
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    written = fake_cifar10(tmp_path, test_x=x, test_y=y)
    s = images.load_cifar(tmp_path, "cifar10")
    assert s.copy == "cifar-10-batches-py" and s.fingerprint.startswith("cifar-10-batches-py:")
    xt, yt = s.splits["test"]
    assert xt.dtype == np.uint8 and xt.shape == (20, 3, 32, 32) and yt.dtype == np.int64
    assert np.array_equal(xt.transpose(0, 2, 3, 1), x) and yt.tolist() == y.tolist()
    # training batches concatenated in order data_batch_1..5
    xtr, ytr = s.splits["train"]
    assert np.array_equal(xtr.transpose(0, 2, 3, 1), np.concatenate([b[0] for b in written["train"]]))
    assert ytr.tolist() == np.concatenate([b[1] for b in written["train"]]).tolist()
    # the folder itself also works, and the datasets hold uint8 tensors
    assert images.locate_cifar(tmp_path / "cifar-10-batches-py", "cifar10")[0] == "python"
    ds = images.as_tensor_dataset(xt, yt)
    assert ds.tensors[0].dtype == torch.uint8 and ds.tensors[1].dtype == torch.int64


@needs_samples
def test_cifar100_pickles_use_the_fine_labels(tmp_path):
    x, y = load_samples("cifar100")
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    coarse = (y // 5).tolist()  # any other number: the reader must not take it
    write_batch(folder / "test", x, y, label_key="fine_labels", coarse_labels=coarse)
    write_batch(folder / "train", x[:4], y[:4], label_key="fine_labels", coarse_labels=coarse[:4])
    s = images.load_cifar(tmp_path, "cifar100")
    assert s.copy == "cifar-100-python"
    assert s.splits["test"][1].tolist() == y.tolist() and y[0] == 49
    assert np.array_equal(s.splits["test"][0].transpose(0, 2, 3, 1), x)
    assert len(images.CIFAR100_CLASSES) == 100 and list(images.CIFAR100_CLASSES) == sorted(images.CIFAR100_CLASSES)
    assert images.CIFAR100_CLASSES[49] == "mountain"  # label of the first official test image


def test_missing_data_names_the_expected_files(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py.*data_batch_1.*cifar10_jpeg.*SUITE_DOWNLOAD"):
        images.load_cifar(tmp_path, "cifar10")
    bad = tmp_path / "cifar-10-batches-py"
    fake_cifar10(tmp_path)
    (bad / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="test_batch: not a CIFAR python batch"):
        images.load_cifar(tmp_path, "cifar10")


def test_download_checks_the_md5_and_extracts_the_official_archive(tmp_path, monkeypatch):
    """SUITE_DOWNLOAD=1 fetches the archive (here a file:// URL to a tarball built in the test),
    checks its MD5 and extracts it into the data directory."""
    import hashlib
    import tarfile

    src = tmp_path / "src"
    fake_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    official = dict(images.CIFAR_SOURCES["cifar10"])
    monkeypatch.setitem(images.CIFAR_SOURCES, "cifar10", {**official, "url": archive.as_uri(), "archive_md5": "0" * 32})
    data = tmp_path / "data"
    with pytest.raises(UserError, match="not found"):  # downloads only when allowed
        images.load_cifar(data, "cifar10")
    monkeypatch.setenv("SUITE_DOWNLOAD", "1")
    with pytest.raises(UserError, match="MD5 mismatch"):
        images.load_cifar(data, "cifar10")
    monkeypatch.setitem(images.CIFAR_SOURCES, "cifar10", {**official, "url": archive.as_uri(), "archive_md5": md5})
    s = images.load_cifar(data, "cifar10")
    assert s.copy == "cifar-10-batches-py" and (data / "cifar-10-batches-py" / "test_batch").is_file()
    assert s.splits["train"][0].shape == (20, 3, 32, 32)


def write_folder(root: Path, classes, per_class=2, seed=0, ext="png") -> dict:
    rng = np.random.RandomState(seed)
    truth = {}
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.randint(0, 256, (32, 32, 3)).astype(np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i:04d}.{ext}")
                truth[(split, c, i)] = arr
    return truth


def test_image_folder_maps_names_to_the_standard_cifar10_order_and_caches(tmp_path, monkeypatch):
    root = tmp_path / "cifar10_jpeg"
    truth = write_folder(root, images.CIFAR10_CLASSES)
    s = images.load_cifar(tmp_path, "cifar10")
    assert s.copy == "cifar10_jpeg" and s.fingerprint.startswith("cifar10_jpeg:")
    x, y = s.splits["test"]
    assert y.tolist() == [k for k in range(10) for _ in range(2)]
    for k, c in enumerate(images.CIFAR10_CLASSES):  # lossless PNG: exact pixels, files in name order
        for i in range(2):
            assert np.array_equal(x[2 * k + i].transpose(1, 2, 0), truth[("test", c, i)])
    assert "decoded 40 images" in s.notes[0]
    again = images.load_cifar(tmp_path, "cifar10")
    assert "from cache" in again.notes[0] and again.fingerprint == s.fingerprint
    assert np.array_equal(again.splits["train"][0], s.splits["train"][0])
    # a changed file changes the key: decoded again, new pixels, new fingerprint
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "test" / "cat" / "0000.png")
    changed = images.load_cifar(tmp_path, "cifar10")
    assert "decoded" in changed.notes[0] and changed.fingerprint != s.fingerprint
    assert changed.splits["test"][0][6].max() == 0
    # an unwritable cache folder only means no cache
    monkeypatch.setenv("SUITE_CACHE_DIR", "/proc/no-such-dir")
    assert "not cached" in images.load_cifar(tmp_path, "cifar10").notes[0]


def test_official_pickles_are_preferred_and_wrong_class_folders_are_refused(tmp_path):
    write_folder(tmp_path / "cifar10_jpeg", images.CIFAR10_CLASSES, per_class=1)
    fake_cifar10(tmp_path)
    assert images.load_cifar(tmp_path, "cifar10").copy == "cifar-10-batches-py"
    other = tmp_path / "other"
    write_folder(other, [c if c != "cat" else "kitten" for c in images.CIFAR10_CLASSES], per_class=1)
    with pytest.raises(UserError, match="unexpected: kitten; missing: cat"):
        images.load_cifar(other, "cifar10")


def test_image_folder_reads_like_torchvision_imagefolder(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    root = tmp_path / "f"
    write_folder(root, ["b", "a", "c"], per_class=3)
    (root / "train" / "a" / ".DS_Store").write_text("not an image")  # hidden: skipped, as ImageFolder does
    s = images.read_image_folder(root, ("train",), cache=False)
    ref = torchvision.datasets.ImageFolder(root / "train")
    assert list(s.classes) == ref.classes
    assert s.splits["train"][1].tolist() == ref.targets
    for i in (0, 4, 8):
        assert np.array_equal(s.splits["train"][0][i].transpose(1, 2, 0), np.array(ref[i][0]))


def write_tiny(root: Path, wnids=("n03", "n01", "n02"), train=True) -> dict:
    rng = np.random.RandomState(1)
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")  # not sorted, as in the real file
    truth = {}
    if train:
        for w in wnids:
            (root / "train" / w / "images").mkdir(parents=True)
            for i in range(2):
                arr = rng.randint(0, 256, (64, 64, 3)).astype(np.uint8)
                # PNG bytes under the official .JPEG name: lossless, so pixels can be compared exactly
                Image.fromarray(arr).save(root / "train" / w / "images" / f"{w}_{i}.JPEG", format="PNG")
                truth[("train", w, i)] = arr
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(["n02", "n03", "n01", "n02"]):
        if i == 1:  # one grayscale image, as the real copy has
            g = rng.randint(0, 256, (64, 64)).astype(np.uint8)
            Image.fromarray(g, mode="L").save(root / "val" / "images" / f"val_{i}.JPEG", format="PNG")
            truth[("val", i)] = np.repeat(g[:, :, None], 3, axis=2)
        else:
            arr = rng.randint(0, 256, (64, 64, 3)).astype(np.uint8)
            Image.fromarray(arr).save(root / "val" / "images" / f"val_{i}.JPEG", format="PNG")
            truth[("val", i)] = arr
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return truth


def test_tiny_imagenet_labels_are_sorted_wnid_positions_and_grey_becomes_rgb(tmp_path):
    truth = write_tiny(tmp_path / "tiny-imagenet-200")
    s = images.load_tiny_imagenet(tmp_path)
    assert s.classes == ("n01", "n02", "n03") and s.fingerprint.startswith("tiny-imagenet-200:")
    xv, yv = s.splits["val"]
    assert xv.shape == (4, 3, 64, 64) and yv.tolist() == [1, 2, 0, 1]  # annotation order, sorted-wnid index
    for i in range(4):
        assert np.array_equal(xv[i].transpose(1, 2, 0), truth[("val", i)])
    xt, yt = s.splits["train"]
    assert yt.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(xt[0].transpose(1, 2, 0), truth[("train", "n01", 0)])


def test_tiny_imagenet_without_train_says_so_in_one_line(tmp_path):
    write_tiny(tmp_path / "tiny-imagenet-200", train=False)
    with pytest.raises(UserError, match="train split is missing") as e:
        images.load_tiny_imagenet(tmp_path)
    assert "\n" not in str(e.value)
    assert images.load_tiny_imagenet(tmp_path, ("val",)).splits["val"][1].tolist() == [1, 2, 0, 1]


@pytest.mark.skipif(not TINY.is_dir(), reason=f"{TINY} not present")
def test_real_tiny_imagenet_copy_has_only_val():
    with pytest.raises(UserError, match="train split is missing"):
        images.load_tiny_imagenet(TINY.parent)
    ann = (TINY / "val" / "val_annotations.txt").read_text().splitlines()
    assert len(ann) == 10_000 and len((TINY / "wnids.txt").read_text().split()) == 200


@pytest.mark.skipif(not CIFAR10_JPEG.is_dir(), reason=f"{CIFAR10_JPEG} not present")
def test_real_cifar10_jpeg_copy_counts_and_pixels():
    for split, per_class in (("train", 5000), ("test", 1000)):
        classes, samples = images.list_image_folder(CIFAR10_JPEG / split)
        assert tuple(classes) == images.CIFAR10_CLASSES
        assert len(samples) == 10 * per_class
        assert np.bincount([c for _, c in samples]).tolist() == [per_class] * 10
    few = [samples[i][0] for i in (0, 1, 4321, 9999)]
    x = images.decode_images(few, (32, 32))
    for f, img in zip(few, x):
        assert np.array_equal(img.transpose(1, 2, 0), np.array(Image.open(f).convert("RGB")))
    assert few[0].name == "0000.jpg" and few[0].parent.name == "airplane"


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10_JPEG.is_dir(), reason=f"{CIFAR10_JPEG} not present")
def test_real_cifar10_jpeg_full_decode():
    s = images.load_cifar(CIFAR10_JPEG.parent, "cifar10")
    assert s.copy == "cifar10_jpeg"
    assert s.splits["train"][0].shape == (50_000, 3, 32, 32) and s.splits["test"][0].shape == (10_000, 3, 32, 32)
    assert np.bincount(s.splits["test"][1]).tolist() == [1000] * 10


# --- augmentation -------------------------------------------------------------------------------------

def reference_crop_flip(x, dy, dx, flip, pad=4):
    """One image at a time with Python loops: the zero-padded image, a window at (dy, dx), a flip."""
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for k in range(n):
        padded = torch.zeros(c, h + 2 * pad, w + 2 * pad)
        padded[:, pad:pad + h, pad:pad + w] = x[k]
        for i in range(h):
            for j in range(w):
                out[k, :, i, j] = padded[:, dy[k] + i, dx[k] + j]
        if flip[k]:
            out[k] = out[k].flip(-1)
    return out


def test_crop_flip_is_a_shifted_window_of_the_padded_image_then_a_flip():
    x = torch.rand(16, 3, 8, 8)
    y = torch.arange(16)
    gen = torch.Generator().manual_seed(5)
    out, y2 = CropFlip(padding=4)((x, y), gen)
    # the same draws, in the documented order
    g = torch.Generator().manual_seed(5)
    dy = torch.randint(0, 9, (16,), generator=g)
    dx = torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    assert torch.equal(out, reference_crop_flip(x, dy, dx, flip)) and torch.equal(y2, y)
    # no crop: a pure flip is exactly x.flip(-1), no flip: the identity
    assert torch.equal(CropFlip(padding=0, flip_p=1.0)((x, y), gen)[0], x.flip(-1))
    assert torch.equal(CropFlip(padding=0, flip_p=0.0)((x, y), gen)[0], x)


def test_crop_flip_is_deterministic_and_draws_offsets_and_flips_at_the_right_rates():
    x = torch.rand(4000, 1, 4, 4) + 1.0  # strictly positive, so zeros mark the padding
    y = torch.zeros(4000, dtype=torch.long)
    a = CropFlip()((x, y), torch.Generator().manual_seed(0))[0]
    b = CropFlip()((x, y), torch.Generator().manual_seed(0))[0]
    c = CropFlip()((x, y), torch.Generator().manual_seed(1))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # 4x4 images padded by 4 (12x12): a 4x4 window at offset d in 0..8 overlaps the image (rows 4..7)
    # iff d is in 1..7, so the crop is all padding with probability 1 - (7/9)^2
    all_pad = (a == 0).flatten(1).all(1).float().mean().item()
    assert abs(all_pad - (1 - (7 / 9) ** 2)) < 0.03, all_pad
    # flips: with no padding, each image is itself or its mirror, about half of each
    z = torch.rand(4000, 1, 4, 4)
    out = CropFlip(padding=0)((z, y), torch.Generator().manual_seed(2))[0]
    flipped = (out == z.flip(-1)).flatten(1).all(1)
    same = (out == z).flatten(1).all(1)
    assert bool((flipped | same).all()) and abs(flipped.float().mean().item() - 0.5) < 0.03


# --- architectures ------------------------------------------------------------------------------------

def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def preact_resnet18_count(num_classes: int) -> int:
    """By hand: stem, four stages of two pre-activation blocks, final BN, linear head."""
    def block(cin, cout):
        return 2 * cin + 9 * cin * cout + 2 * cout + 9 * cout * cout + (cin * cout if cin != cout else 0)
    stages = sum(block(cin, cout) + block(cout, cout) for cin, cout in ((64, 64), (64, 128), (128, 256), (256, 512)))
    return 27 * 64 + stages + 2 * 512 + 512 * num_classes + num_classes


def test_preact_resnet18_parameter_count_and_shapes():
    from suite.models.layers import CIFAR10_MEAN, CIFAR10_STD
    from suite.models.preact_resnet import preact_resnet18

    m = preact_resnet18(10, CIFAR10_MEAN, CIFAR10_STD)
    # 11,172,170: the reference PreActResNet-18 (Wong et al.'s code), final BatchNorm(512) included
    assert n_params(m) == preact_resnet18_count(10) == 11_172_170
    assert n_params(preact_resnet18(100)) == preact_resnet18_count(100)
    m.eval()
    with torch.no_grad():
        assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        assert preact_resnet18(200).eval()(torch.rand(2, 3, 64, 64)).shape == (2, 200)  # Tiny ImageNet
    assert isinstance(m.normalize, torch.nn.Module) and "normalize.mean" in m.state_dict()


def test_normalize_is_the_first_layer():
    from suite.models.layers import Normalize
    from suite.models.preact_resnet import preact_resnet18

    m = preact_resnet18(10, (0.5, 0.25, 0.0), (0.5, 0.5, 2.0)).eval()
    x = torch.rand(2, 3, 32, 32)
    seen = {}

    def keep_input(mod, inp, out):
        seen["in"] = inp[0]

    m.conv1.register_forward_hook(keep_input)
    m(x)
    expected = (x - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.5, 2.0]).view(1, 3, 1, 1)
    assert torch.allclose(seen["in"], expected)
    assert isinstance(m.normalize, Normalize)


@pytest.mark.slow
def test_wrn_28_10_parameter_count_and_backward():
    from suite.models.wide_resnet import wrn_28_10

    m = wrn_28_10(10, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert n_params(m) == 36_479_194  # RobustBench's / TRADES' WRN-28-10
    out = m(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert m.conv1.weight.grad is not None


def test_wrn_counts_by_hand_on_a_small_instance():
    from suite.models.wide_resnet import WideResNet

    m = WideResNet(depth=10, widen_factor=2, num_classes=10)  # one block per group: 32, 64, 128 channels
    def block(cin, cout):
        return 2 * cin + 9 * cin * cout + 2 * cout + 9 * cout * cout + (cin * cout if cin != cout else 0)
    expected = 27 * 16 + block(16, 32) + block(32, 64) + block(64, 128) + 2 * 128 + 128 * 10 + 10
    assert n_params(m) == expected
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("patch, count", [(4, 5_362_762), (2, 5_392_714)])
def test_vit_parameter_count(patch, count):
    pytest.importorskip("timm")
    from suite.models.vit import vit_tiny

    m = vit_tiny(10, patch_size=patch)
    # DeiT-tiny blocks: 12 x (2 LN + qkv + proj + 2 MLP layers), embed 192, MLP 768
    blocks = 12 * (2 * 2 * 192 + (192 * 576 + 576) + (192 * 192 + 192) + (192 * 768 + 768) + (768 * 192 + 192))
    tokens = (32 // patch) ** 2 + 1
    embed = 3 * patch * patch * 192 + 192 + 192 + tokens * 192  # patch conv, cls token, positions
    assert n_params(m) == blocks + embed + 2 * 192 + 192 * 10 + 10 == count
    if patch == 4:
        out = m(torch.rand(2, 3, 32, 32))
        assert out.shape == (2, 10)
        out.sum().backward()


def test_small_resnet_shapes_and_count():
    from suite.models.small_resnet import small_resnet

    m = small_resnet(10)
    def cbn(cin, cout):
        return 9 * cin * cout + 2 * cout
    s, (w1, w2, w3) = m.stem.conv.out_channels, [st.conv.out_channels for st in m.stages if hasattr(st, "conv")]
    expected = (cbn(3, s) + cbn(s, w1) + 2 * cbn(w1, w1) + cbn(w1, w2) + cbn(w2, w3) + 2 * cbn(w3, w3) + w3 * 10)
    assert n_params(m) == expected
    x = torch.rand(3, 3, 32, 32)
    out = m(x)
    assert out.shape == (3, 10)
    out.sum().backward()


# --- the pyautoattack ResNet-18 checkpoint ------------------------------------------------------------

def test_autoattack_resnet18_checkpoint_classifies_the_real_samples():
    from suite.checkpoint import load_model_weights
    from suite.models.resnet_aa import checkpoint_path, resnet18_aa

    path = checkpoint_path()
    if path is None:
        pytest.skip("pyautoattack (with its example checkpoint) is not installed")
    if not SAMPLES.is_dir():
        pytest.skip(f"{SAMPLES} not present")
    model = resnet18_aa()
    load_model_weights(model, path)
    x, y = load_samples("cifar10")
    with torch.no_grad():
        pred = model.eval()(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255).argmax(1)
    assert (pred == torch.from_numpy(y)).sum().item() >= 19  # 20/20 observed


def test_a_mismatched_state_dict_is_a_user_error(tmp_path):
    from suite.checkpoint import load_model_weights
    from suite.models.preact_resnet import preact_resnet18
    from suite.models.resnet_aa import resnet18_aa

    torch.save(preact_resnet18(10).state_dict(), tmp_path / "prn18.pt")
    with pytest.raises(UserError, match="does not fit"):
        load_model_weights(resnet18_aa(), tmp_path / "prn18.pt")


# --- tasks end to end ---------------------------------------------------------------------------------

def test_task_labels_match_the_suite_and_the_paper_rows(tmp_path):
    from suite.plugins import load_builtins
    from suite.registry import TASKS
    from suite.runner import plan_run

    load_builtins()
    task = TASKS.get("cifar10_prn18")
    plans = [plan_run("cifar10_prn18", m, method_params=p) for m, p in task.sweeps["paper_table2"]]
    labels = [p.method.label() for p in plans]
    assert labels == [r.label for r in task.reported]
    from suite.attacks.base import AttackSpec
    attack_labels = {AttackSpec.parse(s).build(plans[0].adapter).label() for s in task.evaluation}
    assert {c for r in task.reported for c in r.metrics} - {"clean"} <= attack_labels
    p = plans[10].method.p  # AT l2 64/255: the authors' step eps / 2, 5 iterations
    assert (p["norm"], p["eps"], p["step_size"], p["steps"]) == ("l2", 64 / 255, 32 / 255, 5)
    assert plans[6].method.p["steps"] == 10 and plans[6].method.p["step_size"] == 1 / 255  # linf 4/255
    assert TASKS.get("cifar100_prn18").reported[0].metrics["clean"] == 76.9


def fake_tiny_jpeg(root: Path):
    rng = np.random.RandomState(0)
    wnids = ["n02", "n01"]
    (root / "wnids.txt").parent.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids))
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.randint(0, 256, (64, 64, 3)).astype(np.uint8)).save(
                root / "train" / w / "images" / f"{w}_{i}.JPEG", format="JPEG")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i in range(4):
        Image.fromarray(rng.randint(0, 256, (64, 64, 3)).astype(np.uint8)).save(
            root / "val" / "images" / f"val_{i}.JPEG", format="JPEG")
        lines.append(f"val_{i}.JPEG\t{wnids[i % 2]}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines))


SMOKE = [
    ("cifar10_prn18", "st", {}),
    ("cifar100_prn18", "sam", {}),
    ("tinyimagenet_prn18", "st", {}),
    ("cifar10_vit", "st", {}),
    ("cifar10_cpu", "at", {"steps": "1"}),
    pytest.param("cifar10_wrn28", "st", {}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("task_name, method, extra", SMOKE)
def test_every_image_task_runs_end_to_end_on_tiny_data(tmp_path, task_name, method, extra):
    from suite.config import TaskOptions
    from suite.records import RecordStore
    from suite.registry import TASKS
    from suite.runner import execute, plan_run

    if task_name == "cifar10_vit":
        pytest.importorskip("timm")
    data = tmp_path / "data"
    if task_name == "tinyimagenet_prn18":
        fake_tiny_jpeg(data / "tiny-imagenet-200")
    elif task_name == "cifar100_prn18":
        folder = data / "cifar-100-python"
        folder.mkdir(parents=True)
        rng = np.random.RandomState(0)
        for name, n in (("train", 8), ("test", 4)):
            write_batch(folder / name, rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8),
                        rng.randint(0, 100, n), label_key="fine_labels")
    else:
        fake_cifar10(data, n_per_batch=2)
    task = TASKS.get(task_name)
    options = TaskOptions(data_dir=data)
    overrides = {"epochs": "1", "warmup_epochs": "0", "batch_size": "4", "eval_batch_size": "8", **extra}
    # the task's own evaluation suite is valid (plan_run builds every attack) ...
    plan_run(task_name, method, overrides=overrides, options=options)
    # ... and one cheap attack and one cheap analysis keep the run short
    plan = plan_run(task_name, method, overrides=overrides, options=options,
                    attacks=["pgd:norm=linf,eps=1/255,steps=1"], analyses=["sharpness:examples=4,steps=1,batch_size=4"])
    rec = execute(plan, RecordStore(tmp_path / "lb"), work_dir=tmp_path / "runs", device=torch.device("cpu"),
                  progress=False, log=lambda m: None)
    assert rec["status"] == "complete"
    assert rec["provenance"]["data_fingerprint"].split(":")[0] in (
        "cifar-10-batches-py", "cifar-100-python", "tiny-imagenet-200")
    assert 0 <= rec["metrics"]["clean"] <= 100 and len(rec["metrics"]["attacks"]) == 1
    assert task.num_classes == {"cifar100_prn18": 100, "tinyimagenet_prn18": 200}.get(task_name, 10)
