"""Bad data caught before compute (issue 24): damaged dataset files, impossible settings, failed writes
and results of other data are refused in one line on stderr with exit code 2, before anything trains,
and a refused command leaves `--out` and `--work-dir` exactly as they were.

Every test builds its bad file or setting here, in the official layouts (tiny CamVid, VOC, Stanford
Background and CIFAR-10 image folders, Rotten Tomatoes files); a full disk is simulated by a write
that raises ENOSPC once the folder's file system is "full"."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

import suite.files
from suite.cli import main
from suite.config import DataBundle, Task, TaskOptions, TrainConfig
from suite.data.images import CIFAR10_CLASSES
from suite.errors import UserError
from suite.records import SCHEMA_VERSION, RecordStore
from suite.registry import TASKS
from suite.runner import plan_run

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = "mobilenet_v2:scratch"  # segmentation tasks: no pretrained weights needed


pytestmark = pytest.mark.usefixtures("cache_in_tmp")  # caches in tmp_path, no downloads (conftest)


def listing(*roots: Path) -> dict:
    """Every path under each root (None for a root that does not exist)."""
    return {str(r): (sorted(str(p.relative_to(r)) for p in r.rglob("*")) if r.exists() else None) for r in roots}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, argv, message: str, *, untouched: tuple[Path, ...]) -> str:
    """Run the command; it must exit 2 with one line on stderr holding `message`, and leave the
    folders as they were. Returns the line."""
    before = listing(*untouched)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    assert listing(*untouched) == before
    return err


@pytest.fixture
def no_training(monkeypatch):
    """Refusals come before any training (the runner imports suite.train.train when it trains)."""
    import suite.train

    def fail(*args, **kwargs):
        raise AssertionError("trained although the input is bad")

    monkeypatch.setattr(suite.train, "train", fail)


@pytest.fixture
def no_decoding(monkeypatch):
    """Refusals that need only a listing come before any image is decoded."""
    import suite.data.images

    def fail(*args, **kwargs):
        raise AssertionError("decoded images although the listing already shows the problem")

    monkeypatch.setattr(suite.data.images, "decode_images", fail)


# --- tiny datasets in their official layouts ------------------------------------------------------
def save_image(path: Path, h: int, w: int, seed: int) -> None:
    rng = np.random.RandomState(seed)
    Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_camvid(data: Path) -> Path:
    root = data / "camvid"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(2):
            save_image(root / split / f"{split}_{i}.jpg", 18, 24, i)
            lab = np.random.RandomState(10 + i).randint(0, 12, (18, 24)).astype(np.uint8)  # 11 = void
            Image.fromarray(lab, mode="L").save(root / f"{split}annot" / f"{split}_{i}.png")
    return root


def write_voc(data: Path) -> Path:
    voc = data / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    names = [f"2007_{i:06d}" for i in range(4)]
    for i, name in enumerate(names):
        save_image(voc / "JPEGImages" / f"{name}.jpg", 20 + i, 26, i)
        lab = np.random.RandomState(i).randint(0, 21, (20 + i, 26)).astype(np.uint8)
        lab[0] = 255
        Image.fromarray(lab, mode="L").save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(names[:2]) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(names[2:]) + "\n")
    return voc


def write_stanford(data: Path) -> Path:
    d = data / "iccv09Data"
    (d / "images").mkdir(parents=True)
    (d / "labels").mkdir()
    for i in range(5):
        save_image(d / "images" / f"{i:07d}.jpg", 12, 16, i)
        r = np.random.RandomState(i).randint(-1, 8, (12, 16))
        (d / "labels" / f"{i:07d}.regions.txt").write_text("\n".join(" ".join(map(str, row)) for row in r) + "\n")
    return d


def write_cifar_folder(data: Path, per_class: int = 1) -> Path:
    root = data / "cifar10_jpeg"
    for split in ("train", "test"):
        for k, c in enumerate(CIFAR10_CLASSES):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                save_image(root / split / c / f"{i:04d}.jpg", 32, 32, 100 * k + i)
    return root


# --- 1. damaged segmentation pairs, refused before training -----------------------------------------
SEGMENTATION_CASES = [
    # (task, damage, expected message)
    ("camvid", "label of another size", "is 24x18 but its label map"),
    ("camvid", "truncated jpeg", "cannot decode"),
    ("camvid", "label out of range", "label 12 is outside 0..10"),
    ("voc", "label of another size", "but its label map"),
    ("voc", "truncated jpeg", "cannot decode"),
    ("voc", "label out of range", "label 30 is outside 0..20"),
    ("stanford_background", "label of another size", "labels"),
    ("stanford_background", "truncated jpeg", "cannot decode"),
]


def damage_segmentation(task: str, damage: str, data: Path) -> Path:
    """Write the task's tiny dataset and damage one of its pairs; returns the damaged file."""
    if task == "camvid":
        root = write_camvid(data)
        image, label = root / "test" / "test_1.jpg", root / "testannot" / "test_1.png"
    elif task == "voc":
        voc = write_voc(data)
        image, label = voc / "JPEGImages" / "2007_000003.jpg", voc / "SegmentationClass" / "2007_000003.png"
    else:
        d = write_stanford(data)
        image, label = d / "images" / "0000003.jpg", d / "labels" / "0000003.regions.txt"
    if damage == "truncated jpeg":
        truncate(image)
        return image
    if task == "stanford_background":  # a regions file with one row too many
        label.write_text(label.read_text() + " ".join(["0"] * 16) + "\n")
        return label
    h, w = np.array(Image.open(label)).shape
    lab = np.zeros((h, w + 4) if damage == "label of another size" else (h, w), np.uint8)
    if damage == "label out of range":
        lab[1, 1] = 12 if task == "camvid" else 30
    Image.fromarray(lab, mode="L").save(label)
    return label


