"""The generation copy RLOO and online DPO sample from (`generation_dtype`): the policy's current weights in the
copy's dtype, built without moving the sampling's random state, counted in the memory check, refused where it
cannot work. That the trainers sample from it: test_rloo.py and test_online_dpo.py."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from trl import RLOOConfig

from imdb_dpo.configuration.arguments import RLOOScriptArguments
from imdb_dpo.planning.costs import Shape, rloo_memory
from imdb_dpo.configuration.errors import ConfigError, UserError
from imdb_dpo.models.generation_copy import GenerationCopy, check_generation_dtype


def tiny_policy():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0,
                                      eos_token_id=0))


def test_the_copy_holds_the_policys_current_weights_and_building_it_draws_no_random_numbers():
    policy, copy = tiny_policy(), GenerationCopy("bfloat16")
    torch.manual_seed(1)
    model = copy.refresh(policy)
    assert torch.equal(torch.rand(3), (torch.manual_seed(1), torch.rand(3))[1])  # the global generator did not move
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    assert copy.refresh(policy) is model  # built once, refreshed in place
    state = model.state_dict()
    for name, value in policy.state_dict().items():
        assert state[name].dtype == torch.bfloat16 and torch.equal(state[name], value.to(torch.bfloat16)), name
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # still tied, as the policy's


@pytest.mark.parametrize("setting, use_peft, env, expected", [
    ("float8", False, {}, "generation_dtype='float8': use one of float32, bfloat16, float16"),
    ("bfloat16", True, {}, "pass --generation_dtype none --generation_compile false for a LoRA run"),
    ("bfloat16", False, {"ACCELERATE_USE_FSDP": "true"}, "generation_dtype=bfloat16 under FSDP"),
    ("bfloat16", False, {"ACCELERATE_USE_DEEPSPEED": "true"}, "generation_dtype=bfloat16 under DeepSpeed"),
    (None, False, {}, "generation_compile: true compiles the generation copy's decode step, and there is no copy"),
])
def test_settings_it_cannot_serve_are_refused(setting, use_peft, env, expected, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        check_generation_dtype(RLOOScriptArguments(generation_dtype=setting, generation_compile=True), use_peft)
    check_generation_dtype(RLOOScriptArguments(), use_peft)  # unset: the training model samples, always allowed


def test_the_memory_check_counts_the_copy_and_its_bf16_cache():
    shape = Shape(params=774_030_080, layers=36, hidden=1280, heads=20, vocab=50257, dropout=True)
    args = RLOOConfig(output_dir="unused", per_device_train_batch_size=64, num_generations=4, bf16=False,
                      max_completion_length=64, use_cpu=True, report_to=[])
    without, with_copy = (rloo_memory(args, shape, 8, None, "float32", generation_dtype=d) for d in (None, "bfloat16"))
    assert "generation copy" not in without.memory
    assert with_copy.memory["generation copy"] == 2 * shape.params


def test_a_decode_step_that_cannot_compile_is_one_message_naming_the_setting():
    """A node without a working compiler: the run stops with what to change, not inductor's traceback."""
    import torch._inductor.config as inductor
    from transformers import GenerationConfig

    torch._dynamo.reset()
    copy = GenerationCopy("bfloat16", compile=True)
    config = copy.generation_config(GenerationConfig(max_new_tokens=4, do_sample=True, pad_token_id=0, eos_token_id=0))
    try:  # inductor's own patch: monkeypatch would delete its settings on the way out, for every later test
        with inductor.patch({"fx_graph_cache": False, "cpp.cxx": ("/nonexistent/c++",)}), \
                pytest.raises(UserError, match="Run again with --generation_compile false --overwrite true"):
            copy.generate(tiny_policy(), [[1, 2, 3], [4, 5]], config, 0)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("unset", ["", "none"])
def test_a_command_line_unsets_the_copy_a_config_sets(unset):
    """The gpt2-large preset sets generation_dtype; a LoRA run must go without it, from the command line."""
    args = RLOOScriptArguments(generation_dtype=unset)
    check_generation_dtype(args, use_peft=True)
    assert args.generation_dtype is None
