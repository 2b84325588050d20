"""The assignments' grader: run a student's function on cases, say which case failed and why, and never crash.

(The chapters' exercise checks, :mod:`.checks` with its helpers in :mod:`._compare`, are simpler: they return True
or raise ``AssertionError``, and :func:`.checks.report` prints the verdict. The assignments need more: a score,
every failed case, hidden cases and a time limit.)

A *check* (the ``check_*`` functions of :mod:`.assignment_checks`) builds a list of :class:`Case` objects (the
arguments and the reference answer, computed by the check itself from the library or from the definition), then
:func:`run_check` calls the student's function on each one and returns a :class:`Result`: a score (one point per
case) and, for every failed case, one line that says which case and what went wrong. A notebook shows the
result as the value of its cell; an autograder reads ``result.passed`` and ``result.score``.

What can go wrong, and what the result then says (the ``outcome`` of a :class:`CaseResult`; the message
templates are :data:`MESSAGES`, and ``tests/unit/test_grading.py`` checks each one):

``"wrong"``
    the answer has the right type and shape but a wrong value: the message gives the first wrong entry, with the
    expected and the received value;
``"shape"``, ``"dtype"``, ``"type"``
    the answer is a tensor of the wrong shape or dtype, or not the kind of object asked for;
``"raised"``
    the student's code raised an exception (its type and message are shown; the check goes on with the next case);
``"not_implemented"``
    it raised ``NotImplementedError`` (the student edition's placeholder): the remaining cases are not run;
``"timeout"``
    it did not return within the time limit (an endless loop, or far too slow);
``"check_error"``
    the check itself failed (a bug in the check, not in the student's code): reported, never raised.

*The time limit.* On the main thread of a Unix process, which is where Jupyter, Colab and pytest run a cell or a
test, :func:`call_with_time_limit` arms ``signal.setitimer(ITIMER_REAL)``: when the time is up, a
:class:`CheckTimeout` is raised inside the student's code (a ``BaseException``, so a bare ``except Exception`` in
that code cannot swallow it), and any alarm that was armed before (pytest-timeout's, say) is re-armed afterwards.
Python runs signal handlers between bytecodes, so one long PyTorch call (a huge convolution) finishes before the
alarm is seen. Elsewhere (Windows, or a thread that is not the main one) the call runs in a daemon thread that the
grader stops waiting for at the limit; Python cannot stop a thread, so a runaway one keeps running in the
background until it ends or the kernel restarts (the message says so).

>>> def double(x):
...     return 2 * x
>>> result = run_check("double", double, lambda: [Case("x = 3", (3,), expected=6, compare=number_close())])
>>> print(result)
double: all 1 cases passed (score 1/1)
>>> result.passed, result.score
(True, 1.0)
"""

from __future__ import annotations

import copy
import math
import numbers
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_TIME_LIMIT_S",
    "MESSAGES",
    "OUTCOMES",
    "Case",
    "CaseResult",
    "CheckTimeout",
    "Mismatch",
    "Result",
    "call_with_time_limit",
    "equal",
    "number_close",
    "run_check",
    "same_items",
    "tensor_close",
    "tuple_of",
]

#: Seconds one case may take before it counts as a time-out (a generous limit for CPU code written by hand).
DEFAULT_TIME_LIMIT_S = 20.0

#: Every outcome of a case, the passing one first.
OUTCOMES = ("pass", "wrong", "shape", "dtype", "type", "raised", "not_implemented", "timeout", "check_error")

#: The message of each failing outcome (``str.format`` templates; tests match them).
MESSAGES = {
    "wrong": "wrong value: {detail}",
    "shape": "wrong shape: expected {expected}, got {got}",
    "dtype": "wrong dtype: expected {expected}, got {got}",
    "type": "wrong type: expected {expected}, got {got}",
    "raised": "your function raised {error}",
    "not_implemented": "not implemented yet: {error}",
    "timeout": "no answer within {limit:g} s (an endless loop, or far too slow){background}",
    "check_error": "the check itself failed ({error}); this is a bug in the check, not in your code: please report it",
}
_MAX_TEXT = 300  # characters of a student's exception message or value shown in a report
_MAX_SHOWN = 6  # failed cases listed in a report (the score counts them all)


class CheckTimeout(BaseException):
    """Raised inside the student's code when its time is up (see the module docstring)."""


# --------------------------------------------------------------------------------------------
# Cases and results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mismatch:
    """Why an answer is not the expected one: ``kind`` is "wrong", "shape", "dtype" or "type"."""

    kind: str
    message: str


#: Compares the student's answer with the expected one: None when they agree, else a :class:`Mismatch`.
Comparator = Callable[[Any, Any], "Mismatch | None"]


