"""Per-example outcomes in run records: what every evaluated example did, clean and under each attack,
stored compactly so that any two rows evaluated on the same examples can be compared pairwise.

Two kinds of outcome, one per metric family:

- `correct` (classification: accuracy). One bool per example: right on the clean pass, and still
  right under each attack. The clean pass also keeps the predicted class of every example.
- `class_counts` (segmentation: mIoU). Per image and class, three pixel counts: true positives, pixels
  of that class in the ground truth, pixels predicted as that class (ignored pixels left out). They
  are all that mIoU, pixel accuracy and mean class accuracy need, so a metric over any resample of
  images is the metric of their summed counts, exactly as the evaluation computed it.

Arrays are stored as {"dtype", "shape", "data"}: bools packed eight to a byte, integers little-endian,
both zlib-compressed and base64-encoded. The evaluated examples are a bitset over the test split (the
split's size and the indices it marks), so a 10,000-image evaluation costs at most about 1.7 KB per
attack (measured on random bits; less where outcomes are skewed).

Only numpy here: leaderboards read outcomes without importing torch.
"""
from __future__ import annotations

import base64
import zlib
from typing import Any

import numpy as np

FORMAT = 1
KINDS = ("correct", "class_counts")
NORM_BOUNDED = "norm-bounded"  # the threat family whose worst case is the board's worst-case column
_DTYPES = {"bool": np.bool_, "uint8": np.uint8, "uint16": np.uint16, "int32": np.int32, "int64": np.int64}


class OutcomeError(ValueError):
    pass


# --- encoding ----------------------------------------------------------------------------------------

def encode(arr: np.ndarray) -> dict:
    arr = np.asarray(arr)
    if arr.dtype == np.bool_:
        name, payload = "bool", np.packbits(arr.ravel()).tobytes()
    else:
        name = next((k for k, t in _DTYPES.items() if k != "bool" and arr.dtype == t), None)
        if name is None:  # any other integer type: the smallest signed type that holds it
            name = "int32" if arr.size == 0 or (arr.min() >= -2**31 and arr.max() < 2**31) else "int64"
        payload = arr.astype(np.dtype(_DTYPES[name]).newbyteorder("<")).tobytes()
    return {"dtype": name, "shape": [int(s) for s in arr.shape],
            "data": base64.b64encode(zlib.compress(payload, 9)).decode("ascii")}


def decode(obj: Any, where: str = "array") -> np.ndarray:
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise OutcomeError(f"{where}: expected an object with dtype, shape and data")
    if obj["dtype"] not in _DTYPES:
        raise OutcomeError(f"{where}: unknown dtype {obj['dtype']!r}")
    shape = obj["shape"]
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                              for s in shape):
        raise OutcomeError(f"{where}: shape must be a list of sizes")
    try:
        raw = zlib.decompress(base64.b64decode(obj["data"], validate=True))
    except (ValueError, TypeError, zlib.error) as e:
        raise OutcomeError(f"{where}: data is not base64 zlib ({e})") from None
    size = int(np.prod(shape, dtype=np.int64))
    if obj["dtype"] == "bool":
        if len(raw) != (size + 7) // 8:
            raise OutcomeError(f"{where}: {len(raw)} bytes for {size} packed bools")
        return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=size).astype(bool).reshape(shape)
    dt = np.dtype(_DTYPES[obj["dtype"]]).newbyteorder("<")
    if len(raw) != size * dt.itemsize:
        raise OutcomeError(f"{where}: {len(raw)} bytes for {size} values of {obj['dtype']}")
    return np.frombuffer(raw, dtype=dt).astype(_DTYPES[obj["dtype"]]).reshape(shape)


# --- metrics of outcome arrays -----------------------------------------------------------------------

def metric_value(kind: str, arr: np.ndarray) -> float:
    """The headline metric (percent) of a set of examples: accuracy, or mIoU of the summed counts."""
    if kind == "correct":
        return 100.0 * float(np.mean(arr)) if len(arr) else float("nan")
    return seg_metrics(arr)["mIoU"]


