import dataclasses

import pytest

from suite.config import TrainConfig
from suite.errors import UserError
from suite.plugins import include
from suite.registry import METHODS, TASKS, Registry, UnknownName


def test_decorator_registration_and_lookup():
    reg = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        pass

    reg.register("beta", 42)
    assert reg.get("alpha") is Alpha and reg.get("beta") == 42
    assert reg.names() == ["alpha", "beta"] and "alpha" in reg and len(reg) == 2


def test_duplicate_registration_names_both_files_in_one_short_line(tmp_path):
    reg = Registry("widget")
    reg.register("alpha", 1)
    with pytest.raises(UserError) as e:
        reg.register("alpha", {"a huge object": list(range(1000))})
    msg = str(e.value)
    assert "duplicate widget 'alpha'" in msg and msg.count(__file__) == 2 and "\n" not in msg
    assert len(msg) < 400 and "a huge object" not in msg
    assert reg.get("alpha") == 1


def test_unknown_name_suggests_nearest_and_lists_available():
    with pytest.raises(UnknownName) as e:
        METHODS.get("sma")
    msg = str(e.value)
    assert "unknown method 'sma'" in msg and "Did you mean 'sam'" in msg
    for name in ("asam", "at", "esam", "fast_at", "sam", "st"):
        assert name in msg.split("Available:")[1]
    assert isinstance(e.value, UserError) and "\n" not in msg


def test_include_loads_a_user_task_file_and_folder(tmp_path):
    code = '''
from suite.config import Task
from suite.registry import TASKS
import tasks.digits as d
TASKS.register("{name}", Task(name="{name}", modality="image", version="1", num_classes=10,
    description="user task", build_data=d.build_data, build_model=d.build_model))
'''
    (tmp_path / "one.py").write_text(code.format(name="user_one"))
    sub = tmp_path / "more"
    sub.mkdir()
    (sub / "two.py").write_text(code.format(name="user_two"))
    (sub / "_private.py").write_text("raise RuntimeError('must not be imported')")
    try:
        assert include(tmp_path / "one.py") == ["user_one"]
        assert include(sub) == ["user_two"]
        assert TASKS.get("user_two").description == "user task"
    finally:
        TASKS.unregister("user_one")
        TASKS.unregister("user_two")


def test_include_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        include(tmp_path / "missing.py")
    bad = tmp_path / "bad.py"
    bad.write_text("import nonexistent_module_xyz\n")
    with pytest.raises(UserError, match="failed to load: ModuleNotFoundError"):
        include(bad)


def test_train_config_overrides_convert_and_validate():
    cfg = TrainConfig().override({"epochs": "7", "lr": "1/10", "milestones": "0.5,0.8", "nesterov": "true"})
    assert (cfg.epochs, cfg.lr, cfg.milestones, cfg.nesterov) == (7, 0.1, (0.5, 0.8), True)
    with pytest.raises(UserError, match="epochs"):
        TrainConfig().override({"epochs": "0"})
    with pytest.raises(UserError, match="not an integer"):
        TrainConfig().override({"epochs": "2.5"})
    with pytest.raises(UserError, match="optimizer"):
        TrainConfig().override({"optimizer": "adam"})
    with pytest.raises(UserError, match="milestones"):
        TrainConfig().override({"milestones": "0.9,0.5"})
    assert dataclasses.is_dataclass(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3
