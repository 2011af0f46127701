"""Segmentation: the adapter's loss and metrics against hand computations, the dataset readers on tiny
datasets written here in the official layouts (CamVid on the real files when ../shared is there),
joint augmentation alignment, the DeepLabV3 wrapper and its weights options, SegPGD/PGD/FGSM on a
tiny trained model, and SAM / AT training a tiny segmentation model end to end."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TinySeg, colour_data, fit

from suite.attacks.base import AttackSpec
from suite.attacks.engine import pgd
from suite.attacks.segpgd import segpgd, segpgd_lambda, segpgd_loss
from suite.config import DataBundle, TaskOptions, TrainConfig
from suite.data import segmentation as segdata
from suite.errors import UserError
from suite.modalities.segmentation import IGNORE_INDEX, Segmentation
from suite.registry import ATTACKS, METHODS, MODALITIES, TASKS
from suite.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared"
CAMVID = SHARED / "data" / "camvid"
IGN = IGNORE_INDEX


pytestmark = pytest.mark.usefixtures("cache_in_tmp")  # caches in tmp_path, no downloads (conftest)


def one_hot_logits(pred: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(pred, k).permute(0, 3, 1, 2).float() * 5.0


# --- metrics and loss ------------------------------------------------------------------------------
def test_confusion_matrix_and_metrics_match_a_hand_computation():
    adapter = MODALITIES.get("segmentation")()
    k = 4  # class 3 never appears (neither true nor predicted); class 2 is only ever predicted
    mask = torch.tensor([[[0, 0, 1, IGN],
                          [1, 1, 0, 0]],
                         [[IGN, IGN, IGN, IGN],
                          [IGN, IGN, IGN, IGN]],
                         [[0, 1, 1, 1],
                          [IGN, 0, 0, 1]]])
    pred = torch.tensor([[[0, 1, 1, 3],        # the pixel predicted 3 is ignored
                          [1, 2, 0, 0]],
                         [[0, 1, 2, 0],
                          [1, 1, 1, 1]],
                         [[0, 1, 1, 1],
                          [2, 0, 2, 0]]])
    batch = (torch.zeros(3, 3, 2, 4), mask)
    stats = adapter.example_stats(one_hot_logits(pred, k), batch)
    assert stats.dtype == torch.int64 and stats.shape == (3, k, k)
    # image 0, valid pixels (true, pred): (0,0) (0,1) (1,1) (1,1) (1,2) (0,0) (0,0)
    want0 = torch.tensor([[3, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    # image 2: (0,0) (1,1) (1,1) (1,1) (0,0) (0,2) (1,0)
    want2 = torch.tensor([[2, 0, 1, 0], [1, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(stats[0], want0)
    assert torch.equal(stats[1], torch.zeros(k, k, dtype=torch.int64))
    assert torch.equal(stats[2], want2)

    # per-image pixel accuracy; the image without a valid pixel scores 1 (never a worst case)
    assert torch.allclose(adapter.example_score(stats), torch.tensor([5 / 7, 1.0, 5 / 7]))
    assert torch.allclose(adapter.correct(one_hot_logits(pred, k), batch), torch.tensor([5 / 7, 1.0, 5 / 7]))

    # summed: [[5,1,1,0],[1,5,1,0],[0,0,0,0],[0,0,0,0]]
    # IoU0 = 5/(7+6-5) = 5/8, IoU1 = 5/(7+6-5) = 5/8, IoU2 = 0/(0+2-0) = 0, class 3 absent -> None
    m = adapter.summarize(stats)
    assert m["per_class_iou"][3] is None
    assert m["per_class_iou"][:3] == pytest.approx([62.5, 62.5, 0.0])
    assert m["mIoU"] == pytest.approx(100 * (5 / 8 + 5 / 8 + 0) / 3)
    assert m["pixel_accuracy"] == pytest.approx(100 * 10 / 14)
    assert m["mean_class_accuracy"] == pytest.approx(100 * (5 / 7 + 5 / 7) / 2)  # classes in the truth only
    assert adapter.metric == "mIoU" and adapter.attack_only_correct is False
    # the worst case per image takes the lower score; the robust matrix sums the chosen images' matrices
    assert math.isnan(adapter.summarize(stats[:0])["mIoU"])


def test_loss_reductions_are_per_valid_pixel_and_per_image():
    adapter = Segmentation()
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    mask = torch.randint(0, 4, (3, 5, 6))
    mask[0, :2] = IGN
    mask[1] = IGN  # no valid pixel
    batch = (torch.zeros(3, 3, 5, 6), mask)
    logp = logits.log_softmax(1)
    per_image, all_terms = [], []
    for n in range(3):
        terms = [-logp[n, mask[n, i, j], i, j] for i in range(5) for j in range(6) if mask[n, i, j] != IGN]
        all_terms += terms
        per_image.append(sum(terms) / len(terms) if terms else torch.tensor(0.0, dtype=torch.float64))
    per_image = torch.stack(per_image)
    assert torch.allclose(adapter.loss(logits, batch, "none"), per_image)
    assert torch.allclose(adapter.loss(logits, batch, "sum"), per_image.sum())
    assert torch.allclose(adapter.loss(logits, batch, "mean"), sum(all_terms) / len(all_terms))
    empty = (batch[0][1:2], mask[1:2])
    assert adapter.loss(logits[1:2], empty, "mean").item() == 0.0


def test_uint8_batches_become_float_and_int64():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    m = torch.full((2, 4, 4), IGN, dtype=torch.uint8)
    xd, md = Segmentation().to_device((x, m), "cpu")
    assert xd.dtype == torch.float32 and xd.max().item() == 1.0
    assert md.dtype == torch.int64 and md.max().item() == IGN


# --- joint augmentation ----------------------------------------------------------------------------
def blocky_image(seed: int, h: int = 48, w: int = 64, block: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Piecewise-constant colours; the label is a function of the pixels: red > 0.5."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(3, h // block, w // block, generator=g) * 0.8 + 0.1
    x = small.repeat_interleave(block, 1).repeat_interleave(block, 2)
    return x, (x[0] > 0.5).long()


def agreement(x: torch.Tensor, mask: torch.Tensor) -> float:
    valid = mask != IGN
    return ((x[0] > 0.5).long() == mask)[valid].float().mean().item()


def test_joint_augmentation_keeps_image_and_mask_aligned():
    x, m = blocky_image(0)
    # no scaling: crop and flip are exact, and padded pixels are ignore (mask) and 0 (image)
    exact = segdata.JointAugment(crop=(56, 40), scale=(1.0, 1.0))
    for u in ([0.0, 0.3, 0.9, 0.2], [0.0, 0.99, 0.0, 0.7]):
        xa, ma = exact.apply(x, m, u)
        assert xa.shape == (3, 56, 40) and ma.shape == (56, 40)
        assert (ma[48:] == IGN).all() and (xa[:, 48:] == 0).all()  # 48 rows high: 8 rows padded
        assert agreement(xa, ma) == 1.0
        assert (ma != IGN).sum() == 48 * 40
    # random scales: bilinear images and nearest-exact masks agree except at block edges
    scaled = segdata.JointAugment(crop=(40, 40), scale=(0.5, 2.0))
    gen = torch.Generator().manual_seed(1)
    unpadded = 0
    for _ in range(10):
        u = torch.rand(4, generator=gen).tolist()
        xa, ma = scaled.apply(x, m, u)
        assert xa.shape == (3, 40, 40)
        assert agreement(xa, ma) > 0.95
        # a misaligned pair (mask flipped alone) disagrees far more, so the check has teeth
        if (ma != IGN).all():
            unpadded += 1
            assert agreement(xa, ma.flip(-1)) < 0.9
    assert unpadded >= 3


def test_batch_augment_is_a_function_of_the_generator():
    xs, ms = zip(*(blocky_image(s) for s in range(4)))
    batch = (torch.stack(xs), torch.stack(ms))
    aug = segdata.BatchAugment(segdata.JointAugment(crop=(32, 32), scale=(0.75, 1.5)))
    a = aug(batch, torch.Generator().manual_seed(5))
    b = aug(batch, torch.Generator().manual_seed(5))
    c = aug(batch, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (4, 3, 32, 32) and a[1].shape == (4, 32, 32)
    for xi, mi in zip(*a):
        assert agreement(xi, mi) > 0.95


def test_per_sample_augmentation_draws_from_the_global_rng():
    x, m = blocky_image(2)
    ds = segdata.SegmentationDataset([(x * 255).round().to(torch.uint8)], [m.to(torch.uint8)],
                                     augment=segdata.JointAugment(crop=(32, 32), scale=(0.5, 2.0)))
    torch.manual_seed(3)
    a = ds[0]
    torch.manual_seed(3)
    b = ds[0]
    assert a[0].dtype == torch.uint8 and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert agreement(a[0].float() / 255, a[1].long()) > 0.95


def test_pad_collate_pads_images_with_zero_and_masks_with_ignore():
    s1 = (torch.ones(3, 2, 3, dtype=torch.uint8), torch.zeros(2, 3, dtype=torch.uint8))
    s2 = (torch.ones(3, 4, 2, dtype=torch.uint8), torch.ones(4, 2, dtype=torch.uint8))
    x, m = segdata.pad_collate([s1, s2])
    assert x.shape == (2, 3, 4, 3) and m.shape == (2, 4, 3)
    assert (x[0, :, 2:] == 0).all() and (m[0, 2:] == IGN).all() and (m[1, :, 2] == IGN).all()
    assert (m[0, :2] == 0).all() and (x[1, :, :, :2] == 1).all()


# --- readers on tiny datasets in the official layouts ----------------------------------------------
def voc_palette() -> list[int]:
    """The VOC colour map (bit-interleaved), so that label colours differ from label indices."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_voc(root: Path, n: int = 6) -> dict[str, np.ndarray]:
    from PIL import Image

    voc = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    labels = {}
    for i in range(n):
        h, w = 20 + 2 * i, 30 - i  # sizes differ, as in VOC
        name = f"2007_{i:06d}"
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        lab = rng.randint(0, 21, (h, w)).astype(np.uint8)
        lab[0] = 255  # boundary
        p = Image.fromarray(lab, mode="P")
        p.putpalette(voc_palette())
        p.save(voc / "SegmentationClass" / f"{name}.png")
        Image.fromarray(lab, mode="L").save(voc / "SegmentationClassAug" / f"{name}.png")
        labels[name] = lab
    names = sorted(labels)
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(names[:4]) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(names[4:]) + "\n")
    (voc / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(names[:4]) + "\n")
    return labels