@dataclass(frozen=True)
class Case:
    """One input of a check.

    Attributes:
        label: what the case is, as the report shows it (e.g. ``"signed, 3 bits, c = 0.5"``).
        args, kwargs: the arguments; the student's function gets deep copies, so it cannot change the case.
        expected: the reference answer (computed by the check, never by the student's code).
        compare: a comparator (:func:`tensor_close`, :func:`number_close`, :func:`equal`, ...).
        hint: a sentence the report adds when the answer comes back wrong (the usual mistake, where to look).
        points: what the case is worth.
    """

    label: str
    args: tuple[Any, ...]
    expected: Any
    compare: Comparator
    kwargs: dict[str, Any] = field(default_factory=dict)
    hint: str = ""
    points: float = 1.0


@dataclass(frozen=True)
class CaseResult:
    """What happened to one case: ``outcome`` is one of :data:`OUTCOMES`; ``message`` is empty when it passed;
    ``hint`` is the case's hint when the answer came back wrong (shown once per report)."""

    label: str
    outcome: str
    message: str
    points: float
    earned: float
    hint: str = ""


@dataclass(frozen=True)
class Result:
    """The verdict of one check: per-case results and the score. Its text is the report a notebook shows."""

    name: str
    cases: tuple[CaseResult, ...]
    hidden: bool = False

    @property
    def score(self) -> float:
        return float(sum(c.earned for c in self.cases))

    @property
    def max_score(self) -> float:
        return float(sum(c.points for c in self.cases))

    @property
    def passed(self) -> bool:
        """True when every case passed (and there was at least one)."""
        return bool(self.cases) and all(c.outcome == "pass" for c in self.cases)

    @property
    def outcomes(self) -> list[str]:
        return [c.outcome for c in self.cases]

    def failures(self) -> list[CaseResult]:
        return [c for c in self.cases if c.outcome != "pass"]

    def __str__(self) -> str:
        title = f"{self.name}{' (hidden cases)' if self.hidden else ''}"
        score = f"score {self.score:g}/{self.max_score:g}"
        if self.passed:
            return f"{title}: all {len(self.cases)} cases passed ({score})"
        done = sum(c.outcome == "pass" for c in self.cases)
        lines = [f"{title}: {done} of {len(self.cases)} cases passed ({score})"]
        shown = [c for c in self.failures() if not c.message.startswith("not run")]  # "not run": said once already
        lines += [f"  FAIL {c.label}: {c.message}" for c in shown[:_MAX_SHOWN]]
        if len(shown) > _MAX_SHOWN:
            lines.append(f"  ... and {len(shown) - _MAX_SHOWN} more failed cases")
        hints = dict.fromkeys(c.hint for c in shown if c.hint)
        lines += [f"  Hint: {h}" for h in hints]
        return "\n".join(lines)

    __repr__ = __str__


# --------------------------------------------------------------------------------------------
# Calling the student's code
# --------------------------------------------------------------------------------------------
def _alarm_usable() -> bool:
    return (hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM")
            and threading.current_thread() is threading.main_thread())


def _call_with_alarm(fn: Callable[..., Any], args: tuple, kwargs: dict, seconds: float) -> Any:
    armed = [True]

    def on_alarm(signum: int, frame: Any) -> None:
        if armed[0]:
            raise CheckTimeout(seconds)

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        try:
            return fn(*args, **kwargs)
        finally:
            armed[0] = False
    finally:  # even when the alarm fired in the inner ``finally``: restore the handler and any earlier alarm
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3), old_interval)


