"""The GPU check: every stage of the gpt2-large preset at its real shapes with tiny counts, then the benchmarks, and
one table: per stage its exit status, wall seconds, peak GPU memory and the trainer's throughput; per benchmark
its figures and MFU; the GPU-only tests; and the whole preset's cost projected from what was measured.

    python benchmarks/gpu_check.py --work /scratch/$USER/gpu_check
    python benchmarks/gpu_check.py --work DIR --tokenizer GPT2_TOKENIZER_DIR --reviews IMDB_JSONL_DIR
    python benchmarks/gpu_check.py --work DIR --size tiny --tokenizer ... --reviews ...     # CPU dry run, minutes

Models: `gpt2-large` and `siebert/sentiment-roberta-large-english` from the Hugging Face cache when it holds them,
otherwise random weights of their shapes (GPT-2's tokenizer from `--tokenizer`). Reviews: `--reviews`, a folder
with imdb_train.jsonl and imdb_test.jsonl (or any json/jsonl/csv/parquet pair named so), else `stanfordnlp/imdb`
from the cache. Nothing is downloaded (HF_HUB_OFFLINE=1) and nothing is written outside `--work`: the stages'
OUTPUT_ROOT is `<work>/out`, never your outputs. Every run keeps one checkpoint; the models' weights are deleted
as soon as no later stage reads them (and when the check is interrupted), so the disk peaks at about 27 GB at GPT-2
Large's shape. A rerun into the same --work starts over. The table, the logs and
each stage's small outputs stay in `<work>/results/`.

Without a GPU the stages run on the CPU with small batches (`--bf16 false --use_cpu true`): a dry run of the
machinery, not a measurement.
"""

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from imdb_dpo.configuration.errors import first_line  # noqa: E402
from imdb_dpo.methods import registry  # noqa: E402
# torch, transformers and the stand-ins are imported where used: a bad flag or input is refused in a second, not
# after ten seconds of imports.

HUB_POLICY, HUB_CLASSIFIER, HUB_REVIEWS = "gpt2-large", "siebert/sentiment-roberta-large-english", "stanfordnlp/imdb"
PRESET = os.path.join(REPO, "configs", "gpt2-large")
# The preset at paper scale, for the projection: IMDb's train split, prompts of stage 2 and of the evaluation.
PAPER = {"sft_reviews": 25_000, "prompts": 25_000, "eval_prompts": 500}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".arrow")
MARKER = ".imdb_dpo_gpu_check"  # marks a --work folder as the check's own, which a rerun may clear
MIN_STEP_SECONDS = 30  # under --time_limit, a step with less time left is not started
NOT_RUN = "not run (time limit)"


def cached_file(repo_id: str, name: str, repo_type: str = "model") -> str | None:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, name, repo_type=repo_type)
    return path if isinstance(path, str) else None


def cached_on_hub(repo_id: str) -> bool:
    return cached_file(repo_id, "config.json") is not None


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def review_files(folder: str) -> tuple[str, str]:
    for ext in ("jsonl", "json", "csv", "parquet"):
        train, test = (os.path.join(folder, f"imdb_{split}.{ext}") for split in ("train", "test"))
        if os.path.isfile(train) and os.path.isfile(test):
            return train, test
    fail(f"--reviews {folder!r} holds no imdb_train.jsonl and imdb_test.jsonl (or .json/.csv/.parquet); point it at "
         "the folder with both")


