#!/usr/bin/env python
"""The course's offline datasets: ``python -m course_lib.data.make_synthetic`` (``--help``), runnable from a checkout
without an install. The logic lives in course_lib, so an installed course (Colab) builds the same data."""
import sys
from pathlib import Path

try:
    from course_lib.data.make_synthetic import main
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from course_lib.data.make_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
