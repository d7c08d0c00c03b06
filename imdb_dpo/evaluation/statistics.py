"""Statistics of the evaluation: bootstrap intervals over prompts, best-of-N, win rates, diversity."""

import math
from collections import defaultdict

import numpy as np

BEST_OF_N = (1, 2, 4, 8, 16)


def per_prompt_means(records: list[dict], key: str) -> np.ndarray:
    groups = defaultdict(list)
    for r in records:
        groups[r["prompt_id"]].append(r[key])
    return np.array([np.mean(groups[p]) for p in sorted(groups)])


def bootstrap_interval(values: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling the given per-prompt values with replacement."""
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(records: list[dict], seed: int = 0) -> dict:
    """Means and 95% bootstrap intervals (over prompts) of reward and exact KL, plus the log-ratio KL mean."""
    reward, kl = per_prompt_means(records, "reward"), per_prompt_means(records, "kl_exact")
    reward_lo, reward_hi = bootstrap_interval(reward, seed=seed)
    kl_lo, kl_hi = bootstrap_interval(kl, seed=seed + 1)
    return {
        "reward_mean": float(reward.mean()), "reward_lo": reward_lo, "reward_hi": reward_hi,
        "kl_mean": float(kl.mean()), "kl_lo": kl_lo, "kl_hi": kl_hi,
        "kl_logratio_mean": float(np.mean([r["kl_logratio"] for r in records])), "n": len(records),
    }


def best_of_n_kl_bound(n: int) -> float:
    """KL(best-of-n || base) is at most log n - (n-1)/n (Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n


def best_of_n_rewards(records: list[dict], n: int) -> np.ndarray:
    """Per prompt, the mean over disjoint groups of n samples of the group's best reward."""
    groups = defaultdict(list)
    for r in sorted(records, key=lambda r: r["sample"]):
        groups[r["prompt_id"]].append(r["reward"])
    per_prompt = []
    for prompt in sorted(groups):
        rewards = groups[prompt]
        usable = len(rewards) // n * n
        if usable == 0:
            raise ValueError(f"best-of-{n} needs {n} samples per prompt; prompt {prompt} has {len(rewards)}")
        per_prompt.append(np.max(np.reshape(rewards[:usable], (-1, n)), axis=1).mean())
    return np.array(per_prompt)


def win_rate(policy_records: list[dict], baseline_records: list[dict]) -> float:
    """How often the policy's sample beats the baseline's sample of the same prompt and index (ties: half)."""
    baseline = {(r["prompt_id"], r["sample"]): r["reward"] for r in baseline_records}
    scores = []
    for r in policy_records:
        other = baseline.get((r["prompt_id"], r["sample"]))
        if other is not None:
            scores.append(1.0 if r["reward"] > other else 0.5 if r["reward"] == other else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def distinct_n(token_lists: list[list[int]], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of all completions: low values flag degenerate repetition."""
    grams = [tuple(ids[i : i + n]) for ids in token_lists for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def seed_errors(deviations: np.ndarray, rng) -> np.ndarray:
    """Draws of the error of a mean over k training seeds, from each seed's deviation from that mean (k x ... x
    replicates, any shape between): one draw per replicate, shaped like one seed's deviations, normal with the
    standard error of the mean, s / sqrt(k) (zero for one seed).

    One Gaussian weight per seed, shared by everything that seed produced, so that a run's points move together (the
    multiplier bootstrap of Wu 1986). Resampling the k seeds with replacement instead gives a variance (k-1)/k of
    s^2/k and k^k / k! distinct draws (10 for 3 seeds): too narrow (Efron and Tibshirani 1993, ch. 5-6). The
    uncertainty of s itself is variance_ratios'."""
    k, replicates = deviations.shape[0], deviations.shape[-1]
    if k < 2:
        return np.zeros(deviations.shape[1:])
    weights = rng.standard_normal((k, replicates)) / math.sqrt(k * (k - 1))
    return np.einsum("k...r,kr->...r", deviations, weights)


def variance_ratios(seeds: int, replicates: int, rng) -> np.ndarray:
    """Per replicate, chi-square_(k-1) / (k-1): how far the sample variance of k seeds' normal errors falls from their
    true variance, ones for one seed (nothing estimated). Dividing a replicate's error by its own standard error
    made from these (a parametric bootstrap-t; Efron and Tibshirani 1993, ch. 12) gives a difference of two seed
    means Welch's t distribution, which it approximates, and does so with one draw a method, shared by all the
    comparisons that method is in, as their standard errors share its sample variance."""
    if seeds < 2:
        return np.ones(replicates)
    return rng.chisquare(seeds - 1, size=replicates) / (seeds - 1)


def simultaneous_half_widths(estimates: np.ndarray, replicates: np.ndarray, level: float = 0.95):
    """Per-comparison and simultaneous half-widths of symmetric bootstrap intervals around `estimates` (m), from the
    bootstrap replicates of each (m x replicates; NaN where a replicate has no value).

    Each comparison's own half-width h is the `level` quantile of |replicate - estimate|. The simultaneous ones are
    c x h, with c the `level` quantile over replicates of the largest |replicate - estimate| / h in the family: all m
    intervals then hold together in a share `level` of replicates, which bounds the chance of any false verdict in
    the family (single-step max-t, Romano and Wolf 2005; studentised by h, a scale that exists under t-tailed seed
    noise where a standard deviation may not). A comparison whose replicates all equal its estimate (h = 0) does not
    enter the maximum and keeps a half-width of 0."""
    deviations = np.abs(replicates - estimates[:, None])
    each = np.array([np.nanquantile(d, level) if np.isfinite(d).any() else np.nan for d in deviations])
    spread = np.isfinite(each) & (each > 0)
    if not spread.any():
        return each, each.copy(), 1.0
    ratios = deviations[spread] / each[spread, None]
    factor = float(np.nanquantile(np.nanmax(np.where(np.isnan(ratios), -np.inf, ratios), axis=0), level))
    return each, each * factor, factor
