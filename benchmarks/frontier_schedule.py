"""How well a schedule of frontier points serves the frontier: compare two finished evaluations of one preset.

    python benchmarks/frontier_schedule.py BEFORE_EVAL_DIR AFTER_EVAL_DIR

For each evaluation (an eval.py output folder: summary.csv and comparisons.csv): the points of every trained run,
how many of them leave KL where the point before left it (the SFT model before the first; "stalled": mean KL within
`--still` nats of it), the smallest move, and the width of the 95% intervals of the matched-KL comparisons
(comparisons.csv, every pair of methods at every budget): mean and median.
"""

import argparse
import csv
import os
import statistics
from collections import defaultdict


def read(path: str) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def describe(folder: str, still: float) -> dict:
    runs = defaultdict(list)
    for row in read(os.path.join(folder, "summary.csv")):
        if row["method"] not in ("sft", "base", "best_of_n") and row["seed"] != "mean":
            runs[row["run"]].append((int(row["step"]), float(row["kl_mean"])))
    moves = []
    for points in runs.values():
        kls = [0.0] + [kl for _, kl in sorted(points)]
        moves += [b - a for a, b in zip(kls, kls[1:])]
    widths = [float(r["hi"]) - float(r["lo"]) for r in read(os.path.join(folder, "comparisons.csv"))]
    return {"runs": len(runs), "points": len(moves), "stalled": sum(abs(m) < still for m in moves),
            "smallest move": min(moves), "comparisons": len(widths), "mean width": statistics.mean(widths),
            "median width": statistics.median(widths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--still", type=float, default=0.05, help="nats: a point moving KL less than this stalled")
    args = parser.parse_args()
    figures = {name: describe(folder, args.still) for name, folder in (("before", args.before), ("after", args.after))}
    print("| figure | before | after |\n|---|---|---|")
    for key in figures["before"]:
        cells = [f"{figures[n][key]:.4f}" if isinstance(figures[n][key], float) else str(figures[n][key])
                 for n in ("before", "after")]
        print(f"| {key} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
