"""The autouse fixture of tests/conftest.py really refuses a run with torchvision's kernels switched on."""
import importlib.util
from pathlib import Path

import pytest

from course_lib.ops.pooling import torchvision_kernels_enabled, use_torchvision_kernels

_spec = importlib.util.spec_from_file_location("tests_conftest", Path(__file__).with_name("conftest.py"))
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
check_course_kernels = _conftest.check_course_kernels


def test_kernels_are_off_in_every_test():
    assert not torchvision_kernels_enabled()


def test_the_check_fails_when_the_switch_is_on():
    check_course_kernels("now")  # off: passes
    with use_torchvision_kernels():
        with pytest.raises(AssertionError, match="compare torchvision with itself"):
            check_course_kernels("now")
