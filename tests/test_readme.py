"""The README's worked example task is real: extract it, include it, train and evaluate it."""
import re
from pathlib import Path

from suite.cli import main
from suite.records import RecordStore
from suite.registry import TASKS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_task_runs(tmp_path, capsys):
    text = README.read_text()
    code = re.search(r"```python\n# my_tasks/iris.py\n(.*?)```", text, re.S).group(1)
    task_file = tmp_path / "iris.py"
    task_file.write_text(code)
    try:
        rc = main(["run", "--include", str(task_file), "--task", "iris", "--method", "sam", "--out", str(tmp_path / "lb"),
                   "--work-dir", str(tmp_path / "runs"), "--no-progress"])
        assert rc == 0, capsys.readouterr().err
        (rec,) = RecordStore(tmp_path / "lb").load("iris")
        assert rec["metrics"]["clean"] >= 80.0  # iris is easy; an untrained MLP sits near 33%
        assert [a["label"] for a in rec["metrics"]["attacks"]] == ["PGD-10 linf 0.5", "PGD-10 l2 1"]
        assert rec["metrics"]["worst_case"] <= rec["metrics"]["clean"]
        # the example's budgets separate the methods: AT is far more robust than ST
        worst = {}
        for method in ("st", "at"):
            rc = main(["run", "--include", str(task_file), "--task", "iris", "--method", method, "--out",
                       str(tmp_path / "lb"), "--work-dir", str(tmp_path / "runs"), "--no-progress"])
            assert rc == 0
            (r,) = [r for r in RecordStore(tmp_path / "lb").load("iris") if r["method"]["name"] == method]
            worst[method] = r["metrics"]["worst_case"]
        assert worst["at"] > worst["st"] + 10, worst
    finally:
        TASKS.unregister("iris")
