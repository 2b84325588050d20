"""profit_edu.book.grading: every outcome gives its documented message, time limits hold, and a check never crashes."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import torch

from profit_edu.book import grading
from profit_edu.book.grading import (
    MESSAGES,
    OUTCOMES,
    Case,
    CheckTimeout,
    call_with_time_limit,
    equal,
    number_close,
    run_check,
    same_items,
    tensor_close,
    tuple_of,
)

HAS_ALARM = hasattr(signal, "setitimer")


def _square_cases() -> list[Case]:
    xs = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.5, 0.5])]
    return [Case(f"x = {x.tolist()}", (x,), x * x, tensor_close(), hint="multiply x by itself") for x in xs]


def _run(fn, **kwargs) -> grading.Result:
    return run_check("square", fn, _square_cases, **kwargs)


def test_a_right_answer_passes_with_full_score() -> None:
    result = _run(lambda x: x**2)
    assert result.passed and result.outcomes == ["pass", "pass"]
    assert (result.score, result.max_score) == (2.0, 2.0)
    assert str(result) == "square: all 2 cases passed (score 2/2)"


def test_a_wrong_value_names_the_case_the_entry_and_both_values() -> None:
    result = _run(lambda x: x * 2)
    assert result.outcomes == ["wrong", "wrong"] and result.score == 0
    first = result.cases[0]
    assert first.message.startswith("wrong value: ")
    assert "the first at index (0,): expected 1, got 2" in first.message
    text = str(result)
    assert text.startswith("square: 0 of 2 cases passed (score 0/2)")
    assert "FAIL x = [1.0, 2.0, 3.0]: wrong value:" in text
    assert text.count("Hint: multiply x by itself") == 1  # once per report, not once per case


def test_an_exception_is_reported_with_its_type_and_message_and_the_next_case_still_runs() -> None:
    def fn(x):
        if x.numel() == 3:
            raise ValueError("boom")
        return x * x

    result = _run(fn)
    assert result.outcomes == ["raised", "pass"]
    assert result.cases[0].message == MESSAGES["raised"].format(error="ValueError: boom")
    assert "your function raised ValueError: boom" in str(result)


def test_system_exit_is_reported_but_keyboard_interrupt_stops_the_check() -> None:
    assert _run(lambda x: exit(3)).outcomes == ["raised", "raised"]

    def interrupted(x):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(interrupted)


def test_not_implemented_stops_after_the_first_case() -> None:
    def fn(x):
        raise NotImplementedError("square each entry")

    result = _run(fn)
    assert result.outcomes == ["not_implemented", "not_implemented"]
    assert result.cases[0].message == "not implemented yet: NotImplementedError: square each entry"
    assert result.cases[1].message.startswith("not run")
    assert str(result).count("FAIL") == 1


@pytest.mark.parametrize(("answer", "outcome", "message"), [
    (lambda x: torch.zeros(4), "shape", "wrong shape: expected (3,), got (4,)"),
    (lambda x: (x * x).long(), "dtype", "wrong dtype: expected a floating-point dtype, got torch.int64"),
    (lambda x: (x * x).tolist(), "type", "wrong type: expected a torch.Tensor, got list"),
    (lambda x: None, "type", "wrong type: expected a torch.Tensor, got NoneType"),
])
def test_wrong_shape_dtype_and_type_have_their_own_messages(answer, outcome: str, message: str) -> None:
    result = _run(answer)
    assert result.cases[0].outcome == outcome
    assert result.cases[0].message == message
    assert outcome in OUTCOMES


def test_a_non_callable_answer_fails_every_case_with_type() -> None:
    result = _run("x * x")
    assert result.outcomes == ["type", "type"]
    assert result.cases[0].message == "wrong type: expected a function, got str"


def test_a_check_that_cannot_build_its_cases_reports_it_and_does_not_raise() -> None:
    def broken() -> list[Case]:
        raise RuntimeError("no data")

    result = run_check("broken", lambda x: x, broken)
    assert result.outcomes == ["check_error"] and not result.passed
    assert "the check itself failed (RuntimeError: no data)" in result.cases[0].message


def test_a_comparator_that_fails_is_a_check_error_not_a_crash() -> None:
    def bad_compare(got, want):
        raise ZeroDivisionError("oops")

    result = run_check("c", lambda: 1, lambda: [Case("one", (), 1, bad_compare)])
    assert result.outcomes == ["check_error"]


def test_the_student_code_gets_copies_of_the_arguments() -> None:
    def mutating(x):
        x.zero_()
        return x

    cases = _square_cases()
    _run(mutating)
    assert torch.equal(cases[0].args[0], torch.tensor([1.0, 2.0, 3.0]))  # the case is unchanged
    result = run_check("square", mutating, lambda: cases)
    assert result.outcomes == ["wrong", "wrong"]
    assert torch.equal(cases[0].args[0], torch.tensor([1.0, 2.0, 3.0]))


def test_an_empty_check_does_not_pass() -> None:
    assert not run_check("empty", lambda: 1, lambda: []).passed


# --------------------------------------------------------------------------------------------
# Time limits
# --------------------------------------------------------------------------------------------
def _forever(x):
    while True:
        pass


def _forever_swallowing(x):
    while True:
        try:
            time.sleep(0.01)
        except Exception:  # a student's blanket except must not swallow the time-out
            pass


@pytest.mark.skipif(not HAS_ALARM, reason="signal.setitimer is Unix-only")
@pytest.mark.parametrize("fn", [_forever, _forever_swallowing])
def test_an_endless_loop_times_out_with_the_alarm(fn) -> None:
    handler = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    result = _run(fn, time_limit_s=0.2)
    assert time.monotonic() - start < 3.0
    assert result.outcomes == ["timeout", "timeout"]
    assert result.cases[0].message == "no answer within 0.2 s (an endless loop, or far too slow)"
    assert signal.getsignal(signal.SIGALRM) == handler  # the grader's handler is gone again


@pytest.mark.skipif(not HAS_ALARM, reason="signal.setitimer is Unix-only")
def test_an_earlier_alarm_and_its_handler_are_restored() -> None:
    fired = []

    def outer(signum, frame):
        fired.append(signum)

    old = signal.signal(signal.SIGALRM, outer)
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    try:
        result = _run(lambda x: x * x, time_limit_s=1.0)
        assert result.passed
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 3.0 < remaining <= 5.0  # still armed, minus the time the check took
        assert signal.getsignal(signal.SIGALRM) is outer
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert fired == []


def test_the_thread_fallback_times_out_and_says_the_call_keeps_running() -> None:
    release = threading.Event()
    result = _run(lambda x: release.wait(10), time_limit_s=0.1, method="thread")
    release.set()  # let the background threads end
    assert result.outcomes == ["timeout", "timeout"]
    assert result.cases[0].message == ("no answer within 0.1 s (an endless loop, or far too slow); it keeps running "
                                       "in the background")


def test_off_the_main_thread_auto_uses_the_thread_fallback() -> None:
    box = {}
    release = threading.Event()
    worker = threading.Thread(target=lambda: box.setdefault("r", _run(lambda x: release.wait(10), time_limit_s=0.1)))
    worker.start()
    worker.join(10)
    release.set()
    assert box["r"].outcomes == ["timeout", "timeout"]
    assert "in the background" in box["r"].cases[0].message


def test_call_with_time_limit_returns_and_raises_like_the_call() -> None:
    assert call_with_time_limit(max, (1, 5), seconds=1.0) == 5
    assert call_with_time_limit(max, (1, 5), seconds=1.0, method="thread") == 5
    assert call_with_time_limit(max, (1, 5), seconds=None) == 5
    with pytest.raises(ZeroDivisionError):
        call_with_time_limit(lambda: 1 / 0, seconds=1.0, method="thread")
    with pytest.raises(CheckTimeout):
        call_with_time_limit(time.sleep, (5,), seconds=0.05)
    with pytest.raises(ValueError, match="seconds must be > 0"):
        call_with_time_limit(max, (1, 2), seconds=0)
    with pytest.raises(ValueError, match="method must be"):
        call_with_time_limit(max, (1, 2), method="fork")


# --------------------------------------------------------------------------------------------
# Comparators
# --------------------------------------------------------------------------------------------
def test_tensor_close_checks_integer_dtypes_exactly() -> None:
    compare = tensor_close(dtype=torch.uint8)
    want = torch.tensor([1, 2], dtype=torch.uint8)
    assert compare(want.clone(), want) is None
    assert compare(want.long(), want).kind == "dtype"
    assert compare(torch.tensor([1, 3], dtype=torch.uint8), want).message.endswith("expected 2, got 3")
    assert tensor_close()(torch.tensor([float("nan")]), torch.tensor([float("nan")])) is None


def test_number_close_takes_numbers_and_one_element_tensors_but_not_bools() -> None:
    compare = number_close()
    assert compare(2.0, 2.0) is None and compare(torch.tensor([2.0]), 2.0) is None and compare(2, 2.0) is None
    assert compare(True, 1.0).kind == "type"
    assert compare(torch.zeros(2), 0.0).message == "wrong type: expected a number, got Tensor of shape (2,)"
    assert compare(2.5, 2.0).message == "wrong value: expected 2, got 2.5"


def test_equal_same_items_and_tuple_of() -> None:
    assert equal(int)(4, 4) is None and equal(int)(True, 1).kind == "type" and equal(int)(3, 4).kind == "wrong"
    names = same_items()
    assert names({"b", "a"}, ["a", "b"]) is None
    assert "missing ['b']" in names(["a"], ["a", "b"]).message
    assert "some names appear twice" in names(["a", "a", "b"], ["a", "b"]).message
    assert names("ab", ["a", "b"]).kind == "type"
    pair = tuple_of(number_close(), number_close(), names=["first", "second"])
    assert pair((1.0, 2.0), (1.0, 2.0)) is None
    assert pair((1.0, 3.0), (1.0, 2.0)).message.startswith("second: wrong value")
    assert pair(1.0, (1.0, 2.0)).message == "wrong type: expected a tuple of 2 (first, second), got float"