@pytest.mark.parametrize("task, damage, message", SEGMENTATION_CASES)
def test_damaged_segmentation_pairs_are_refused_before_training(capsys, tmp_path, no_training, task, damage,
                                                                message):
    data, out, work = tmp_path / "data", tmp_path / "out", tmp_path / "runs"
    bad = damage_segmentation(task, damage, data)
    t0 = time.perf_counter()
    err = refused(capsys, ["run", "--task", task, "--method", "st", "--data-dir", data, "--model", SCRATCH,
                           "--out", out, "--work-dir", work, "--no-progress"], message, untouched=(out, work, data))
    assert bad.name in err  # the line names the file
    assert time.perf_counter() - t0 < 60  # seconds, not a training run


def test_voc_pairs_are_checked_once_per_copy(tmp_path):
    """VOC is decoded on access, so its pairs are checked in a pass of their own before training;
    an unchanged copy is not checked again, a changed file is."""
    from suite.data import segmentation as seg

    voc = write_voc(tmp_path / "data")
    calls = []

    def read(image, label):
        calls.append(image.name)
        return seg.read_voc_pair(image, label)

    pairs = [(voc / "JPEGImages" / f"2007_00000{i}.jpg", voc / "SegmentationClass" / f"2007_00000{i}.png")
             for i in range(4)]
    seg.check_pairs(pairs, read, "voc-test")
    seg.check_pairs(pairs, read, "voc-test")
    assert len(calls) == 4  # the second pass found the record of the first
    truncate(pairs[2][0])
    with pytest.raises(UserError, match="2007_000002.jpg: cannot decode"):
        seg.check_pairs(pairs, read, "voc-test")


# --- 2. image folders with holes, refused from the listing ------------------------------------------
@pytest.mark.parametrize("hole, message", [
    ("empty train class", "train/cat: the class folder holds no images"),
    ("empty test class", "test/ship: the class folder holds no images"),
    ("stray file", "notes.txt"),
])
def test_image_folder_holes_are_refused_before_decoding(capsys, tmp_path, no_training, no_decoding, hole, message):
    data, out, work = tmp_path / "data", tmp_path / "out", tmp_path / "runs"
    root = write_cifar_folder(data)
    if hole == "empty train class":
        (root / "train" / "cat" / "0000.jpg").unlink()
    elif hole == "empty test class":
        (root / "test" / "ship" / "0000.jpg").unlink()
    else:
        (root / "train" / "dog" / "notes.txt").write_text("where these images came from")
    refused(capsys, ["run", "--task", "cifar10_cpu", "--method", "st", "--data-dir", data, "--out", out,
                     "--work-dir", work, "--no-progress"], message, untouched=(out, work, data))