def seg_metrics(counts: np.ndarray) -> dict[str, float]:
    """mIoU, pixel accuracy, mean class accuracy (percent) of per-image (N, K, 3) counts
    [tp, truth, predicted], with suite.modalities.segmentation's conventions (mIoU over the classes
    present in the truth or the predictions)."""
    tp, truth, pred = (counts.sum(axis=0, dtype=np.float64)[:, j] for j in range(3))
    union = truth + pred - tp
    present = union > 0
    total = truth.sum()
    nan = float("nan")
    return {
        "mIoU": 100.0 * float(np.mean(tp[present] / union[present])) if present.any() else nan,
        "pixel_accuracy": 100.0 * float(tp.sum() / total) if total else nan,
        "mean_class_accuracy": (100.0 * float(np.mean(tp[truth > 0] / truth[truth > 0]))
                                if (truth > 0).any() else nan),
    }


def example_score(kind: str, arr: np.ndarray) -> np.ndarray:
    """One number per example; the worst case over attacks is, per example, the lowest (classification:
    correct; segmentation: pixel accuracy, 1.0 for an image without a valid pixel)."""
    if kind == "correct":
        return arr.astype(np.float64)
    tp, total = arr[:, :, 0].sum(axis=1).astype(np.float64), arr[:, :, 1].sum(axis=1).astype(np.float64)
    return np.where(total > 0, tp / np.maximum(total, 1), 1.0)


