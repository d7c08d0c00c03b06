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