# --- 3. settings that cannot work, refused when the run is planned -----------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--method", "awp", "--warmup", "2", "--set", "epochs=2"], "every epoch would be plain PGD-AT"),
    (["--method", "awp", "--warmup", "5", "--set", "epochs=2"], "awp --warmup 5 with epochs=2"),
    (["--method", "at", "--set", "amp=fp16"], "method at does not support amp=fp16"),
    (["--method", "trades", "--set", "amp=fp16"], "method trades does not support amp=fp16"),
    (["--method", "st", "--set", "sync_bn=true", "--device", "cpu"], "sync_bn=true needs CUDA"),
])
def test_settings_that_cannot_work_are_refused_at_once(capsys, tmp_path, no_training, argv, message):
    out, work = tmp_path / "out", tmp_path / "runs"
    t0 = time.perf_counter()
    refused(capsys, ["run", "--task", "digits", *argv, "--out", out, "--work-dir", work, "--no-progress"], message,
            untouched=(out, work))
    assert time.perf_counter() - t0 < 30  # decided with the other checks, not after data and training


def test_a_warmup_below_the_epochs_is_accepted():
    plan = plan_run("digits", "awp", method_params={"warmup": 1}, overrides={"epochs": "2"})
    assert plan.method.p["warmup"] == 1


# --- 4. refusals touch nothing ----------------------------------------------------------------------
@pytest.mark.parametrize("files", ["missing", "empty"])
def test_rotten_tomatoes_refusals_touch_nothing(capsys, tmp_path, no_training, files):
    data, out, work, model = tmp_path / "data", tmp_path / "out", tmp_path / "runs", tmp_path / "model"
    (data / "rotten_tomatoes").mkdir(parents=True)
    model.mkdir()  # a local model folder: the data is what is wrong
    if files == "empty":
        for name in ("rt-polarity.pos", "rt-polarity.neg"):
            (data / "rotten_tomatoes" / name).write_text("")
    refused(capsys, ["run", "--task", "text_rt", "--method", "st", "--data-dir", data, "--model", model, "--out", out,
                     "--work-dir", work, "--no-progress"], "rt-polarity", untouched=(out, work, data))


def test_a_damaged_checkpoint_on_resume_touches_nothing(capsys, tmp_path, no_training):
    out, work = tmp_path / "out", tmp_path / "runs"
    plan = plan_run("digits", "st", overrides={"epochs": "2"})
    (work / plan.run_id).mkdir(parents=True)
    (work / plan.run_id / "checkpoint.pt").write_bytes(b"half a checkpoint")
    refused(capsys, ["run", "--task", "digits", "--method", "st", "--set", "epochs=2", "--out", out, "--work-dir",
                     work, "--no-progress"], "cannot read checkpoint", untouched=(out, work))


# --- a tiny task whose data is a file in --data-dir (a different file is different data) ------------
TOY = "_bad_data_toy"


def write_toy(data: Path, seed: int) -> None:
    rng = np.random.RandomState(seed)
    x = rng.randn(24, 4).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    data.mkdir(parents=True, exist_ok=True)
    np.savez(data / "toy.npz", x=x, y=y)


def _toy_data(options: TaskOptions) -> DataBundle:
    path = Path(options.data_dir) / "toy.npz"
    try:
        with np.load(path) as z:
            x, y = torch.from_numpy(z["x"]), torch.from_numpy(z["y"])
    except Exception as e:  # noqa: BLE001  (the test's reader: any damage is one line)
        raise UserError(f"{path}: cannot read ({type(e).__name__})") from None
    return DataBundle(train=TensorDataset(x, y), test=TensorDataset(x, y),
                      fingerprint=hashlib.sha256(path.read_bytes()).hexdigest()[:16])


def _toy_model(options):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


