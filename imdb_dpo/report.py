"""`report.md`: what a person reads after the evaluation (links are made relative to the report's path)."""

import os


def _fmt(x, digits=3):
    return f"{float(x):.{digits}f}"


def _provenance(provenance: dict, checkpoints: list[dict], reward_model: str) -> list[str]:
    """Which code, when, and exactly which models: enough to tell whether two reports are comparable."""
    def model(m):
        return f"`{m['path']}` (run id `{m['run_id']}`)" if m["run_id"] else f"`{m['path']}` (no manifest)"

    lines = [f"- preset: `{provenance['preset'] or 'none'}`",
             f"- git commit: `{provenance['git_commit'] or 'unknown (not a git checkout)'}`",
             f"- written: {provenance['date']}",
             f"- SFT model, also the KL reference: {model(provenance['sft_model'])}"]
    if provenance["base_model"]:
        lines.append(f"- base model: {model(provenance['base_model'])}")
    runs: dict[str, list[dict]] = {}
    for r in checkpoints:
        if r["run"] not in ("sft", "base"):
            runs.setdefault(r["run"], []).append(r)
    lines.append(f"- DPO runs in `{provenance['dpo_dir']}`:" if runs else "- DPO runs: none")
    for run, rows in sorted(runs.items()):
        lines.append(f"  - `{run}`: beta {rows[0]['beta']}, loss `{rows[0]['loss_type']}`, {len(rows)} checkpoints")
    lines.append(f"- reward model: `{reward_model}`")
    return lines


def render_report(path: str, provenance: dict, summary: list[dict], final_rows: list[dict], samples: dict,
                  curves: dict[str, str], settings: dict, skipped: list[dict] = ()) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    checkpoints = [r for r in summary if r["kl_kind"] == "measured"]
    best_of_n = [r for r in summary if r["kl_kind"] == "analytic_bound"]
    lines = ["# Evaluation report", "", *_provenance(provenance, checkpoints, settings["reward_model"]), "",
             f"{settings['num_prompts']} held-out test prompts; every model is measured on {settings['samples_per_prompt']} "
             f"samples per prompt (the SFT model draws {settings['best_of_n_samples']}, for best-of-N), temperature "
             f"{settings['temperature']}, max_new_tokens {settings['max_new_tokens']}. "
             "KL is KL(policy || SFT) in nats per sample (exact estimator); intervals are 95% bootstrap over prompts. "
             f"Precision: sampling in {settings['sampling_dtype']}, KL pass in {settings['kl_dtype']}.",
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
    lines += ["", "## Reward versus KL", "", "![reward vs KL](reward_vs_kl.png)", "",
              "| run | step | reward | KL | n |", "|---|---|---|---|---|"]
    for r in checkpoints:
        lines.append(f"| {r['run']} | {r['step']} | {_fmt(r['reward_mean'])} | {_fmt(r['kl_mean'], 2)} | {r['n']} |")
    if best_of_n:
        lines += ["", "## Best-of-N on the SFT model: KL is an analytic bound, not measured", "",
                  f"Per prompt, the best by reward (`{settings['reward_model']}`) of N SFT samples, averaged over disjoint "
                  f"groups of the {settings['best_of_n_samples']} samples. Its KL is the analytic upper bound "
                  "log N - (N-1)/N on KL(best-of-N || SFT) (Beirami et al. 2024), not a measurement.", "",
                  "| N | reward (95% CI) | KL, analytic bound |", "|---|---|---|"]
        for r in best_of_n:
            lines.append(f"| {r['step']} | {_fmt(r['reward_mean'])} ({_fmt(r['reward_lo'])}-{_fmt(r['reward_hi'])}) "
                         f"| {_fmt(r['kl_mean'], 2)} |")
    if curves:
        lines += ["", "## DPO training curves", ""]
        for run, png in sorted(curves.items()):
            lines += [f"### {run}", "", f"![{run}]({os.path.relpath(png, directory)})", ""]
    lines += ["", "## Samples side by side", ""]
    for prompt, by_model in samples.items():
        lines += [f"**Prompt:** `{prompt}`", "", "| model | reward | completion |", "|---|---|---|"]
        for label, record in by_model.items():
            text = record["text"].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {label} | {_fmt(record['reward'])} | {text} |")
        lines.append("")
    return "\n".join(lines) + "\n"