def _call_in_thread(fn: Callable[..., Any], args: tuple, kwargs: dict, seconds: float) -> Any:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as err:  # handed to the caller below
            box["error"] = err

    worker = threading.Thread(target=target, name="profit-edu-check", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise CheckTimeout(seconds, "thread")
    if "error" in box:
        raise box["error"]
    return box["value"]


def call_with_time_limit(fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
                         seconds: float | None = DEFAULT_TIME_LIMIT_S, method: str = "auto") -> Any:
    """``fn(*args, **kwargs)``, or :class:`CheckTimeout` when it takes longer than ``seconds``.

    Args:
        fn, args, kwargs: the call.
        seconds: the limit (> 0), or None for no limit.
        method: "alarm" (``signal.setitimer``; main thread on Unix only), "thread" (a daemon thread, anywhere;
            a runaway call keeps running in the background), or "auto": "alarm" where it works, else "thread".

    Raises:
        CheckTimeout: the time is up (``err.args[1] == "thread"`` when the call still runs in the background).
        ValueError: an unknown ``method``, "alarm" where it cannot work, or ``seconds`` <= 0.
        Whatever ``fn`` raises.

    >>> call_with_time_limit(max, (3, 4), seconds=1.0)
    4
    """
    kwargs = kwargs or {}
    if seconds is None:
        return fn(*args, **kwargs)
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0 or None, got {seconds}")
    if method not in ("auto", "alarm", "thread"):
        raise ValueError(f"method must be 'auto', 'alarm' or 'thread', got {method!r}")
    if method == "alarm" and not _alarm_usable():
        raise ValueError("method='alarm' needs signal.setitimer and the main thread; use 'thread' or 'auto'")
    if method == "thread" or (method == "auto" and not _alarm_usable()):
        return _call_in_thread(fn, tuple(args), kwargs, seconds)
    return _call_with_alarm(fn, tuple(args), kwargs, seconds)


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _error_text(err: BaseException) -> str:
    return _short(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)


def _failed(case: Case, outcome: str, message: str) -> CaseResult:
    hint = case.hint if outcome in ("wrong", "shape", "dtype", "type") else ""
    return CaseResult(case.label, outcome, message, case.points, 0.0, hint)


def _run_case(fn: Callable[..., Any], case: Case, time_limit_s: float | None, method: str) -> CaseResult:
    try:
        args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
    except Exception as err:
        return _failed(case, "check_error", MESSAGES["check_error"].format(error=_error_text(err)))
    try:
        got = call_with_time_limit(fn, args, kwargs, seconds=time_limit_s, method=method)
    except NotImplementedError as err:
        return _failed(case, "not_implemented", MESSAGES["not_implemented"].format(error=_error_text(err)))
    except CheckTimeout as err:
        background = "; it keeps running in the background" if "thread" in err.args else ""
        return _failed(case, "timeout", MESSAGES["timeout"].format(limit=time_limit_s, background=background))
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # SystemExit included: the student's code may do anything
        return _failed(case, "raised", MESSAGES["raised"].format(error=_error_text(err)))
    try:
        mismatch = case.compare(got, case.expected)
    except Exception as err:
        return _failed(case, "check_error", MESSAGES["check_error"].format(error=_error_text(err)))
    if mismatch is None:
        return CaseResult(case.label, "pass", "", case.points, case.points)
    return _failed(case, mismatch.kind, mismatch.message)


def run_check(name: str, fn: Any, make_cases: Callable[[], Iterable[Case]], *, hidden: bool = False,
              time_limit_s: float | None = DEFAULT_TIME_LIMIT_S, method: str = "auto") -> Result:
    """Run ``fn`` on every case ``make_cases()`` builds; never raises (except KeyboardInterrupt).

    Args:
        name: the check's name, as the report shows it.
        fn: the student's function (anything: a non-callable fails every case with "type").
        make_cases: builds the cases (called here, so that a failure to build them is reported, not raised).
        hidden: shown in the report ("hidden cases").
        time_limit_s, method: per case, see :func:`call_with_time_limit`.

    Returns:
        The :class:`Result`. After a ``NotImplementedError`` the other cases are not run (they fail with it).
    """
    try:
        cases = list(make_cases())
    except Exception as err:
        error = MESSAGES["check_error"].format(error=_error_text(err))
        return Result(name, (CaseResult("building the cases", "check_error", error, 1.0, 0.0),), hidden)
    if not callable(fn):
        message = MESSAGES["type"].format(expected="a function", got=type(fn).__name__)
        return Result(name, tuple(_failed(c, "type", message) for c in cases), hidden)
    results: list[CaseResult] = []
    for case in cases:
        if results and results[-1].outcome == "not_implemented":
            results.append(_failed(case, "not_implemented", "not run: the function is not implemented yet"))
            continue
        results.append(_run_case(fn, case, time_limit_s, method))
    return Result(name, tuple(results), hidden)


# --------------------------------------------------------------------------------------------
# Comparators
# --------------------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
    return type(value).__name__


def tensor_close(*, atol: float = 1e-6, rtol: float = 1e-5, dtype: torch.dtype | None = None) -> Comparator:
    """Compare a tensor answer: type, then shape, then dtype, then values (``isclose``; exact for integer dtypes).

    Args:
        atol, rtol: tolerances for floating-point answers.
        dtype: the dtype the answer must have; None accepts any floating dtype when the expected tensor is
            floating, and exactly its dtype otherwise.
    """

    def compare(got: Any, want: Tensor) -> Mismatch | None:
        if not isinstance(got, Tensor):
            return Mismatch("type", MESSAGES["type"].format(expected="a torch.Tensor", got=_type_name(got)))
        if tuple(got.shape) != tuple(want.shape):
            return Mismatch("shape", MESSAGES["shape"].format(expected=tuple(want.shape), got=tuple(got.shape)))
        need = dtype or (None if want.is_floating_point() else want.dtype)
        if (need is not None and got.dtype != need) or (need is None and not got.is_floating_point()):
            expected = str(need) if need is not None else "a floating-point dtype"
            return Mismatch("dtype", MESSAGES["dtype"].format(expected=expected, got=got.dtype))
        g, w = got.detach().cpu(), want.detach().cpu()
        if w.is_floating_point():
            bad = ~torch.isclose(g.double(), w.double(), atol=atol, rtol=rtol, equal_nan=True)
        else:
            bad = g != w
        if not bool(bad.any()):
            return None
        index = tuple(int(i) for i in bad.nonzero()[0])
        detail = (f"{int(bad.sum())} of {bad.numel()} entries differ; the first at index {index}: "
                  f"expected {w[index].item():.6g}, got {g[index].item():.6g}")
        return Mismatch("wrong", MESSAGES["wrong"].format(detail=detail))

    return compare


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, Tensor):
        return float(value.detach().reshape(())) if value.numel() == 1 else None
    return float(value) if isinstance(value, numbers.Real) else None  # int, float, numpy scalars


