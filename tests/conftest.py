"""Fixtures for every test of the course."""
import pytest

from course_lib.ops.pooling import torchvision_kernels_enabled


@pytest.fixture(autouse=True)
def course_kernels_only():
    """Every test starts and ends with ``use_torchvision_kernels`` off.

    Equivalence tests compare course_lib with torchvision; with the switch on, course_lib's RoI ops
    would *be* torchvision's and such a test would compare torchvision with itself and always pass.
    A test may switch it on inside (``with use_torchvision_kernels(): ...``) but must switch it back.
    """
    check_course_kernels("before the test: an earlier test or an import switched it on and left it on")
    yield
    check_course_kernels("after the test: the test left it on; switch it back off")


def check_course_kernels(when: str) -> None:
    if torchvision_kernels_enabled():
        raise AssertionError(f"use_torchvision_kernels is on {when} -- course_lib's RoI ops would be "
                             "torchvision's own and an equivalence test would compare torchvision with itself")
