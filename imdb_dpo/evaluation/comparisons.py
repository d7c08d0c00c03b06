""""A beats B at matched KL", with an interval a statistician would sign (docs/statistics.md has the whole of it).

A method's curves: per setting (a run name less its `_seed<n>`), the SFT model (KL 0, where every method starts),
then the setting's evaluated checkpoints in step order, each the mean of its seeds; straight lines between them. Its
value within a budget is the highest reward on its curves with KL at most the budget, interpolated where a segment
crosses it (continuous in the budget); at a KL, the highest reward of a curve at exactly that KL.

Each value is cross-fitted, because the best of many noisy points is too high where it was chosen: the best is
chosen on a random half of the prompts and measured on the other half, both ways round, over several halvings.

Every model is evaluated on the same prompts with the same random numbers (imdb_dpo/models/sampling.py), so each
bootstrap replicate resamples the prompts once for every model and redoes the whole procedure. Each setting's seed
mean moves by a normal draw of its seed error, and each comparison's replicate is studentised with a draw of its
methods' seed variances (a bootstrap-t: Welch's t for a difference of seed means). The intervals of the comparisons
with at least MIN_SEEDS seeds on each trained side are simultaneous (the family-wise rate of a false star is 5%);
the others carry no verdict.
"""

import dataclasses
import re
import warnings

import numpy as np

from imdb_dpo.evaluation.statistics import seed_errors, simultaneous_half_widths, variance_ratios
from imdb_dpo.methods import frontier_methods, method as method_of_key

SEED_SUFFIX = re.compile(r"_seed(\d+)$")
RESAMPLES = 2000
SPLITS = 8  # random halvings of the prompts that each cross-fitted value averages, each used both ways round
LEVEL = 0.95
# A verdict needs this many training seeds in every setting of each trained side: fewer, and the seed error is
# estimated from one or two differences (t_1's 97.5% point is 12.7) or not at all (docs/statistics.md).
MIN_SEEDS = 3
UNTRAINED = ("best_of_n",)  # drawn from the SFT model: no training seed, only the prompts' noise
TOO_FEW = "too few seeds"
# comparisons.csv; kind: "within" (best reward within the budget) or "at" (reward at that KL, interpolated); lo, hi:
# the simultaneous interval of the family (empty outside it); lo_each, hi_each: the comparison's own interval.
COLUMNS = ["a", "b", "kind", "budget", "difference", "lo", "hi", "verdict", "lo_each", "hi_each", "seeds_a", "seeds_b"]


def setting_of(run: str) -> str:
    """The run name less its seed: the runs of one setting that differ only in their seed."""
    return SEED_SUFFIX.sub("", run)


def method_of(row: dict) -> str:
    """A summary row's method: a key of the registry, or sft, base, best_of_n."""
    return row["method"]


def family_of(row: dict) -> str:
    """What the frontier's tables compare a row as: its method, and for a method with several losses (DPO, CPO, KTO)
    its loss where that is not the method's own (sigmoid with reverse KL for DPO: `dpo/ipo`, `dpo/sigmoid/js_divergence`,
    `cpo/hinge`, `kto/apo_zero_unpaired`), so that each such loss is a method of its own."""
    method, loss = method_of(row), row.get("loss_type", "")
    return f"{method}/{loss}" if loss not in ("", default_loss(method)) else method


def default_loss(method: str) -> str:
    return method_of_key(method).default_loss if method_of_key(method) else "sigmoid"


def family_order(family: str) -> tuple:
    """SFT, then the trained methods in their order (each DPO loss after DPO), then best-of-N."""
    method, _, loss = family.partition("/")
    order = ["sft", *(m.key for m in frontier_methods()), "best_of_n"]
    return (order.index(method) if method in order else len(order), loss)


