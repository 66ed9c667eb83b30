"""The exercise machinery itself: stubs, wrong answers, solutions, quizzes, the paper-number registry."""
import pytest
import torch

from course_lib import papers
from course_lib.exercises import (
    Case, ExerciseFailed, Hint, NotAttempted, answer_digest, check_answer, check_function, core,
)


def _ref(x):
    return x * 2


CASES = [Case("small", (torch.arange(4.0),)), Case("empty", (torch.zeros(0),)), Case("int", (torch.arange(3),))]


def _stub(x):
    raise NotImplementedError


def test_correct_answer_passes_and_is_returned(capsys):
    fn = lambda x: x + x  # noqa: E731
    assert check_function("double", fn, reference=_ref, cases=CASES, chapter="none") is fn
    assert "all 3 hidden cases pass" in capsys.readouterr().out


def test_stub_is_not_attempted(monkeypatch):
    monkeypatch.delenv("COURSE_SOLUTIONS", raising=False)
    with pytest.raises(NotAttempted, match="not written yet"):
        check_function("double", _stub, reference=_ref, cases=CASES, chapter="none")


def test_stub_checks_the_solution_when_solutions_are_on(monkeypatch, tmp_path):
    (tmp_path / "chx.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.setattr(core, "SOLUTIONS_DIR", tmp_path)
    monkeypatch.setenv("COURSE_SOLUTIONS", "1")
    fn = check_function("double", _stub, reference=_ref, cases=CASES, chapter="chx")
    assert fn is not _stub and torch.equal(fn(torch.ones(2)), torch.full((2,), 2.0))
    # a wrong reference solution is caught too
    (tmp_path / "chy.py").write_text("def double(x):\n    return 3 * x\n")
    with pytest.raises(ExerciseFailed):
        check_function("double", _stub, reference=_ref, cases=CASES, chapter="chy")


def test_wrong_answer_fails_with_case_and_targeted_hint():
    hints = [Hint("You added one.", when=lambda out, exp, case: torch.equal(out, exp + 1)),
             Hint("Never shown.", when=lambda out, exp, case: False)]
    with pytest.raises(ExerciseFailed, match=r"(?s)case 'small'.*You added one\.") as info:
        check_function("double", lambda x: 2 * x + 1, reference=_ref, cases=CASES, chapter="none", hints=hints)
    assert "Never shown" not in str(info.value)


def test_shape_dtype_and_exceptions_are_reported():
    with pytest.raises(ExerciseFailed, match="expected shape"):
        check_function("double", lambda x: (2 * x)[None], reference=_ref, cases=CASES, chapter="none")
    with pytest.raises(ExerciseFailed, match="raised ZeroDivisionError on the case 'small'"):
        check_function("double", lambda x: 1 / 0, reference=_ref, cases=CASES, chapter="none")
    # integer outputs must be equal, not merely close
    with pytest.raises(ExerciseFailed, match="differs at index"):
        check_function("double", lambda x: 2 * x + (x == 2).long(), reference=_ref, cases=CASES[2:], chapter="none")


def test_student_edits_in_place_do_not_change_the_reference_inputs():
    def sneaky(x):
        x.zero_()  # modifies its input, then returns the right answer for the original? no: for zeros
        return x * 2
    with pytest.raises(ExerciseFailed):
        check_function("double", sneaky, reference=_ref, cases=CASES[:1], chapter="none")


def test_gradient_check_catches_a_detached_answer():
    cases = [Case("vector", (torch.randn(5, generator=torch.Generator().manual_seed(0)),))]
    check_function("sq", lambda x: x * x, reference=lambda x: x ** 2, cases=cases, chapter="none", check_grad=True)
    with pytest.raises(ExerciseFailed, match="no gradient"):
        check_function("sq", lambda x: (x * x).detach(), reference=lambda x: x ** 2, cases=cases, chapter="none",
                       check_grad=True)
    with pytest.raises(ExerciseFailed, match="gradient of argument 0"):
        check_function("sq", lambda x: x * x.detach(), reference=lambda x: x ** 2, cases=cases, chapter="none",
                       check_grad=True)


def test_quiz_answers_are_stored_as_digests(monkeypatch, tmp_path):
    digest = answer_digest(3)
    assert "3" not in digest[:1] or len(digest) == 64  # a SHA-256, not the answer
    check_answer("level", 3, digest, chapter="none")
    check_answer("level", 3.0, digest, chapter="none")
    with pytest.raises(ExerciseFailed, match="not the answer"):
        check_answer("level", 4, digest, chapter="none", hint="floor, not round")
    monkeypatch.delenv("COURSE_SOLUTIONS", raising=False)
    with pytest.raises(NotAttempted):
        check_answer("level", ..., digest, chapter="none")
    (tmp_path / "chq.py").write_text("ANSWERS = {'level': 3}\n")
    monkeypatch.setattr(core, "SOLUTIONS_DIR", tmp_path)
    monkeypatch.setenv("COURSE_SOLUTIONS", "1")
    check_answer("level", ..., digest, chapter="chq")
    assert answer_digest(" Max  Pool ") == answer_digest("max pool")


def test_paper_registry_cites_and_tabulates(monkeypatch):
    monkeypatch.setitem(papers.PAPERS, "demo", "A. Author, A Demo Paper, 2020")
    monkeypatch.setitem(papers.NUMBERS, "demo.table1.a.ap", papers.PaperNumber(
        36.2, "demo", "Table 1", "row (a)", "AP", "COCO minival", "ResNet-50"))
    assert papers.value("demo.table1.a.ap") == 36.2
    assert papers.cite("demo.table1.a.ap") == ("A. Author, A Demo Paper, 2020 -- Table 1, row (a), AP "
                                               "(COCO minival, ResNet-50)")
    with pytest.raises(KeyError, match="Did you mean 'demo.table1.a.ap'"):
        papers.value("demo.table1.a.apx")
    table = papers.beside_the_paper([("AP", 0.123456, "demo.table1.a.ap"), ("APs", None, None)], title="T")
    md = table.to_markdown()
    assert "| AP | 0.123 | 36.2 | Table 1, row (a) |" in md and "| APs | -- | -- | -- |" in md
    assert "A Demo Paper" in table._repr_html_()
    with pytest.raises(KeyError):
        papers.beside_the_paper([("AP", 1.0, "demo.nope")], title="T")


def test_every_registered_number_names_a_known_paper_and_its_place():
    for key, entry in papers.NUMBERS.items():
        assert key == key.lower() and key.split(".")[0] == entry.paper, key
        assert entry.paper in papers.PAPERS, f"{key}: unknown paper {entry.paper!r}"
        assert entry.table and entry.column and entry.dataset, f"{key}: say table, column and dataset"
