"""Gao et al. (2022)'s functional forms of reward against KL, fitted per method, and where a learned reward was fooled.

With d = sqrt(KL(policy || SFT)) and R the true reward's gain over the SFT model, Gao et al. found

    RL:         R(d) = d (a - b log d)      peak at d* = exp(a/b - 1), gain b d*
    best-of-N:  R(d) = d (a - b d)          peak at d* = a / (2b),     gain a^2 / (4b)

Both are linear in (a, b), so a least-squares fit is exact and has no starting point to choose. A positive b is
over-optimisation (the gain turns down past d*); b <= 0 means no turn within reach of the data.
"""

import math

import numpy as np

FORMS = {"rl": "d (a - b log d)", "best_of_n": "d (a - b d)"}
MIN_POINTS = 3  # two parameters: a fit through two points says nothing of its quality


def fit(d: np.ndarray, gain: np.ndarray, form: str) -> dict:
    """a, b, the coefficient of determination r2, the predicted peak (KL* = d*^2 and its gain) of `form` and the
    largest KL among the points (a peak beyond it is an extrapolation), fitted to the points with d > 0 (d = 0 is the SFT model itself, which every form passes through)."""
    keep = d > 0
    d, gain = d[keep], gain[keep]
    second = -d * np.log(d) if form == "rl" else -d * d
    design = np.stack([d, second], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, gain, rcond=None)
    predicted = design @ np.array([a, b])
    spread = float(((gain - gain.mean()) ** 2).sum())
    r2 = 1 - float(((gain - predicted) ** 2).sum()) / spread if spread > 0 else math.nan
    peak_d = peak_gain = math.nan
    if b > 0:
        if form == "rl":
            peak_d = math.exp(min(a / b - 1, 50.0))
            peak_gain = b * peak_d
        else:
            peak_d, peak_gain = a / (2 * b), a * a / (4 * b)
    return {"a": float(a), "b": float(b), "r2": r2, "points": int(len(d)), "peak_kl": peak_d ** 2,
            "peak_gain": peak_gain, "max_kl": float(d.max()) ** 2 if len(d) else math.nan}


def curve(params: dict, form: str, d: np.ndarray) -> np.ndarray:
    return d * (params["a"] - params["b"] * (np.log(np.maximum(d, 1e-12)) if form == "rl" else d))


def fits_by_method(rows: list[dict], method_of) -> list[dict]:
    """One fit per method with at least MIN_POINTS points of KL > 0: every trained method's checkpoints (RL form, as
    Gao et al. fit RL) and best-of-N at its analytic KL bound (best-of-N form), against the SFT model's reward."""
    sft = [float(r["reward_mean"]) for r in rows if method_of(r) == "sft"]
    if not sft:
        return []
    points: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        method = method_of(r)
        if method in ("sft", "base"):
            continue
        kl, reward = float(r["kl_mean"]), float(r["reward_mean"])
        if math.isfinite(kl) and math.isfinite(reward) and kl > 0:
            points.setdefault(method, []).append((math.sqrt(kl), reward - sft[0]))
    fits = []
    for method, xy in points.items():
        if len(xy) < MIN_POINTS:
            continue
        form = "best_of_n" if method == "best_of_n" else "rl"
        d, gain = (np.array(v) for v in zip(*xy))
        fits.append({"method": method, "form": form, **fit(d, gain, form)})
    return fits


def fooled(rows: list[dict]) -> dict | None:
    """Over one learned-reward run's checkpoints (step order), the checkpoint of highest true reward and what the
    proxy score and the true reward did after it: None when the run has no checkpoint after its true peak."""
    rows = sorted(rows, key=lambda r: float(r["step"]))
    best = max(range(len(rows)), key=lambda i: float(rows[i]["reward_mean"]))
    if best == len(rows) - 1:
        return None
    peak, last = rows[best], rows[-1]
    return {"peak_step": int(float(peak["step"])), "peak_reward": float(peak["reward_mean"]),
            "peak_kl": float(peak["kl_mean"]), "last_step": int(float(last["step"])),
            "true_change": float(last["reward_mean"]) - float(peak["reward_mean"]),
            "proxy_change": float(last["proxy_reward_mean"]) - float(peak["proxy_reward_mean"])}