class Check:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work)
        self.results = os.path.join(self.work, "results")
        self.out = os.path.join(self.work, "out")
        self.rows, self.benchmarks, self.facts, self.peak_disk_gb = [], {}, {}, 0.0
        self.started = time.monotonic()
        self.deadline = self.started + args.time_limit if args.time_limit else None
        self.env = {**os.environ, "OUTPUT_ROOT": self.out, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "WANDB_MODE": "disabled", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1",
                    "TOKENIZERS_PARALLELISM": "false", "TMPDIR": os.path.join(self.work, "tmp"),
                    "HF_DATASETS_CACHE": os.path.join(self.work, "datasets_cache")}  # not the user's cache

    @functools.cached_property
    def gpu(self) -> bool:
        import torch

        return torch.cuda.is_available()

    # --- inputs ---
    def resolve_inputs(self) -> None:
        """What the check will load, decided (and refused with a message) before anything is written."""
        args, large = self.args, self.args.size == "gpt2-large"
        self.policy = HUB_POLICY if large and cached_on_hub(HUB_POLICY) else None
        self.classifier = HUB_CLASSIFIER if large and cached_on_hub(HUB_CLASSIFIER) else None
        for name, found in ((HUB_POLICY, self.policy), (HUB_CLASSIFIER, self.classifier)):
            if not found and not args.tokenizer:
                fail(f"{f'{name} is not in the Hugging Face cache' if large else '--size tiny'}, so the check builds "
                     "random weights of its shape, which needs GPT-2's tokenizer: pass --tokenizer DIR (a folder with "
                     "vocab.json and merges.txt)")
        if args.tokenizer:
            missing = [n for n in ("vocab.json", "merges.txt") if not os.path.isfile(os.path.join(args.tokenizer, n))]
            if missing:
                fail(f"--tokenizer {args.tokenizer!r} has no {' or '.join(missing)}: point it at GPT-2's tokenizer "
                     "folder (vocab.json and merges.txt)")
        if args.reviews:
            train, test = review_files(args.reviews)
            self.data = ["--train_file", train, "--test_file", test]
        elif cached_file(HUB_REVIEWS, "README.md", "dataset"):
            self.data = []  # the preset's stanfordnlp/imdb, from the cache
        else:
            fail(f"{HUB_REVIEWS} is not in the Hugging Face cache: pass --reviews DIR (a folder with imdb_train.jsonl "
                 "and imdb_test.jsonl)")
        if args.tokenizer:
            from benchmarks.stand_ins import roberta_tokenizer

            try:
                roberta_tokenizer(args.tokenizer)
            except Exception as error:
                fail(f"--tokenizer {args.tokenizer!r} does not load as GPT-2's byte-level BPE ({type(error).__name__}: "
                     f"{first_line(error, 200)}); point it at GPT-2's "
                     "tokenizer folder")
        self.facts.update(policy=self.policy or f"random weights, {args.size} shape",
                          classifier=self.classifier or f"random weights, {args.size} RoBERTa shape",
                          reviews=args.reviews or f"{HUB_REVIEWS} (cache)")

    def build_stand_ins(self) -> None:
        from benchmarks.stand_ins import build_classifier, build_policy

        device, models = "cuda" if self.gpu else "cpu", os.path.join(self.work, "models")
        if not self.policy:
            self.policy = build_policy(self.args.size, self.args.tokenizer, os.path.join(models, "policy"), device)
        if not self.classifier:
            self.classifier = build_classifier(self.args.size, self.args.tokenizer, os.path.join(models, "classifier"),
                                               device)

    # --- running ---
    def run(self, name: str, command: list[str], limit: int, *, kind: str = "stage") -> dict:
        if self.deadline is not None:
            left = int(self.deadline - time.monotonic())
            if left < MIN_STEP_SECONDS:  # too little time for a model to load: said in the table, not run
                row = {"name": name, "kind": kind, "exit": NOT_RUN, "wall_s": 0.0}
                print(f"[{time.strftime('%H:%M:%S')}] {name}: not run, {max(left, 0)} s of --time_limit left", flush=True)
                self.rows.append(row)
                return row
            limit = min(limit, left)
        log = os.path.join(self.results, f"{name}.log")
        resources = os.path.join(self.results, f"{name}.resources.json")
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        started = time.perf_counter()
        with open(log, "w") as f:
            child = None
            try:
                with KILL.held_off():
                    child = subprocess.Popen(command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                             env={**self.env, "IMDB_DPO_RESOURCE_REPORT": resources})
                code = child.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                code = f"timeout ({limit} s)"
                stop(child)
            except BaseException:  # interrupted: the stage must not run on, holding the GPU, after the check ends
                if child is not None:
                    stop(child)
                raise
        row = {"name": name, "kind": kind, "exit": code, "wall_s": time.perf_counter() - started, "log": log}
        if os.path.isfile(resources):
            with open(resources) as f:
                row.update({k: v for k, v in json.load(f).items() if k.startswith(("peak_", "estimated_"))})
        self.peak_disk_gb = max(self.peak_disk_gb, disk_gb(self.work))
        print(f"    exit {code}, {row['wall_s']:.0f} s" + ("" if code == 0 else f": see {log}"), flush=True)
        if code != 0:
            with open(log) as f:
                print("    | " + "    | ".join(f.readlines()[-15:]), end="", flush=True)
        self.rows.append(row)
        shutil.rmtree(self.env["TMPDIR"], ignore_errors=True)
        os.makedirs(self.env["TMPDIR"], exist_ok=True)
        return row

    def stage(self, name: str, script: str, *flags: str, limit: int = 600, trained: str | None = None) -> bool:
        """`script`: a stage script, or `train.py <method>`."""
        row = self.run(name, [sys.executable, *script.split(), "--config", os.path.join(PRESET, f"{name}.yaml"), *flags],
                       limit)
        if trained and row["exit"] == 0:
            row.update(trainer_throughput(trained))
        return row["exit"] == 0

    def checked_methods(self) -> list:
        """The registry's methods the check runs, in order: on a GPU each with a run of its own (GPUCheck), in the
        CPU dry run those marked on_cpu (the machinery, kept short for CI)."""
        return [m for m in registry().values() if m.gpu_check and not m.gpu_check.like and
                (self.gpu or m.gpu_check.on_cpu)]

    def planned_stages(self) -> list[str]:
        """The stages `stages` runs, in order."""
        return ["sft", "preference_pairs", *(m.key for m in self.checked_methods()), "eval"]

    def add_stages_not_run(self) -> None:
        """A row for each stage that did not start (an earlier one failed, or the time ran out), so the table shows
        every stage."""
        ran = {r["name"] for r in self.rows}
        out_of_time = self.deadline is not None and self.deadline - time.monotonic() < MIN_STEP_SECONDS
        for name in self.planned_stages():
            if name not in ran:
                self.rows.append({"name": name, "kind": "stage", "wall_s": 0.0,
                                  "exit": NOT_RUN if out_of_time else "not run (an earlier stage failed)"})
        if "bench_eval_precision" not in ran and not self.args.skip_benchmarks:  # it needs the trained DPO run
            self.rows.append({"name": "bench_eval_precision", "kind": "benchmark", "wall_s": 0.0,
                              "exit": NOT_RUN if out_of_time else "not run (no trained DPO run)"})

    def stages(self) -> None:
        gpu, out, d = self.gpu, self.out, self.data
        cpu = [] if gpu else ["--bf16", "false", "--use_cpu", "true"]
        small = [] if gpu else ["--per_device_train_batch_size", "4", "--examples_per_step", "4"]
        keep_one = ["--checkpoint_schedule", "steps", "--save_steps", "100000", "--report_to", "none",
                    "--frontier_eval", "", "--seeds", "0"]  # one seed of the preset's three
        sft_dir, pairs_dir = f"{out}/outputs/gpt2-large/sft", f"{out}/generations/gpt2-large"
        if not self.stage("sft", "sft.py", "--model_name_or_path", self.policy, *d, "--max_steps", "10" if gpu else "2",
                          "--max_eval_samples", "64" if gpu else "8", "--save_strategy", "no", "--report_to", "none",
                          *cpu, *small, *([] if gpu else ["--per_device_eval_batch_size", "4", "--max_length", "128"]),
                          trained=sft_dir):
            return
        short = [] if gpu else ["--max_new_tokens", "16"]  # the dry run tests the machinery, not 64-token samples
        if not self.stage("preference_pairs", "preference_pairs.py", *d, "--num_prompts", "512" if gpu else "32",
                          "--reward_model", self.classifier, *short,
                          *([] if gpu else ["--use_cpu", "true", "--batch_size", "16"])):
            return
        self.facts["pairs"] = read_json(os.path.join(pairs_dir, "manifest.json"))
        evaluated = next(iter(registry().values()))  # DPO, the first: the evaluation and its precision benchmark
        finished = {"sft", "preference_pairs"}
        for method in self.checked_methods():
            check = method.gpu_check
            if not set(method.needs) <= finished:  # a stage it reads failed
                continue
            folder = f"{out}/outputs/gpt2-large/{method.key}"
            flags = [flag.format(classifier=self.classifier, reward_model=f"{out}/outputs/gpt2-large/reward_model",
                                 frontier_eval=self.frontier_eval_config() if "{frontier_eval}" in check.flags else "")
                     for flag in check.flags]
            if method.on_frontier:  # one short run of one seed, its checkpoints kept for no one
                flags = ["--max_steps", "3" if gpu else "2", *keep_one, *flags]
            small = [] if gpu else ["--per_device_train_batch_size", "4" if method is evaluated else "8",
                                    "--examples_per_step", "4" if method is evaluated else "8",
                                    "--dataloader_num_workers", "0"]
            if self.stage(method.key, method.command, *flags, *(check.gpu_flags if gpu else check.cpu_flags), *cpu,
                          *small, trained=os.path.join(folder, check.run) if check.run else folder):
                finished.add(method.key)
            if method is not evaluated and method.on_frontier:
                drop_weights(folder)  # the evaluation covers DPO's run only
        self.facts["eval_samples"] = (128 if gpu else 16) * (16 + 4)  # SFT: best_of_n_samples; DPO: samples_per_prompt
        self.stage("eval", "eval.py", *d, "--num_prompts", "128" if gpu else "16", "--base_model", "",
                   "--reward_model", self.classifier, "--methods", evaluated.key, "--report_to", "none", *short,
                   *([] if gpu else ["--use_cpu", "true", "--batch_size", "16", "--kl_batch_size", "16"]))
        for name in ("summary.csv", "report.md", "reward_vs_kl.png"):
            path = os.path.join(out, "outputs", "gpt2-large", "eval", name)
            if os.path.isfile(path):
                shutil.copy(path, os.path.join(self.results, f"eval_{name}"))
        self.eval_precision(f"{out}/outputs/gpt2-large/dpo/{evaluated.gpu_check.run}", sft_dir)

    def frontier_eval_config(self) -> str:
        """configs/gpt2-large/eval.yaml on a few prompts, the check's models and reviews: evaluates rloo_rm's points."""
        import yaml

        with open(os.path.join(PRESET, "eval.yaml")) as f:
            config = yaml.safe_load(f)
        data = dict(zip(self.data[::2], self.data[1::2]))
        config.update(base_model="", reward_model=self.classifier, num_prompts=32 if self.gpu else 8,
                      batch_size=32 if self.gpu else 8, **{flag[2:]: path for flag, path in data.items()},
                      **({} if self.gpu else {"max_new_tokens": 16, "use_cpu": True}))
        path = os.path.join(self.work, "frontier_eval.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        return path

    def eval_precision(self, trained: str, reference: str) -> None:
        """eval_precision tf32 against fp32 on the trained DPO checkpoint, per sample (docs/precision.md): before the
        weights are dropped, so among the stages' rows rather than the benchmarks'."""
        if self.args.skip_benchmarks:
            return
        if not os.path.isdir(trained):  # add_stages_not_run says why
            return
        output = os.path.join(self.results, "bench_eval_precision.json")
        test = ["--test_file", self.data[self.data.index("--test_file") + 1]] if "--test_file" in self.data else []
        row = self.run("bench_eval_precision", [sys.executable, "benchmarks/bench_eval_precision.py", "--policy", trained,
                                                "--reference", reference, "--reward_model", self.classifier, *test,
                                                "--output", output], 600, kind="benchmark")
        if row["exit"] == 0:
            self.benchmarks["bench_eval_precision"] = read_json(output)

    def run_benchmarks(self) -> None:
        size = self.args.size
        tokenizer = ["--tokenizer", self.args.tokenizer] if self.args.tokenizer else []
        reviews = self.args.reviews or ""
        runs = [("bench_sampling", ["--plain_prompts", "8"] if self.gpu else []),
                ("bench_dpo", ["--steps", "5", "--warmup", "2"] if self.gpu else ["--steps", "2", "--warmup", "1"]),
                ("bench_eval", []),  # RL sampling's decode step: launches and ms a token (the count needs no big batch)
                ("bench_decode_ops", [] if self.gpu else ["--rows", "8", "--new_tokens", "16"])]
        if reviews:
            classifier = ["--classifier", HUB_CLASSIFIER] if self.classifier == HUB_CLASSIFIER else tokenizer
            runs.append(("bench_reward_precision", ["--reviews", reviews, *classifier]))
        for name, flags in runs:
            output = os.path.join(self.results, f"{name}.json")
            row = self.run(name, [sys.executable, f"benchmarks/{name}.py", "--size", size, *flags, "--output", output],
                           600, kind="benchmark")
            if row["exit"] == 0:
                self.benchmarks[name] = read_json(output)

    def gpu_tests(self) -> None:
        tokenizer = self.args.tokenizer or os.path.dirname(cached_file(HUB_POLICY, "vocab.json") or "")
        # IMDB_DPO_GPU_CHECK_RESULTS: the stages' resource reports, which tests/test_gpu.py sets against the estimates.
        self.env.update(IMDB_DPO_TEST_DEVICE="cuda", GPT2_TOKENIZER_DIR=tokenizer, IMDB_DPO_GPU_CHECK_RESULTS=self.results)
        row = self.run("gpu_tests", [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                     "tests"], 600, kind="tests")
        if row["exit"] == NOT_RUN:
            return
        with open(row["log"]) as f:
            row["summary"] = next((l.strip() for l in reversed(f.readlines()) if " in " in l and "=" in l), "")


class Kill:
    """A plain kill (SIGTERM) ends the check with status 143 through SystemExit, so that the running stage is stopped
    and the weights dropped; but not inside Popen, where it would leave a stage just started running on, unseen:
    there it is held off until the child is ours to stop."""

    def __init__(self):
        self.starting = self.pending = False

    def __call__(self, *_):
        if self.starting:
            self.pending = True
        else:
            sys.exit(143)

    @contextlib.contextmanager
    def held_off(self):
        self.starting = True
        try:
            yield
        finally:
            self.starting = False
            if self.pending:
                sys.exit(143)


KILL = Kill()


def stop(child: subprocess.Popen) -> None:
    """SIGTERM (a stage saves or flushes and exits), then SIGKILL if it has not ended within a minute."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def disk_gb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 1e9


def drop_weights(path: str) -> None:
    """Delete the large files under `path` (weights, optimizer state, cached arrays); keep manifests and logs."""
    for root, _, files in os.walk(path):
        for name in files:
            if name.endswith(WEIGHT_SUFFIXES):
                os.remove(os.path.join(root, name))


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def trainer_throughput(run_dir: str) -> dict:
    """The Trainer's own figures from the run's trainer_state.json: samples/s over train_runtime (no loading)."""
    path = os.path.join(run_dir, "trainer_state.json")
    if not os.path.isfile(path):
        return {}
    final = next((e for e in reversed(read_json(path)["log_history"]) if "train_runtime" in e), {})
    return {"train_samples_per_s": final.get("train_samples_per_second"), "train_runtime_s": final.get("train_runtime"),
            "steps": read_json(path).get("global_step")}




def rate_of(stage: str) -> str:
    """The stage whose measured rate projects `stage`: its own, or that of the method with its trainer and shapes
    (a method the check does not run apart)."""
    method = registry().get(stage)
    return method.gpu_check.like if method and method.gpu_check and method.gpu_check.like else stage


def projection(check: Check) -> list[tuple[str, str, float | None]]:
    """GPU time of the gpt2-large preset at paper scale: (stage, work, seconds). Each trained stage's samples are
    plan.py's (the most the preset's settings allow where its pair file does not exist yet) at the rate the check
    measured (the Trainer's, loading excluded); stage 2 and the evaluation at their measured rates with loading
    included, so on the slow side. None: no measured rate (the stage did not run, or the check runs no such stage)."""
    from imdb_dpo.planning import plan as planner

    rows = {r["name"]: r for r in check.rows}
    pairs = check.facts.get("pairs", {})

    def rate(name, key="train_samples_per_s"):
        value = rows.get(rate_of(name), {}).get(key)
        return value if isinstance(value, (int, float)) and value > 0 else None

    preset = planner.build(PRESET)
    projected, points = [], 0
    for row in preset.rows:
        most = "" if row.exact else "<= "
        if row.stage == "preference_pairs":
            pp = rows.get(row.stage, {})
            prompts_s = pairs.get("num_prompts", 0) / pp["wall_s"] if pp.get("exit") == 0 else None
            projected.append((row.stage, f"{PAPER['prompts']:,} prompts",
                              PAPER["prompts"] / prompts_s if prompts_s else None))
        elif row.stage == "eval":
            ev = rows.get("eval", {})
            # the check evaluated SFT (16 samples a prompt, no KL pass) and one DPO checkpoint (4 samples, KL pass)
            per_point = ev["wall_s"] / 2 * PAPER["eval_prompts"] / (128 if check.gpu else 16) if ev.get("exit") == 0 \
                else None
            bounded = "" if all(r.exact for r in preset.rows) else "<= "
            base = bool(preset.parse("eval")[0].base_model)  # evaluated beside SFT
            projected.append((row.stage, f"{bounded}{points:,} checkpoints (evaluated while training or here; plan.py "
                                         f"counts those in their stage's hours) + SFT{' and base' if base else ''} x "
                                         f"{PAPER['eval_prompts']} prompts",
                              (points + 1 + base) * per_point if per_point else None))
        else:
            points += row.points
            speed = rate(row.stage)
            stand_in = f", at {rate_of(row.stage)}'s rate" if rate_of(row.stage) != row.stage else ""
            projected.append((row.stage, f"{row.runs} run{'s' if row.runs > 1 else ''} x {most}{row.samples:,} samples"
                                         f"{stand_in}", row.runs * row.samples / speed if speed else None))
    return projected


def gib(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def fitted(sizes: dict | None) -> str:
    """The auto pass sizes a stage fitted to the card (imdb_dpo/planning/fitting.py), '-' where none was auto."""
    return ", ".join(f"{name} {value}" for name, value in (sizes or {}).items()) or "-"


def render(check: Check, plan: list | str) -> str:
    """The check's tables; `plan` is `projection(check)`, or why it could not be made."""
    import torch

    device = torch.cuda.get_device_name(0) if check.gpu else "CPU (dry run: no GPU figures)"
    lines = [f"# GPU check, {time.strftime('%Y-%m-%d %H:%M')}, {device}", "",
             f"size {check.args.size}; policy: {check.facts.get('policy')}; classifier: {check.facts.get('classifier')}; "
             f"reviews: {check.facts.get('reviews')}; peak disk {check.peak_disk_gb:.1f} GB in {check.work}", "",
             "| stage | exit | wall s | peak GPU GiB (allocated / reserved) | estimated before loading, GiB | pass sizes "
             "fitted to the card | peak RAM GiB | throughput |", "|---|---|---|---|---|---|---|---|"]
    for r in check.rows:
        if r["kind"] != "stage":
            continue
        throughput = (f"{r['train_samples_per_s']:.1f} samples/s over {r['steps']} steps (Trainer)"
                      if r.get("train_samples_per_s") else "")
        if r["name"] == "preference_pairs" and r["exit"] == 0:
            pairs = check.facts.get("pairs", {})
            throughput = f"{pairs.get('num_prompts', 0) / r['wall_s']:.1f} prompts/s ({pairs.get('num_pairs')} pairs)"
        if r["name"] == "eval" and r["exit"] == 0:
            throughput = f"{check.facts['eval_samples'] / r['wall_s']:.1f} samples/s (2 models, loading included)"
        lines.append(f"| {r['name']} | {r['exit']} | {r['wall_s']:.0f} | {gib(r.get('peak_gpu_allocated_gib'))} / "
                     f"{gib(r.get('peak_gpu_reserved_gib'))} | {gib(r.get('estimated_peak_gib'))} "
                     f"({r.get('estimated_step') or '-'}) | {fitted(r.get('fitted_sizes'))} | "
                     f"{gib(r.get('peak_rss_gib'))} | {throughput} |")
    lines += ["", "| benchmark | exit | wall s | figures |", "|---|---|---|---|"]
    for r in check.rows:
        if r["kind"] == "benchmark":
            figures = "-" if r["exit"] == NOT_RUN else benchmark_figures(check.benchmarks.get(r["name"]))
            lines.append(f"| {r['name']} | {r['exit']} | {r['wall_s']:.0f} | {figures} |")
    tests = next((r for r in check.rows if r["kind"] == "tests"), None)
    if tests:
        lines += ["", f"GPU-only tests (`pytest -m gpu`): exit {tests['exit']}, {tests.get('summary', '')}"]
    if isinstance(plan, str):
        return "\n".join(lines + ["", f"No projection of the preset: {plan}"]) + "\n"
    what = ("GPU time" if check.gpu and check.args.size == "gpt2-large"
            else "time at these rates (a dry run: not an estimate for a GPU)")
    lines += ["", f"Projected {what} of the gpt2-large preset at paper scale: each stage's samples as plan.py counts "
              "them at the Trainer's measured rate (loading and DPO's and KTO's reference pass not counted), sampling "
              "and evaluation at their rates with loading (so on the slow side):", "",
              "| stage | work | hours |", "|---|---|---|"]
    lines += [f"| {name} | {work} | {seconds / 3600:.2f} |" if seconds else f"| {name} | {work} | - |"
              for name, work, seconds in plan]
    known, unknown = [s for _, _, s in plan if s], [name for name, _, s in plan if not s]
    total = f"{sum(known) / 3600:.2f}" if known else "-"
    if known and unknown:
        total += f" (without {', '.join(unknown)}: no measured rate)"
    lines.append(f"| total | | {total} |")
    return "\n".join(lines) + "\n"


def benchmark_figures(result: dict | None) -> str:
    if not result:
        return "failed: see its log"
    name = result["benchmark"]
    if name == "sampling":
        plain, project = result["results"]
        return (f"project {project['prompts_per_s']:.1f} prompts/s vs plain loop {plain['prompts_per_s']:.1f} "
                f"({result['speedup']:.1f}x); 25k prompts in {project['projected_25k_prompts_min']:.1f} min")
    if name == "dpo_training":
        parts = [f"{r['variant']}: {r['tokens_per_s']:,.0f} tokens/s, {r['peak_memory_gb']:.1f} GiB"
                 + (f", MFU {r['mfu']:.0%}" if r.get("mfu") else "") for r in result["results"]]
        return "; ".join(parts) + f"; project/TRL {result['speedup_tokens_per_s']:.2f}x"
    if name == "eval_one_checkpoint":
        return (f"sampling {result['sampling_s']:.1f} s, reward {result['reward_s']:.1f} s, KL {result['kl_s']:.1f} s for "
                f"{result['prompts_timed']} prompts; 500 prompts in {result['projected_500_prompts_s']:.0f} s")
    if name == "decode_ops":
        timed = {k.split(":")[0]: v for k, v in result.items() if ": ms a token" in k}
        return (f"{result['fp32: operators a token']} operators a token in fp32, {result['bf16 autocast: operators a token']}"
                f" under bf16 autocast; generate() of {result['rows']} rows: " +
                ", ".join(f"{name} {ms:.2f} ms a token" for name, ms in timed.items()))
    if name == "eval_precision":
        if result["same_tokens"] == 0:
            return f"no sample of {result['samples']} kept its tokens under tf32"
        return (f"{result['same_tokens']} of {result['samples']} samples keep their tokens under tf32; on those "
                f"abs(KL tf32 - fp32) mean {result['kl_abs_diff_mean']:.2g}, max {result['kl_abs_diff_max']:.2g} nats "
                f"(relative max {result['kl_rel_diff_max']:.2g}), reward mean {result['reward_abs_diff_mean']:.2g}, "
                f"max {result['reward_abs_diff_max']:.2g}; mean KL {result['kl_mean_fp32']:.3f} vs "
                f"{result['kl_mean_tf32']:.3f} (stderr {result['kl_stderr_fp32']:.2g})"
                + ("" if result["tf32_available"] else " (CPU: no TF32, both fp32)"))
    if name == "reward_precision":
        return (f"abs(bf16 - fp32) mean {result['mean_abs_diff']:.2g}, max {result['max_abs_diff']:.2g} over "
                f"{result['texts']} reviews (reward std {result['reward_std_fp32']:.2g}); "
                f"{result['pair_order_flips']:.1%} of pairs reordered")
    return json.dumps(result)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="a new or empty folder (or one an earlier check left) for "
                        "models, outputs and results, about 27 GB at the peak at GPT-2 Large's shape: scratch "
                        "storage, never your outputs")
    parser.add_argument("--size", choices=["gpt2-large", "tiny"], default="gpt2-large",
                        help="the models' shape: gpt2-large (the check) or tiny (a dry run of the machinery)")
    parser.add_argument("--tokenizer", help="GPT-2's tokenizer folder, for random weights where the cache lacks a model")
    parser.add_argument("--reviews", help="folder with imdb_train.jsonl and imdb_test.jsonl (default: the cache's IMDb)")
    parser.add_argument("--skip_benchmarks", action="store_true")
    parser.add_argument("--time_limit", type=float, metavar="SECONDS",
                        help="end the check within this many seconds (a short allocation): each step gets at most the "
                             "time left, a step with under 30 s left is not run, and the table shows what ran")
    args = parser.parse_args()
    if args.time_limit is not None and not 0 < args.time_limit < math.inf:
        fail(f"--time_limit {args.time_limit:g}: give a number of seconds > 0 (leave it out for no limit)")
    args.work, args.tokenizer, args.reviews = (os.path.abspath(p) if p else p for p in (args.work, args.tokenizer,
                                                                                           args.reviews))
    marker = os.path.join(args.work, MARKER)
    if os.path.exists(args.work) and not os.path.isdir(args.work):
        fail(f"--work {args.work!r} is a file: give a new or empty folder")
    if os.path.isdir(args.work) and os.listdir(args.work) and not os.path.isfile(marker):
        fail(f"--work {args.work!r} holds files that no GPU check wrote: give a new or empty folder (the check "
             "writes models and outputs there and deletes the weights when it ends)")
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")  # the projection's plan too: nothing downloaded
    check = Check(args)
    check.resolve_inputs()
    try:
        if os.path.isfile(marker):  # an earlier check's folder (interrupted, or finished): start it afresh
            shutil.rmtree(args.work)
        os.makedirs(check.results)
        os.makedirs(check.env["TMPDIR"])
        open(marker, "w").close()
    except OSError as error:
        fail(f"--work {args.work!r} cannot be written ({error.strerror}): give a folder on writable storage")
    signal.signal(signal.SIGTERM, KILL)  # a plain kill: stop the stage, drop the weights
    try:
        check.build_stand_ins()
        check.stages()
        check.add_stages_not_run()
        drop_weights(check.work)  # before the benchmarks, which build their own models
        if not args.skip_benchmarks:
            check.run_benchmarks()
        if check.gpu:
            check.gpu_tests()
        skipped = [r["name"] for r in check.rows if r["exit"] == NOT_RUN]
        table = write_results(check, f"Whole check: {time.monotonic() - check.started:.0f} s." + (
            f" --time_limit {args.time_limit:g} s left no time for: {', '.join(skipped)}." if skipped else ""))
    except (KeyboardInterrupt, SystemExit) as interruption:
        drop_weights(check.work)
        table = write_results(check, f"Interrupted after {time.monotonic() - check.started:.0f} s: the table holds "
                                     "the steps that had ended; the step running then was stopped.")
        print(f"\n{table}\ninterrupted: the running step was stopped and the weights deleted; the table and logs are "
              f"in {check.results}. Run the same command again to start over.", file=sys.stderr)
        return 130 if isinstance(interruption, KeyboardInterrupt) else 143
    print("\n" + table + f"\nResults and logs: {check.results}")
    return 0 if all(r["exit"] == 0 for r in check.rows) and len(check.rows) >= 6 else 1


def write_results(check: Check, ending: str) -> str:
    """gpu_check.md (the table, then `ending`) and gpu_check.json in the results folder; returns the table."""
    try:
        plan = projection(check)
    except Exception as error:  # e.g. a pair file under OUTPUT_ROOT that plan.py refuses: the measurements still count
        plan = f"plan.py's counts failed ({type(error).__name__}: {first_line(error, 300)})"
    table = render(check, plan) + f"\n{ending}\n"
    with open(os.path.join(check.results, "gpu_check.md"), "w") as f:
        f.write(table)
    with open(os.path.join(check.results, "gpu_check.json"), "w") as f:
        json.dump({"rows": check.rows, "benchmarks": check.benchmarks, "facts": check.facts,
                   "peak_disk_gb": check.peak_disk_gb, "projection": plan}, f, indent=1, default=str)
    return table


if __name__ == "__main__":
    sys.exit(main())
