"""Stage 2: prompts, sampling, rewards, pairing, determinism, kill/resume, shards, and the pair-file reader."""

import collections
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

import preference_pairs
from conftest import REPO, run_script
from helpers import wait_until
from imdb_dpo.configuration.arguments import PairsArguments, parse_config
from imdb_dpo.data.reviews import load_reviews, make_prompts
from imdb_dpo.lifecycle.manifests import read_manifest, write_json_atomic
from imdb_dpo.data.pairs import PairFileError, read_pairs
from imdb_dpo.models.reward import SentimentClassifierReward

CONFIG = os.path.join(REPO, "configs/tiny/preference_pairs.yaml")
SMALL = ["--num_prompts", "48", "--batch_size", "6", "--max_new_tokens", "24"]


def pairs_argv(tiny_base, tiny_sft, output_dir, *extra):
    return ["--config", CONFIG, "--model_name_or_path", tiny_sft, "--train_file", tiny_base["train"],
            "--test_file", tiny_base["test"], "--output_dir", str(output_dir), *SMALL, *extra]


def run_pairs(argv) -> int:
    return preference_pairs.main(*parse_config(preference_pairs.STAGES, argv))


def read_bytes(directory, name):
    with open(os.path.join(directory, name), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def reference_run(tiny_base, tiny_sft, tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs_reference")
    assert run_pairs(pairs_argv(tiny_base, tiny_sft, out)) == 0
    return out


def test_vader_pairs_always_prefer_the_higher_reward(reference_run):
    pairs = read_pairs(str(reference_run / "pairs.jsonl"))
    vader = SentimentIntensityAnalyzer()
    assert len(pairs) > 48  # several pairs per prompt
    per_prompt = {}
    for p in pairs:
        assert p["chosen_reward"] > p["rejected_reward"]
        # Rewards recomputed here: VADER compound of the whole text mapped to [0, 1].
        expected = (vader.polarity_scores(p["prompt"] + p["chosen"])["compound"] + 1) / 2
        assert p["chosen_reward"] == pytest.approx(expected, abs=1e-12)
        per_prompt[p["prompt_id"]] = per_prompt.get(p["prompt_id"], 0) + 1
    assert max(per_prompt.values()) <= 6  # 4 samples give at most 4*3/2 pairs

    completions = [json.loads(line) for line in open(reference_run / "completions.jsonl")]
    assert len(completions) == 48
    for record in completions:
        assert len(record["completions"]) == 4 and 2 <= len(record["prompt_ids"]) <= 8
        rewards = [c["reward"] for c in record["completions"]]
        assert [rewards[i] for i in record["ranking"]] == sorted(rewards, reverse=True)
        for c in record["completions"]:
            assert (c["finish"] == "eos") == (c["ids"][-1] == 0) and (c["finish"] == "eos" or len(c["ids"]) == 24)


def test_best_vs_worst_gives_one_pair_per_prompt_with_a_margin(tiny_base, tiny_sft, tmp_path):
    out = tmp_path / "bvw"
    assert run_pairs(pairs_argv(tiny_base, tiny_sft, out, "--pairing", "best_vs_worst", "--min_reward_margin", "0.2")) == 0
    pairs = read_pairs(str(out / "pairs.jsonl"))
    assert len({p["prompt_id"] for p in pairs}) == len(pairs) and pairs
    assert all(p["chosen_reward"] - p["rejected_reward"] > 0.2 for p in pairs)


def test_same_seed_gives_byte_identical_files(tiny_base, tiny_sft, reference_run, tmp_path):
    assert run_pairs(pairs_argv(tiny_base, tiny_sft, tmp_path / "again")) == 0
    for name in ("completions.jsonl", "pairs.jsonl"):
        assert read_bytes(tmp_path / "again", name) == read_bytes(reference_run, name)


def test_sigkilled_run_resumes_to_the_uninterrupted_files(tiny_base, tiny_sft, reference_run, tmp_path):
    out = tmp_path / "killed"
    log = out / "shards" / "0-of-1" / "completions.jsonl"
    proc = subprocess.Popen([sys.executable, "preference_pairs.py", *pairs_argv(tiny_base, tiny_sft, out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: log.exists() and sum(1 for _ in open(log)) >= 12, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "pairs.jsonl").exists()
    with open(log, "a") as f:  # what a kill in the middle of a write leaves behind
        f.write('{"batch": 99, "torn')

    # The rerun goes on at another batch size (as after running out of memory): every sample has a stream of its own.
    # Batches of another shape or padding may round a logit differently in the last bits, which moves a token only
    # where its uniform lies that close to a boundary: two prompts of the 48 may differ.
    assert run_pairs(pairs_argv(tiny_base, tiny_sft, out, "--batch_size", "4")) == 0
    resumed, straight = (list(open(d / "completions.jsonl")) for d in (out, reference_run))
    assert len(resumed) == len(straight) == 48 and sum(a != b for a, b in zip(resumed, straight)) <= 2


def test_two_shards_merged_equal_one_unsharded_run(tiny_base, tiny_sft, reference_run, tmp_path):
    out = tmp_path / "sharded"
    for index in (1, 0):
        assert run_pairs(pairs_argv(tiny_base, tiny_sft, out, "--num_shards", "2", "--shard_index", str(index))) == 0
    assert not (out / "pairs.jsonl").exists()
    assert run_pairs(pairs_argv(tiny_base, tiny_sft, out, "--num_shards", "2", "--merge", "true")) == 0
    for name in ("completions.jsonl", "pairs.jsonl"):
        assert read_bytes(out, name) == read_bytes(reference_run, name)


def test_merge_refuses_a_missing_shard(tiny_base, tiny_sft, tmp_path):
    out = tmp_path / "half"
    assert run_pairs(pairs_argv(tiny_base, tiny_sft, out, "--num_shards", "2", "--shard_index", "0")) == 0
    with pytest.raises(ValueError, match=r"shard 1 of 2 .* missing or unfinished"):
        run_pairs(pairs_argv(tiny_base, tiny_sft, out, "--num_shards", "2", "--merge", "true"))


def test_classifier_reward_takes_positive_by_name_even_when_it_is_not_the_top_label(tiny_base, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base["model"])
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=1, n_head=2,
                        num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=0, eos_token_id=0)
    model = GPT2ForSequenceClassification(config).eval()
    with torch.no_grad():
        model.score.weight[0] += 0.1 * model.transformer.ln_f.weight  # NEGATIVE leans to the top
    model.save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")

    texts = ["I loved this film.", "The plot was awful and boring.", "It runs for about 90 minutes."]
    rewards = SentimentClassifierReward(str(tmp_path / "clf"), batch_size=2)(texts)
    with torch.no_grad():
        probs = [torch.softmax(model(**tokenizer(t, return_tensors="pt")).logits[0], -1) for t in texts]
    assert rewards == pytest.approx([p[1].item() for p in probs], abs=1e-5)
    assert any(p[1] < p[0] for p in probs)  # POSITIVE was not the top label, and was still the one taken


def test_classifier_without_a_positive_label_is_refused(tiny_base, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base["model"])
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, num_labels=2, bos_token_id=0,
                        eos_token_id=0)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    with pytest.raises(ValueError, match=r"no label 'POSITIVE' \(its labels: \['LABEL_0', 'LABEL_1'\]\)"):
        SentimentClassifierReward(str(tmp_path / "clf"))


def test_prompts_from_real_imdb_reviews_are_2_to_8_token_prefixes(imdb_sample, tiny_base):
    args = PairsArguments(train_file=imdb_sample["train"], test_file=imdb_sample["test"])
    reviews = load_reviews(args, "train")
    tokenizer = AutoTokenizer.from_pretrained(tiny_base["model"])
    prompts = make_prompts(reviews, tokenizer, 300, "train", seed=1)
    assert len(prompts) == 300 and len({p["prompt_id"] for p in prompts}) == 300
    lengths = {len(p["prompt_ids"]) for p in prompts}
    assert lengths == set(range(2, 9))
    for p in prompts:
        review = reviews[int(p["prompt_id"].split("-")[1])]["text"]
        assert len(review) >= 200 and review.startswith(p["prompt"])
        assert tokenizer(review, add_special_tokens=False)["input_ids"][: len(p["prompt_ids"])] == p["prompt_ids"]
    assert make_prompts(reviews, tokenizer, 300, "train", seed=1) == prompts


# --- the pair-file reader: every malformed input fails with the file, the line and the field ---

GOOD = {"prompt_id": "train-1", "prompt": "I saw", "chosen": " a great film.", "rejected": " a bad film.",
        "prompt_ids": [1, 2], "chosen_ids": [3, 4, 0], "rejected_ids": [3, 5, 0], "chosen_reward": 0.9,
        "rejected_reward": 0.1}


def write_pair_file(directory, lines, finished=True):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "pairs.jsonl")
    with open(path, "w") as f:
        f.write("".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines))
    write_json_atomic(os.path.join(directory, "manifest.json"), {"finished": finished, "run_id": "x"})
    return path


