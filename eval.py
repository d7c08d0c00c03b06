"""Stage 4: reward and KL(policy || SFT) of the SFT model and every checkpoint of every method's runs (the registry,
imdb_dpo/methods: each method's runs in <runs_root>/<method>/) on held-out prompts.

    python eval.py --config configs/gpt2-large/eval.yaml

Writes to output_dir: records/<settings>/<run>/<run id>/step-<N>/records.jsonl (one record per sample),
summary.csv (per checkpoint, with 95% bootstrap intervals over prompts, and best-of-N rows; `method` tells the
families apart), reward_vs_kl.png (the paper's view, drawn from summary.csv alone) and reward_vs_kl_full.png (every
point), overoptimisation.png (proxy against true reward of the runs on a learned reward model; Gao et al.'s curves
fitted per method), frontier_budget.csv (per method, the best reward within each of kl_budgets), report.md and
manifest.json. A checkpoint already evaluated with the same settings is skipped: that includes each checkpoint a
training stage evaluated as it saved it (`frontier_eval`, imdb_dpo/evaluation/in_training.py), which eval.py only gathers.
An interrupted evaluation resumes from its last finished batch. Run again with the same settings and
models, it changes nothing; with other settings it needs --overwrite true.
"""

import imdb_dpo.lifecycle.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import csv
import io
import json
import os
import sys
import time

import numpy as np

from imdb_dpo.lifecycle.checkpoints import checkpoint_steps
from imdb_dpo.configuration.checks import model_dir_problem
from imdb_dpo.launch.cli import run_stage
from imdb_dpo.evaluation.comparisons import (COLUMNS as COMPARISON_COLUMNS, Point, compare, family_of, frontier_rows, points_of,
                                  seed_means, setting_of)
from imdb_dpo.configuration.arguments import ConfigError, EvalArguments
from imdb_dpo.planning.costs import check_memory, classifier_shape, evaluation_memory, model_shape
from imdb_dpo.data.reviews import prompts_for
from imdb_dpo.lifecycle.distributed import process_state
from imdb_dpo.evaluation.fits import fits_by_method
from imdb_dpo.evaluation.statistics import (BEST_OF_N, best_of_n_kl_bound, best_of_n_rewards, bootstrap_interval, distinct_n,
                                 per_prompt_means, summarise, win_rate)
from imdb_dpo.lifecycle.locks import main_process_lock
from imdb_dpo.methods import frontier_methods, method as method_of_key
from imdb_dpo.evaluation.evaluator import (Evaluator, UnreadableCheckpoint, check_args, evaluated_methods, records_dir, records_key,
                                 records_root, run_meta, runs_folder, settings_of)
from imdb_dpo.lifecycle.manifests import (MANIFEST_NAME, Manifest, describe_model_input, git_commit, is_finished, read_manifest,
                                         write_json_atomic, write_text_atomic)
from imdb_dpo.models.modeling import load_tokenizer
from imdb_dpo.evaluation.plots import plot_frontier, plot_overoptimisation
from imdb_dpo.lifecycle.preemption import StopRequest, exit_resumable
from imdb_dpo.evaluation.report import FRONTIER_BUDGET_COLUMNS, best_within_budgets, render_report
from imdb_dpo.evaluation.tracker import check_report_to, log_evaluation

STAGES = (EvalArguments,)
# kl_kind: `measured` (a checkpoint's exact KL) or `analytic_bound` (best-of-N: log N - (N-1)/N, never measured).
# method: sft, base, best_of_n, or a method's key (imdb_dpo/methods; python train.py lists them).
# proxy_reward_mean: the learned reward model's mean score of the samples, for the runs that optimised one (rloo_rm).
# setting: the run name less its _seed<n>; seed: the run's training seed, or "mean" on a row that averages the seeds
# of a setting run with several (its reward_lo/hi and kl_lo/hi are then the lowest and highest seed's: the band).
SUMMARY_COLUMNS = ["method", "run", "setting", "seed", "loss_type", "beta", "step", "reward_model", "reward_mean",
                   "reward_lo", "reward_hi",
                   "kl_kind", "kl_mean", "kl_lo", "kl_hi", "kl_logratio_mean", "n", "win_rate_vs_sft", "mean_length",
                   "distinct_2", "proxy_reward_mean", "path"]


