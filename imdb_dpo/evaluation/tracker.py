"""What a run's tracker shows of the frontier: each point evaluated while training, and eval.py's outputs.

A point evaluated in memory (imdb_dpo/evaluation/in_training.py) is logged at its global step through
transformers' `Trainer.log`, which hands one dict to every `report_to` integration (wandb, tensorboard, mlflow, ...),
as `frontier/<quantity>`; wandb's and tensorboard's integrations prefix every training log with `train/`, so they
show `train/frontier/reward` beside `train/loss`. The numbers are those summary.csv will hold for that step (the same
functions on the same records). Only a point evaluated now is logged: one whose records were already finished (a
resumed run passing a step it evaluated before the kill) was logged then.

eval.py's frontier, comparisons, plots and report go to a wandb run of their own (`report_to: wandb` in its config).
"""

import csv
import json
import os

import numpy as np

from imdb_dpo.configuration.arguments import ConfigError
from imdb_dpo.evaluation.statistics import distinct_n, summarise, win_rate
from imdb_dpo.lifecycle.tracking import check_wandb_credentials, wandb_project

PREFIX = "frontier/"
SAMPLES_SHOWN = 8  # prompts whose first sample the table shows at each point: the same prompts at every step
TRACKERS = ("none", "wandb")  # what eval.py's report_to accepts


def point_metrics(records: list[dict], sft_records: list[dict] | None, seed: int) -> dict:
    """A point's numbers as summary.csv computes them (eval.py's summary_row), named `frontier/<quantity>`. The win
    rate needs the SFT model's records under the same settings, which eval.py writes: without them it is left out."""
    stats = summarise(records, seed)
    metrics = {"reward": stats["reward_mean"], "reward_lo": stats["reward_lo"], "reward_hi": stats["reward_hi"],
               "kl": stats["kl_mean"], "kl_lo": stats["kl_lo"], "kl_hi": stats["kl_hi"],
               "kl_logratio": stats["kl_logratio_mean"],
               "length": float(np.mean([len(r["completion_ids"]) for r in records])),
               "distinct_2": distinct_n([r["completion_ids"] for r in records], 2)}
    if sft_records:
        metrics["win_rate_vs_sft"] = win_rate(records, sft_records)
    if "proxy_reward" in records[0]:  # a run on a learned reward model: its score beside the true reward
        metrics["proxy_reward"] = float(np.mean([r["proxy_reward"] for r in records]))
    return {PREFIX + key: value for key, value in metrics.items()}


def log_point(trainer, records: list[dict], sft_records: list[dict] | None, seed: int) -> None:
    """Log the point of `trainer`'s current step to every tracker of its `report_to`, and, where that includes wandb,
    a table of a few samples beside their reward and KL."""
    from transformers import Trainer

    # The base class's log, not the trainer's own: TRL's trainers override `log` to add and then clear the metrics
    # they average over a logging window, which a point logged mid-window would take with it.
    Trainer.log(trainer, point_metrics(records, sft_records, seed))
    if "wandb" in trainer.args.report_to and trainer.state.is_world_process_zero:
        log_samples(records, trainer.state.global_step)


def log_samples(records: list[dict], step: int) -> None:
    """The table of samples, into the wandb run the WandbCallback logs to (own_wandb_run opened it): a wandb.Table
    has no meaning to the other integrations, and in `Trainer.log` it would also land in trainer_state.json."""
    import wandb

    if wandb.run is None:
        return
    shown = [r for r in records if r["sample"] == 0][:SAMPLES_SHOWN]
    table = wandb.Table(columns=["step", "prompt", "completion", "reward", "kl", "length"],
                        data=[[step, r["prompt"], r["text"], r["reward"], r["kl_exact"], len(r["completion_ids"])]
                              for r in shown])
    # Named and stepped as the WandbCallback names and steps the point's numbers.
    wandb.run.log({"train/" + PREFIX + "samples": table, "train/global_step": step})


def check_report_to(report_to: str) -> None:
    """eval.py's report_to: 'none' or 'wandb', with a wandb key unless offline (an error at launch otherwise)."""
    if report_to not in TRACKERS:
        raise ConfigError(f"report_to={report_to!r}: eval.py logs its tables, plots and report to wandb only; give "
                          "report_to wandb, or none (the training stages take any tracker transformers supports)")
    check_wandb_credentials([report_to])


def csv_table(path: str):
    """A CSV file as a wandb.Table: numbers as numbers, an empty cell as None; a column may mix numbers and words
    (summary.csv's seed is a number or 'mean')."""
    import wandb

    with open(path) as f:
        rows = list(csv.reader(f))
    return wandb.Table(columns=rows[0], data=[[cell_value(cell) for cell in row] for row in rows[1:]],
                       allow_mixed_types=True)


def cell_value(cell: str):
    if cell == "":
        return None
    try:
        return float(cell)
    except ValueError:
        return cell


TABLES = ("summary.csv", "comparisons.csv", "frontier_budget.csv")
PLOTS = ("reward_vs_kl.png", "reward_vs_kl_full.png", "overoptimisation.png")


def log_evaluation(args) -> str:
    """One wandb run for eval.py's outputs in `args.output_dir`: the tables, the plots as images, and report.md
    with them as an artifact. Named after the preset's evaluation and kept in the training runs' project; returns
    its id."""
    import wandb

    name = f"{args.preset}-eval" if args.preset else "eval"
    out = args.output_dir
    run = wandb.init(project=wandb_project(), name=name, group="eval", job_type="eval",
                     config=json.loads(json.dumps(vars(args), default=str)))
    try:
        logged = {"eval/" + file.removesuffix(".csv"): csv_table(os.path.join(out, file)) for file in TABLES}
        # overoptimisation.png exists only where a run optimised a learned reward model.
        logged.update({"eval/" + file.removesuffix(".png"): wandb.Image(os.path.join(out, file)) for file in PLOTS
                       if os.path.isfile(os.path.join(out, file))})
        run.log(logged)
        artifact = wandb.Artifact(name, type="evaluation", description=f"report.md of the evaluation in "
                                                                       f"{os.path.abspath(out)}, with its tables and plots")
        for file in ("report.md", *TABLES, *PLOTS):
            if os.path.isfile(os.path.join(out, file)):
                artifact.add_file(os.path.join(out, file), name=file)
        run.log_artifact(artifact)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    return run.id