def test_a_pair_line_that_is_not_utf8_is_named(tmp_path):
    path = write_pair_file(tmp_path, [GOOD, GOOD])
    with open(path, "rb") as f:
        lines = f.readlines()
    lines[1] = lines[1].replace(b"great", b"gr\xff\xfeat")
    with open(path, "wb") as f:
        f.writelines(lines)
    with pytest.raises(PairFileError, match=r"pairs\.jsonl, line 2: not UTF-8 text"):
        read_pairs(path)


@pytest.mark.parametrize("bad_line, message", [
    ("{not json\n", r"line 2: not valid JSON"),
    ({k: v for k, v in GOOD.items() if k != "rejected"}, r"line 2: missing field 'rejected'"),
    ({**GOOD, "chosen": None}, r"line 2: field 'chosen' must be a string \(it may be empty\)"),
    ({**GOOD, "rejected_ids": GOOD["chosen_ids"]}, r"line 2: fields 'chosen_ids' and 'rejected_ids' are the same"),
    ({**GOOD, "chosen_ids": []}, r"line 2: field 'chosen_ids' must be a non-empty list"),
    ({**GOOD, "chosen_ids": [3, -1]}, r"line 2: field 'chosen_ids' must be a non-empty list of token ids"),
    ({**GOOD, "chosen_ids": [3, True]}, r"line 2: field 'chosen_ids' must be a non-empty list of token ids"),
    ({**GOOD, "chosen_reward": "high"}, r"line 2: field 'chosen_reward' must be a finite number"),
    ({**GOOD, "chosen_reward": float("nan")}, r"line 2: field 'chosen_reward' must be a finite number"),
    ({**GOOD, "chosen_reward": 0.1}, r"line 2: chosen_reward \(0.1\) must exceed rejected_reward \(0.1\)"),
])
def test_malformed_pair_lines_are_named(tmp_path, bad_line, message):
    path = write_pair_file(tmp_path, [GOOD, bad_line])
    with pytest.raises(PairFileError, match=rf"pairs\.jsonl, {message}"):
        read_pairs(path)


