"""Fair comparisons: arms that differ only in the variable under test, run over seeds, judged against the paper.

Why this exists (issue 19): every comparison in the course so far ran once, from scratch, on a handful of
validation images -- so no difference between two detectors could be told from noise. A fair comparison

1. changes one thing: the arms share data, image size, budget (steps, batch), optimiser, sampler, proposal counts
   and trainable parameters; ``compare`` refuses any other difference, unless the caller declares that a key
   *follows* from the variable (the trainable parameters when the architecture is the variable) -- and then shows it;
2. runs every arm over several seeds, and reports the spread over seeds beside each AP's bootstrap standard error
   over images (``course_lib.evaluation.bootstrap_ap``): two sources of noise, training and validation set;
3. says whether the paper's claim *holds*, is *reversed*, or the difference is *within noise*, by a stated rule.
4. says whether it could have seen the paper's effect at all: its *resolution* (2 standard errors of the mean
   difference, the least that rule tells from noise) beside the paper's own difference (``Claim(scale=)`` puts
   that in the metric's units). Below the resolution, "within noise" is the expected verdict for a true claim,
   and ``check_verdict(unresolved="within noise")`` accepts it where the data still leave the paper's effect
   possible -- printing why; a result that rules it out still fails. A larger resolution is a weaker test: it says
   how little the experiment can show, and is never a result in the claim's favour.

::

    result = compare({"rfcn": {**common, "head": "rfcn"}, "c4": {**common, "head": "c4"}}, variable="head",
                     run=train_and_evaluate, seeds=(0, 1, 2), metric="AP50", follows=("trainable_parameters",),
                     claim=Claim({"rfcn": "rfcn.table6.rfcn.ap50", "c4": "rfcn.table6.faster_rcnn.ap50"}, within=0.02))
    print(check_verdict(result, expected="holds"))
"""
from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from tqdm.auto import tqdm

from course_lib import papers
from course_lib.profiles import Profile, check_targets, get_profile

__all__ = ["TrainableSignature", "trainable_signature", "Claim", "Comparison", "check_fair", "compare", "paired",
           "remembered", "check_verdict", "VERDICTS"]

VERDICTS = ("holds", "reversed", "within noise")
_MISSING = "<missing>"


@dataclass(frozen=True, repr=False)
class TrainableSignature:
    """What an optimiser trains: how many numbers, in which named tensors. Equal only if both are."""

    count: int
    names: frozenset[str]

    def __repr__(self) -> str:
        digest = hashlib.sha1("\n".join(sorted(self.names)).encode()).hexdigest()[:6]
        return f"{self.count:,} in {len(self.names)} tensors (names #{digest})"