def seed_means(rows: list[dict]) -> list[dict]:
    """summary.csv's rows that average the seeds of each setting run with several, one per step all of them reached:
    the mean of each number, with the lowest and highest seed's mean as the band (reward_lo/hi, kl_lo/hi)."""
    groups: dict[tuple[str, str], dict[int, list[dict]]] = {}
    for row in rows:
        if row["run"] != row.get("setting", row["run"]):
            groups.setdefault((row["method"], row["setting"]), {}).setdefault(int(row["step"]), []).append(row)
    means = []
    for (method, setting), steps in groups.items():
        seeds = max(len(r) for r in steps.values())
        if seeds < 2:
            continue
        for step, group in sorted(steps.items()):
            if len(group) < seeds:
                continue
            mean = {**{k: group[0][k] for k in ("method", "loss_type", "beta", "step", "reward_model", "kl_kind")},
                    "run": setting, "setting": setting, "seed": "mean", "path": "", "n": sum(int(r["n"]) for r in group)}
            for key in ("reward", "kl"):
                mean[f"{key}_mean"] = float(np.mean([float(r[f"{key}_mean"]) for r in group]))
                mean[f"{key}_lo"] = min(float(r[f"{key}_mean"]) for r in group)
                mean[f"{key}_hi"] = max(float(r[f"{key}_mean"]) for r in group)
            for key in ("kl_logratio_mean", "win_rate_vs_sft", "mean_length", "distinct_2", "proxy_reward_mean"):
                values = [r[key] for r in group if r[key] != ""]
                mean[key] = float(np.mean([float(v) for v in values])) if values else ""
            means.append(mean)
    return means


def frontier_rows(rows: list[dict]) -> list[dict]:
    """The points of the frontier: a setting run with several seeds counts by its seed means, not by each seed."""
    averaged = {(r.get("method", ""), r["setting"]) for r in rows if r.get("seed") == "mean"}
    return [r for r in rows if r.get("seed") == "mean" or (r.get("method", ""), r.get("setting", r["run"])) not in averaged]


@dataclasses.dataclass
class Point:
    """One checkpoint of one setting: per-prompt mean reward and KL, one row per seed (prompts in one order)."""
    method: str
    setting: str
    step: int
    reward: np.ndarray  # seeds x prompts
    kl: np.ndarray


def points_of(per_prompt: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]], methods: dict[str, str]) -> list[Point]:
    """Points from {(run, step): (reward per prompt, KL per prompt)} and {run: method}; the seeds of a setting are
    stacked at each step that all of them reached."""
    groups: dict[tuple[str, str, int], list] = {}
    for (run, step), values in sorted(per_prompt.items()):
        groups.setdefault((methods[run], setting_of(run), step), []).append(values)
    seeds_of = {}
    for (method, setting, _), rows in groups.items():
        seeds_of[(method, setting)] = max(seeds_of.get((method, setting), 0), len(rows))
    return [Point(method, setting, step, np.stack([r for r, _ in rows]), np.stack([k for _, k in rows]))
            for (method, setting, step), rows in groups.items() if len(rows) == seeds_of[(method, setting)]]