RESERVED_RUNS = ("sft", "base", "best_of_n")  # names of the rows that are not runs
def models_to_evaluate(args: EvalArguments) -> tuple[list[dict], list[dict]]:
    """The models to evaluate, and what is left out with the reason (reported, not fatal): unfinished runs,
    checkpoints that cannot be loaded, and checkpoints evaluated while training (frontier_eval) and deleted, with no
    records under `args`'s settings.

    Every run folder under <runs_root>/<method>/ (each method of the registry, or of `methods`) whose manifest's
    stage is that method counts (a method whose folder does not exist was not run). Records are kept by run name, so
    a name found in two methods' folders is an error."""
    units = [{"method": "sft", "run": "sft", "loss_type": "", "beta": "", "step": 0, "path": args.sft_model}]
    if args.base_model:
        units.append({"method": "base", "run": "base", "loss_type": "", "beta": "", "step": 0, "path": args.base_model})
    skipped, seen, under = [], {}, records_root(args)
    for method in evaluated_methods(args):
        root = runs_folder(args, method)
        # A leading dot marks work in progress beside a finished run (e.g. `.sigmoid_beta0.1.new` of an --overwrite).
        runs = sorted(n for n in os.listdir(root) if not n.startswith(".")) if root and os.path.isdir(root) else []
        seeded = {setting_of(n) for n in runs if setting_of(n) != n}
        for name in runs:
            run_dir = os.path.join(root, name)
            manifest = read_manifest(run_dir)
            if not manifest:
                continue
            if manifest.get("stage") != method.key:
                other = method_of_key(manifest.get("stage") or "")
                if other:  # e.g. rloo.py run with --output_dir of the DPO runs: say so rather than drop it unseen
                    skipped.append({"path": run_dir, "reason": f"it holds a {other.title} run, but it is among the "
                                                               f"{method.title} runs; move it to "
                                                               f"{runs_folder(args, other)}"})
                continue
            if name in RESERVED_RUNS:
                raise ConfigError(f"{run_dir}: a run may not be named {name!r}, which names the {name} rows of the "
                                  "evaluation; rename the folder")
            if name in seen:
                raise ConfigError(f"two runs are named {name!r}: {seen[name]} and {run_dir}. The evaluation keeps "
                                  "records by run name, so run names must differ across "
                                  "the methods' folders; rename one of the folders")
            seen[name] = run_dir
            if not manifest.get("finished"):
                skipped.append({"path": run_dir, "reason": f"the {method.title} run is unfinished; finish it (run "
                                                           f"{method.command} again) and evaluate again"})
                continue
            if name in seeded:  # counted as a seed it would stack with its own twin (seed n); beside them, once more
                skipped.append({"path": run_dir, "reason": f"a run without seeds of a setting also run with seeds "
                                                           f"({name}_seed<n>), which counts by those; move it out of "
                                                           f"{root} (or rename it {name}_seed<its seed> if no run "
                                                           "of that seed exists) to count it"})
                continue
            meta = run_meta(method.key, name, manifest)
            problem = meta.get("proxy_model") and proxy_problem(meta["proxy_model"], meta["proxy_run_id"])
            if problem:  # one reason for the whole run, not one per checkpoint
                skipped.append({"path": run_dir, "reason": problem})
                continue
            units += run_units(run_dir, manifest, meta, skipped, under)
    return units, skipped


def proxy_problem(path: str, run_id: str) -> str | None:
    """Why the learned reward model an rloo_rm run optimised cannot score its checkpoints (None: it can): its score
    is recorded beside the true reward, so it must be that very model."""
    fix = ("restore that model, or train the RLOO run again (rloo.py with reward_model) on the one there now; the "
           "true reward alone is no over-optimisation measurement")
    if not os.path.isdir(path):
        return (f"the learned reward model it optimised, {path}, is gone; restore it, or train a reward model there "
                "(reward_model.py) and the RLOO run again on it (rloo.py with reward_model)")
    problem = model_dir_problem(path)
    if problem:
        return f"the learned reward model it optimised, {path}, does not load ({problem}); {fix}"
    now = describe_model_input(path)["run_id"]
    if now != run_id:  # retrained with --overwrite: its score would be another model's
        return (f"the learned reward model it optimised, {path} (run {run_id}), has been replaced by run {now}; train "
                "the RLOO run again on it, or restore that model")
    return None


