"""Coding exercises: the student writes a function, a checker runs it on hidden cases.

In a notebook an exercise is a cell tagged ``exercise``::

    from course_lib.exercises import ch03b as ex

    def box_iou(boxes1, boxes2):
        # YOUR CODE HERE: the [N, M] matrix of IoUs
        raise NotImplementedError("Exercise 1: write box_iou")

    box_iou = ex.check_box_iou(box_iou)

The checker (``course_lib/exercises/chNN.py``) calls the student's function on hidden cases -- random, empty,
degenerate, large -- compares it with the library or torchvision, prints the largest error and returns the function,
or raises :class:`ExerciseFailed` with a hint aimed at the likely mistake. Reference solutions live outside what
students open, in ``solutions/chNN.py``. With ``COURSE_SOLUTIONS=1`` (``make test`` sets it) a checker given a stub
checks the reference solution instead and returns it, so every notebook runs top to bottom in CI.

A student checks a whole notebook with ``python -m course_lib.exercises notebooks/03b_detection_toolkit.ipynb``.
"""
from .core import (
    Case,
    ExerciseFailed,
    Hint,
    NotAttempted,
    answer_digest,
    check_answer,
    check_function,
    load_solution,
    solutions_enabled,
)

__all__ = ["Case", "Hint", "ExerciseFailed", "NotAttempted", "check_function", "check_answer", "answer_digest",
           "load_solution", "solutions_enabled"]