def worst_case(kind: str, clean: np.ndarray, attacked: list[np.ndarray], covers: list[np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the examples every attack covered, per-example worst outcomes over them): per example,
    the lowest-scoring of the clean outcome and every attack's."""
    mask = np.ones(len(clean), dtype=bool)
    for c in covers:
        mask &= c
    worst, score = clean.copy(), example_score(kind, clean)
    for arr in attacked:
        s = example_score(kind, arr)
        lower = s < score
        worst[lower] = arr[lower]
        score = np.minimum(score, s)
    return mask, worst[mask]


# --- the outcomes of one record ------------------------------------------------------------------------

class Outcomes:
    """Decoded `metrics["outcomes"]` of one record."""

    def __init__(self, kind: str, split_size: int, index: np.ndarray, clean: np.ndarray,
                 predicted: np.ndarray | None, attacks: list[tuple[str, str, np.ndarray, np.ndarray]],
                 labels: np.ndarray | None = None):
        self.kind, self.split_size, self.index = kind, split_size, index
        self.clean, self.predicted, self.labels = clean, predicted, labels
        self.attacks = attacks  # (label, threat family, covered mask over the n examples, outcomes)

    @property
    def n(self) -> int:
        return len(self.clean)

    def column(self, label: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(covered mask, outcomes) of one column: 'clean', an attack label, or 'worst case'
        (the norm-bounded attacks' per-example worst case)."""
        if label == "clean":
            return np.ones(self.n, dtype=bool), self.clean
        if label == "worst case":
            fam = [(c, a) for _, threat, c, a in self.attacks if threat == NORM_BOUNDED]
            if not fam:
                return None
            mask, worst = worst_case(self.kind, self.clean, [a for _, a in fam], [c for c, _ in fam])
            full = self.clean.copy()
            full[mask] = worst
            return mask, full
        for lbl, _, cover, arr in self.attacks:
            if lbl == label:
                return cover, arr
        return None

    def prediction_histogram(self) -> np.ndarray:
        """Predicted classes on the clean pass: examples per class (segmentation: pixels per class)."""
        if self.kind == "correct":
            if self.predicted is None:
                return np.zeros(0, dtype=np.int64)
            return np.bincount(self.predicted, minlength=len(self.labels) if self.labels is not None else 1)
        return self.clean[:, :, 2].sum(axis=0)

    def to_json(self) -> dict:
        out = {"format": FORMAT, "kind": self.kind, "split_size": self.split_size,
               "index": encode(_bits(self.index, self.split_size)), "clean": encode(self.clean),
               "attacks": [{"label": lbl, "threat": threat,
                            **({} if cover.all() else {"covered": encode(cover)}),
                            "outcomes": encode(arr[cover])}
                           for lbl, threat, cover, arr in self.attacks]}
        if self.predicted is not None:
            out["predicted"] = encode(self.predicted.astype(np.uint16 if self.predicted.max(initial=0) < 2**16
                                                            else np.int32))
        if self.labels is not None:
            out["label_histogram"] = [int(v) for v in self.labels]
        return out

    @staticmethod
    def from_json(obj: Any, where: str = "outcomes") -> "Outcomes":
        def fail(msg):
            raise OutcomeError(f"{where}: {msg}")

        if not isinstance(obj, dict):
            fail("not an object")
        if obj.get("format") != FORMAT:
            fail(f"format {obj.get('format')!r}, this suite reads format {FORMAT}")
        kind = obj.get("kind")
        if kind not in KINDS:
            fail(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        size = obj.get("split_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            fail("split_size must be a positive integer")
        bits = decode(obj.get("index"), f"{where}.index")
        if bits.dtype != np.bool_ or bits.shape != (size,):
            fail(f"index must be {size} bools (a bitset over the split)")
        index = np.flatnonzero(bits)
        n = len(index)
        clean = decode(obj.get("clean"), f"{where}.clean")
        _check_shape(kind, clean, n, f"{where}.clean", fail)
        predicted = None
        if "predicted" in obj:
            predicted = decode(obj["predicted"], f"{where}.predicted").astype(np.int64)
            if predicted.shape != (n,) or (n and predicted.min() < 0):
                fail(f"predicted must be {n} class indices")
        labels = obj.get("label_histogram")
        if labels is not None:
            if not isinstance(labels, list) or not all(isinstance(v, int) and v >= 0 for v in labels) \
                    or sum(labels) != n:
                fail(f"label_histogram must be counts that add up to {n}")
            labels = np.asarray(labels, dtype=np.int64)
        attacks = []
        if not isinstance(obj.get("attacks"), list):
            fail("attacks must be a list")
        for j, a in enumerate(obj["attacks"]):
            w = f"{where}.attacks[{j}]"
            if not isinstance(a, dict) or not isinstance(a.get("label"), str) or not isinstance(a.get("threat"), str):
                fail(f"attacks[{j}] needs a label and a threat family")
            cover = decode(a["covered"], f"{w}.covered") if "covered" in a else np.ones(n, dtype=bool)
            if cover.dtype != np.bool_ or cover.shape != (n,):
                fail(f"attacks[{j}].covered must be {n} bools")
            part = decode(a.get("outcomes"), f"{w}.outcomes")
            _check_shape(kind, part, int(cover.sum()), f"{w}.outcomes", fail)
            full = clean.copy()
            full[cover] = part
            attacks.append((a["label"], a["threat"], cover, full))
        return Outcomes(kind, size, index, clean, predicted, attacks, labels)


def _bits(index: np.ndarray, size: int) -> np.ndarray:
    bits = np.zeros(size, dtype=bool)
    bits[np.asarray(index, dtype=np.int64)] = True
    return bits


def _check_shape(kind, arr, n, where, fail):
    if kind == "correct" and (arr.dtype != np.bool_ or arr.shape != (n,)):
        fail(f"{where}: expected {n} bools, got {arr.dtype} {tuple(arr.shape)}")
    if kind == "class_counts" and (arr.ndim != 3 or arr.shape[0] != n or arr.shape[2] != 3 or arr.dtype == np.bool_
                                   or (arr.size and arr.min() < 0)):
        fail(f"{where}: expected ({n}, K, 3) non-negative counts, got {arr.dtype} {tuple(arr.shape)}")


def check_against_metrics(out: Outcomes, metrics: dict, fail) -> None:
    """The outcomes must give the numbers the record states (clean and every attack, in order), to 1e-6."""
    if out.n != metrics.get("n"):
        fail(f"outcomes hold {out.n} examples, metrics.n is {metrics.get('n')}")
    stated = metrics.get("attacks", [])
    if [lbl for lbl, *_ in out.attacks] != [a.get("label") for a in stated]:
        fail("outcomes and metrics.attacks list different attacks")
    columns = [("clean", out.clean, np.ones(out.n, dtype=bool), metrics.get("clean"))]
    columns += [(lbl, arr, cover, a["value"]) for (lbl, _, cover, arr), a in zip(out.attacks, stated)]
    for label, arr, cover, value in columns:
        got = metric_value(out.kind, arr[cover])
        same = got != got if value is None else abs(got - value) <= 1e-6 * max(1.0, abs(value))
        if not same:
            fail(f"outcomes give {label} = {got!r}, the record states {value!r}")