def test_voc_reader_reads_palette_indices_and_builds_both_tasks(tmp_path):
    labels = write_voc(tmp_path)
    data = TASKS.get("voc").build_data(TaskOptions(data_dir=tmp_path))
    assert len(data.train) == 4 and len(data.test) == 2
    x, m = data.test[0]
    want = labels["2007_000004"]
    assert x.dtype == torch.uint8 and x.shape == (3,) + want.shape
    assert np.array_equal(m.numpy(), want)  # the palette indices, not the RGB colours
    torch.manual_seed(0)
    xt, mt = data.train[0]
    assert xt.shape == (3, 513, 513) and mt.shape == (513, 513)
    assert (mt == IGN).float().mean() > 0.9  # a tiny image padded to the 513 crop
    xb, mb = data.collate([data.test[0], data.test[1]])
    assert xb.shape[0] == 2 and mb.shape[0] == 2
    aug = TASKS.get("voc_aug").build_data(TaskOptions(data_dir=tmp_path))
    assert len(aug.train) == 4 and aug.fingerprint != data.fingerprint


def test_voc_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="JPEGImages"):
        TASKS.get("voc").build_data(TaskOptions(data_dir=tmp_path))
    write_voc(tmp_path)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets/Segmentation/train_aug.txt").write_text("2007_000000\n2007_000005\n")
    with pytest.raises(UserError, match="overlap"):
        TASKS.get("voc_aug").build_data(TaskOptions(data_dir=tmp_path))
    (voc / "SegmentationClass" / "2007_000001.png").unlink()
    with pytest.raises(UserError, match="2007_000001.png"):
        TASKS.get("voc").build_data(TaskOptions(data_dir=tmp_path))


