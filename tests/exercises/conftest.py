"""Checker tests run with ``COURSE_SOLUTIONS`` unset (``make test`` sets it for the notebooks), so that a stub is
rejected as ``NotAttempted`` instead of being replaced by the reference solution."""
import pytest


@pytest.fixture(autouse=True)
def _no_solution_substitution(monkeypatch):
    monkeypatch.delenv("COURSE_SOLUTIONS", raising=False)


@pytest.fixture
def stub():
    """What a student opens: the exercise's body is still ``raise NotImplementedError``."""
    def student_stub(*args, **kwargs):
        raise NotImplementedError("the student's stub")
    return student_stub
