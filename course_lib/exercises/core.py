"""The checker machinery shared by every chapter's exercises (see the package docstring).

A chapter module defines one small function per exercise, e.g.::

    def check_box_iou(fn):
        cases = [Case("two boxes", (a, b)), Case("no boxes", (empty, b)), ...]   # hidden: built here, seeded
        return check_function("box_iou", fn, reference=course_lib.ops.box_iou, cases=cases, chapter="ch03b",
                              hints=[Hint("Did you add 1 to widths? Boxes are continuous (x2 - x1).",
                                          when=lambda out, ref, case: ...)])

and ``tests/exercises`` shows that each checker accepts the solution and rejects the stub and at least one plausible
wrong answer.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

__all__ = ["Case", "Hint", "ExerciseFailed", "NotAttempted", "check_function", "check_answer", "answer_digest",
           "load_solution", "solutions_enabled", "compare"]

_PACKAGE = Path(__file__).resolve().parents[1]
# the repository's solutions/ in a checkout; installed (a wheel), the same files as course_lib/solutions (pyproject)
SOLUTIONS_DIR = _PACKAGE / "solutions" if (_PACKAGE / "solutions").is_dir() else _PACKAGE.parent / "solutions"


class ExerciseFailed(AssertionError):
    """The student's answer is wrong (the message says on which case and gives a hint)."""


class NotAttempted(ExerciseFailed):
    """The exercise still holds its stub (``raise NotImplementedError``)."""


@dataclass
class Case:
    """One hidden test case: a label shown when it fails, positional and keyword arguments."""

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@dataclass
class Hint:
    """A targeted hint, shown when ``when(out, expected, case)`` is true for the failing case."""

    message: str
    when: Callable[[Any, Any, Case], bool] = lambda out, expected, case: True


def solutions_enabled() -> bool:
    """True when ``COURSE_SOLUTIONS=1``: checkers given a stub check the reference solution instead (CI)."""
    return os.environ.get("COURSE_SOLUTIONS", "") == "1"


