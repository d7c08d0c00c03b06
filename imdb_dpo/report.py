"""`report.md`: what a person reads after the evaluation (links are made relative to the report's path)."""

import os


def _fmt(x, digits=3):
    return f"{float(x):.{digits}f}"


def render_report(path: str, summary: list[dict], final_rows: list[dict], samples: dict, curves: dict[str, str],
                 settings: dict) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    lines = ["# Evaluation report", "",
             f"{settings['num_prompts']} held-out test prompts, {settings['samples_per_prompt']} samples each "
             f"(SFT: {settings['best_of_n_samples']}), temperature {settings['temperature']}, "
             f"max_new_tokens {settings['max_new_tokens']}, reward model `{settings['reward_model']}`. "
             "KL is KL(policy || SFT) in nats per sample (exact estimator); intervals are 95% bootstrap over prompts.",
             "", "## Final models", "",
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
    for r in summary:
        lines.append(f"| {r['run']} | {r['step']} | {_fmt(r['reward_mean'])} | {_fmt(r['kl_mean'], 2)} | {r['n']} |")
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