def _halves(prompts: int, splits: int, rng) -> np.ndarray:
    """splits x 2 x prompts: in each split a random half of the prompts, then the other half."""
    masks = np.zeros((splits, 2, prompts), bool)
    for split in masks:
        split[0, rng.permutation(prompts)[: prompts // 2]] = True
        split[1] = ~split[0]
    return masks


def _means(points: list[Point], basis: np.ndarray, shape: tuple, rng) -> np.ndarray:
    """Each point's seed-mean reward and KL on each half of each split in each replicate: 2 (without, with a draw of
    the seed error) x 2 (reward, KL) x points x splits x 2 x replicates; replicate 0 is the data itself. A row of
    `basis` holds one (split, half, replicate)'s prompt weights, summing to 1. The draw (seed_errors) moves all of a
    setting's points together, from replicate 1 on; a setting with one seed does not move."""
    out = np.empty((2, 2, len(points), *shape))
    for setting in dict.fromkeys(p.setting for p in points):
        rows = [i for i, p in enumerate(points) if p.setting == setting]
        per_seed = np.stack([np.stack([p.reward @ basis.T, p.kl @ basis.T]) for p in (points[i] for i in rows)], axis=2)
        per_seed = per_seed.transpose(1, 0, 2, 3).reshape(per_seed.shape[1], 2, len(rows), *shape)  # seeds first
        mean = per_seed.mean(axis=0)
        out[0][:, rows] = mean
        mean[..., 1:] += seed_errors(per_seed[..., 1:] - mean[..., 1:], rng)
        out[1][:, rows] = mean
    return out


def _best_within(rewards, kls, estimates, curves, budget: float) -> np.ndarray:
    """The highest reward within the budget along the method's curves, chosen on one half and measured on the other:
    the candidates are every point whose KL on the choosing half is within the budget and, on every segment of a
    curve that crosses the budget, the reward interpolated at exactly the budget, so that a point near the budget
    moves the candidate's value continuously instead of entering and leaving the set. `estimates` holds the same
    points' rewards on the measuring half, where each candidate is measured with the weights chosen on the first."""
    first = np.array([i for c in curves for i in c[:-1]], int)
    second = np.array([j for c in curves for j in c[1:]], int)
    k0, k1 = kls[first], kls[second]
    share = np.divide(budget - k0, k1 - k0, out=np.zeros_like(k0), where=k1 != k0)
    crosses = (np.minimum(k0, k1) <= budget) & (budget <= np.maximum(k0, k1)) & (k1 != k0)
    chosen = np.concatenate([np.where(kls <= budget, rewards, -np.inf),
                             np.where(crosses, rewards[first] + share * (rewards[second] - rewards[first]), -np.inf)])
    measured = np.concatenate([estimates, estimates[first] + share * (estimates[second] - estimates[first])])
    return np.take_along_axis(measured, chosen.argmax(axis=0)[None], axis=0)[0]


def _best_at(rewards, kls, estimates, curves, kl: float) -> np.ndarray:
    """The highest reward at exactly the given KL among the method's curves (row indices in step order, the SFT model
    first), each interpolated linearly on its first segment that reaches that KL, chosen on one half and measured on
    the other with the weights chosen on the first; NaN where no curve reaches it on the choosing half."""
    best, value = np.full(rewards.shape[1:], -np.inf), np.full(rewards.shape[1:], np.nan)
    for rows in curves:
        found = np.zeros(rewards.shape[1:], bool)
        for i, j in zip(rows, rows[1:]):
            k0, k1 = kls[i], kls[j]
            crosses = ~found & (np.minimum(k0, k1) <= kl) & (kl <= np.maximum(k0, k1))
            share = np.divide(kl - k0, k1 - k0, out=np.zeros_like(k0), where=k1 != k0)
            chosen = rewards[i] + share * (rewards[j] - rewards[i])
            better = crosses & (chosen > best)
            best = np.where(better, chosen, best)
            value = np.where(better, estimates[i] + share * (estimates[j] - estimates[i]), value)
            found |= crosses
    return value


def _cross_fitted(rewards, kls, curves, kind: str, budget: float) -> np.ndarray:
    """Per replicate, the method's value chosen on one half of the prompts and measured on the other, both ways
    round, averaged over the splits (rewards, kls: points x splits x 2 x replicates)."""
    pick = _best_within if kind == "within" else _best_at
    values = pick(rewards, kls, rewards[:, :, ::-1], curves, budget)  # splits x 2 x replicates
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate where no half reaches the KL: NaN
        return np.nanmean(values, axis=(0, 1))


def _verdict(a: str, b: str, lo: float, hi: float) -> str:
    return f"{a} above" if lo > 0 else f"{b} above" if hi < 0 else "no difference detected"


def seeds_of(points: list[Point], method: str) -> int | None:
    """The fewest training seeds of any of the method's settings; None for a method that is not trained."""
    if method in UNTRAINED:
        return None
    return min(p.reward.shape[0] for p in points if p.method == method)


def cross_fitted_values(points: list[Point], sft: Point, methods: list[str], budgets, resamples: int, seed: int,
                        splits: int) -> dict[str, dict[tuple[str, float], np.ndarray]]:
    """Per method, kind ("within", "at") and budget, its cross-fitted value in the data (column 0) and in each of
    `resamples` bootstrap replicates, without (row 0) and with (row 1) a normal draw of its seed error; every method
    sees the same prompt resamples and halvings (they are paired by prompt), and its own draws of seed error."""
    prompts = sft.reward.shape[1]
    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones(prompts), rng.multinomial(prompts, np.full(prompts, 1 / prompts), size=resamples)])
    masks = _halves(prompts, splits, rng)
    basis = (masks[:, :, None, :] * weights).reshape(-1, prompts)
    with np.errstate(invalid="ignore"):  # a resample that draws no prompt of a half: that half's means are NaN
        basis = basis / basis.sum(axis=1, keepdims=True)
    values = {}
    for index, method in enumerate(methods):
        observed = [sft] + [p for p in points if p.method == method]
        means = _means(observed, basis, (splits, 2, resamples + 1), np.random.default_rng([seed, index]))
        curves = [[0] + [i for i, p in enumerate(observed) if p.setting == s and i > 0]
                  for s in dict.fromkeys(p.setting for p in observed[1:])]
        values[method] = {(kind, float(b)): np.stack([_cross_fitted(*means[v], curves, kind, float(b)) for v in (0, 1)])
                          for kind in ("within", "at") for b in budgets}
    return values


