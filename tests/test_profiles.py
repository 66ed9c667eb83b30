import dataclasses

import pytest

from course_lib.profiles import PROFILES, get_profile


def test_env_selects_profile(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "ci")
    assert get_profile().name == "ci"
    monkeypatch.setenv("COURSE_PROFILE", "CPU ")
    assert get_profile().name == "cpu"


def test_unknown_profile_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "laptop")
    with pytest.raises(ValueError, match=r"'laptop'.*ci, cpu, gpu"):
        get_profile()


def test_default_without_cuda_is_cpu(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_profile().name == "cpu"
    with pytest.raises(RuntimeError, match="needs CUDA"):
        get_profile("gpu")


def test_profiles_grow_from_ci_to_gpu():
    """Profiles change sizes and schedules only: every numeric field is ordered ci <= cpu <= gpu."""
    ci, cpu, gpu = PROFILES["ci"], PROFILES["cpu"], PROFILES["gpu"]
    for field in dataclasses.fields(ci):
        a, b, c = (getattr(p, field.name) for p in (ci, cpu, gpu))
        if isinstance(a, (int, float)) and not isinstance(a, bool) and field.name != "num_workers":
            assert a <= b <= c, f"{field.name}: ci={a}, cpu={b}, gpu={c}"
    assert gpu.det_min_size == 800 and gpu.det_max_size == 1333, "the gpu profile uses the papers' 800/1333 px"


def test_check_targets_asserts_in_the_profile_they_are_stated_for():
    from course_lib.profiles import check_targets

    cpu, ci = PROFILES["cpu"], PROFILES["ci"]
    line = check_targets(cpu, {"FPN AP50": (0.19, 0.15), "C4 AP50": (0.12, 0.08)})
    assert "FPN AP50 0.190 (target 0.15, met)" in line and "C4 AP50 0.120 (target 0.08, met)" in line
    with pytest.raises(AssertionError, match=r"C4 AP50 = 0\.050 < 0\.08"):
        check_targets(cpu, {"FPN AP50": (0.19, 0.15), "C4 AP50": (0.05, 0.08)})
    with pytest.raises(AssertionError, match="nan"):
        check_targets(cpu, {"AP": (float("nan"), 0.05)})  # a NaN is not a pass
    # elsewhere the same line is information only: ci's few steps score about zero
    line = check_targets(ci, {"FPN AP50": (0.0, 0.15)})
    assert "FPN AP50 0.000 (target 0.15)" in line and "'ci', not checked" in line
    with pytest.raises(ValueError):
        check_targets(cpu, {})
