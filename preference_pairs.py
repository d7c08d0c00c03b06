"""Stage 2: sample completions of IMDb review prefixes from the SFT model, score, rank and pair them.

    python preference_pairs.py --config configs/gpt2-large/preference_pairs.yaml
    python preference_pairs.py --config ... --shard_index 3 --num_shards 8     # one SLURM array task
    python preference_pairs.py --config ... --num_shards 8 --merge true        # after all shards

Writes to output_dir: shards/<i>-of-<n>/completions.jsonl (appended a batch at a time, resumable),
then completions.jsonl (one object per prompt, with its ranked samples), pairs.jsonl and manifest.json.
"""

import imdb_dpo.lifecycle.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import dataclasses
import json
import os
import sys

from tqdm.auto import tqdm

from imdb_dpo.lifecycle.batch_log import BatchLog, read_finished
from imdb_dpo.configuration.checks import check_model, check_positive, check_sampling
from imdb_dpo.launch.cli import run_stage
from imdb_dpo.configuration.arguments import ConfigError, PairsArguments
from imdb_dpo.planning.costs import check_memory, classifier_shape, model_shape, pairs_memory
from imdb_dpo.data.reviews import prompts_for
from imdb_dpo.lifecycle.distributed import any_process, process_state
from imdb_dpo.lifecycle.locks import folder_lock
from imdb_dpo.planning.memory import naming_the_fix
from imdb_dpo.lifecycle.manifests import (Manifest, describe_file_input, describe_model_input, file_sha256, read_manifest,
                                write_text_atomic)
from imdb_dpo.lifecycle.outputs import plan_output
from imdb_dpo.lifecycle.settings import differences, run_settings, settings_of
from imdb_dpo.models.modeling import load_causal_lm, load_tokenizer
from imdb_dpo.data.pairs import PAIRING_MODES, make_pairs, rank, write_pairs
from imdb_dpo.configuration.precision import inference_dtype
from imdb_dpo.lifecycle.preemption import StopRequest, exit_resumable
from imdb_dpo.models.reward import VADER, make_reward
from imdb_dpo.models.sampling import SAMPLER, remaining_batches, sample_batch

STAGES = (PairsArguments,)


def shard_dir(args: PairsArguments, index: int) -> str:
    return os.path.join(args.output_dir, "shards", f"{index}-of-{args.num_shards}")


def check_settings(args: PairsArguments) -> None:
    """The numbers and choices of the config (plan.py checks these too)."""
    check_sampling(args)
    check_positive(args, "num_shards")
    if args.pairing not in PAIRING_MODES:
        raise ConfigError(f"pairing={args.pairing!r}: use one of {PAIRING_MODES}")
    if not 0 <= args.shard_index < args.num_shards:
        raise ConfigError(f"shard_index={args.shard_index} must lie in [0, num_shards={args.num_shards})")
    if args.samples_per_prompt < 2:
        raise ConfigError(f"samples_per_prompt={args.samples_per_prompt}: a pair needs at least 2 samples per prompt")


def check_args(args: PairsArguments) -> None:
    check_settings(args)
    check_model("model_name_or_path", args.model_name_or_path)
    model_manifest = read_manifest(args.model_name_or_path) if os.path.isdir(args.model_name_or_path) else None
    if model_manifest and not model_manifest.get("finished"):
        raise ConfigError(f"model_name_or_path={args.model_name_or_path!r}: its SFT run is unfinished; finish it first")
    if args.reward_model != VADER:
        check_model("reward_model", args.reward_model)


def generation_settings(args: PairsArguments) -> dict:
    """Everything that decides the samples (imdb_dpo/lifecycle/settings.py); shards and restarts must agree on it."""
    return {**settings_of(json.loads(json.dumps(vars(args)))), "sampler": SAMPLER}


def settings_now(args: PairsArguments) -> dict:
    return run_settings({"generation": generation_settings(args)}, inputs_of(args))


def inputs_of(args: PairsArguments) -> dict:
    return {"model": describe_model_input(args.model_name_or_path),
            "train": describe_file_input(args.train_file, "train_file") if args.train_file else args.dataset_name}


def has_batches(directory: str) -> bool:
    path = os.path.join(directory, "completions.jsonl")
    return os.path.isfile(path) and os.path.getsize(path) > 0


def generate_shard(args: PairsArguments, stop: StopRequest) -> bool:
    """Sample, score and log this shard's batches; returns False when stopped by a signal."""
    directory = shard_dir(args, args.shard_index)
    tokenizer = load_tokenizer(args.model_name_or_path)
    prompts = prompts_for(args, tokenizer, "train")  # before the lock: too few prompts leaves no folder behind
    for index, prompt in enumerate(prompts):
        prompt["prompt_index"] = index
    with folder_lock(directory, "preference_pairs.py"):  # each process owns its shard
        plan = plan_output(directory, settings_now(args), has_batches, args.overwrite, "pair shard")
        if plan.skip:
            return True
        if not generate_locked(args, plan.directory, tokenizer, prompts, stop):
            return False
        plan.finish()
        return True