def write_stanford(root: Path, n: int = 10) -> dict[str, np.ndarray]:
    from PIL import Image

    d = root / "iccv09Data"
    (d / "images").mkdir(parents=True)
    (d / "labels").mkdir()
    rng = np.random.RandomState(1)
    regions = {}
    for i in range(n):
        h, w = 12 + i, 16
        name = f"{9000000 + 37 * i:07d}"
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(d / "images" / f"{name}.jpg")
        r = rng.randint(-1, 8, (h, w))
        (d / "labels" / f"{name}.regions.txt").write_text("\n".join(" ".join(map(str, row)) for row in r) + "\n")
        regions[name] = r
    return regions


def test_stanford_background_reader_and_seeded_split(tmp_path):
    regions = write_stanford(tmp_path)
    data = TASKS.get("stanford_background").build_data(TaskOptions(data_dir=tmp_path))
    assert len(data.train) == 8 and len(data.test) == 2
    names = sorted(regions)
    train_idx, test_idx = segdata.stanford_split(10)
    perm = np.random.RandomState(0).permutation(10)  # the documented rule, written out
    assert list(test_idx) == sorted(perm[8:]) and list(train_idx) == sorted(perm[:8])
    x, m = data.test[0]
    want = regions[names[test_idx[0]]]
    assert x.shape == (3,) + want.shape
    assert np.array_equal(m.numpy(), np.where(want < 0, IGN, want))
    torch.manual_seed(0)
    xt, mt = data.train[0]
    assert xt.shape == (3, 240, 240) and mt.shape == (240, 240)
    # the same files give the same split and fingerprint
    assert TASKS.get("stanford_background").build_data(TaskOptions(data_dir=tmp_path)).fingerprint == data.fingerprint


