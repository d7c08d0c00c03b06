"""The trained methods on the frontier, one entry each: what the evaluation, the plot and the report need to know.

A method is run by `train.py <method>`: the paper's stages through their scripts (`dpo.py`, `rloo.py`, ...) with a
module here holding their trainer and data adapter, the later methods as a recipe here (`recipe.py`: KTO, ORPO,
CPO, SimPO, online DPO), all over `training_runs.train_run`. Its runs are folders under one root whose manifest's
`stage` is the method's key: that is how `eval.py` finds them. Adding a method is one entry below plus its module (and for a recipe,
its entry in train.py's RECIPES).
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
    loss_field: str = ""  # the trainer config's loss choice, where the method has several (each its own family)
    default_loss: str = "sigmoid"  # the loss that is the method itself (any other is a family of its own)


TRAINED = (
    Method("dpo", "DPO", "dpo_dir", "dpo.py", "beta", "beta", {"cmap": "Blues", "fmt": "-", "marker": "o"}, "loss_type"),
    Method("rloo", "RLOO", "rloo_dir", "rloo.py", "KL coef", "beta", {"cmap": "Oranges", "fmt": "--", "marker": "^"}),
    Method("rloo_rm", "RLOO on the learned RM", "rloo_rm_dir", "rloo.py", "KL coef", "beta",
           {"cmap": "Reds", "fmt": "--", "marker": "v"}),
    Method("preferred_ft", "Preferred-FT", "preferred_ft_dir", "preferred_ft.py", "", "",
           {"color": "green", "fmt": ":", "marker": "D"}),
    Method("unlikelihood", "Unlikelihood", "unlikelihood_dir", "unlikelihood.py", "alpha", "alpha",
           {"cmap": "Purples", "fmt": "-.", "marker": "s"}),
    Method("kto", "KTO", "kto_dir", "train.py kto", "beta", "beta", {"cmap": "BuGn", "fmt": "-", "marker": "P"},
           "loss_type", "kto"),
    Method("orpo", "ORPO", "orpo_dir", "train.py orpo", "beta", "beta", {"cmap": "RdPu", "fmt": "-", "marker": "*"}),
    Method("orpo_base", "ORPO from the base model", "orpo_base_dir", "train.py orpo_base", "beta", "beta",
           {"cmap": "Greys", "fmt": ":", "marker": "*"}),
    Method("cpo", "CPO", "cpo_dir", "train.py cpo", "beta", "beta", {"cmap": "YlOrBr", "fmt": "-.", "marker": "X"},
           "loss_type"),
    Method("simpo", "SimPO", "simpo_dir", "train.py simpo", "beta", "beta",
           {"cmap": "GnBu", "fmt": "--", "marker": "h"}),
    Method("online_dpo", "Online DPO", "online_dpo_dir", "train.py online_dpo", "beta", "beta",
           {"cmap": "cool", "fmt": "-", "marker": "d"}, "loss_type"),
)
BY_KEY = {m.key: m for m in TRAINED}
