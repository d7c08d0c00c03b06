"""IMDb reviews from the hub or from local files, cleaned, and the short review prefixes used as prompts."""

import os
import random
import re

from datasets import Dataset, load_dataset

from imdb_dpo.lifecycle.distributed import main_process_first
from imdb_dpo.configuration.errors import UserError, first_line

_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


class DataError(UserError, ValueError):
    """Bad input data; the message names the file, the field and the fix."""


def normalise_review(text: str) -> str:
    """IMDb keeps the site's HTML line breaks (`<br /><br />`); turn them into newlines."""
    return _HTML_BREAK.sub("\n", text).strip()


def _load_local(path: str, field_name: str, split: str) -> Dataset:
    extension = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise DataError(f"{field_name}={path!r}: file not found; check the path (relative paths start at {os.getcwd()})")
    if extension not in _BUILDERS:
        raise DataError(f"{field_name}={path!r}: unsupported file type {extension!r}; use one of {sorted(_BUILDERS)}")
    if os.path.getsize(path) == 0:
        raise DataError(f"{field_name}={path!r}: the file is empty; it needs one review per row")
    try:
        return load_dataset(_BUILDERS[extension], data_files={split: path}, split=split)
    except Exception as error:  # the builders raise DatasetGenerationError, ArrowInvalid, ...; none names the file
        cause = error.__cause__ or error
        if isinstance(cause, OSError) and cause.errno is not None:  # the disk, not the file's contents
            raise cause from error
        detail = first_line(cause, 200, type(cause).__name__)
        raise DataError(f"{field_name}={path!r}: cannot be read as {extension[1:]} ({detail}); it needs one review "
                        f"per {'line, as a JSON object with a text field' if extension == '.jsonl' else 'row'}") from error


def load_reviews(data_args, split: str) -> Dataset:
    """Reviews of one split ('train' or 'test') as a Dataset with a cleaned `text` column (and `label` if present).

    Local files (`train_file`/`test_file`) take precedence over the hub data set (`dataset_name`).
    """
    field_name = f"{split}_file"
    path = getattr(data_args, field_name)
    if not path and (data_args.train_file or data_args.test_file):
        raise DataError(f"{field_name} is not set but the other split is a local file: set {field_name} as well")
    with main_process_first():  # one process fills the datasets cache; the others read it
        if path:
            dataset, source = _load_local(path, field_name, split), f"{field_name}={path!r}"
        else:
            dataset, source = load_dataset(data_args.dataset_name, split=split), f"dataset_name={data_args.dataset_name!r}"

        column = data_args.text_column
        if column not in dataset.column_names:
            raise DataError(
                f"{source}: no column {column!r} (found {dataset.column_names}); set text_column to the review column"
            )
        if len(dataset) == 0:
            raise DataError(f"{source}: the {split} split has no rows")
        keep = [column] + (["label"] if "label" in dataset.column_names else [])
        dataset = dataset.select_columns(keep)
        if column != "text":
            dataset = dataset.rename_column(column, "text")
        dataset = dataset.map(lambda row: {"text": normalise_review(row["text"] or "")}, desc=f"Cleaning {split} reviews")
        dataset = dataset.filter(lambda row: len(row["text"]) > 0)
        if len(dataset) == 0:
            raise DataError(f"{source}: every {split} review is empty after cleaning")
        return dataset


def make_prompts(
    reviews: Dataset,
    tokenizer,
    num_prompts: int,
    split: str,
    min_tokens: int = 2,
    max_tokens: int = 8,
    min_review_chars: int = 200,
    seed: int = 0,
) -> list[dict]:
    """Prefixes of `min_tokens`..`max_tokens` tokens (inclusive) of randomly chosen reviews.

    Reviews shorter than `min_review_chars` are skipped, and so is a review whose token prefix ends inside
    a multi-byte character (its decoded text would not be a prefix of the review). The choice of reviews and of each prefix length
    comes from one seeded RNG, so the same arguments give the same prompts. `prompt_id` names the review
    (`<split>-<row>`), which keeps prompts stable across shards and restarts.
    """
    if not 1 <= min_tokens <= max_tokens:
        raise DataError(f"prompt lengths: need 1 <= min_prompt_tokens ({min_tokens}) <= max_prompt_tokens ({max_tokens})")
    rng = random.Random(seed)
    eligible = [i for i, n in enumerate(len(t) for t in reviews["text"]) if n >= min_review_chars]
    if not eligible:
        raise DataError(f"no {split} review has at least min_review_chars={min_review_chars} characters; lower it")
    rng.shuffle(eligible)
    prompts = []
    for row in eligible:
        if len(prompts) == num_prompts:
            break
        length = rng.randint(min_tokens, max_tokens)
        text = reviews[row]["text"]
        # A prefix of the text tokenises like the start of the whole review; 40 characters a token is ample.
        ids = tokenizer(text[: 40 * max_tokens], add_special_tokens=False)["input_ids"][:length]
        prompt = tokenizer.decode(ids)
        if not text.startswith(prompt):  # the byte-level prefix ends inside a multi-byte character
            continue
        prompts.append({"prompt_id": f"{split}-{row}", "prompt": prompt, "prompt_ids": ids})
    return prompts


def prompts_for(args, tokenizer, split: str) -> list[dict]:
    """The stage's prompts from its config (a `SamplingArguments`): `num_prompts` of them, or an error giving both
    numbers when fewer reviews qualify, unless `allow_fewer_prompts` is set."""
    prompts = make_prompts(load_reviews(args, split), tokenizer, args.num_prompts, split, args.min_prompt_tokens,
                           args.max_prompt_tokens, args.min_review_chars, args.seed)
    if len(prompts) < args.num_prompts and not args.allow_fewer_prompts:
        source = getattr(args, f"{split}_file") or args.dataset_name
        raise DataError(
            f"num_prompts={args.num_prompts}, but only {len(prompts)} {split} reviews of {source} qualify (at least "
            f"min_review_chars={args.min_review_chars} characters, and a prefix that ends on a character boundary); "
            "lower num_prompts or min_review_chars, use more reviews, or set allow_fewer_prompts true")
    return prompts