def generate_locked(args: PairsArguments, directory: str, tokenizer, prompts: list[dict], stop: StopRequest) -> bool:
    manifest = Manifest(directory, "preference_pairs_shard", {"generation": generation_settings(args)}, inputs_of(args),
                        own=True)

    log = BatchLog(os.path.join(directory, "completions.jsonl"))
    todo = remaining_batches(log, prompts, "prompt_index", args.batch_size, args.shard_index, args.num_shards)
    if todo:
        device = process_state().device
        with naming_the_fix(f"loading {args.model_name_or_path} and {args.reward_model}", "Free the device"):
            model = load_causal_lm(args.model_name_or_path, inference_dtype(args, "sampling_dtype"), device)
            reward = make_reward(args.reward_model, args.reward_batch_size, args.reward_positive_label, device,
                                 inference_dtype(args, "reward_dtype"))
    for b, batch in tqdm(todo, desc=f"sampling shard {args.shard_index}/{args.num_shards}", unit="batch"):
        with naming_the_fix(f"sampling {len(batch)} prompts x {args.samples_per_prompt} samples",
                            "Lower batch_size (rows sampled at once = batch_size x samples_per_prompt; it changes no "
                            "sample, and the rerun goes on from the finished batches) or set sampling_dtype bfloat16 "
                            "(half the KV cache)"):
            samples = sample_batch(model, tokenizer, batch, args.samples_per_prompt, args.max_new_tokens,
                                   args.seed, args.temperature, args.top_k, args.top_p)
        texts = [p["prompt"] + c["text"] for p, cs in zip(batch, samples) for c in cs]
        with naming_the_fix(f"scoring {len(texts)} samples with {args.reward_model}", "Lower reward_batch_size"):
            rewards = iter(reward(texts))
        rows = []
        for prompt, completions in zip(batch, samples):
            for c in completions:
                c["reward"] = next(rewards)
            rows.append({**prompt, "completions": completions, "ranking": rank([c["reward"] for c in completions])})
        log.append_batch(b, rows)
        if stop.requested:
            log.close()
            return False
    log.close()
    manifest.finish(num_prompts=len(log.records))
    return True


def merge_shards(args: PairsArguments) -> str:
    records = []
    for index in range(args.num_shards):
        directory = shard_dir(args, index)
        manifest = read_manifest(directory)
        if not (manifest and manifest.get("finished")):
            raise ConfigError(f"shard {index} of {args.num_shards} ({directory}) is missing or unfinished; run it first "
                              f"(--shard_index {index} --num_shards {args.num_shards})")
        diffs = differences(manifest["config"]["generation"], generation_settings(args))
        if diffs:
            raise ConfigError(f"shard {index} ({directory}) was generated with other settings than this merge "
                              f"({'; '.join(diffs[:6])}); merge with the settings the shards were run with")
        records += read_finished(os.path.join(directory, "completions.jsonl"), manifest["num_prompts"])
    records.sort(key=lambda r: r["prompt_index"])
    if [r["prompt_index"] for r in records] != list(range(len(records))):
        raise ConfigError(f"shards in {args.output_dir}/shards do not cover every prompt exactly once; delete the "
                          "shards folder and generate again")
    for r in records:
        del r["batch"], r["batch_size"]
    pairs = [p for r in records for p in make_pairs(r, args.pairing, args.min_reward_margin)]
    write_text_atomic(os.path.join(args.output_dir, "completions.jsonl"),
                      "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    write_pairs(os.path.join(args.output_dir, "pairs.jsonl"), pairs)
    rewards = [c["reward"] for r in records for c in r["completions"]]
    finished = [c["finish"] == "eos" for r in records for c in r["completions"]]
    manifest = Manifest(args.output_dir, "preference_pairs", {"generation": generation_settings(args)}, inputs_of(args))
    manifest.finish(num_prompts=len(records), num_pairs=len(pairs),
                    pairs_sha256=file_sha256(os.path.join(args.output_dir, "pairs.jsonl")),
                    mean_reward=sum(rewards) / len(rewards),
                    eos_fraction=sum(finished) / len(finished))
    return f"{len(pairs)} pairs from {len(records)} prompts (mean reward {sum(rewards) / len(rewards):.3f})"


def split_across_processes(args: PairsArguments, rank: int, world: int) -> PairsArguments:
    """Under a launcher, each process is a shard of its own: shard i of n becomes shards i*w..i*w+w-1 of n*w.
    Every sample has a random stream of its own, so the merged files equal a one-process run's."""
    return dataclasses.replace(args, shard_index=args.shard_index * world + rank, num_shards=args.num_shards * world)


def main(args: PairsArguments) -> int:
    process_state(args.use_cpu)  # first: it decides this process's device
    check_args(args)
    state = process_state()
    # Only the merge writes the folder's own manifest, so it is finished or absent: this decides skip or replace.
    # Shards of a SLURM array run side by side, so only a lone process or the merge may finish an interrupted swap.
    plan = plan_output(args.output_dir, settings_now(args), has_batches, args.overwrite, "pair generation",
                       is_main=state.is_main_process and (args.merge or args.num_shards == 1),
                       barrier=state.wait_for_everyone)
    if plan.skip:
        return 0
    if not args.merge:
        policy, classifier = model_shape(args.model_name_or_path), classifier_shape(args.reward_model)
        check_memory("Stage 2", lambda: pairs_memory(args, policy, classifier), state.device, sampling=args)
    args = dataclasses.replace(args, output_dir=plan.directory)
    if not args.merge:
        args = split_across_processes(args, state.process_index, state.num_processes)
        stopped = not generate_shard(args, StopRequest())
        if any_process(stopped):
            return exit_resumable()
        if args.num_shards > state.num_processes:
            print(f"shard {args.shard_index} of {args.num_shards} finished; merge with --merge true "
                  f"--num_shards {args.num_shards} when all are")
            return 0
    if state.is_main_process:
        with folder_lock(plan.final, "preference_pairs.py --merge"):
            merged = merge_shards(args)
            plan.finish()  # an --overwrite's new folder takes the finished one's place
        print(f"{merged} written to {plan.final}/pairs.jsonl")
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