def test_stanford_background_bad_labels_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="regions.txt"):
        TASKS.get("stanford_background").build_data(TaskOptions(data_dir=tmp_path))
    regions = write_stanford(tmp_path, n=3)
    name = sorted(regions)[1]
    (tmp_path / "iccv09Data" / "labels" / f"{name}.regions.txt").write_text("0 1 9\n")
    with pytest.raises(UserError, match="outside"):
        TASKS.get("stanford_background").build_data(TaskOptions(data_dir=tmp_path))


def test_camvid_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="trainannot"):
        TASKS.get("camvid").build_data(TaskOptions(data_dir=tmp_path))


@pytest.mark.skipif(not CAMVID.is_dir(), reason="../shared/data/camvid is not present")
def test_camvid_reader_on_the_real_files():
    root = segdata.find_camvid(SHARED / "data")
    assert [len(segdata.camvid_pairs(root, s)) for s in ("train", "val", "test")] == [367, 101, 233]
    x, m = segdata.load_camvid(root, "val", (240, 180))
    assert x.shape == (101, 3, 180, 240) and x.dtype == torch.uint8
    assert m.shape == (101, 180, 240) and m.dtype == torch.uint8
    values = set(torch.unique(m).tolist())
    assert values <= set(range(11)) | {IGN} and IGN in values  # void (11) became ignore
    assert len(values) >= 10


# --- the DeepLabV3 model ---------------------------------------------------------------------------
def test_deeplab_returns_logits_at_input_resolution_and_reports_missing_weights():
    import importlib

    from suite.models.deeplab import NO_IMAGENET, build_deeplabv3

    importlib.import_module("segmentation_models_pytorch")  # first, so its import time is not measured

    t = time.perf_counter()
    model = build_deeplabv3(5)  # default: ImageNet weights if cached, else scratch with a notice
    assert time.perf_counter() - t < 30  # offline: no minutes of hub retries
    assert model.suite_notes in ([], [NO_IMAGENET])
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 50, 70))  # not a multiple of the output stride
    assert out.shape == (2, 5, 50, 70)
    assert build_deeplabv3(5, "mobilenet_v2:scratch").suite_notes == []


