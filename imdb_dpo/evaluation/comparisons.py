""""A beats B at matched KL", with an interval: the difference between two methods' best reward within a KL budget,
with a 95% bootstrap interval that resamples prompts and training seeds together.

A method's points are its runs' evaluated checkpoints, each seed of one setting (a run name less its `_seed<n>`)
averaged at each step, and the SFT model (KL 0), where every method starts. Its score within a budget is the highest
mean reward among its points whose mean KL is at most the budget: the number `frontier_budget.csv` holds.

Every model is evaluated on the same prompts with the same random numbers (imdb_dpo/models/sampling.py), so the two
methods' numbers are paired by prompt: each bootstrap replicate draws one resample of the prompts and uses it for
every point of both methods, and draws each setting's seeds with replacement. The point that is best within the
budget is chosen again in every replicate, so the interval also carries the noise of that choice.
"""

import dataclasses
import re

import numpy as np

from imdb_dpo.methods import frontier_methods, method as method_of_key

SEED_SUFFIX = re.compile(r"_seed(\d+)$")
RESAMPLES = 2000
# comparisons.csv; kind: "within" (best reward within the budget) or "at" (reward at that KL, interpolated)
COLUMNS = ["a", "b", "kind", "budget", "difference", "lo", "hi", "verdict"]


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


def _replicates(points: list[Point], prompts: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Each point's mean reward and KL in each replicate (points x replicates); `prompts` is replicates x prompts."""
    rewards, kls = [], []
    for point in points:
        seeds = point.reward.shape[0]
        drawn = rng.integers(0, seeds, size=(prompts.shape[0], seeds)) if seeds > 1 else np.zeros((prompts.shape[0], 1), int)
        for values, out in ((point.reward, rewards), (point.kl, kls)):
            per_seed = values[:, prompts].mean(axis=-1)  # seeds x replicates
            out.append(per_seed[drawn, np.arange(prompts.shape[0])[:, None]].mean(axis=1))
    return np.array(rewards), np.array(kls)


def _best(rewards: np.ndarray, kls: np.ndarray, budget: float) -> np.ndarray:
    """Per column, the highest reward among the rows whose KL is within the budget."""
    return np.where(kls <= budget, rewards, -np.inf).max(axis=0)


def _at(rewards: np.ndarray, kls: np.ndarray, curves: list[list[int]], kl: float) -> np.ndarray:
    """Per column, the highest reward among the curves (row indices in step order, the SFT model first) at the given
    KL, interpolated linearly on the first segment of each curve that reaches it; NaN where no curve does."""
    best = np.full(rewards.shape[1], np.nan)
    for rows in curves:
        value = np.full(rewards.shape[1], np.nan)
        for i, j in zip(rows, rows[1:]):
            k0, k1, r0, r1 = kls[i], kls[j], rewards[i], rewards[j]
            crosses = np.isnan(value) & (np.minimum(k0, k1) <= kl) & (kl <= np.maximum(k0, k1))
            share = np.divide(kl - k0, k1 - k0, out=np.zeros_like(k0), where=k1 != k0)
            value = np.where(crosses, r0 + share * (r1 - r0), value)
        best = np.fmax(best, value)
    return best


def _verdict(a: str, b: str, lo: float, hi: float) -> str:
    return f"{a} above" if lo > 0 else f"{b} above" if hi < 0 else "no difference detected"


def compare(points: list[Point], sft: Point, budgets, resamples: int = RESAMPLES, seed: int = 0) -> list[dict]:
    """For each pair of methods and each budget: `difference` (the first's best reward within the budget minus the
    second's), its 95% interval `lo`-`hi`, and the `verdict`: which is above, or that no difference was detected.
    Then, where both methods have a run whose curve (from the SFT model through its checkpoints) reaches that KL, the
    same at matched KL (`kind` "at"): each method's highest reward at exactly that KL, interpolated along its runs."""
    methods = sorted(dict.fromkeys(p.method for p in points), key=family_order)
    prompts = sft.reward.shape[1]
    rng = np.random.default_rng(seed)
    resampled = rng.integers(0, prompts, size=(resamples, prompts))
    observed = {m: [sft] + [p for p in points if p.method == m] for m in methods}
    whole = {m: (np.array([p.reward.mean() for p in ps])[:, None], np.array([p.kl.mean() for p in ps])[:, None])
             for m, ps in observed.items()}
    drawn = {m: _replicates(ps, resampled, np.random.default_rng([seed, i])) for i, (m, ps) in enumerate(observed.items())}
    curves = {m: [[0] + [i for i, p in enumerate(ps) if p.setting == s and i > 0]
                  for s in dict.fromkeys(p.setting for p in ps[1:])] for m, ps in observed.items()}
    rows = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            for budget in budgets:
                difference = float(_best(*whole[a], budget)[0] - _best(*whole[b], budget)[0])
                if not np.isfinite(difference):  # the SFT model (KL 0) is within every budget > 0: not reached
                    continue
                spread = _best(*drawn[a], budget) - _best(*drawn[b], budget)
                lo, hi = (float(q) for q in np.percentile(spread, [2.5, 97.5]))
                rows.append({"a": a, "b": b, "kind": "within", "budget": float(budget), "difference": difference,
                             "lo": lo, "hi": hi, "verdict": _verdict(a, b, lo, hi)})
            for budget in budgets:
                difference = float(_at(*whole[a], curves[a], budget)[0] - _at(*whole[b], curves[b], budget)[0])
                if not np.isfinite(difference):  # one of them has no run that reaches this KL
                    continue
                spread = _at(*drawn[a], curves[a], budget) - _at(*drawn[b], curves[b], budget)
                lo, hi = (float(q) for q in np.nanpercentile(spread, [2.5, 97.5]))
                rows.append({"a": a, "b": b, "kind": "at", "budget": float(budget), "difference": difference,
                             "lo": lo, "hi": hi, "verdict": _verdict(a, b, lo, hi)})
    return rows
