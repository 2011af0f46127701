"""The published boards are what their committed records render, byte for byte.

A board edited by hand, or records changed without re-rendering (`python -m suite leaderboard`),
would publish numbers that no record backs; this catches both for every built-in task's board.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from suite.leaderboard import render
from suite.records import RecordStore
from suite.registry import TASKS

BOARDS = Path(__file__).resolve().parents[1] / "leaderboards"

# conftest has loaded the built-in tasks
PUBLISHED = sorted(name for name in TASKS.names() if (BOARDS / f"{name}.md").exists())


def test_the_main_boards_are_published():
    assert {"digits", "cifar10_cpu", "text_rt", "camvid", "stanford_background"} <= set(PUBLISHED)


@pytest.mark.parametrize("task", PUBLISHED)
def test_board_matches_its_records(task):
    records = RecordStore(BOARDS).load(task)
    assert records, f"leaderboards/{task}.md has no records under leaderboards/records/{task}"
    rendered = render(TASKS.get(task), records)
    published = (BOARDS / f"{task}.md").read_text()
    assert rendered == published, (f"leaderboards/{task}.md differs from what its records render; "
                                   f"run `python -m suite leaderboard --task {task}` and commit the result")