def test_deeplab_loads_local_encoder_weights_and_rejects_bad_ones(tmp_path):
    from suite.models.deeplab import build_deeplabv3

    torch.manual_seed(0)
    source = build_deeplabv3(3, "mobilenet_v2:scratch")
    enc = dict(source.encoder.state_dict())
    enc["classifier.1.weight"] = torch.zeros(1000, 1280)  # torchvision checkpoints carry a classifier
    path = tmp_path / "encoder.pth"
    torch.save(enc, path)
    torch.manual_seed(1)
    loaded = build_deeplabv3(3, str(path))
    for (k, a), b in zip(source.encoder.state_dict().items(), loaded.encoder.state_dict().values()):
        assert torch.equal(a, b), k
    whole = tmp_path / "model.pt"  # a whole suite model's state dict: its encoder part is used
    torch.save(source.state_dict(), whole)
    assert torch.equal(build_deeplabv3(3, f"mobilenet_v2:{whole}").encoder.features[0][0].weight,
                       source.encoder.features[0][0].weight)
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(UserError, match="not a mobilenet_v2 encoder state dict"):
        build_deeplabv3(3, str(bad))
    with pytest.raises(UserError, match="no such encoder weights file"):
        build_deeplabv3(3, str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="expected an encoder"):
        build_deeplabv3(3, "vgg16")


# --- attacks on a tiny trained model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    """TinySeg (tests/helpers.py) trained on blocks of colour, and 16 other images."""
    torch.manual_seed(0)
    adapter = Segmentation()
    x, y = colour_data(64, 0)
    model = fit(TinySeg(), lambda m: adapter.loss(m(x), (x, y)), steps=150, lr=0.02)
    return model, adapter, colour_data(16, 1)


def miou(model, adapter, x, y) -> float:
    with torch.no_grad():
        return adapter.summarize(adapter.example_stats(model(x), (x, y)))["mIoU"]


def check_bound(x_adv, x, norm, eps):
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 1.0)])
def test_pgd_fgsm_and_segpgd_lower_miou_within_the_budget(trained, norm, eps):
    model, adapter, (x, y) = trained
    clean = miou(model, adapter, x, y)
    assert clean > 85
    batch = (x, y)
    torch.manual_seed(0)
    runs = {
        "pgd": pgd(model, adapter, batch, norm=norm, eps=eps, step_size=eps / 4, steps=10),
        "fgsm": pgd(model, adapter, batch, norm=norm, eps=eps, step_size=eps, steps=1, random_init=False),
        "segpgd": segpgd(model, adapter, batch, norm=norm, eps=eps, step_size=eps / 4, steps=10),
    }
    for name, x_adv in runs.items():
        check_bound(x_adv, x, norm, eps)
        assert miou(model, adapter, x_adv, y) < clean - 5, name
    # the registered SegPGD attack returns the adversarial images (evaluation scores them)
    res = ATTACKS.get("segpgd")(adapter, norm=norm, eps=eps).run(model, batch)
    check_bound(res.adversarial, x, norm, eps)
    assert miou(model, adapter, res.adversarial, y) < clean - 5


@pytest.mark.parametrize("spec", ["pgd:norm=linf,eps=8/255,steps=10", "fgsm:norm=linf,eps=8/255",
                                  "pgd:norm=l2,eps=1.0,steps=10"])
def test_registered_gradient_attacks_run_through_the_segmentation_adapter(trained, spec):
    model, adapter, (x, y) = trained
    assert "segmentation" in ATTACKS.get(spec.split(":")[0]).modalities
    attack = AttackSpec.parse(spec).build(adapter)
    torch.manual_seed(0)
    res = attack.run(model, (x, y))
    check_bound(res.adversarial, x, attack.p["norm"], attack.p["eps"])
    assert miou(model, adapter, res.adversarial, y) < miou(model, adapter, x, y) - 5


