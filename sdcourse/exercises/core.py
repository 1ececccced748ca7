"""What an exercise is: a task, a check that names common mistakes, a hint and a solution.

An exercise asks the learner for a function (or a value). Its check calls the learner's
function on a few cases and compares each result with the reference solution's. When a
result is wrong, the check runs the exercise's typical mistakes on the same case: a mistake
whose result matches the learner's names what went wrong. The reference solution is the
code `solution()` shows and `sdcourse exercises solve` writes into a notebook, so the three
can never disagree.
"""

from __future__ import annotations

import html
import math
import numbers
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .language import current, say

PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"

# The latest result of every check run in this Python session: what the grader reads.
RESULTS: dict[str, "Result"] = {}


class Text(str):
    """A string that Jupyter shows as formatted text (a hint) or as a code block (a solution)."""

    language: str = ""

    def _repr_markdown_(self) -> str:
        return f"```{self.language}\n{self}\n```" if self.language else str(self)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))


class Code(Text):
    language = "python"


@dataclass
class Result:
    """The verdict of one check: `status` is "passed", "failed" or "not attempted"."""

    id: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __str__(self) -> str:
        mark = {PASSED: "✓", FAILED: "✗", NOT_ATTEMPTED: "·"}[self.status]
        return f"{mark} {say('exercise')} {self.id} {say(self.status)}: {self.message}"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        colour = {PASSED: "#1a7f37", FAILED: "#cf222e", NOT_ATTEMPTED: "#9a6700"}[self.status]
        mark = {PASSED: "✓", FAILED: "✗", NOT_ATTEMPTED: "·"}[self.status]
        return (
            f'<div style="border-left: 4px solid {colour}; padding: 2px 8px">'
            f'<b style="color: {colour}">{mark} {say("exercise")} {self.id} {say(self.status)}</b>'
            f"<br>{html.escape(self.message)}</div>"
        )


@dataclass
class Case:
    """One call of the learner's function: positional arguments and a label for messages."""

    args: tuple
    label: str = ""


@dataclass
class Mistake:
    """A typical wrong answer: the wrong function (or value) and what to tell the learner."""

    name: str
    message: str
    answer: Any


def _matches(got, wrong, atol: float) -> bool:
    """True when the learner's result is the mistake's (both NaN-ridden tensors of one shape count too)."""
    if isinstance(got, torch.Tensor) and isinstance(wrong, torch.Tensor) and got.shape == wrong.shape:
        if not torch.isfinite(wrong).all():
            return not torch.isfinite(got).all()
    return describe_difference(got, wrong, atol) is None


def _changes_between_calls(answer, case: "Case", first, atol: float) -> bool:
    try:
        second = answer(*_copy(case.args))
    except Exception:
        return False
    return describe_difference(second, first, atol) is not None


def describe_difference(got, expected, atol: float = 1e-4) -> str | None:
    """None when `got` equals `expected` (tensors and floats within `atol`), else what differs."""
    if got is None and expected is not None:
        return say("returned_none")
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return say("wrong_type", expected="torch.Tensor", got=type(got).__name__)
        if tuple(got.shape) != tuple(expected.shape):
            return say("wrong_shape", expected=tuple(expected.shape), got=tuple(got.shape))
        got, expected = got.detach().double().cpu(), expected.detach().double().cpu()
        if not torch.isfinite(got).all():
            return say("not_finite")
        worst = (got - expected).abs().max().item() if got.numel() else 0.0
        scale = max(1.0, expected.abs().max().item() if expected.numel() else 0.0)
        return None if worst <= atol * scale else say("values_differ", worst=f"{worst:.3g}")
    if isinstance(expected, np.ndarray):
        return describe_difference(torch.as_tensor(np.asarray(got)) if got is not None else None,
                                   torch.as_tensor(expected), atol)
    if isinstance(expected, bool) or isinstance(expected, str):
        return None if got == expected else say("expected_value", expected=repr(expected), got=repr(got))
    if isinstance(expected, numbers.Integral):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            return say("wrong_type", expected="int", got=type(got).__name__)
        return None if got == expected else say("expected_value", expected=expected, got=got)
    if isinstance(expected, numbers.Real):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            return say("wrong_type", expected="a number", got=type(got).__name__)
        close = math.isclose(got, expected, rel_tol=atol, abs_tol=atol)
        return None if close else say("expected_value", expected=f"{expected:.4g}", got=f"{got:.4g}")
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list, torch.Size)):
            return say("wrong_type", expected=type(expected).__name__, got=type(got).__name__)
        if len(got) != len(expected):
            return say("wrong_length", expected=len(expected), got=len(got))
        for i, (a, b) in enumerate(zip(got, expected)):
            difference = describe_difference(a, b, atol)
            if difference:
                return say("item_differs", index=i, difference=difference)
        return None
    return None if got == expected else say("expected_value", expected=repr(expected), got=repr(got))


def _copy(value):
    """A copy of a test argument, so that a learner's in-place edit cannot change the next call."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_copy(v) for v in value)
    return value


def _learner_frame(error: BaseException) -> str:
    """Where in the learner's code an exception started: 'line 3 of your cell' or ''."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "sdcourse" not in f.filename.replace("\\", "/")]
    return say("at_line", line=frames[-1].lineno) if frames else ""