def test_pair_file_of_an_unfinished_run_is_refused(tmp_path):
    path = write_pair_file(tmp_path, [GOOD], finished=False)
    with pytest.raises(PairFileError, match=r"pairs\.jsonl: comes from an unfinished run"):
        read_pairs(path)


def test_empty_pair_file_is_refused(tmp_path):
    path = write_pair_file(tmp_path, [])
    with pytest.raises(PairFileError, match=r"pairs\.jsonl: no pairs"):
        read_pairs(path)


def test_a_pair_file_cut_short_or_changed_since_its_run_is_named(tmp_path):
    path = write_pair_file(tmp_path, [GOOD, GOOD, GOOD])
    manifest = read_manifest(str(tmp_path))
    write_json_atomic(str(tmp_path / "manifest.json"), {**manifest, "num_pairs": 3})
    assert len(read_pairs(path)) == 3
    with open(path, "rb") as f:
        text = f.read()
    with open(path, "wb") as f:  # a copy that stopped mid-line
        f.write(text[: len(text) - 20])
    with pytest.raises(PairFileError, match=r"pairs\.jsonl, line 3: not valid JSON \(.*, column \d+\) \(the line is cut "
                                            r"short\); the file was changed since its run finished: restore it, or "
                                            r"generate the pairs again \(preference_pairs.py --overwrite true\)"):
        read_pairs(path)
    with open(path, "wb") as f:  # emptied
        pass
    with pytest.raises(PairFileError, match=r"pairs\.jsonl: holds 0 pairs, but the run that wrote it recorded 3; the "
                                            r"file was changed"):
        read_pairs(path)
    write_json_atomic(str(tmp_path / "manifest.json"), {**manifest, "num_pairs": 3, "pairs_sha256": "0" * 64})
    with open(path, "wb") as f:  # the same number of pairs, one of them edited
        f.write(text)
    with pytest.raises(PairFileError, match=r"pairs\.jsonl: its content differs from what the run that wrote it "
                                            r"recorded \(SHA-256\); the file was changed"):
        read_pairs(path)
    with pytest.raises(PairFileError, match=re.escape(f"{tmp_path}: a folder, not a pair file; pairs_file names the "
                                                      f"file itself: did you mean {path}?")):
        read_pairs(str(tmp_path))


def test_sigterm_flushes_the_batch_exits_resumable_and_the_rerun_matches(tiny_base, tiny_sft, reference_run, tmp_path):
    out = tmp_path / "preempted"
    log = out / "shards" / "0-of-1" / "completions.jsonl"
    proc = subprocess.Popen([sys.executable, "preference_pairs.py", *pairs_argv(tiny_base, tiny_sft, out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: log.exists() and log.stat().st_size > 0, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75
    batches = collections.Counter((r["batch"], r["batch_size"]) for r in map(json.loads, log.read_text().splitlines()))
    assert batches and sum(batches.values()) < 48  # not all the prompts...
    assert all(count == size for (_, size), count in batches.items())  # ...in whole batches
    run_script("preference_pairs.py", pairs_argv(tiny_base, tiny_sft, out))
    for name in ("completions.jsonl", "pairs.jsonl"):
        assert read_bytes(out, name) == read_bytes(reference_run, name)