def test_segpgd_loss_matches_the_paper_formula():
    assert [segpgd_lambda(t, 4) for t in (1, 2, 3, 4)] == [0.0, 0.125, 0.25, 0.375]
    adapter = Segmentation()
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    mask = logits.argmax(1).clone()
    mask[0, 0] = (mask[0, 0] + 1) % 3  # four wrong pixels in image 0
    mask[1, 1, :2] = IGN
    lam = 0.3
    want = 0.0
    for n in range(2):
        ce = F.cross_entropy(logits[n:n + 1], mask[n:n + 1], ignore_index=IGN, reduction="none")[0]
        valid = mask[n] != IGN
        right = (logits[n].argmax(0) == mask[n]) & valid
        wrong = ~right & valid
        want += ((1 - lam) * ce[right].sum() + lam * ce[wrong].sum()) / valid.sum()
    assert torch.allclose(segpgd_loss(adapter, logits, (None, mask), lam), want)


def test_segpgd_spec_builds_only_for_segmentation():
    seg = MODALITIES.get("segmentation")()
    assert AttackSpec.parse("segpgd:norm=l2,eps=0.5").resolved(seg)["step_size"] is None
    with pytest.raises(UserError, match="segmentation"):
        AttackSpec.parse("segpgd").build(MODALITIES.get("image")())


# --- training through the adapter: SAM and AT ------------------------------------------------------
@pytest.mark.parametrize("method,params", [("sam", {"rho": 0.05}), ("at", {"norm": "linf", "eps": 4 / 255,
                                                                            "steps": 2})])