@pytest.fixture
def toy():
    TASKS.register(TOY, Task(name=TOY, modality="features", version="1", num_classes=2, description="test data",
                             build_data=_toy_data, build_model=_toy_model, needs_data_dir=True,
                             recipe=TrainConfig(epochs=2, batch_size=8, lr=0.05, weight_decay=0.0),
                             evaluation=("fgsm:eps=0.1",)))
    yield TOY
    TASKS.unregister(TOY)


def toy_run(data: Path, out: Path, work: Path, *extra) -> list:
    return ["run", "--task", TOY, "--method", "st", "--data-dir", data, "--out", out, "--work-dir", work,
            "--no-progress", "--analyses", *extra]


# --- 7. a full disk: one line, nothing half-written, and the run resumes ------------------------------
class FullDisk:
    """Files opened for writing under `folder` take `room` bytes, then raise ENOSPC (what a write on a
    full file system does); the bytes written before stay in the file, as on a real disk."""

    def __init__(self, folder: Path, room: int = 64):
        self.folder, self.room = Path(folder).absolute(), room
        self.real = suite.files._open

    def __call__(self, path):
        f = self.real(path)
        if not Path(path).absolute().is_relative_to(self.folder):
            return f
        outer = self

        class Full:
            def __init__(self):
                self.n = 0

            def write(self, data):
                if self.n + len(data) > outer.room:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.n += len(data)
                return f.write(data)

            def flush(self):
                f.flush()

            def close(self):
                f.close()

        return Full()


def test_a_full_work_dir_is_one_line_and_leaves_nothing(capsys, tmp_path, toy, monkeypatch):
    data, out, work = tmp_path / "data", tmp_path / "out", tmp_path / "runs"
    write_toy(data, 0)
    monkeypatch.setattr(suite.files, "_open", FullDisk(work))  # the first checkpoint write fails
    err = refused(capsys, toy_run(data, out, work), "no space left on device", untouched=(out, work))
    assert str(work) in err and "run the same command again" in err
    assert not out.exists() and not work.exists()  # not even the lock or an empty run folder


def test_a_full_out_keeps_the_finished_work_and_the_rerun_resumes(capsys, tmp_path, toy, monkeypatch):
    data, out, work = tmp_path / "data", tmp_path / "out", tmp_path / "runs"
    write_toy(data, 0)
    real_open = suite.files._open
    monkeypatch.setattr(suite.files, "_open", FullDisk(out))  # the record write fails
    err = refused(capsys, toy_run(data, out, work), "no space left on device", untouched=(out,))
    assert str(out / "records" / TOY) in err
    assert not out.exists()
    (run_dir,) = work.iterdir()
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "eval_state.pt", "model.pt"]  # no .tmp
    monkeypatch.setattr(suite.files, "_open", real_open)  # space freed
    code, stdout, err = run_cli(capsys, *toy_run(data, out, work))
    assert code == 0, err
    assert "resuming from" in stdout and "epoch 2 of 2 done" in stdout  # nothing trained again
    (rec,) = RecordStore(out).load(TOY)
    assert rec["cost"]["resumed_from_epoch"] == 2


def test_a_file_system_already_full_is_refused_before_anything(capsys, tmp_path, toy, monkeypatch, no_training):
    import shutil
    from collections import namedtuple

    data, out, work = tmp_path / "data", tmp_path / "out", tmp_path / "runs"
    write_toy(data, 0)
    work.mkdir()
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(suite.files.shutil, "disk_usage",
                        lambda p: usage(10 << 20, 10 << 20, 4096) if Path(p) == work else real(p))
    refused(capsys, toy_run(data, out, work), f"--work-dir {work}: its file system is full", untouched=(out, work))