def trainable_signature(model) -> TrainableSignature:
    """The ``trainable_parameters`` setting of an arm: the parameters of ``model`` with ``requires_grad``."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    return TrainableSignature(sum(p.numel() for p in trainable.values()), frozenset(trainable))


def _per_arm(values) -> str:
    return "  ".join(f"{arm}={value!r}" for arm, value in values.items())


def check_fair(arms: Mapping[str, Mapping], *, variable: str, follows=()) -> str:
    """The settings of ``arms`` (arm name -> flat mapping of settings) as text, if they differ only in ``variable``
    and the keys in ``follows``; else a ValueError listing every other differing key with its value per arm."""
    if len(arms) < 2:
        raise ValueError(f"compare needs two or more arms, got {list(arms)}: e.g. {{'rfcn': {{...}}, 'c4': {{...}}}}.")
    if variable in follows:
        raise ValueError(f"follows={tuple(follows)} names the variable {variable!r} itself: list only keys that "
                         "change because the variable does (e.g. 'trainable_parameters').")
    keys = list(dict.fromkeys(key for settings in arms.values() for key in settings))
    values = {key: {arm: settings.get(key, _MISSING) for arm, settings in arms.items()} for key in keys}
    differ = {key: v for key, v in values.items() if any(x != next(iter(v.values())) for x in v.values())}
    if variable not in differ:
        raise ValueError(f"The arms do not differ in the variable {variable!r} ({_per_arm(values.get(variable, {}))}): "
                         "give each arm its own value of it, or name the setting that does differ.")
    unfair = {key: v for key, v in differ.items() if key != variable and key not in follows}
    lines = [f"{variable} (the variable): {_per_arm(differ[variable])}"]
    lines += [f"{key} (follows from {variable}): {_per_arm(differ[key])}" for key in follows if key in differ]
    same = ", ".join(f"{key}={v[next(iter(arms))]!r}" for key, v in values.items() if key not in differ)
    lines.append(f"same in every arm: {same or '--'}")
    if unfair:
        raise ValueError(
            f"Not a fair comparison: the arms differ in more than the variable {variable!r}:\n"
            + "\n".join(f"  {key}: {_per_arm(v)}" for key, v in unfair.items())
            + f"\nGive each of these the same value in every arm, or, only if it changes because {variable!r} "
            f"does (as trainable_parameters when the architecture is the variable), pass "
            f"follows={tuple(follows) + tuple(unfair)}.\nThe settings:\n" + "\n".join(lines))
    return "\n".join(lines)


@dataclass(frozen=True)
class Claim:
    """A paper's claim about two arms, from two ``papers.NUMBERS`` keys (arm name -> key of that arm's number).

    Without ``within``: the arm whose paper number is larger is claimed to measure larger here too (better for an
    AP, slower for a time). With ``within`` (in the units of the metric measured here, e.g. 0.02 of AP50): the two
    are claimed comparable, |difference| <= within. A paper's "fail" (a model that did not converge, as R-FCN's k = 1
    in its Table 2) ranks below every number: Claim({"k=7": "rfcn.table2.k7.map", "k=1": "rfcn.table2.k1.map"})
    claims k=7 > k=1. Where the paper states a direction in words or in a figure, not in two numbers,
    ``Claim.stated(larger, smaller, key)`` names the larger arm and the one entry that says so.

    ``scale``: one of the paper's units in the metric's units (0.01 where the paper gives AP in points and the
    course measures it in 0..1). With it the verdict is printed beside the paper's own difference in the metric's
    units, and ``Comparison.resolves_claim`` says whether a difference of that size could read "holds" here at all.
    A stated claim has no two numbers to scale: it takes none.
    """

    keys: Mapping[str, str]
    within: float | None = None
    larger: str | None = None  # set by Claim.stated: the arm the paper's text or figure says is larger
    scale: float | None = None

    def __post_init__(self):
        values = [_rank(key) for key in self.keys.values()]  # an unknown key fails here, with a suggestion
        if self.scale is not None and not (isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool)
                                           and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"Claim({dict(self.keys)}, scale={self.scale!r}): scale is one of the paper's units in "
                             "the metric's units, a positive number (0.01: the paper's AP in points, ours in 0..1).")
        if self.larger is not None:
            if len(values) != 2 or self.larger not in self.keys or self.within is not None or self.scale is not None:
                raise ValueError(f"Claim({dict(self.keys)}, larger={self.larger!r}): a stated claim names two arms, "
                                 "the larger one among them, and no within= or scale= (it has no two numbers); use "
                                 "Claim.stated(larger, smaller, key).")
            return
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values):
            raise ValueError(f"Claim({dict(self.keys)}): give two arms, each with a numeric (or 'fail') papers.NUMBERS "
                             "key (a direction the paper states only in words or a figure: Claim.stated(larger, "
                             "smaller, key)).")
        if values[0] == values[1] and (self.within is None or math.isinf(values[0])):
            raise ValueError(f"Claim({dict(self.keys)}): the paper's numbers are equal ({values[0]}); for a "
                             "'comparable accuracy' claim pass within= (the tolerated difference).")
        if self.within is not None and any(map(math.isinf, values)):
            raise ValueError(f"Claim({dict(self.keys)}, within={self.within}): a 'fail' is not comparable to a "
                             "number; leave within out (the claim is then that the other arm is larger).")

    @classmethod
    def stated(cls, larger: str, smaller: str, key: str) -> "Claim":
        """The paper says, at ``key`` (an entry of ``papers.NUMBERS``, e.g. a figure's reading), that ``larger`` >
        ``smaller``, without a number for each (e.g. Faster R-CNN's recall curves, Fig. 4)."""
        return cls({larger: key, smaller: key}, larger=larger)

    @property
    def arms(self) -> tuple[str, str]:
        """(a, b): the difference a - b is claimed positive (or, with ``within``, small)."""
        a, b = self.keys
        if self.larger is not None:
            return (a, b) if self.larger == a else (b, a)
        return (a, b) if self.within is not None or _rank(self.keys[a]) > _rank(self.keys[b]) else (b, a)

    @property
    def paper_difference(self) -> float | None:
        """a - b in the paper (``arms``' order: the claimed-larger arm first; for a ``within`` claim the order the
        keys were given), in the metric's units (``scale``); None without a scale, for a stated claim (no two
        numbers) and where an arm is a "fail"."""
        if self.scale is None or self.larger is not None:
            return None
        a, b = (_rank(self.keys[arm]) for arm in self.arms)
        return None if math.isinf(a) or math.isinf(b) else (a - b) * self.scale

    def __str__(self) -> str:
        a, b = self.arms
        said = f"{a} ≈ {b}, |difference| <= {self.within:g}" if self.within is not None else f"{a} > {b}"
        if self.larger is not None:
            key = self.keys[a]
            return f"the paper: {said}\n  {papers.number(key).formatted()} -- {papers.cite(key)}"
        return f"the paper: {said}\n" + "\n".join(
            f"  {arm}: {papers.number(key).formatted()} -- {papers.cite(key)}" for arm, key in self.keys.items())


def _rank(key: str):
    """A paper number as a claim orders it: the number, or -inf for "fail" (did not converge)."""
    value = papers.value(key)
    return -math.inf if value == "fail" else value


def _verdict(differences: np.ndarray, se: float, within: float | None) -> str:
    """The rule (see ``RULE``): ``differences`` a - b per seed, ``se`` the standard error of their mean."""
    mean, one_sign = differences.mean(), bool(np.all(differences > 0) or np.all(differences < 0))
    if within is None:
        if np.all(differences > 0) and mean > 2 * se:
            return "holds"
        return "reversed" if np.all(differences < 0) and mean < -2 * se else "within noise"
    if abs(mean) + 2 * se <= within:
        return "holds"
    return "reversed" if one_sign and abs(mean) - 2 * se > within else "within noise"


RULE = ("d = a - b per seed; SE(mean d)^2 = var(d) / seeds + mean over seeds of (SE_a^2 + SE_b^2), the bootstrap "
        "SEs over images (not divided by the seeds: every seed is scored on the same images). 'a > b' holds if every "
        "d > 0 and mean d > 2 SE; reversed if every d < 0 and mean d < -2 SE. 'a ≈ b within w' holds if |mean d| + "
        "2 SE <= w; reversed (clearly not comparable) if every d has one sign and |mean d| - 2 SE > w. Else within "
        "noise.")


@dataclass
class Comparison:
    """What ``compare`` measured: per arm the metric and its bootstrap SE on each seed (NaN if not returned)."""

    variable: str
    metric: str
    seeds: tuple
    values: dict[str, list[float]]
    se: dict[str, list[float]]
    claim: Claim | None
    verdict: str | None  # one of VERDICTS, None without a claim
    table: str
    se_difference: float | None = None  # SE of the mean difference a - b by RULE (None without a claim)

    def __repr__(self) -> str:
        return self.table

    @property
    def resolution(self) -> float | None:
        """2 SE: the smallest mean difference ``RULE`` can tell from noise here (None without a claim)."""
        return None if self.se_difference is None else 2 * self.se_difference

    @property
    def resolves_claim(self) -> bool | None:
        """Could the claim read "holds" here if it were exactly true? A "comparable within w" claim only if
        |the paper's difference| + 2 SE <= w (without a ``scale``: 2 SE <= w); an "a > b" claim only if the paper's
        own difference (``Claim.scale``) exceeds 2 SE. None where that cannot be said (no claim, one seed or a NaN
        value, a directional claim without a scale or with a paper "fail")."""
        if self.claim is None or self.resolution is None:
            return None
        return _resolves(self.claim, self.resolution)

    @property
    def consistent_with_claim(self) -> bool | None:
        """Do the data leave the claim possible? "a > b": the paper's difference is not above mean d + 2 SE (the
        measured difference does not rule out a gain of the paper's size); "within w": |mean d| - 2 SE <= w. A
        result can be unresolved and still against the claim (four seeds far worse and one level: not "reversed",
        which needs every seed, yet clearly worse): ``check_verdict``'s ``unresolved`` pass asks both. None where
        ``resolves_claim`` is."""
        if self.resolves_claim is None:
            return None
        a, b = self.claim.arms
        mean = float(np.mean(np.array(self.values[a]) - np.array(self.values[b])))
        if self.claim.within is not None:
            return abs(mean) - self.resolution <= self.claim.within
        return mean + self.resolution >= self.claim.paper_difference


def _cell(x: float) -> str:
    return "--" if math.isnan(x) else f"{x:.3f}"


def _arm_rows(values: dict[str, list[float]], se: dict[str, list[float]]) -> list[str]:
    """One line per arm: the metric (+- its SE) on each seed | mean +- std over seeds | min..max."""
    width, rows = max(map(len, values)), []
    for arm, v in values.items():
        v = np.array(v)
        per_seed = "  ".join(_cell(x) + ("" if math.isnan(e) else f" +-{e:.3f}") for x, e in zip(v, se[arm]))
        std = v.std(ddof=1) if len(v) > 1 else math.nan
        rows.append(f"  {arm:<{width}}  {per_seed} | {v.mean():.3f} +- {_cell(std)} | {v.min():.3f}..{v.max():.3f}")
    return rows


def _judge(values: dict[str, list[float]], se: dict[str, list[float]],
           claim: Claim) -> tuple[str, float, list[str]]:
    """The verdict on ``claim`` by ``RULE``, and the lines that show how it was reached."""
    a, b = claim.arms
    d = np.array(values[a]) - np.array(values[b])
    seed_var = d.var(ddof=1) / len(d) if len(d) > 1 else math.nan  # NaN (one seed): never more than noise
    eval_var = sum(np.nan_to_num(np.mean(np.square(se[arm]))) for arm in (a, b))  # no SE returned: 0
    total = math.sqrt(seed_var + eval_var)
    verdict = _verdict(d, total, claim.within)
    return verdict, total, [
        f"{a} - {b} per seed: {'  '.join(f'{x:+.3f}' for x in d)}; mean {d.mean():+.3f}, SE {_cell(total)} (seeds "
        f"{_cell(math.sqrt(seed_var))}, images {math.sqrt(eval_var):.3f})", str(claim), *_resolution_line(claim, total),
        f"verdict: {verdict.upper()}", f"rule: {RULE}"]


def _resolves(claim: Claim, resolution: float) -> bool | None:
    """Could ``claim`` read "holds" at this ``resolution`` (2 SE) if it were exactly true (``Comparison.resolves_claim``)?
    None where that cannot be said."""
    paper = claim.paper_difference
    if math.isnan(resolution) or (claim.within is None and paper is None):
        return None
    if claim.within is not None:
        return abs(paper or 0.0) + resolution <= claim.within
    return paper > resolution


def _resolution_line(claim: Claim, se: float) -> list[str]:
    """What the comparison can resolve, beside what the claim needs: [] where it cannot be said."""
    resolves = _resolves(claim, 2 * se)
    if resolves is None:
        return []
    paper = claim.paper_difference
    if claim.within is not None:
        own = "" if paper is None else f" plus the paper's own |difference| {abs(paper):.3f}"
        return [f"resolution: 2 SE = {2 * se:.3f}{own} against the band {claim.within:g}: 'comparable' "
                f"{'can' if resolves else 'cannot'} hold here"]
    a, b = claim.arms
    return [f"resolution: 2 SE = {2 * se:.3f}; the paper's {a} - {b} = {paper:+.3f} in these units: a difference of "
            f"the paper's size {'could' if resolves else 'could not'} read 'holds' here"]


def remembered(run: Callable[[dict, int], Mapping[str, float]]) -> Callable[[dict, int], dict]:
    """``run`` that trains each (settings, seed) once: a second ``compare`` of the same arms on another metric (AP50,
    then APs) reads the metrics of the models the first one trained. Settings are told apart by their ``repr``."""
    memory: dict[tuple[str, int], Mapping[str, float]] = {}

    @functools.wraps(run)
    def run_once(settings: dict, seed: int) -> dict:
        key = (repr(sorted(settings.items())), seed)
        if key not in memory:
            memory[key] = run(settings, seed)
        return dict(memory[key])
    return run_once


def compare(arms: Mapping[str, Mapping], *, variable: str, run: Callable[[dict, int], Mapping[str, float]],
            seeds=(0, 1, 2), metric: str = "AP50", claim: Claim | None = None, follows=(),
            progress: bool = True) -> Comparison:
    """Run ``run(settings, seed) -> metrics`` for every arm and seed, print the table and return a ``Comparison``.

    ``arms`` maps a name to its settings; they must differ only in ``variable`` (and the keys in ``follows``, see
    ``check_fair``). ``metrics[metric]`` is the number compared; ``metrics[metric + "_se"]``, if there, its bootstrap
    standard error over images (``bootstrap_ap`` returns both). With a ``claim``, the verdict follows ``RULE``.
    """
    settings, seeds = check_fair(arms, variable=variable, follows=follows), tuple(seeds)
    if claim is not None and set(claim.keys) - set(arms):
        raise ValueError(f"The claim is about arms {list(claim.keys)}, the comparison has {list(arms)}: name the "
                         "claim's arms as the comparison does.")
    values = {arm: [] for arm in arms}
    se = {arm: [] for arm in arms}
    with tqdm(total=len(arms) * len(seeds), desc=f"compare {variable}", disable=not progress) as bar:
        for seed in seeds:
            for arm, arm_settings in arms.items():
                bar.set_postfix_str(f"{arm}, seed {seed}")
                metrics = run(dict(arm_settings), seed)
                if metric not in metrics:
                    raise KeyError(f"run({arm!r} settings, seed={seed}) returned no {metric!r}; it returned "
                                   f"{sorted(metrics)}: pass metric= one of them.")
                values[arm].append(float(metrics[metric]))
                se[arm].append(float(metrics.get(f"{metric}_se", math.nan)))
                bar.update()
    return _report(variable, metric, seeds, values, se, claim, settings)


def _report(variable, metric, seeds, values, se, claim, settings) -> Comparison:
    """The table, the verdict by ``RULE`` (with a claim), printed and returned: ``compare``'s and ``paired``'s end."""
    lines = [f"{variable}: {' vs '.join(values)} -- {metric} on seeds {', '.join(map(str, seeds))} (+- its bootstrap "
             "SE over images) | mean +- std over seeds | min..max", *_arm_rows(values, se), settings]
    verdict = se_difference = None
    if claim is not None:
        verdict, se_difference, judged = _judge(values, se, claim)
        lines += judged
    result = Comparison(variable, metric, seeds, values, se, claim, verdict, "\n".join(lines), se_difference)
    print(result.table)
    return result


def paired(values: Mapping[str, list[float]], *, variable: str, claim: Claim, metric: str, seeds=(0, 1, 2),
           se: Mapping[str, list[float]] | None = None, same: str = "") -> Comparison:
    """Judge two arms measured, not trained, per seed -- e.g. one trained detector per seed, its head run on two
    proposal sources -- by ``compare``'s ``RULE``, and print the same table.

    ``values`` maps each arm to its ``metric`` on every seed (in the order of ``seeds``); ``se`` the bootstrap SE of
    each value (none: 0, the spread over seeds alone); ``same`` says in words what both arms share (the images, the
    trained weights, the number of proposals), printed in place of ``compare``'s settings.
    """
    seeds = tuple(seeds)
    if len(values) != 2 or set(values) != set(claim.keys):
        raise ValueError(f"paired compares the claim's two arms {list(claim.keys)}; values has {list(values)}.")
    se = {arm: list(se[arm]) if se is not None else [math.nan] * len(seeds) for arm in values}
    for arm in values:
        if not len(values[arm]) == len(se[arm]) == len(seeds):
            raise ValueError(f"arm {arm!r}: {len(values[arm])} values and {len(se[arm])} SEs for {len(seeds)} seeds "
                             f"{seeds}: give one of each per seed.")
    values = {arm: [float(x) for x in v] for arm, v in values.items()}
    return _report(variable, metric, seeds, values, {arm: [float(x) for x in v] for arm, v in se.items()}, claim,
                   f"same in both arms: {same or '--'}")


def check_verdict(result: Comparison, expected: str | tuple[str, ...] = "holds", profile: Profile | None = None, *,
                  stated_for: str = "cpu", unresolved: str | None = None) -> str:
    """Assert ``result.verdict == expected`` in the ``stated_for`` profile, report it in the others: the profile
    logic of ``profiles.check_targets``, to which it hands the verdict as a 1 (as expected) or 0. Returns the line.

    ``expected`` may name several verdicts, e.g. ``("reversed", "within noise")``: "the claim does not hold here",
    where a control has shown why, and what is left is whether the data can tell the reversal from noise.

    ``unresolved``: a verdict accepted as well where the comparison cannot resolve the claim
    (``Comparison.resolves_claim`` False: the paper's own difference, or its band, is under 2 SE here) *and* the
    data still leave the claim possible (``Comparison.consistent_with_claim``), e.g. ``unresolved="within noise"``
    -- the measured resolution, printed with the verdict, is then the reason; a result against the claim fails.
    A directional claim without a ``scale`` (or with a paper "fail") cannot be judged so: an error in every
    profile. Where the data leave resolution unknown (one seed, a NaN value) there is no pass: the verdict is
    checked as ``expected`` alone (asserted in ``stated_for``, printed elsewhere)."""
    accepted = (expected,) if isinstance(expected, str) else tuple(expected)
    if not accepted or any(verdict not in VERDICTS for verdict in accepted + ((unresolved,) if unresolved else ())):
        raise ValueError(f"expected={expected!r}, unresolved={unresolved!r}: each one of {VERDICTS} (expected may be "
                         "a tuple of them).")
    if result.verdict is None:
        raise ValueError("This comparison has no verdict: pass claim=Claim({...}) to compare.")
    said = " or ".join(map(repr, accepted))
    if unresolved is not None:
        claim = result.claim
        if claim.within is None and claim.paper_difference is None:
            raise ValueError("unresolved=: this claim has no paper difference to set against the resolution (give the "
                             "Claim a scale=, the paper's unit in the metric's units; a stated claim or a paper 'fail' "
                             "has none).")
        if result.resolves_claim is False and result.consistent_with_claim:
            accepted += (unresolved,)
            said += (f", or {unresolved!r}: the claim is under this comparison's resolution (2 SE "
                     f"{result.resolution:.3f}) and the data leave it possible")
    name = f"verdict {result.verdict!r} as expected ({said}; 1 = yes)"
    try:
        return check_targets(profile or get_profile(), {name: (float(result.verdict in accepted), 1.0)},
                             stated_for=stated_for)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{result.table}") from None