def number_close(*, atol: float = 1e-9, rtol: float = 1e-6) -> Comparator:
    """Compare a number answer (int, float, or a one-element tensor) with ``math.isclose``."""

    def compare(got: Any, want: float) -> Mismatch | None:
        value = _as_number(got)
        if value is None:
            shape = f" of shape {tuple(got.shape)}" if isinstance(got, Tensor) else ""
            return Mismatch("type", MESSAGES["type"].format(expected="a number", got=_type_name(got) + shape))
        if math.isclose(value, want, abs_tol=atol, rel_tol=rtol) or (math.isnan(value) and math.isnan(want)):
            return None
        return Mismatch("wrong", MESSAGES["wrong"].format(detail=f"expected {want:.6g}, got {value:.6g}"))

    return compare


def equal(kind: type | tuple[type, ...] | None = None) -> Comparator:
    """Compare with ``==`` (after checking the type is ``kind``, when given): for strings, ints, lists of names."""

    def compare(got: Any, want: Any) -> Mismatch | None:
        wrong_type = kind is not None and not isinstance(got, kind)
        if kind is not None and isinstance(got, bool) and bool not in _types(kind):
            wrong_type = True  # True is an int to Python, not to a student asked for a count
        if wrong_type:
            return Mismatch("type", MESSAGES["type"].format(expected=_kind_name(kind), got=_type_name(got)))
        if got == want:
            return None
        return Mismatch("wrong", MESSAGES["wrong"].format(detail=f"expected {_short(repr(want))}, "
                                                                 f"got {_short(repr(got))}"))

    return compare


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _types(kind))


def same_items() -> Comparator:
    """Compare a collection of names (list, tuple or set of str) as a set: order does not matter."""

    def compare(got: Any, want: Iterable[str]) -> Mismatch | None:
        if not isinstance(got, list | tuple | set | frozenset) or not all(isinstance(s, str) for s in got):
            return Mismatch("type", MESSAGES["type"].format(expected="a list or set of names (str)",
                                                            got=_type_name(got)))
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if not missing and not extra and len(set(got)) == len(got):
            return None
        detail = f"expected {len(set(want))} names, got {len(got)}"
        detail += f"; missing {_short(str(missing))}" if missing else ""
        detail += f"; not expected {_short(str(extra))}" if extra else ""
        detail += "; some names appear twice" if len(set(got)) != len(got) else ""
        return Mismatch("wrong", MESSAGES["wrong"].format(detail=detail))

    return compare


def tuple_of(*parts: Comparator, names: Sequence[str] | None = None) -> Comparator:
    """Compare a tuple (or list) answer element by element; ``names`` label the elements in messages."""
    labels = list(names) if names is not None else [f"element {i}" for i in range(len(parts))]

    def compare(got: Any, want: Sequence[Any]) -> Mismatch | None:
        if not isinstance(got, tuple | list) or len(got) != len(parts):
            what = f"{_type_name(got)} of length {len(got)}" if isinstance(got, tuple | list) else _type_name(got)
            return Mismatch("type", MESSAGES["type"].format(expected=f"a tuple of {len(parts)} ({', '.join(labels)})",
                                                            got=what))
        for label, part, g, w in zip(labels, parts, got, want):
            mismatch = part(g, w)
            if mismatch is not None:
                return Mismatch(mismatch.kind, f"{label}: {mismatch.message}")
        return None

    return compare