@dataclass
class Exercise:
    """One exercise of a chapter; see the module docstring for how `check` decides."""

    id: str
    title: str
    name: str  # the function or variable the learner writes
    solution_code: str
    hint_text: str
    cases: Callable[..., list]  # context -> [Case]; for a value exercise: context -> expected value
    mistakes: list[Mistake] = field(default_factory=list)
    needs: tuple[str, ...] = ()  # what `check` needs besides the answer, e.g. ("pipe",)
    task: str = "text2img"  # which pipeline `pipe` is, where the check needs one
    is_function: bool = True
    atol: float = 1e-4
    passed_message: str = ""
    extra_check: Callable[..., str | None] | None = None  # (answer, context) -> None or a failure message
    random_message: str = ""  # what to say when the answer changes from call to call
    no_grad: bool = True  # run the calls without autograd (False where the exercise needs gradients)
    ja: dict = field(default_factory=dict)  # Japanese title, hint, passed message and mistake messages

    @property
    def chapter(self) -> int:
        return int(self.id.split(".")[0])

    def hint(self) -> Text:
        """A pointer towards the answer, without the answer."""
        return Text(f"{say('hint')}: {self._local('hint', self.hint_text)}")

    def solution(self) -> Code:
        """Reference code for this exercise (what `sdcourse exercises solve` writes)."""
        return Code(self.solution_code.strip())

    def reference(self):
        """The reference answer: the function (or value) the solution code defines."""
        namespace: dict = {}
        exec(compile(self.solution_code, f"<solution {self.id}>", "exec"), namespace)
        return namespace[self.name]

    def local_title(self, language: str | None = None) -> str:
        """The title in `language` (default: the current one)."""
        return self._local("title", self.title, language)

    def _local(self, key: str, english, language: str | None = None):
        return self.ja.get(key, english) if (language or current()) == "ja" else english

    def check(self, answer=..., **context) -> Result:
        """Check the learner's `answer`; never raises for a wrong one. Needs `self.needs` as keywords."""
        missing = [name for name in self.needs if context.get(name) is None]
        if missing:
            names = ", ".join(f"{n}={n}" for n in missing)
            raise TypeError(f"Exercise {self.id}'s check needs {', '.join(missing)}: call .check({self.name}, {names}).")
        try:
            status, message = self._verdict(answer, context)
        except Exception as error:  # the check itself failed on an unexpected answer: report, don't raise
            status, message = FAILED, say("check_failed", error=f"{type(error).__name__}: {error}")
        result = Result(self.id, status, message)
        RESULTS[self.id] = result
        return result

    def _verdict(self, answer, context) -> tuple[str, str]:
        if answer is ...:
            return NOT_ATTEMPTED, say("not_attempted", name=self.name)
        if self.is_function and not callable(answer):
            return FAILED, say("not_callable", name=self.name, got=type(answer).__name__)
        with torch.no_grad() if self.no_grad else torch.enable_grad():
            if self.is_function:
                failure = self._check_function(answer, context)
            else:
                failure = self._check_value(answer, context)
            if failure is None and self.extra_check is not None:
                failure = self.extra_check(answer, context)
        if failure == NOT_ATTEMPTED:
            return NOT_ATTEMPTED, say("not_attempted", name=self.name)
        if failure:
            return FAILED, failure
        return PASSED, self._local("passed", self.passed_message) or say("well_done")

    def _check_value(self, answer, context):
        expected = self.cases(**self._needed(context))
        difference = describe_difference(answer, expected, self.atol)
        if difference is None:
            return None
        for mistake in self.mistakes:
            wrong = mistake.answer(**self._needed(context)) if callable(mistake.answer) else mistake.answer
            if describe_difference(answer, wrong, self.atol) is None:
                return self._mistake_message(mistake)
        return difference

    def _check_function(self, answer, context):
        reference = self.reference()
        for case in self.cases(**self._needed(context)):
            try:
                got = answer(*_copy(case.args))
            except NotImplementedError:
                return NOT_ATTEMPTED
            except Exception as error:
                return say("raised", name=self.name, case=case.label, error=f"{type(error).__name__}: {error}",
                           where=_learner_frame(error))
            expected = reference(*_copy(case.args))
            if got is None and expected is not None:
                return say("returned_none_function", name=self.name)
            difference = describe_difference(got, expected, self.atol)
            if difference is None:
                continue
            for mistake in self.mistakes:
                try:
                    wrong = mistake.answer(*_copy(case.args))
                except Exception:
                    continue
                if _matches(got, wrong, self.atol):
                    return self._mistake_message(mistake)
            if _changes_between_calls(answer, case, got, self.atol):
                return self._local("random", self.random_message) or say("random")
            return say("wrong_for_case", case=case.label, difference=difference)
        return None

    def _needed(self, context: dict) -> dict:
        return {name: context[name] for name in self.needs}

    def _mistake_message(self, mistake: Mistake) -> str:
        return self._local("mistakes", {}).get(mistake.name, mistake.message) if current() == "ja" else mistake.message
