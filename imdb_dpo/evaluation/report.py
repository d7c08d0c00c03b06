"""`report.md`: what a person reads after the evaluation (links are made relative to the report's path)."""

import math
import os

from imdb_dpo.evaluation.comparisons import MIN_SEEDS, TOO_FEW, family_of, family_order, frontier_rows, method_of
from imdb_dpo.methods import frontier_methods, method as method_of_key

# summary.csv's `method` column: the key of each method, and how the report names it (in table order).


def method_name(method: str) -> str:
    """How tables name a summary row's method."""
    declared = method_of_key(method)
    return declared.title if declared else {"sft": "SFT", "base": "base", "best_of_n": "best-of-N"}.get(method, method)


FRONTIER_BUDGET_COLUMNS = ["method", "budget", "reward_mean", "kl_mean", "run", "step"]


def _fmt(x, digits=3):
    return f"{float(x):.{digits}f}"


def family_name(family: str) -> str:
    """How the report names a family: `DPO (ipo)` for `dpo/ipo`."""
    method, _, loss = family.partition("/")
    return method_name(method) + (f" ({loss})" if loss else "")


def best_within_budgets(rows: list[dict], budgets) -> list[dict]:
    """Per method (`family_of`: each DPO loss a method of its own) and KL budget, the summary row with the highest
    reward_mean among the method's points whose kl_mean <= budget: one dict per (method, budget), keys
    FRONTIER_BUDGET_COLUMNS, with reward_mean, kl_mean, run and step "" when no point fits.

    A method's points are all its runs' checkpoints plus the SFT model at its measured KL (every method starts
    there; for SFT itself, only that point). Best-of-N's KL is its analytic bound and its step is N. A tie in reward
    goes to the lower KL, then to the SFT model, then to the row that comes first in `rows`. Methods with no rows of
    their own (not run) are left out; base is no method of this table. Values may be numbers or csv strings."""
    points: dict[str, list[dict]] = {}
    for row in frontier_rows(rows):  # a setting run with several seeds counts by its seed means
        reward, kl = float(row["reward_mean"]), float(row["kl_mean"])
        if math.isfinite(reward) and math.isfinite(kl):
            points.setdefault(family_of(row), []).append(
                {"reward_mean": reward, "kl_mean": kl, "run": row["run"], "step": int(float(row["step"]))})
    sft = points.get("sft", [])
    table = []
    for method in sorted(points, key=family_order):
        if method == "base":
            continue
        candidates = sft if method == "sft" else sft + points[method]
        for budget in budgets:
            within = [p for p in candidates if p["kl_mean"] <= float(budget)]
            best = max(within, key=lambda p: (p["reward_mean"], -p["kl_mean"]), default=None)  # max keeps the first
            table.append({"method": method, "budget": float(budget),
                          **(best or {"reward_mean": "", "kl_mean": "", "run": "", "step": ""})})
    return table