def test_sam_and_at_train_a_tiny_segmentation_model(method, params):
    x, y = colour_data(32, 2)
    data = DataBundle(train=segdata.SegmentationDataset((x * 255).round().to(torch.uint8), y.to(torch.uint8)),
                      test=None,
                      train_transform=segdata.BatchAugment(segdata.JointAugment(crop=(12, 12), scale=(0.75, 1.25))))
    cfg = TrainConfig(epochs=6, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0,
                      schedule="constant")
    torch.manual_seed(0)
    model = TinySeg()
    result = train(model, METHODS.get(method)(**params), Segmentation(), data, cfg, seed=0,
                   device=torch.device("cpu"), progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    assert 0.0 <= result.history[-1]["train_acc"] <= 1.0


def test_segmentation_tasks_are_registered_with_their_protocol():
    for name, k in (("camvid", 11), ("voc", 21), ("voc_aug", 21), ("stanford_background", 8)):
        task = TASKS.get(name)
        assert task.modality == "segmentation" and task.num_classes == k and task.needs_data_dir
        assert task.recipe.schedule == "poly"
        specs = [AttackSpec.parse(s) for s in task.evaluation]
        assert {"pgd", "segpgd"} <= {s.name for s in specs}
        budgets = {(dict(s.params)["norm"], dict(s.params)["eps"]) for s in specs if s.name == "pgd"}
        assert {("linf", "1/255"), ("linf", "2/255"), ("l2", "0.5"), ("l2", "1.0")} <= budgets  # the paper's


# --- every segmentation task end to end: the CLI's path (plan, train, evaluate, record) ---------------
def test_stanford_background_holds_out_validation_images_and_takes_a_crop(tmp_path):
    write_stanford(tmp_path, n=20)
    data = TASKS.get("stanford_background").build_data(TaskOptions(data_dir=tmp_path, crop=8))
    assert len(data.train) == 16 and len(data.val) == 2 and len(data.train_without_val) == 14
    train_idx, _ = segdata.stanford_split(20)
    fit, val = segdata.holdout(train_idx, 0.15, 0)
    assert sorted(np.concatenate([fit, val]).tolist()) == sorted(train_idx.tolist()) and not set(fit) & set(val)
    # the held-out images are evaluated at full size (image i is 12 + i rows by 16); training ones cropped
    assert tuple(data.val[0][0].shape) == (3, 12 + int(val[0]), 16)
    assert tuple(data.train_without_val[0][0].shape) == (3, 8, 8)
    torch.manual_seed(0)
    assert data.train[0][0].shape == (3, 8, 8)  # --set crop=8 reaches the augmentation


def test_crop_is_refused_outside_segmentation():
    from suite.runner import plan_run

    with pytest.raises(UserError, match="segmentation"):
        plan_run("digits", "st", overrides={"crop": "16"})
    assert plan_run("camvid", "st", overrides={"crop": "96"}).run_id != plan_run("camvid", "st").run_id


SEG_SMOKE = [("voc", "st"), ("stanford_background", "sam"), ("camvid", "at")]


@pytest.mark.parametrize("task_name, method", SEG_SMOKE)
def test_every_segmentation_task_runs_end_to_end(tmp_path, task_name, method):
    from suite.records import RecordStore
    from suite.runner import execute, plan_run

    if task_name == "voc":
        write_voc(tmp_path)
        data_dir = tmp_path
    elif task_name == "stanford_background":
        write_stanford(tmp_path)
        data_dir = tmp_path
    else:
        if not CAMVID.is_dir():
            pytest.skip(f"the real CamVid files are not at {CAMVID} (only this workspace has them)")
        data_dir = CAMVID.parent
    options = TaskOptions(data_dir=data_dir, model="mobilenet_v2:scratch")
    overrides = {"epochs": "1", "batch_size": "2", "eval_batch_size": "2", "train_examples": "4",
                 "eval_examples": "2"}
    if method == "at":
        overrides["steps"] = "1"
    plan_run(task_name, method, overrides=overrides, options=options)  # the task's own suite is valid
    plan = plan_run(task_name, method, overrides=overrides, options=options,
                    attacks=["pgd:norm=linf,eps=1/255,steps=1", "segpgd:norm=linf,eps=1/255,steps=1"])
    rec = execute(plan, RecordStore(tmp_path / "lb"), work_dir=tmp_path / "runs", device=torch.device("cpu"),
                  progress=False, log=lambda m: None)
    assert rec["status"] == "complete" and rec["metrics"]["metric"] == "mIoU"
    assert rec["cost"]["steps"] == 2 and rec["metrics"]["n"] == 2
    clean = rec["metrics"]["clean"]
    assert 0 <= rec["metrics"]["worst_case"] <= clean <= 100
    assert [a["label"] for a in rec["metrics"]["attacks"]] == ["PGD-1 linf 1/255", "SegPGD-1 linf 1/255"]
    # the board names each class and shows its IoU, clean and under each attack, as recorded
    from suite.leaderboard import render
    from suite.registry import TASKS

    task = TASKS.get(task_name)
    lines = render(task, [rec]).splitlines()
    assert "| method | evaluated on | " + " | ".join(task.class_names) + " |" in lines
    assert len(task.class_names) == task.num_classes
    label = rec["method"]["label"]
    for col, metrics in [("clean", rec["metrics"]["clean_metrics"])] + [
            (a["label"], a["metrics"]) for a in rec["metrics"]["attacks"]]:
        cells = ["–" if v is None else f"{v:.1f}" for v in metrics["per_class_iou"]]
        assert f"| {label} | {col} | " + " | ".join(cells) + " |" in lines
    assert not any(line.startswith("Recorded by the runs") for line in lines)  # mobilenet_v2:scratch: no note
    noted = render(task, [dict(rec, notes=["trained from scratch: no ImageNet weights"])])
    assert "Recorded by the runs (all rows): trained from scratch: no ImageNet weights." in noted.splitlines()
    # the protocol names a training crop set away from the task's own (--set crop=N), and only then
    assert "training: epochs 1, batch 2, sgd" in "".join(lines)
    cropped = render(task, [dict(rec, train=dict(rec["train"], crop=96))])
    assert "training: epochs 1, batch 2, crop 96, sgd" in cropped
