"""fit refuses, before it changes anything, what it cannot do exactly: resuming a checkpoint saved with other
settings (learning rate, optimiser, parameters, scheduler, more steps), or a checkpoint folder it cannot write;
and the temporaries of killed checkpoint writes do not pile up."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from course_lib.engine import fit, save_checkpoint

from .test_engine import Noisy, assert_same_weights, loss_fn, make_run, train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resume(path, optimizer_of=None, scheduler_of=None, steps=8):
    """A fresh run (other initial weights) that resumes ``path``; returns the model, its weights before, and fit."""
    model, opt, sched = make_run(seed=99)
    opt = optimizer_of(model) if optimizer_of else opt
    sched = scheduler_of(opt) if scheduler_of else sched
    before = {k: v.clone() for k, v in model.state_dict().items()}
    return model, before, lambda: fit(model, Noisy(), loss_fn, opt, steps=steps, batch_size=4, lr_scheduler=sched,
                                      device="cpu", checkpoint_path=path, progress=False)


def assert_refused(path, run, match, model, before):
    saved = path.read_bytes()
    with pytest.raises(ValueError, match=match):
        run()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "weights changed before refusing"
    assert path.read_bytes() == saved, "the checkpoint was rewritten"


@pytest.mark.parametrize("optimizer_of, match", [
    (lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4),
     r"group 0: lr=0.1 saved, lr=0.05 now"),
    (lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.5, weight_decay=1e-4),
     r"group 0: momentum=0.9 saved, momentum=0.5 now"),
    (lambda m: torch.optim.Adam(m.parameters(), lr=0.1), r"optimizer SGD saved, Adam now"),
    (lambda m: torch.optim.SGD([{"params": list(m.parameters())[:2]}, {"params": list(m.parameters())[2:]}], lr=0.1,
                               momentum=0.9, weight_decay=1e-4), r"groups of sizes \[4\] saved, \[2, 2\] now"),
    (lambda m: torch.optim.SGD(list(m.parameters())[::-1], lr=0.1, momentum=0.9, weight_decay=1e-4),
     r"parameter 0 has shape \[3\] but its saved optimiser state \[16, 8\]"),
], ids=["lr", "momentum", "adam", "groups", "order"])
def test_resuming_with_other_settings_names_checkpoint_and_difference(tmp_path, optimizer_of, match):
    path = tmp_path / "run.pt"
    train(4, path)
    model, before, run = resume(path, optimizer_of,
                                scheduler_of=lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [4, 8], gamma=0.1))
    assert_refused(path, run, rf"(?s)Cannot resume from checkpoint {path}.*{match}.*delete {path}.*"
                              "or pass the settings it was saved with", model, before)


def test_a_finished_checkpoint_with_another_lr_is_refused_not_returned(tmp_path):
    path = tmp_path / "run.pt"
    train(4, path)
    model, before, run = resume(path, lambda m: torch.optim.SGD(m.parameters(), lr=1.0, momentum=0.9,
                                                                weight_decay=1e-4), steps=4)
    assert_refused(path, run, r"lr=0.1 saved, lr=1.0 now", model, before)


def test_another_optimiser_is_refused_also_for_a_checkpoint_without_its_type(tmp_path):
    path = tmp_path / "run.pt"
    train(4, path)
    state = torch.load(path, weights_only=True)
    del state["optimizer_type"], state["lr_scheduler_type"]  # as written before they were saved
    save_checkpoint(path, state)
    model, before, run = resume(path, lambda m: torch.optim.Adam(m.parameters(), lr=0.1, weight_decay=1e-4))
    assert_refused(path, run, r"another optimizer: settings \[.*'momentum'.*\] saved, \[.*'betas'.*\] now \(Adam\)",
                   model, before)


def test_fewer_steps_than_saved_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    train(6, path)
    model, before, run = resume(path, steps=4)
    assert_refused(path, run, r"6 steps saved, steps=4 now \(fewer\)", model, before)


def test_another_scheduler_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    train(4, path)
    model, before, run = resume(path, scheduler_of=lambda o: torch.optim.lr_scheduler.StepLR(o, 3))
    assert_refused(path, run, r"lr_scheduler MultiStepLR saved, StepLR now", model, before)


def test_the_same_settings_still_resume(tmp_path):
    straight, _ = train(8)
    train(4, tmp_path / "run.pt")
    resumed, hist = train(8, tmp_path / "run.pt", seed=5)
    assert_same_weights(straight, resumed)
    assert [r["step"] for r in hist.records] == list(range(1, 9))


def never(step, record):
    raise AssertionError(f"fit trained step {step} before checking the checkpoint folder")


def test_checkpoint_under_a_regular_file_is_refused_before_step_1(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    with pytest.raises(NotADirectoryError, match=rf"Cannot write checkpoint .*notes.txt/ckpt/run.pt: "
                                                 rf"{tmp_path / 'notes.txt'} is a file, not a folder"):
        train(4, tmp_path / "notes.txt" / "ckpt" / "run.pt", callback=never)
    with pytest.raises(IsADirectoryError, match="is a folder: pass a file path"):
        train(4, tmp_path, callback=never)


def test_read_only_checkpoint_folder_is_refused_before_step_1(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.geteuid() == 0:  # root may write anyway: ask as if a student (not root) did
        monkeypatch.setattr(os, "access", lambda p, mode: not (mode & os.W_OK and str(p) == str(folder)))
    try:
        with pytest.raises(PermissionError, match=rf"the folder {folder} is read-only for this user"):
            train(4, folder / "run.pt", callback=never)
    finally:
        folder.chmod(0o700)
    assert not list(folder.iterdir())


def test_a_killed_checkpoint_write_leaves_a_temporary_that_the_next_save_removes(tmp_path, capsys):
    path = tmp_path / "run.pt"
    killed = textwrap.dedent(f"""
        import os, signal, torch
        from course_lib.engine import save_checkpoint
        def save(obj, f, *a, **k):
            os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write (out of memory, a lost machine)
        torch.save = save
        save_checkpoint({str(path)!r}, {{"step": 1}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", killed], env={**os.environ, "PYTHONPATH": REPO})
    assert proc.wait(timeout=120) == -9
    (left,) = tmp_path.glob(".run.pt.*.tmp")
    assert left.stat().st_size == 0 and f".{proc.pid}." in left.name
    live = tmp_path / f".run.pt.{os.getpid()}.abc123.tmp"  # a save of this (live) process, under way
    live.touch()
    save_checkpoint(path, {"step": 2})
    assert capsys.readouterr().out == f"Removed what interrupted runs left in {tmp_path}: {left.name} (0 B freed)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "run.pt"])
    live.unlink()
    path.unlink()
    left.touch()
    train(2, tmp_path / "other.pt")  # another checkpoint's leftovers are not this fit's to remove
    assert left.exists()
    seen = []
    train(4, path, callback=lambda step, record: seen.append(left.exists()))
    assert f"Removed what interrupted runs left in {tmp_path}: {left.name}" in capsys.readouterr().out
    assert seen == [False] * 4, "fit removes a dead write's temporary before its first step"


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_the_detector_optimiser_resumes_with_its_own_settings(tmp_path, kind):
    from course_lib.engine import detector_optimizer

    def run(steps, crash_at=None):
        model, _, _ = make_run(seed=3)
        opt, sched = detector_optimizer(model.parameters(), kind=kind, lr=0.01, steps=8)

        def crash(step, record):
            if step == crash_at:
                raise KeyboardInterrupt

        return fit(model, Noisy(), loss_fn, opt, steps=steps, batch_size=4, lr_scheduler=sched, device="cpu",
                   checkpoint_path=tmp_path / f"{kind}.pt", checkpoint_every=2, progress=False, callback=crash)

    with pytest.raises(KeyboardInterrupt):
        run(8, crash_at=5)
    assert [r["step"] for r in run(8).records] == list(range(1, 9))