def _budget_section(summary: list[dict], budgets) -> list[str]:
    budgets = [float(b) for b in budgets]
    table = best_within_budgets(summary, budgets)
    lines = ["## Best reward within a KL budget", "",
             ("Per method (each DPO loss other than the paper's sigmoid one of its own, e.g. `DPO (ipo)`), the "
              "highest mean reward among its points with KL at most the budget (nats per sample): "
              "every evaluated checkpoint of every run of the method, and the SFT model at its measured KL, where every "
              "method starts. `-`: no point within the budget. A tie in reward goes to the lower KL. The best-of-N "
              "row's KL is the analytic bound log N - (N-1)/N, not a measurement (its step is N), so it compares a "
              "bound with the measured KLs of the others. Methods that were not run are left out. The same table is "
              "in `frontier_budget.csv`."), "",
             "| method | " + " | ".join(f"KL <= {b:g}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for method in dict.fromkeys(c["method"] for c in table):
        cells = [c for c in table if c["method"] == method]
        name = "best-of-N (KL: analytic bound)" if method == "best_of_n" else family_name(method)
        lines.append(f"| {name} | " + " | ".join(
            "-" if c["run"] == "" else f"{_fmt(c['reward_mean'])} ({c['run']} step {c['step']})" for c in cells) + " |")
    return lines


def _interval(lo: float, hi: float) -> str:
    return f"[{lo:+.3f}, {hi:+.3f}]"


def _cell(c: dict | None) -> str:
    """A family member: the estimate, its simultaneous interval, and a star where that excludes 0. Any other: the
    estimate with its own interval, and that it carries no verdict."""
    if c is None:
        return "-"
    if c["verdict"] == TOO_FEW:
        return (f"{c['difference']:+.3f} {_interval(c['lo_each'], c['hi_each'])} too few seeds "
                f"({_seeds(c['seeds_a'])} v {_seeds(c['seeds_b'])})")
    star = "" if c["verdict"] == "no difference detected" else " *"
    return f"{c['difference']:+.3f} {_interval(c['lo'], c['hi'])}{star}"


def _seeds(seeds) -> str:
    return "-" if seeds in ("", None) else str(seeds)


def _sentence(c: dict, names: dict) -> str:
    within = f"within {c['budget']:g} nat{'' if c['budget'] == 1 else 's'}"
    a, b = c["a"], c["b"]
    if c["verdict"] == TOO_FEW:
        return f"{within} too few seeds to tell ({c['difference']:+.3f})"
    if c["verdict"] == f"{b} above":
        return f"{within} {names[b]} above, {-c['difference']:+.3f} {_interval(-c['hi'], -c['lo'])}"
    said = "no difference detected" if c["verdict"] == "no difference detected" else f"{names[a]} above,"
    return f"{within} {said} {c['difference']:+.3f} {_interval(c['lo'], c['hi'])}"


def _comparison_section(comparisons: list[dict], budgets) -> list[str]:
    """Each pair of methods within each budget: the cross-fitted difference in best reward, its simultaneous interval
    over the family and the verdict, or that a side has too few seeds to carry one (docs/statistics.md)."""
    lines = ["## Comparisons at matched KL", ""]
    if not comparisons:
        return lines + ["Fewer than two methods were evaluated: nothing to compare."]
    budgets = [float(b) for b in budgets]
    family = [c for c in comparisons if c["verdict"] != TOO_FEW]
    lines += [("For each pair of methods A and B, A's best reward within the KL budget minus B's, each along its "
               "curves (the SFT model, then each setting's checkpoints in step order, the seeds of a setting averaged; "
               "best-of-N at its analytic KL bound) with the reward interpolated at exactly the budget where a curve "
               "crosses it, so that a point near the budget cannot make the result jump. Each best point is chosen on "
               "one half of the prompts and its reward measured on the other half, both ways round, over 8 random "
               "halvings: the best of many noisy points, measured where it was chosen, is too high. So these differ from "
               "the table above, which lists the best evaluated checkpoint itself: higher where a curve rises up to the "
               "budget between two checkpoints, lower by the cross-fitting. The intervals resample the prompts (the same resample for every model: they are "
               "paired by prompt and sample) and redo the whole choice in every resample; each setting's seed mean "
               "moves by a draw of its seed error, and a difference's seed error is Student's t with Welch's degrees "
               "of freedom (2 to 4 with 3 seeds a side), not normal (a bootstrap-t): docs/statistics.md.")]
    if family:
        factor = max((c["hi"] - c["lo"]) / (c["hi_each"] - c["lo_each"]) for c in family
                     if c["hi_each"] > c["lo_each"]) if any(c["hi_each"] > c["lo_each"] for c in family) else 1.0
        lines += ["", (f"*: the simultaneous 95% interval excludes 0. The family is the {len(family)} comparisons of "
                       f"this section with at least {MIN_SEEDS} training seeds in every setting of each trained side "
                       "(both tables): the chance that any of their stars is false is at most 5% (family-wise error "
                       f"rate, Romano and Wolf's max-t; the simultaneous intervals are {factor:.2f} times as wide as "
                       "each comparison's own, which `comparisons.csv` gives as lo_each, hi_each).")]
    else:
        lines += ["", ("*: where a comparison carries a verdict, its simultaneous 95% interval over the family of such "
                       "comparisons excludes 0 (at most a 5% chance of any false star); none here does.")]
    if len(family) < len(comparisons):
        lines += ["", (f"too few seeds (a v b): a side has fewer than {MIN_SEEDS} seeds in a setting, so the seed "
                       "noise of its result cannot be estimated (one seed) or hardly (two); such a comparison carries "
                       "no verdict and no star, whatever its interval, which is its own 95% interval over prompts and "
                       "the seeds there are. More seeds: `python train.py <method> --seeds 0 1 2`.")]
    lines += ["", "| A vs B | " + " | ".join(f"KL <= {b:g}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    pairs = list(dict.fromkeys((c["a"], c["b"]) for c in comparisons))
    cells = {(c["a"], c["b"], c["budget"]): c for c in comparisons if c["kind"] == "within"}
    at = {(c["a"], c["b"], c["budget"]): c for c in comparisons if c["kind"] == "at"}
    for a, b in pairs:
        lines.append(f"| {family_name(a)} vs {family_name(b)} | "
                     + " | ".join(_cell(cells.get((a, b, budget))) for budget in budgets) + " |")
    lines.append("")
    for a, b in pairs:
        names = {a: family_name(a), b: family_name(b)}
        parts = [_sentence(cells[(a, b, budget)], names) for budget in budgets if (a, b, budget) in cells]
        lines.append(f"- {names[a]} vs {names[b]}: " + "; ".join(parts) + ".")
    if at:
        lines += ["", ("At matched KL: where both methods have a curve that reaches the KL, each method's highest "
                   "reward at exactly that KL, interpolated linearly between the two checkpoints around it, A's minus "
                   "B's, chosen and measured on opposite halves as above, with the same intervals and family. "
                   "`-`: one of them does not reach it."), "",
                  "| A vs B | " + " | ".join(f"KL = {b:g}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for a, b in pairs:
            lines.append(f"| {family_name(a)} vs {family_name(b)} | "
                         + " | ".join(_cell(at.get((a, b, budget))) for budget in budgets) + " |")
    return lines


def _overoptimisation_section(summary: list[dict], fits: list[dict], figure: bool) -> list[str]:
    from imdb_dpo.evaluation.fits import FORMS, fooled

    lines = ["## Over-optimisation", ""]
    if figure:
        lines += ["![over-optimisation](overoptimisation.png)", ""]
    proxied: dict[str, list[dict]] = {}
    for r in summary:
        if r.get("proxy_reward_mean", "") != "":
            proxied.setdefault(r["run"], []).append(r)
    if proxied:
        lines += [("RLOO on the learned reward model (the paper's PPO row) optimises the model's score, a proxy; the "
                   "true reward is the evaluation's. Where the proxy keeps rising while the true reward falls, the policy "
                   "has found what the learned model gets wrong."), ""]
        for run, rows in sorted(proxied.items()):
            turn = fooled(rows)
            if turn is None:
                lines.append(f"- `{run}`: the true reward is highest at its last checkpoint; no sign of over-optimisation "
                             "within this run.")
            else:
                lines.append(
                    f"- `{run}`: the true reward peaks at step {turn['peak_step']} ({_fmt(turn['peak_reward'])} at KL "
                    f"{_fmt(turn['peak_kl'], 2)}); by step {turn['last_step']} it has changed by "
                    f"{turn['true_change']:+.3f} while the learned score changed by {turn['proxy_change']:+.3f}"
                    + (" (fooled: the proxy rose as the true reward fell)." if turn["proxy_change"] > 0 else "."))
        lines += ["", "| run | step | KL | true reward (95% CI) | learned RM score |", "|---|---|---|---|---|"]
        for run, rows in sorted(proxied.items()):
            for r in sorted(rows, key=lambda r: float(r["step"])):
                lines.append(f"| {run} | {r['step']} | {_fmt(r['kl_mean'], 2)} | {_fmt(r['reward_mean'])} "
                             f"({_fmt(r['reward_lo'])}-{_fmt(r['reward_hi'])}) | {_fmt(r['proxy_reward_mean'])} |")
        lines.append("")
    if fits:
        lines += [("Per method, the true reward's gain over the SFT model against d = sqrt(KL), fitted with Gao et al. "
                   "(2022)'s forms by least squares over all of the method's points (best-of-N at its analytic KL "
                   "bound). Gao et al. fitted their RL form to RL runs; here every trained method gets it, as a "
                   "description of its points rather than a law. b > 0: the gain turns down past the peak, at the KL "
                   "shown; b <= 0: no turn within reach. Points: those with KL > 0 (a checkpoint still equal to the SFT "
                   "model, KL 0, is the curve's origin and adds nothing to a fit). A peak beyond the largest KL "
                   "measured (in brackets) is an extrapolation of the fit, not an observation."), "",
                  "| method | form | a | b | R² | points (largest KL) | peak at KL | peak gain |",
                  "|---|---|---|---|---|---|---|---|"]
        for f in fits:
            peak = f["b"] > 0
            beyond = " (extrapolated)" if peak and f["peak_kl"] > f["max_kl"] else ""
            lines.append(f"| {family_name(f['method'])} | {FORMS[f['form']]} | {f['a']:.4g} "
                         f"| {f['b']:.4g} | {_fmt(f['r2'], 2)} | {f['points']} ({_fmt(f['max_kl'], 2)}) "
                         f"| {_fmt(f['peak_kl'], 2) + beyond if peak else '-'} | {_fmt(f['peak_gain']) if peak else '-'} |")
    elif not proxied:
        lines.append("No method has enough points for a fit (3 with KL > 0) and no run optimised a learned reward model.")
    return lines


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path != folder and os.path.commonpath([path, folder]) == folder


def _provenance(provenance: dict, checkpoints: list[dict], reward_model: str, skipped) -> list[str]:
    """Which code, when, and exactly which models: enough to tell whether two reports are comparable."""
    def model(m):
        return f"`{m['path']}` (run id `{m['run_id']}`)" if m["run_id"] else f"`{m['path']}` (no manifest)"

    lines = [f"- preset: `{provenance['preset'] or 'none'}`",
             f"- git commit: `{provenance['git_commit'] or 'unknown (not a git checkout)'}`",
             f"- written: {provenance['date']}",
             f"- SFT model, also the KL reference: {model(provenance['sft_model'])}"]
    if provenance["base_model"]:
        lines.append(f"- base model: {model(provenance['base_model'])}")
    for declared in frontier_methods():
        method = declared.key
        runs: dict[str, list[dict]] = {}
        for r in checkpoints:
            if method_of(r) == method:
                runs.setdefault(r["run"], []).append(r)
        root = os.path.join(provenance["runs_root"], method) if provenance.get("runs_root") else ""
        name = declared.title
        left_out = [s for s in skipped if root and _inside(s["path"], root)]
        if runs:
            lines.append(f"- {name} runs in `{root}`:")
        elif left_out:
            lines.append(f"- {name} runs: none evaluated in `{root}` ({len(left_out)} left out: see Not evaluated)")
        else:
            lines.append(f"- {name} runs: none" + (f" in `{root}`" if root else ""))
        for run, rows in sorted(runs.items()):
            parameter = declared.parameter
            what = f"{parameter} {rows[0]['beta']}, " if parameter else ""
            what += f"loss `{rows[0]['loss_type']}`, " if declared.loss_field else ""
            lines.append(f"  - `{run}`: {what}{len(rows)} checkpoint{'s' if len(rows) != 1 else ''}")
    lines.append(f"- reward model: `{reward_model}`")
    return lines


def against_sft(final_rows: list[dict]) -> list[str]:
    """Which methods raised the reward above the SFT model's: those with a final model whose 95% interval lies
    entirely above SFT's mean reward; the others are named with their best final model."""
    sft = next((r for r in final_rows if r["run"] == "sft"), None)
    families: dict[str, list[dict]] = {}
    for r in final_rows:
        if method_of_key(method_of(r)):
            families.setdefault(family_of(r), []).append(r)
    if sft is None or not families:
        return []
    above, below = [], []
    for family in sorted(families, key=family_order):
        best = max(families[family], key=lambda r: float(r["reward_mean"]))
        if float(best["reward_lo"]) > float(sft["reward_mean"]):
            above.append(family_name(family))
        else:
            below.append(f"{family_name(family)} (best final model `{best['run']}`: {_fmt(best['reward_mean'])}, "
                         f"{_fmt(best['reward_lo'])}-{_fmt(best['reward_hi'])})")
    lines = [f"Raised the reward above the SFT model's {_fmt(sft['reward_mean'])} (a final model's 95% interval entirely "
             f"above it): {', '.join(above) or 'none'}."]
    if below:
        lines.append(f"Did not: {'; '.join(below)}.")
    return ["", *lines]


def render_report(path: str, provenance: dict, summary: list[dict], final_rows: list[dict], samples: dict,
                  curves: dict[str, str], settings: dict, skipped: list[dict] = (),
                  kl_budgets=(1.0, 3.0, 10.0), fits: list[dict] = (), overoptimisation_figure: bool = False,
                  comparisons: list[dict] = ()) -> str:
    """The report's markdown. `summary`: the rows of summary.csv; `final_rows`: each model's last checkpoint, with a
    `label`; `samples`: {prompt: {label: record}}; `curves`: {run: training_curves.png}."""
    directory = os.path.dirname(os.path.abspath(path))
    checkpoints = [r for r in summary if r["kl_kind"] == "measured"]
    best_of_n = [r for r in summary if r["kl_kind"] == "analytic_bound"]
    lines = ["# Evaluation report", "", *_provenance(provenance, checkpoints, settings["reward_model"], skipped), "",
             f"{settings['num_prompts']} held-out test prompts; every model is measured on {settings['samples_per_prompt']} "
             f"samples per prompt (the SFT model draws {settings['best_of_n_samples']}, for best-of-N), temperature "
             f"{settings['temperature']}, max_new_tokens {settings['max_new_tokens']}. "
             "KL is KL(policy || SFT) in nats per sample (exact estimator); intervals are 95% bootstrap over prompts. "
             f"Precision: sampling in {settings['sampling_dtype']}, KL pass in {settings['kl_dtype']}, reward model in "
             f"{settings.get('reward_dtype', 'float32')}.",
             ""]
    if skipped:
        lines += ["## Not evaluated", "", "These were found but left out of every table and of the plot:", "",
                  *[f"- `{s['path']}`: {s['reason']}" for s in skipped], ""]
    lines += ["## Final models", "",
             "| model | reward (95% CI) | KL (95% CI) | KL, log-ratio estimator | win rate vs SFT | mean length | distinct-2 |",
             "|---|---|---|---|---|---|---|"]
    for r in final_rows:
        lines.append(
            f"| {r['label']} | {_fmt(r['reward_mean'])} ({_fmt(r['reward_lo'])}-{_fmt(r['reward_hi'])}) "
            f"| {_fmt(r['kl_mean'], 2)} ({_fmt(r['kl_lo'], 2)}-{_fmt(r['kl_hi'], 2)}) | {_fmt(r['kl_logratio_mean'], 2)} "
            f"| {_fmt(r['win_rate_vs_sft']) if r['win_rate_vs_sft'] != '' else '-'} | {_fmt(r['mean_length'], 1)} "
            f"| {_fmt(r['distinct_2'])} |")
    lines += against_sft(final_rows)
    lines += ["", "## Reward versus KL", "", "![reward vs KL](reward_vs_kl.png)", "",
              "Every point: [reward_vs_kl_full.png](reward_vs_kl_full.png).", "",
              "| method | run | step | reward | KL | n |", "|---|---|---|---|---|---|"]
    for r in checkpoints:
        lines.append(f"| {method_name(method_of(r))} | {r['run']} | {r['step']} "
                     f"| {_fmt(r['reward_mean'])} | {_fmt(r['kl_mean'], 2)} | {r['n']} |")
    if best_of_n:
        lines += ["", "## Best-of-N on the SFT model: KL is an analytic bound, not measured", "",
                  f"Per prompt, the best by reward (`{settings['reward_model']}`) of N SFT samples, averaged over disjoint "
                  f"groups of the {settings['best_of_n_samples']} samples. Its KL is the analytic upper bound "
                  "log N - (N-1)/N on KL(best-of-N || SFT) (Beirami et al. 2024), not a measurement.", "",
                  "| N | reward (95% CI) | KL, analytic bound |", "|---|---|---|"]
        for r in best_of_n:
            lines.append(f"| {r['step']} | {_fmt(r['reward_mean'])} ({_fmt(r['reward_lo'])}-{_fmt(r['reward_hi'])}) "
                         f"| {_fmt(r['kl_mean'], 2)} |")
    lines += ["", *_budget_section(summary, kl_budgets)]
    lines += ["", *_comparison_section(list(comparisons), kl_budgets)]
    lines += ["", *_overoptimisation_section(summary, list(fits), overoptimisation_figure)]
    if curves:
        methods = {r["run"]: method_of(r) for r in checkpoints}
        order = {m: i for i, m in enumerate(["sft", "base", *(m.key for m in frontier_methods()), "best_of_n"])}
        lines += ["", "## Training curves", ""]
        for run, png in sorted(curves.items(), key=lambda item: (order.get(methods.get(item[0]), len(order)), item[0])):
            name = method_name(methods[run]) if run in methods else ""
            lines += [f"### {name + ': ' if name else ''}{run}", "", f"![{run}]({os.path.relpath(png, directory)})", ""]
    lines += ["", "## Samples side by side", ""]
    for prompt, by_model in samples.items():
        lines += [f"**Prompt:** `{prompt}`", "", "| model | reward | completion |", "|---|---|---|"]
        for label, record in by_model.items():
            text = record["text"].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {label} | {_fmt(record['reward'])} | {text} |")
        lines.append("")
    return "\n".join(lines) + "\n"