def run_units(run_dir: str, manifest: dict, meta: dict, skipped: list[dict], records_root: str) -> list[dict]:
    """One unit per loadable checkpoint of a finished run (and its final model, if kept, when no checkpoint holds
    that step), and one per deleted checkpoint whose records exist under `records_root` (frontier_eval); the others
    go to `skipped` with the reason."""
    units = []
    steps = dict(checkpoint_steps(run_dir))
    if manifest.get("final_model_kept", True):  # else (keep_final_model_seeds) the last step is in the records alone
        steps.setdefault(manifest["global_step"], run_dir)  # the final model, when no checkpoint holds it
    for step in manifest.get("checkpoints", []):
        deleted = os.path.join(run_dir, f"checkpoint-{step}")
        if step in steps:
            continue
        if is_finished(records_dir(records_root, {**meta, "step": step})):
            units.append({**meta, "step": step, "path": deleted})
        elif "frontier_eval" in manifest:
            during = manifest["frontier_eval"]
            if (during["settings_key"] == os.path.basename(records_root)
                    and os.path.abspath(during.get("records", "")) == os.path.abspath(records_root)):
                reason = (f"evaluated while training under these settings, then deleted, but its records are gone "
                          f"from {records_dir(records_root, {**meta, 'step': step})}: train the run again with "
                          "--overwrite true to evaluate it")
            elif during["settings_key"] == os.path.basename(records_root):  # same settings, another output_dir
                reason = (f"evaluated while training under these settings, then deleted; its records are in "
                          f"{during.get('records', 'the records/ folder of the output_dir of ' + during['config'])}, "
                          f"not under this evaluation's output_dir: set output_dir as {during['config']} does to "
                          "gather them")
            else:
                reason = (f"evaluated while training under the settings of {during['config']} (records key "
                          f"{during['settings_key']}, not {os.path.basename(records_root)}), then deleted: evaluate "
                          "with those settings, or train the run again with --overwrite true to evaluate it under these")
            skipped.append({"path": deleted, "reason": reason})
        else:
            skipped.append({"path": deleted, "reason": "the checkpoint is gone (deleted or moved since the run finished)"})
    for step, path in sorted(steps.items()):
        problem = model_dir_problem(path, tokenizer=False)
        if problem:
            skipped.append({"path": path, "reason": problem})
        else:
            units.append({**meta, "step": step, "path": path})
    return sorted(units, key=lambda unit: unit["step"])


def summary_row(unit, records, sft_records, args) -> dict:
    stats = summarise(records, args.seed)
    is_sft = unit["run"] == "sft"
    return {**{k: unit[k] for k in ("method", "run", "loss_type", "beta", "step", "path")}, **stats,
            "setting": setting_of(unit["run"]), "seed": unit.get("seed", ""),
            "reward_model": args.reward_model, "kl_kind": "measured",
            "win_rate_vs_sft": "" if is_sft else win_rate(records, sft_records),
            "mean_length": float(np.mean([len(r["completion_ids"]) for r in records])),
            "distinct_2": distinct_n([r["completion_ids"] for r in records], 2),
            "proxy_reward_mean": float(np.mean([r["proxy_reward"] for r in records])) if "proxy_reward" in records[0]
            else ""}


def best_of_n_rows(sft_records, args) -> list[dict]:
    rows = []
    for n in (n for n in BEST_OF_N if n <= args.best_of_n_samples):
        rewards = best_of_n_rewards(sft_records, n)
        lo, hi = bootstrap_interval(rewards, seed=args.seed)
        bound = best_of_n_kl_bound(n)
        rows.append({"method": "best_of_n", "run": "best_of_n", "loss_type": "", "beta": "", "step": n, "reward_model": args.reward_model,
                     "reward_mean": float(rewards.mean()), "reward_lo": lo, "reward_hi": hi,
                     "kl_kind": "analytic_bound", "kl_mean": bound, "kl_lo": bound, "kl_hi": bound,
                     "kl_logratio_mean": bound, "n": len(sft_records), "win_rate_vs_sft": "", "mean_length": "",
                     "setting": "best_of_n", "seed": "",
                     "distinct_2": "", "proxy_reward_mean": "", "path": ""})
    return rows