def _studentised(value_a, value_b, ratio_a, ratio_b) -> tuple[float, np.ndarray]:
    """A comparison's estimate and its replicates, for its intervals, from the two methods' values without (row 0)
    and with (row 1) a normal draw of their seed errors: each replicate's error (the prompts' part and the two seed
    errors) divided by that replicate's standard error and multiplied by the data's, each side's seed variance in a
    replicate scaled by its method's variance ratio (variance_ratios). A bootstrap-t: with 3 seeds a side the seed
    part gets Welch's t tails (2 to 4 degrees of freedom) rather than a normal's."""
    errors = [value[1, 1:] - value[0, 1:] for value in (value_a, value_b)]
    estimate = float(value_a[0, 0] - value_b[0, 0])
    prompts = (value_a[0, 1:] - value_b[0, 1:]) - estimate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no replicate with a value (an "at" KL half-reached): NaN
        v_prompts, v_a, v_b = (float(np.nan_to_num(np.nanvar(x))) for x in (prompts, *errors))
    error = prompts + errors[0] - errors[1]
    data = np.sqrt(v_prompts + v_a + v_b)
    replicate = np.sqrt(v_prompts + v_a * ratio_a + v_b * ratio_b)
    scaled = np.divide(error * data, replicate, out=np.zeros_like(error), where=replicate > 0)
    return estimate, estimate + np.where(np.isnan(error), np.nan, scaled)


def compare(points: list[Point], sft: Point, budgets, resamples: int = RESAMPLES, seed: int = 0,
            splits: int = SPLITS, methods: list[str] | None = None) -> list[dict]:
    """For each pair of methods and each budget, `difference`: the first's best reward within the budget minus the
    second's ("within"), then where both have a curve that reaches that KL, their rewards at exactly it ("at");
    each method's value cross-fitted (chosen on half the prompts, measured on the other half). `lo_each`-`hi_each`:
    its own 95% interval; `lo`-`hi`: the simultaneous 95% interval of the family, every comparison with at least
    MIN_SEEDS seeds on each trained side, and `verdict`: which is above, that no difference was detected, or that
    one side has too few seeds to tell (then `lo` and `hi` are empty). `methods`: their order (default: the report's).
    docs/statistics.md has the whole procedure."""
    methods = methods or sorted(dict.fromkeys(p.method for p in points), key=family_order)
    values = cross_fitted_values(points, sft, methods, budgets, resamples, seed, splits)
    seeds = {m: seeds_of(points, m) for m in methods}
    rng = np.random.default_rng([seed, len(methods)])  # apart from each method's own stream
    ratios = {m: variance_ratios(seeds[m] or 1, resamples, rng) for m in methods}
    rows, spreads = [], []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            for kind in ("within", "at"):
                for budget in (float(b) for b in budgets):
                    value_a, value_b = values[a][(kind, budget)], values[b][(kind, budget)]
                    if not np.isfinite(value_a[0, 0] - value_b[0, 0]):  # "at": one of them does not reach this KL
                        continue
                    difference, replicates = _studentised(value_a, value_b, ratios[a], ratios[b])
                    rows.append({"a": a, "b": b, "kind": kind, "budget": budget, "difference": difference,
                                 "seeds_a": "" if seeds[a] is None else seeds[a],
                                 "seeds_b": "" if seeds[b] is None else seeds[b],
                                 "family": all(seeds[m] is None or seeds[m] >= MIN_SEEDS for m in (a, b))})
                    spreads.append(replicates)
    if not rows:
        return []
    estimates = np.array([r["difference"] for r in rows])
    family = np.array([r.pop("family") for r in rows])
    each, _, _ = simultaneous_half_widths(estimates, np.array(spreads), LEVEL)
    together = np.full(len(rows), np.nan)
    if family.any():
        together[family] = simultaneous_half_widths(estimates[family], np.array(spreads)[family], LEVEL)[1]
    for row, d, h, w, member in zip(rows, estimates, each, together, family):
        row.update(lo_each=float(d - h), hi_each=float(d + h))
        if not member:
            row.update(lo="", hi="", verdict=TOO_FEW)
        else:
            w = np.inf if np.isnan(w) else w  # no replicate with a value: nothing can be told
            row.update(lo=float(d - w), hi=float(d + w), verdict=_verdict(row["a"], row["b"], d - w, d + w))
    return rows
