"""The trained methods on the frontier, one entry each: what the evaluation, the plot and the report need to know.

A method is a stage script (`dpo.py`, `rloo.py`, ...) over `training_runs.train_run` with a module here holding its
trainer and data adapter. Its runs are folders under one root whose manifest's `stage` is the method's key: that
is how `eval.py` finds them. Adding a method is one entry below plus its module and script.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Method:
    key: str         # the manifest's stage and summary.csv's `method` column
    title: str       # how tables and legends name it
    root_field: str  # the EvalArguments field of the folder holding its runs
    script: str      # what makes its runs
    parameter: str = ""  # what summary.csv's `beta` column holds for it ("" when it has none)
    parameter_field: str = ""  # the field of its trainer config that holds that parameter
    style: dict = field(default_factory=dict)  # the plot family: a colour map (a shade per run) or one colour


TRAINED = (
    Method("dpo", "DPO", "dpo_dir", "dpo.py", "beta", "beta", {"cmap": "Blues", "fmt": "-", "marker": "o"}),
    Method("rloo", "RLOO", "rloo_dir", "rloo.py", "KL coef", "beta", {"cmap": "Oranges", "fmt": "--", "marker": "^"}),
    Method("rloo_rm", "RLOO on the learned RM", "rloo_rm_dir", "rloo.py", "KL coef", "beta",
           {"cmap": "Reds", "fmt": "--", "marker": "v"}),
    Method("preferred_ft", "Preferred-FT", "preferred_ft_dir", "preferred_ft.py", "", "",
           {"color": "green", "fmt": ":", "marker": "D"}),
    Method("unlikelihood", "Unlikelihood", "unlikelihood_dir", "unlikelihood.py", "alpha", "alpha",
           {"cmap": "Purples", "fmt": "-.", "marker": "s"}),
)
BY_KEY = {m.key: m for m in TRAINED}