def matched_kl_comparisons(units, measured, sft_records, args) -> list[dict]:
    """Each pair of methods (the trained ones and best-of-N on the SFT model) within each KL budget, with bootstrap
    intervals (imdb_dpo/evaluation/comparisons.py)."""
    per_prompt = {(u["run"], u["step"]): (per_prompt_means(measured[(u["run"], u["step"])], "reward"),
                                          per_prompt_means(measured[(u["run"], u["step"])], "kl_exact"))
                  for u in units if method_of_key(u["method"])}
    reward, kl = (per_prompt_means(measured[("sft", 0)], key) for key in ("reward", "kl_exact"))
    sft = Point("sft", "sft", 0, reward[None], kl[None])
    points = points_of(per_prompt, {u["run"]: family_of(u) for u in units})
    for n in (n for n in BEST_OF_N if n <= args.best_of_n_samples):  # at the analytic bound of their KL
        best = best_of_n_rewards(sft_records, n)
        points.append(Point("best_of_n", "best_of_n", n, best[None], np.full((1, len(best)), best_of_n_kl_bound(n))))
    return compare(points, sft, args.kl_budgets, seed=args.seed)


def write_csv(path: str, columns: list[str], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def read_summary(path: str) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def write_outputs(args, units, records, prompts, settings, skipped) -> None:
    """summary.csv, then the plot from it alone, then frontier_budget.csv, then report.md.

    Every model is measured on its first samples_per_prompt samples per prompt, SFT included although it draws
    best_of_n_samples for best-of-N: distinct-2 pools n-grams over all samples, so only equal counts compare."""
    measured = {key: [r for r in recs if r["sample"] < args.samples_per_prompt] for key, recs in records.items()}
    rows = [summary_row(u, measured[(u["run"], u["step"])], measured[("sft", 0)], args) for u in units]
    rows += seed_means(rows) + best_of_n_rows(records[("sft", 0)], args)
    summary_path = os.path.join(args.output_dir, "summary.csv")
    write_csv(summary_path, SUMMARY_COLUMNS, rows)
    summary = read_summary(summary_path)
    plot_frontier(summary, os.path.join(args.output_dir, "reward_vs_kl.png"))
    plot_frontier(summary, os.path.join(args.output_dir, "reward_vs_kl_full.png"), view="full")
    fits = fits_by_method(frontier_rows(summary), family_of)
    drawn = plot_overoptimisation(summary, fits, os.path.join(args.output_dir, "overoptimisation.png"))

    write_csv(os.path.join(args.output_dir, "frontier_budget.csv"), FRONTIER_BUDGET_COLUMNS,
              best_within_budgets(rows, args.kl_budgets))
    comparisons = matched_kl_comparisons(units, measured, records[("sft", 0)], args)
    write_csv(os.path.join(args.output_dir, "comparisons.csv"), COMPARISON_COLUMNS, comparisons)

    finals = [r for r in rows if r["run"] in ("base", "sft")]
    for run in dict.fromkeys(u["run"] for u in units if u["run"] not in ("base", "sft")):  # DPO, RLOO, Preferred-FT
        finals.append(max((r for r in rows if r["run"] == run), key=lambda r: r["step"]))
    for r in finals:
        r["label"] = r["run"] if r["run"] in ("base", "sft") else f"{r['run']} (step {r['step']})"
    shown = [p["prompt"] for p in prompts[: args.report_prompts]]
    samples = {prompt: {r["label"]: next(x for x in records[(r["run"], r["step"])]
                                        if x["prompt"] == prompt and x["sample"] == 0) for r in finals}
               for prompt in shown}
    roots = {m.key: runs_folder(args, m) for m in frontier_methods()}
    pngs = {u["run"]: os.path.join(roots[u["method"]], u["run"], "training_curves.png") for u in units
            if u["method"] in roots}
    curves = {run: png for run, png in pngs.items() if os.path.isfile(png)}
    provenance = {"preset": args.preset, "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                  "sft_model": describe_model_input(args.sft_model),
                  "runs_root": args.runs_root,
                  "base_model": describe_model_input(args.base_model) if args.base_model else None}
    report_path = os.path.join(args.output_dir, "report.md")
    write_text_atomic(report_path, render_report(report_path, provenance, rows, finals, samples, curves, settings,
                                                 skipped, args.kl_budgets, fits, drawn, comparisons))
    for r in finals:
        print(f"{r['label']:<28} reward {r['reward_mean']:.3f}  KL {r['kl_mean']:.2f}  "
              f"win vs SFT {r['win_rate_vs_sft'] if r['win_rate_vs_sft'] == '' else round(r['win_rate_vs_sft'], 3)}")


def main(args: EvalArguments) -> int:
    process_state(args.use_cpu)  # first: it decides this process's device
    check_args(args)
    check_report_to(args.report_to)  # a missing wandb key stops the stage now, not after the evaluation
    tokenizer = load_tokenizer(args.sft_model)
    prompts = prompts_for(args, tokenizer, "test")
    with main_process_lock(args.output_dir, "eval.py"):
        return evaluate_all(args, tokenizer, prompts)


def evaluate_all(args: EvalArguments, tokenizer, prompts: list[dict]) -> int:
    settings = settings_of(args)
    key = records_key(settings)
    units, skipped = models_to_evaluate(args)
    planned = json.loads(json.dumps({"units": units, "skipped": skipped}, default=str))
    previous = read_manifest(args.output_dir)
    if previous and previous.get("finished") and previous.get("stage") == "eval":
        if previous["settings_key"] != key and not args.overwrite:
            changed = [f"{k}: {previous['settings'].get(k)!r} before, {v!r} now" for k, v in
                       json.loads(json.dumps(settings, default=str)).items() if previous["settings"].get(k) != v]
            raise ConfigError(
                f"{args.output_dir} holds a finished evaluation made with other settings ({'; '.join(changed)}). "
                "Pass --overwrite true to evaluate with these (the finished one's records stay in "
                f"records/{previous['settings_key']}/; summary, plot and report are replaced once the new evaluation "
                "has finished), or set another output_dir to keep both")
        # kl_budgets decide only the tables: other budgets re-write them from the finished records.
        same_budgets = previous.get("config", {}).get("eval", {}).get("kl_budgets") == args.kl_budgets
        if previous["settings_key"] == key and previous["planned"] == planned and same_budgets:
            if not args.overwrite and args.report_to == "wandb" and not previous.get("wandb_run"):
                # Finished before it was tracked: its outputs are logged once, and the manifest says where.
                if process_state().is_main_process:
                    tracked = log_evaluation(args)
                    write_json_atomic(os.path.join(args.output_dir, MANIFEST_NAME), {**previous, "wandb_run": tracked})
                    print(f"the evaluation in {args.output_dir} is finished with these settings and models; its "
                          f"outputs are logged to wandb run {tracked}")
                return 0
            if not args.overwrite:
                print(f"the evaluation in {args.output_dir} is finished with these settings and models; skipping "
                      "(--overwrite true writes its summary, plots and report again"
                      f"{', and logs them to wandb' if args.report_to == 'wandb' else ''})")
                return 0
            print(f"--overwrite true: the records of these settings are kept (those of points evaluated while training "
                  "cannot be made again, and the others would come out the same: delete "
                  f"{os.path.join(args.output_dir, 'records', key)} to sample them anew); summary, plots and report are "
                  "written again from them")
    proxies = sorted({u["proxy_model"] for u in units if u.get("proxy_model")})
    policy, classifier = model_shape(args.sft_model), classifier_shape(args.reward_model)
    proxy = model_shape(proxies[0], classifier=True) if proxies else None
    check_memory("The evaluation", lambda: evaluation_memory(args, policy, classifier, proxy,
                                                             any(u["run"] == "sft" for u in units)),
                 process_state().device, evaluation=args)
    evaluator = Evaluator(args, tokenizer, prompts)
    stop = StopRequest()
    records, evaluated = {}, []
    for unit in units:
        try:
            result = evaluator.evaluate(unit, stop)
        except UnreadableCheckpoint as error:
            skipped.append({"path": unit["path"], "reason": str(error)})
            continue
        if result is None:
            return exit_resumable()
        records[(unit["run"], unit["step"])] = result
        evaluated.append(unit)
    for s in skipped:
        print(f"not evaluated: {s['path']}: {s['reason']}")

    if process_state().is_main_process:
        write_outputs(args, evaluated, records, prompts, settings, skipped)
    # Logged before the manifest is finished: an evaluation killed before it reached its tracker is done again.
    tracked = log_evaluation(args) if args.report_to == "wandb" and process_state().is_main_process else None
    if tracked:
        print(f"logged to wandb run {tracked}")
    # Written only now: until the new summary, plot and report exist, the folder's manifest describes the old ones.
    manifest = Manifest(args.output_dir, "eval", {"eval": args}, {"sft_model": describe_model_input(args.sft_model)})
    manifest.finish(settings_key=key, settings=json.loads(json.dumps(settings, default=str)), planned=planned,
                    **({"wandb_run": tracked} if tracked else {}))
    print(f"summary, plot and report in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
