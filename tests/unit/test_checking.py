"""Time-limited answer checks: a hang is cut off, an error is reported, neither is scored."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from posttrain.eval.checking import Check, CheckPool, TaskChecker
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.base import Example
from posttrain.tasks.jsonl import JsonlTask
from tests.worker_checks import echo, misbehave


def test_pool_returns_results_in_order() -> None:
    with CheckPool(workers=2, timeout_s=30) as pool:
        got = pool.run(echo, [("a", "a"), ("a", "b"), ("c", "c")])
    assert got == [Check("ok", "a", 1.0), Check("ok", "b", 0.0), Check("ok", "c", 1.0)]


def test_hanging_check_is_cut_off_and_the_rest_still_run() -> None:
    jobs = [("x", "x"), ("x", "hang"), ("y", "y"), ("z", "raise"), ("w", "w")]
    start = time.monotonic()
    with CheckPool(workers=2, timeout_s=0.5) as pool:
        got = pool.run(misbehave, jobs)
        again = pool.run(misbehave, [("q", "q")])  # the killed worker was replaced
    assert time.monotonic() - start < 20
    assert [c.status for c in got] == ["ok", "timeout", "ok", "error", "ok"]
    assert got[1].score == 0.0 and "0.5 s limit" in (got[1].error or "")
    assert got[3].error == "RuntimeError: boom"
    assert again == [Check("ok", "q", 1.0)]


def test_works_from_a_non_main_thread() -> None:
    # math_verify's own timeout (signal.alarm) raises outside the main thread
    out: list[list[Check]] = []

    def body() -> None:
        with CheckPool(workers=1, timeout_s=0.5) as pool:
            out.append(pool.run(misbehave, [("a", "hang"), ("b", "b")]))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [c.status for c in out[0]] == ["timeout", "ok"]


def test_a_dead_worker_is_an_error_and_is_replaced() -> None:
    with CheckPool(workers=1, timeout_s=10) as pool:
        got = pool.run(misbehave, [("a", "die"), ("b", "b")])
    assert got[0].status == "error" and "died" in (got[0].error or "")
    assert got[1] == Check("ok", "b", 1.0)


def test_a_failed_group_skips_its_remaining_checks() -> None:
    jobs = [("a", "raise"), ("a", "a"), ("a", "a"), ("b", "b")]
    with CheckPool(workers=1, timeout_s=10) as pool:
        got = pool.run(misbehave, jobs, groups=[0, 0, 0, 1])
    assert [c.status for c in got] == ["error", "skipped", "skipped", "ok"]


def test_pool_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        CheckPool(workers=0)
    with pytest.raises(ValueError, match="must be > 0"):
        CheckPool(timeout_s=0)


def test_task_checker_inline_for_the_builtin_task() -> None:
    task = ArithmeticTask()
    ex = Example("1+2", "1+2=?\n", answer="3")
    checker = TaskChecker(task)
    assert not checker.isolated
    assert checker.run([ex], [(0, "#3"), (0, "#4")]) == [Check("ok", "3", 1.0), Check("ok", "4", 0.0)]


def test_task_checker_reports_an_inline_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    task = ArithmeticTask()

    def broken(example: Example, completion: str) -> float:
        raise KeyError("oops")

    monkeypatch.setattr(task, "verify", broken)
    [check] = TaskChecker(task).run([Example("1+2", "1+2=?\n", answer="3")], [(0, "#3")])
    assert check.status == "error" and "KeyError" in (check.error or "")


def test_task_checker_isolates_math_verify_and_needs_a_gold_answer(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"prompt": "half?", "answer": "\\\\frac{1}{2}"}\n')
    task = JsonlTask(str(path), verifier="math_verify", eval_path=str(path))
    checker = TaskChecker(task, timeout_s=30, workers=1)
    assert checker.isolated
    problems = [*task.examples("test", None, 0), Example("x", "?", answer=None)]
    got = checker.run(problems, [(0, "$\\boxed{0.5}$"), (0, "$\\boxed{2}$"), (1, "1")])
    assert got[0] == Check("ok", "1/2", 1.0)
    assert got[1].status == "ok" and got[1].score == 0.0
    assert got[2].status == "error" and "no gold answer" in (got[2].error or "")
    # the cache key changes with what changes the scores
    assert TaskChecker(task, timeout_s=5).key != checker.key
    assert TaskChecker(ArithmeticTask()).key != checker.key