def test_atomic_write_reports_the_cause_torch_save_hides(tmp_path, monkeypatch):
    """torch.save turns a failed write into `RuntimeError: [enforce fail at inline_container.cc]
    unexpected pos ...`; the suite reports the full disk and leaves no temporary behind."""
    from suite.checkpoint import atomic_save

    monkeypatch.setattr(suite.files, "_open", FullDisk(tmp_path, room=100))
    with pytest.raises(suite.files.DiskFull, match=f"no space left on device in {tmp_path}"):
        atomic_save({"w": torch.zeros(10_000)}, tmp_path / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == []


# --- 5. temporaries of writers that died ------------------------------------------------------------
def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_record_left_at_its_rename_is_adopted_and_stale_temporaries_removed(capsys, tmp_path, toy):
    data, out, work = tmp_path / "data", tmp_path / "out", tmp_path / "runs"
    write_toy(data, 0)
    assert run_cli(capsys, *toy_run(data, out, work))[0] == 0
    (path,) = (out / "records" / TOY).glob("*.json")
    complete = path.read_bytes()
    pid, old = dead_pid(), time.time() - 3600
    # the writer died between writing its temporary and renaming it; another died mid-write
    tmp = path.with_name(f".{path.name}.{pid}.0a1b2c3d.tmp")
    path.rename(tmp)
    half = path.with_name(f".{path.name}.{pid}.ffffffff.tmp")
    half.write_bytes(complete[:100])
    ckpt_tmp = work / path.stem / f".checkpoint.pt.{pid}.12345678.tmp"
    ckpt_tmp.write_bytes(b"part of a checkpoint")
    live = path.with_name(f".{path.name}.{os.getpid()}.87654321.tmp")  # a live writer's: left alone
    live.write_bytes(b"{")
    for p in (tmp, half, ckpt_tmp, live):
        os.utime(p, (old, old))
    code, stdout, _ = run_cli(capsys, *toy_run(data, out, work))
    assert code == 0 and "already recorded" in stdout and "is this run's record now" in stdout
    assert path.read_bytes() == complete  # adopted, not recomputed
    assert not tmp.exists() and not half.exists() and not ckpt_tmp.exists() and live.exists()
    # beside a complete record, a dead writer's temporary goes when the run is answered from it
    half.write_bytes(complete[:100])
    os.utime(half, (old, old))
    code, stdout, _ = run_cli(capsys, *toy_run(data, out, work))
    assert code == 0 and "already recorded" in stdout and not half.exists() and path.read_bytes() == complete


def test_a_fresh_temporary_of_an_unknown_writer_is_left_alone(tmp_path):
    """A writer on another machine that shares the folder is still writing it: only temporaries
    unchanged for a while are stale."""
    p = tmp_path / f".x.json.{dead_pid()}.00000000.tmp"
    p.write_text("{")
    assert suite.files.stale_temporaries(tmp_path) == []
    old = time.time() - 2 * suite.files.STALE_AFTER_S
    os.utime(p, (old, old))
    assert suite.files.stale_temporaries(tmp_path) == [p]


# --- 6. one line for the CIFAR-10-C refusal and for decode errors ------------------------------------
def test_a_truncated_jpeg_in_an_image_folder_is_one_line_naming_it(capsys, tmp_path, no_training):
    data, out, work = tmp_path / "data", tmp_path / "out", tmp_path / "runs"
    root = write_cifar_folder(data)
    truncate(root / "test" / "frog" / "0000.jpg")
    err = refused(capsys, ["run", "--task", "cifar10_cpu", "--method", "st", "--data-dir", data, "--out", out,
                           "--work-dir", work, "--no-progress"], "frog/0000.jpg: cannot decode image",
                  untouched=(out, work, data))
    assert "replace it" in err


def test_missing_cifar10_c_is_one_line_before_any_decoding(capsys, tmp_path, no_training, no_decoding):
    """--corruptions paper without the CIFAR-10-C files: refused before CIFAR-10 is decoded (item 9)."""
    data, out, work = tmp_path / "data", tmp_path / "out", tmp_path / "runs"
    write_cifar_folder(data)
    refused(capsys, ["run", "--task", "cifar10_cpu", "--method", "st", "--corruptions", "paper", "--data-dir", data,
                     "--out", out, "--work-dir", work, "--no-progress"], "CIFAR-10-C not found",
            untouched=(out, work, data))


# --- 8. results of other data are never this run's ----------------------------------------------------
def test_a_checkpoint_of_other_data_is_not_resumed(capsys, tmp_path, toy):
    a, b, work = tmp_path / "a", tmp_path / "b", tmp_path / "runs"
    write_toy(a, 0)
    write_toy(b, 1)
    assert run_cli(capsys, *toy_run(a, tmp_path / "out_a", work))[0] == 0
    (rec,) = RecordStore(tmp_path / "out_a").load(TOY)
    ckpt = torch.load(work / rec["run_id"] / "checkpoint.pt", weights_only=False)
    assert ckpt["data_fingerprint"] == rec["provenance"]["data_fingerprint"]  # the checkpoint names its data
    out_b = tmp_path / "out_b"
    refused(capsys, toy_run(b, out_b, work), "was trained on other data", untouched=(out_b, work))
    # the evaluation state alone (the checkpoint gone) is refused the same way
    (work / rec["run_id"] / "checkpoint.pt").unlink()
    refused(capsys, toy_run(b, out_b, work), "was computed on other data", untouched=(out_b, work))
    # --force trains this run from scratch on this data
    code, _, err = run_cli(capsys, *toy_run(b, out_b, work, "--force"))
    assert code == 0, err
    (rec_b,) = RecordStore(out_b).load(TOY)
    assert rec_b["provenance"]["data_fingerprint"] != rec["provenance"]["data_fingerprint"]


def test_a_record_of_other_data_is_not_reported_as_this_run(capsys, tmp_path, toy):
    a, b, out, work = tmp_path / "a", tmp_path / "b", tmp_path / "out", tmp_path / "runs"
    write_toy(a, 0)
    write_toy(b, 1)
    assert run_cli(capsys, *toy_run(a, out, work))[0] == 0
    refused(capsys, toy_run(b, out, work), "is recorded in", untouched=(out, work))
    # damaged data is read (and refused) before a record is reported
    (a / "toy.npz").write_bytes(b"not an npz")
    refused(capsys, toy_run(a, out, work), "toy.npz: cannot read", untouched=(out, work))


def test_a_sweep_checks_data_and_records_before_any_run(capsys, tmp_path, toy):
    a, b, out, work = tmp_path / "a", tmp_path / "b", tmp_path / "out", tmp_path / "runs"
    write_toy(a, 0)
    write_toy(b, 1)
    grid = tmp_path / "grid.toml"
    grid.write_text(f'task = "{TOY}"\nseeds = [0, 1]\n[[runs]]\nmethod = "st"\n')
    sweep = ["sweep", "--grid", grid, "--out", out, "--work-dir", work, "--no-progress", "--analyses"]
    assert run_cli(capsys, *sweep, "--data-dir", a)[0] == 0
    refused(capsys, [*sweep, "--data-dir", b], "from other data", untouched=(out, work))
    (a / "toy.npz").write_bytes(b"not an npz")
    refused(capsys, [*sweep, "--data-dir", a], "toy.npz: cannot read", untouched=(out, work))


def test_eval_never_reports_or_resumes_results_of_other_data(capsys, tmp_path, toy):
    a, b, out, work = tmp_path / "a", tmp_path / "b", tmp_path / "out", tmp_path / "runs"
    write_toy(a, 0)
    write_toy(b, 1)
    assert run_cli(capsys, *toy_run(a, tmp_path / "trained", work))[0] == 0
    (model,) = work.glob("*/model.pt")
    ev = ["eval", "--task", TOY, "--checkpoint", model, "--out", out, "--work-dir", work, "--no-progress",
          "--analyses"]
    assert run_cli(capsys, *ev, "--record", "--data-dir", a)[0] == 0
    refused(capsys, [*ev, "--record", "--data-dir", b], "from other data", untouched=(out, work))
    refused(capsys, [*ev, "--data-dir", b], "was computed on other data", untouched=(out, work))
    code, stdout, err = run_cli(capsys, *ev, "--data-dir", b, "--force")  # evaluated from scratch on b
    assert code == 0 and "clean accuracy" in stdout, err


def test_a_data_fault_is_found_although_the_run_is_recorded(capsys, tmp_path, no_training):
    """The real image-folder reader runs before "already recorded"."""
    data, out, work = tmp_path / "data", tmp_path / "out", tmp_path / "runs"
    root = write_cifar_folder(data)
    argv = ["run", "--task", "cifar10_cpu", "--method", "st", "--data-dir", data, "--out", out, "--work-dir", work,
            "--no-progress"]
    plan = plan_run("cifar10_cpu", "st", options=TaskOptions(data_dir=data))
    fingerprint = TASKS.get("cifar10_cpu").build_data(TaskOptions(data_dir=data)).fingerprint
    RecordStore(out).write({
        "schema": SCHEMA_VERSION, "run_id": plan.run_id, "status": "complete", "error": None,
        "task": {"name": "cifar10_cpu", "version": plan.task.version, "modality": "image"},
        "method": {"name": "st", "params": {}, "label": "ST"}, "train": {}, "seed": 0, "evaluation": {},
        "metrics": {"clean": 50.0, "n": 10, "metric": "accuracy", "attacks": []}, "cost": {},
        "provenance": {"data_fingerprint": fingerprint}})
    code, stdout, _ = run_cli(capsys, *argv)
    assert code == 0 and "already recorded" in stdout
    (root / "test" / "cat" / "0000.jpg").unlink()
    refused(capsys, argv, "test/cat: the class folder holds no images", untouched=(out, work))


def test_an_invalid_record_is_kept_aside_not_overwritten(capsys, tmp_path, toy):
    data, out, work = tmp_path / "data", tmp_path / "out", tmp_path / "runs"
    write_toy(data, 0)
    plan = plan_run(TOY, "st", analyses=[], options=TaskOptions(data_dir=data))
    path = RecordStore(out).path(TOY, plan.run_id)
    path.parent.mkdir(parents=True)
    newer = {"schema": 99, "run_id": plan.run_id, "status": "complete", "error": None,
             "task": {"name": TOY, "version": "1", "modality": "features"}, "method": {"name": "st", "params": {}},
             "train": {}, "seed": 0, "evaluation": {}, "metrics": None, "cost": {}, "provenance": {}}
    path.write_text(json.dumps(newer))  # a record of an unknown schema: `leaderboard` refuses it
    code, stdout, err = run_cli(capsys, *toy_run(data, out, work))
    assert code == 0, err
    assert "written with record schema 99" in stdout and f"kept aside as {path.name}.invalid" in stdout
    assert json.loads((path.parent / f"{path.name}.invalid").read_text()) == newer
    assert RecordStore(out).read(path)["status"] == "complete"  # the new record, and the board reads it
    assert len(RecordStore(out).load(TOY)) == 1
    # a corrupt file is kept aside too, under the next free name
    path.write_bytes(b"\x00\xff half a record")
    code, stdout, err = run_cli(capsys, *toy_run(data, out, work, "--force"))
    assert code == 0, err
    assert f"kept aside as {path.name}.invalid-2" in stdout
    assert (path.parent / f"{path.name}.invalid-2").read_bytes() == b"\x00\xff half a record"


# --- 9. what a dry run says; ignored files that are tracked -------------------------------------------
def test_sweep_dry_run_with_force_says_it_only_lists(capsys, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('task = "digits"\nseeds = [0]\nset = { epochs = 1 }\n[[runs]]\nmethod = "st"\n')
    plan = plan_run("digits", "st", overrides={"epochs": "1"}, seed=0)
    out = tmp_path / "out"
    RecordStore(out).write({
        "schema": SCHEMA_VERSION, "run_id": plan.run_id, "status": "complete", "error": None,
        "task": {"name": "digits", "version": plan.task.version, "modality": "image"},
        "method": {"name": "st", "params": {}, "label": "ST"}, "train": {}, "seed": 0, "evaluation": {},
        "metrics": {"clean": 50.0, "n": 10, "metric": "accuracy", "attacks": []}, "cost": {}, "provenance": {}})
    before = listing(out)
    code, stdout, _ = run_cli(capsys, "sweep", "--grid", grid, "--dry-run", "--force", "--out", out)
    assert code == 0 and "would run again" in stdout and "running the recorded ones again" not in stdout
    assert listing(out) == before


def test_no_ignored_file_is_tracked():
    """`.gitignore` lists the lock folders; lock files committed before it did must leave the index."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-ci", "--exclude-standard"], capture_output=True,
                             text=True, check=False)
    if tracked.returncode != 0:
        pytest.skip("git is not usable here")
    assert tracked.stdout.split() == []
