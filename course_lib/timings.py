"""How long each notebook takes in each profile, as measured by ``make timings``.

The measurements live in ``timings.json`` next to this file (written by ``tests/benchmarks/timings.py``,
which also copies them into the README's table). Each notebook's first code cell calls :func:`expect`,
so a student sees before the long cells start how long the whole notebook will take.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["TIMINGS_FILE", "load_timings", "format_seconds", "expect"]

TIMINGS_FILE = Path(__file__).with_name("timings.json")


def load_timings(path: str | Path = TIMINGS_FILE) -> dict:
    """``{"profiles": {profile: {"machine": str, "measured": date, "notebooks": {name: seconds},
    "dates": {name: the day it was measured}}}}`` (a partial `make timings` re-dates only what it ran)."""
    path = Path(path)
    if not path.is_file():
        return {"profiles": {}}
    return json.loads(path.read_text())


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``: what a person reads at a glance."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def expect(notebook: str, profile=None, path: str | Path = TIMINGS_FILE) -> str:
    """Print (and return) how long ``notebook`` (e.g. ``"05_faster_rcnn"``) takes in ``profile``.

    ``profile`` is a :class:`~course_lib.profiles.Profile`, a name, or ``None`` for the one in effect
    (``COURSE_PROFILE``). A profile not measured yet says how to measure it.
    """
    from course_lib.profiles import get_profile

    if profile is None or isinstance(profile, str):
        profile = get_profile(profile)
    notebook = Path(notebook).stem
    entry = load_timings(path)["profiles"].get(profile.name, {})
    seconds = entry.get("notebooks", {}).get(notebook)
    if seconds is None:
        text = (f"profile {profile.name}: the run time of {notebook} is not measured yet in this profile "
                f"(`make timings PROFILE={profile.name}` measures it)")
    else:
        text = (f"profile {profile.name}: expect about {format_seconds(seconds)} for the whole notebook "
                f"(measured on {entry.get('machine', 'an unnamed machine')} by `make timings`)")
    print(text)
    return text
