"""The settings that decide a stage's results, defined once for every stage.

A stage's settings are its configs' fields, less the keys below, with each input named by what it is rather than
where it lies (the run id of the stage that made a model, a file's SHA-256, or a hub name). Two runs with equal
settings compute the same thing: a finished output is skipped, an unfinished one resumed, records reused. Any
other difference is listed, and refused unless `--overwrite true` asks for the new work.
"""

import json

# Keys that do not change what a stage computes (at any depth of a config).
NOT_SETTINGS = frozenset({
    # Where outputs go, and how they are logged and tracked.
    "output_dir", "logging_dir", "run_name", "report_to", "overwrite", "disable_tqdm", "local_rank", "log_level",
    "log_level_replica", "log_on_each_node", "logging_strategy", "logging_steps", "logging_first_step",
    "logging_nan_inf_filter", "push_to_hub", "hub_token", "hub_private_repo", "hub_model_id", "hub_strategy",
    "hub_always_push", "hub_revision", "preset",
    # How the work is driven: a sweep's list (each run holds its own value), shards, merges, the device.
    "betas", "kl_coefs", "alphas", "seeds", "reference_only", "merge", "shard_index", "allow_fewer_prompts", "use_cpu",
    "device_map", "given_on_command_line", "auto_sizes",
    # When the frontier's checkpoints are evaluated (during training or after): the same records either way.
    "frontier_eval", "resume_minutes",
    # Which finished runs keep their final model: what is kept, not what is computed.
    "keep_final_model_seeds",
    # How much is loaded, sampled or scored at once, where no random number depends on it (every sample has a
    # stream of its own: imdb_dpo/models/sampling.py).
    "dataloader_num_workers", "dataloader_prefetch_factor", "batch_size", "reward_batch_size", "kl_batch_size",
    # How a training step's examples (examples_per_step, a setting) are split into passes, and whether a pass
    # recomputes its activations: the same step up to the rounding of another summation order
    # (imdb_dpo/planning/fitting.py). A method whose loss reads a pass's rows together (KTO's KL term) names its pass
    # size among its settings itself (Recipe.pass_decides).
    "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation", "precompute_ref_batch_size",
    "activation_checkpointing", "gradient_checkpointing",
    # What the evaluation reports, not what it measures: budgets, shown prompts, where the runs lie.
    "kl_budgets", "report_prompts", "base_model", "runs_root", "methods",
    # Input paths: what they point at is compared instead (see `run_settings`), so moved outputs still match.
    "model_name_or_path", "pairs_file", "train_file", "test_file", "sft_model",
})


def settings_of(config: dict) -> dict:
    """`config` (a JSON-able dict) without the keys that do not decide results, at any depth."""
    if isinstance(config, dict):
        return {key: settings_of(value) for key, value in config.items() if key not in NOT_SETTINGS}
    return config


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in settings_of(value).items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def differences(before: dict, now: dict) -> list[str]:
    """'key: <before> before, <now> now' for each setting that differs (both as JSON would store them)."""
    before, now = _flatten(json.loads(json.dumps(before, default=str))), _flatten(json.loads(json.dumps(now, default=str)))
    return [f"{key}: {before.get(key, '(unset)')!r} before, {now.get(key, '(unset)')!r} now"
            for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]


def identity(described):
    """What an input is, from how a manifest describes it: a run id, a SHA-256, else its path or hub name."""
    if isinstance(described, dict):
        return described.get("run_id") or described.get("sha256") or described.get("path")
    return described


def run_settings(configs: dict, inputs: dict) -> dict:
    """What decides a run's results: its configs (as its manifest stores them) and what its inputs are."""
    from imdb_dpo.lifecycle.manifests import config_to_dict

    return {"config": {name: config_to_dict(c) if not isinstance(c, dict) else c for name, c in configs.items()},
            "inputs": {name: identity(described) for name, described in inputs.items()}}


def manifest_settings(manifest: dict) -> dict:
    config = manifest["config"]
    if PASS not in config and passes_decide(manifest.get("stage")):  # made before the pass size was named apart
        config = {**config, PASS: {"rows": config.get("training", {}).get("per_device_train_batch_size")}}
    return run_settings(config, manifest["inputs"])


PASS = "pass"  # where a run whose loss reads each pass's rows together names its pass size among its settings


def passes_decide(stage: str | None) -> bool:
    from imdb_dpo.methods import method

    declared = method(stage) if stage else None
    return bool(declared and getattr(declared.recipe, "pass_decides", False))