def load_solution(chapter: str, name: str) -> Callable:
    """The reference solution ``name`` from ``solutions/<chapter>.py`` (outside the package students open)."""
    path = SOLUTIONS_DIR / f"{chapter}.py"
    if not path.is_file():
        raise FileNotFoundError(f"No reference solutions at {path}: COURSE_SOLUTIONS=1 needs the repository's "
                                "solutions/ (a checkout) or an installed course, which ships them as course_lib/solutions.")
    spec = importlib.util.spec_from_file_location(f"course_solutions_{chapter}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"{path} has no solution named {name!r}") from None


def _clone(x):
    """A deep copy of a case's arguments, so a student's in-place edits cannot change the reference's inputs."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone().requires_grad_(x.requires_grad)
    if isinstance(x, (list, tuple)):
        return type(x)(_clone(v) for v in x) if not hasattr(x, "_fields") else type(x)(*(_clone(v) for v in x))
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    return copy.deepcopy(x)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}"
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__} of {len(x)}"
    return f"{type(x).__name__} {x!r:.60}"


def compare(out, expected, *, atol: float = 1e-5, rtol: float = 1e-4, path: str = "output") -> tuple[str | None, float]:
    """``(None, max_abs_error)`` when ``out`` matches ``expected``, else ``(what differs, error)``.

    Tensors must have the same shape; integer and boolean tensors (indices, labels, masks) must be equal; floating
    tensors close within ``atol + rtol * |expected|`` (NaN where NaN is expected). Tuples, lists and dicts compare
    element by element; Python numbers like 0-d tensors.
    """
    if isinstance(expected, torch.Tensor) or (isinstance(out, torch.Tensor) and isinstance(expected, (int, float))):
        expected = torch.as_tensor(expected)
        if not isinstance(out, torch.Tensor):
            try:
                out = torch.as_tensor(out)
            except Exception:
                return f"{path}: expected a {_describe(expected)}, got {_describe(out)}", math.inf
        if tuple(out.shape) != tuple(expected.shape):
            return f"{path}: expected shape {tuple(expected.shape)}, got {tuple(out.shape)}", math.inf
        if not expected.is_floating_point() and not expected.is_complex():
            if out.is_floating_point():
                if not torch.equal(out, out.round()):
                    return f"{path}: expected whole numbers ({expected.dtype}), got fractions", math.inf
            diff = (out.long() != expected.long()) if out.numel() else torch.zeros(0, dtype=torch.bool)
            if diff.any():
                i = tuple(int(v) for v in torch.nonzero(diff)[0])
                return f"{path}: differs at index {i}: expected {expected[i].item()}, got {out[i].item()}", math.inf
            return None, 0.0
        out = out.detach().to(torch.float64)
        exp = expected.detach().to(torch.float64)
        if out.numel() == 0:
            return None, 0.0
        nan_exp, nan_out = torch.isnan(exp), torch.isnan(out)
        if not torch.equal(nan_exp, nan_out):
            return f"{path}: NaN where a number is expected (or the reverse)", math.inf
        err = (out - exp).abs().masked_fill(nan_exp, 0.0)
        bad = err > atol + rtol * exp.abs().masked_fill(nan_exp, 0.0)
        max_err = float(err.max())
        if bad.any():
            i = tuple(int(v) for v in torch.nonzero(bad)[0])
            return (f"{path}: differs at index {i}: expected {exp[i].item():.6g}, got {out[i].item():.6g} "
                    f"(largest error {max_err:.3g})"), max_err
        return None, max_err
    if isinstance(expected, (tuple, list)):
        if not isinstance(out, (tuple, list)) or len(out) != len(expected):
            return f"{path}: expected a {_describe(expected)}, got {_describe(out)}", math.inf
        worst = 0.0
        for i, (o, e) in enumerate(zip(out, expected)):
            msg, err = compare(o, e, atol=atol, rtol=rtol, path=f"{path}[{i}]")
            if msg:
                return msg, err
            worst = max(worst, err)
        return None, worst
    if isinstance(expected, dict):
        if not isinstance(out, dict) or set(out) != set(expected):
            return f"{path}: expected a dict with keys {sorted(expected)}, got {_describe(out)}", math.inf
        worst = 0.0
        for k in expected:
            msg, err = compare(out[k], expected[k], atol=atol, rtol=rtol, path=f"{path}[{k!r}]")
            if msg:
                return msg, err
            worst = max(worst, err)
        return None, worst
    if isinstance(expected, float):
        try:
            o = float(out)
        except (TypeError, ValueError):
            return f"{path}: expected a number, got {_describe(out)}", math.inf
        err = abs(o - expected)
        return (None, err) if err <= atol + rtol * abs(expected) else (f"{path}: expected {expected:.6g}, got {o:.6g}", err)
    if out != expected:
        return f"{path}: expected {expected!r:.80}, got {out!r:.80}", math.inf
    return None, 0.0


def check_function(name: str, fn: Callable, *, reference: Callable, cases: Sequence[Case], chapter: str,
                   hints: Sequence[Hint] = (), atol: float = 1e-5, rtol: float = 1e-4,
                   compare_fn: Callable | None = None, check_grad: bool = False) -> Callable:
    """Run ``fn`` and ``reference`` on every case; return ``fn`` when all match, else raise :class:`ExerciseFailed`.

    ``compare_fn(out, expected, case)`` replaces the default :func:`compare` (returns ``(message or None, error)``).
    ``check_grad``: also compare the gradients of the floating-point tensor arguments (the output weighted by a fixed
    random tensor and summed), for exercises where the backward pass matters.
    A stub (``NotImplementedError``) is :class:`NotAttempted`, unless ``COURSE_SOLUTIONS=1``: then the reference
    solution ``solutions/<chapter>.py::<name>`` is checked and returned instead.
    """
    if not callable(fn):
        raise TypeError(f"Pass your function itself to the checker (check_{name}({name})), got {_describe(fn)}.")
    worst = 0.0
    for case in cases:
        args, kwargs = _clone(case.args), _clone(case.kwargs)
        if check_grad:
            args = tuple(a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point()
                         else a for a in args)
        try:
            out = fn(*args, **kwargs)
        except NotImplementedError:
            if solutions_enabled():
                print(f"[COURSE_SOLUTIONS=1] {name} is still the stub: checking the reference solution instead.")
                solution = load_solution(chapter, name)
                return check_function(name, solution, reference=reference, cases=cases, chapter=chapter, hints=hints,
                                      atol=atol, rtol=rtol, compare_fn=compare_fn, check_grad=check_grad)
            raise NotAttempted(f"{name}: not written yet -- replace `raise NotImplementedError` with your code, "
                               "then run the cell again.") from None
        except ExerciseFailed:
            raise
        except Exception as e:
            raise ExerciseFailed(f"{name} raised {type(e).__name__} on the case '{case.label}': {e}") from e
        ref_args, ref_kwargs = _clone(case.args), _clone(case.kwargs)
        if check_grad:
            ref_args = tuple(a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point()
                             else a for a in ref_args)
        expected = reference(*ref_args, **ref_kwargs)
        if compare_fn is not None:
            msg, err = compare_fn(out, expected, case)
        else:
            msg, err = compare(out, expected, atol=atol, rtol=rtol)
        if msg is None and check_grad:
            msg, err = _compare_grads(out, expected, args, ref_args, atol=atol, rtol=rtol)
        if msg is not None:
            extra = [h.message for h in hints if _safe(h.when, out, expected, case)]
            hint = ("\nHint: " + " ".join(extra)) if extra else ""
            raise ExerciseFailed(f"{name}: wrong on the case '{case.label}': {msg}.{hint}")
        worst = max(worst, err)
    print(f"\u2713 {name}: all {len(cases)} hidden cases pass (largest error {worst:.1e})")
    return fn


def _safe(pred, *args) -> bool:
    try:
        return bool(pred(*args))
    except Exception:
        return False


def _compare_grads(out, expected, args, ref_args, *, atol, rtol):
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return "output: no gradient flows back to the inputs (did you detach, or use .item()/numpy?)", math.inf
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(expected.shape, generator=g, dtype=expected.dtype)
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    ref_inputs = [a for a in ref_args if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad((out * weights).sum(), inputs, allow_unused=True)
    ref_grads = torch.autograd.grad((expected * weights).sum(), ref_inputs, allow_unused=True)
    worst = 0.0
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        a = torch.zeros_like(ref_inputs[i]) if a is None else a
        b = torch.zeros_like(ref_inputs[i]) if b is None else b
        msg, err = compare(a, b, atol=atol, rtol=rtol, path=f"gradient of argument {i}")
        if msg:
            return msg, err
        worst = max(worst, err)
    return None, worst


def _normalize(answer) -> str:
    if isinstance(answer, str):
        return " ".join(answer.strip().lower().split())
    if isinstance(answer, bool):
        return str(answer)
    if isinstance(answer, (int, float)):
        return f"{float(answer):.6g}"
    if isinstance(answer, (list, tuple, set, frozenset)):
        items = sorted(_normalize(a) for a in answer) if isinstance(answer, (set, frozenset)) else [_normalize(a) for a in answer]
        return "[" + ",".join(items) + "]"
    return repr(answer)


def answer_digest(answer) -> str:
    """The SHA-256 of a normalised quiz answer (what a chapter module stores instead of the answer itself)."""
    return hashlib.sha256(_normalize(answer).encode()).hexdigest()


def check_answer(name: str, answer, digest: str, *, chapter: str, hint: str = "") -> None:
    """A quiz question: ``answer`` (a number to 6 significant digits, a string, a list ...) against a stored digest.

    The answer itself is not stored beside the question: only its digest (:func:`answer_digest`); the reference
    answers are ``ANSWERS[name]`` in ``solutions/<chapter>.py`` (used when ``COURSE_SOLUTIONS=1``).
    """
    if answer is ... or answer is None:
        if solutions_enabled():
            print(f"[COURSE_SOLUTIONS=1] {name} is not answered yet: checking the reference answer instead.")
            answer = load_solution(chapter, "ANSWERS")[name]
        else:
            raise NotAttempted(f"{name}: replace `...` with your answer, then run the cell again.")
    if answer_digest(answer) != digest:
        raise ExerciseFailed(f"{name}: {answer!r} is not the answer." + (f"\nHint: {hint}" if hint else ""))
    print(f"\u2713 {name}: correct")
