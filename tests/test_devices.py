"""Devices and precision on a machine that has a GPU, simulated on the CPU (the real GPU runs are in test_gpu.py):
`use_cpu` keeps every stage on the CPU, the reward's precision is its setting and not the hardware's, running out
of GPU memory names the setting to lower, and an unset model is a message."""

import os
import re
import subprocess
import sys

import pytest
import torch

import eval as eval_stage
from imdb_dpo.evaluation import evaluator as model_eval
from conftest import REPO
from imdb_dpo.launch.cli import run_stage
from imdb_dpo.evaluation.kl import sequence_kls
from imdb_dpo.models.reward import make_reward
from test_eval import eval_argv

# Runs a stage script in a process where torch believes a GPU exists (there is none: any use of it fails).
SEES_A_GPU = ("import runpy, sys, torch; torch.cuda.is_available = lambda: True; sys.argv = sys.argv[1:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_seeing_a_gpu(script, argv, tmp_path):
    report = tmp_path / f"{script}.resources.json"
    proc = subprocess.run([sys.executable, "-c", SEES_A_GPU, script, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "IMDB_DPO_RESOURCE_REPORT": str(report)})
    return proc, report


def test_a_reward_on_the_cpu_is_fp32_where_a_gpu_is_seen(gpt2_classifier, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    reward = make_reward(gpt2_classifier, device="cpu")
    parameters = list(reward.classifier.model.parameters())
    assert {p.dtype for p in parameters} == {torch.float32} and {p.device.type for p in parameters} == {"cpu"}
    bf16 = make_reward(gpt2_classifier, device="cpu", dtype=torch.bfloat16)  # the setting, on any device
    assert {p.dtype for p in bf16.classifier.model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("script", ["preference_pairs.py", "eval.py"])
def test_use_cpu_keeps_a_stage_on_the_cpu_where_a_gpu_is_seen(script, gpt2_stand_in, gpt2_classifier, imdb_sample,
                                                               tmp_path):
    config = "preference_pairs" if script == "preference_pairs.py" else "eval"
    model = "--model_name_or_path" if script == "preference_pairs.py" else "--sft_model"
    argv = ["--config", os.path.join(REPO, f"configs/gpt2-large/{config}.yaml"), model, gpt2_stand_in,
            "--train_file", imdb_sample["train"], "--test_file", imdb_sample["test"], "--num_prompts", "4",
            "--batch_size", "4", "--max_new_tokens", "8", "--reward_model", gpt2_classifier,
            "--output_dir", str(tmp_path / "out")]
    if script == "eval.py":
        argv += ["--base_model", "", "--best_of_n_samples", "4", "--runs_root", ""]
    proc, report = run_seeing_a_gpu(script, argv + ["--use_cpu", "true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"device": "cpu"' in report.read_text()  # CUDA was never initialised
    # The same command without use_cpu goes for the GPU the process believes in, and fails for want of one.
    proc, _ = run_seeing_a_gpu(script, [*argv[:-2], "--output_dir", str(tmp_path / "gpu")], tmp_path)
    assert proc.returncode != 0 and ("CUDA" in proc.stderr or "cuda" in proc.stderr), proc.stderr[-3000:]


def test_running_out_of_gpu_memory_names_the_setting_never_not_evaluated(capsys, monkeypatch, tiny_base, tiny_sft,
                                                                         tiny_dpo, tmp_path):
    import shutil

    runs = tmp_path / "dpo"
    shutil.copytree(tiny_dpo, runs / "sigmoid_beta0.1")
    argv = eval_argv(tiny_base, tiny_sft, runs, tmp_path / "eval", "--num_prompts", "8", "--batch_size", "8",
                     "--best_of_n_samples", "4", "--max_new_tokens", "8")
    real_load = model_eval.load_causal_lm

    def load_but_the_checkpoints_do_not_fit(path, *args):
        if str(runs) in str(path):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")
        return real_load(path, *args)

    monkeypatch.setattr(model_eval, "load_causal_lm", load_but_the_checkpoints_do_not_fit)
    assert run_stage(eval_stage.main, eval_stage.STAGES, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory while loading ") and "Traceback" not in err
    assert "CUDA out of memory. Tried to allocate 3.00 GiB" in err and "sampling_dtype" in err and "kl_dtype" in err
    assert not (tmp_path / "eval" / "summary.csv").exists()  # no frontier with a point silently missing

    monkeypatch.setattr(model_eval, "load_causal_lm", real_load)
    monkeypatch.setattr(model_eval, "sample_batch", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("")))
    assert run_stage(eval_stage.main, eval_stage.STAGES, argv) == 2
    err = capsys.readouterr().err
    assert re.match(r"error: out of memory while sampling \d+ prompts x 4 samples", err) and "Lower batch_size" in err


def test_the_kl_pass_of_the_reference_itself_runs_no_forward_pass():
    class NoForward(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise AssertionError("a forward pass whose result is thrown away")

    exact, ratio = sequence_kls(NoForward(), None, [[1, 2]] * 3, [[3, 4, 5]] * 3, pad_id=0)
    assert exact == ratio == [0.0, 0.0, 0.0]


def test_an_unset_model_is_a_message(capsys, tmp_path):
    import sft

    config = tmp_path / "sft.yaml"
    config.write_text("bf16: false\nuse_cpu: true\nreport_to: none\n")
    code = run_stage(sft.main, sft.STAGES, ["--config", str(config), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "model_name_or_path is not set" in err and "--model_name_or_path" in err


@pytest.mark.parametrize("visible, launched, expected", [
    ("3,5", False, "3"),  # plain python on a node showing two GPUs: the first
    (None, False, "0"),  # nothing set: the node's first
    ("GPU-a1b2,GPU-c3d4", False, "GPU-a1b2"),
    ("3,5", True, "3,5"),  # under a launcher each process takes its rank's GPU from what is visible
])
def test_a_stage_without_a_launcher_sees_one_gpu(visible, launched, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK", "WORLD_SIZE")}
    env.update({"CUDA_VISIBLE_DEVICES": visible} if visible is not None else {})
    env.update({"LOCAL_RANK": "0", "WORLD_SIZE": "2"} if launched else {})
    proc = subprocess.run([sys.executable, "-c", "import imdb_dpo.lifecycle.one_gpu, os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == expected, proc.stderr


def test_every_stage_script_pins_its_gpu_before_anything_else_is_imported():
    """CUDA reads CUDA_VISIBLE_DEVICES once, and imports may touch CUDA: the pin must come first."""
    import ast

    for script in ("sft.py", "preference_pairs.py", "dpo.py", "rloo.py", "preferred_ft.py", "unlikelihood.py",
                   "reward_model.py", "train.py", "eval.py"):
        with open(os.path.join(REPO, script)) as f:
            imports = [node for node in ast.parse(f.read()).body if isinstance(node, (ast.Import, ast.ImportFrom))]
        assert isinstance(imports[0], ast.Import) and imports[0].names[0].name == "imdb_dpo.lifecycle.one_gpu", script


@pytest.mark.parametrize("trainer", ["sft", "orpo"])
def test_every_trained_model_loads_without_a_device_map_where_a_gpu_is_seen(trainer, tiny_sft, tmp_path, monkeypatch):
    """TRL picks device_map="auto" on a CUDA machine (ORPO and CPO even under a launcher): every process would spread
    its model over all the node's GPUs. The project loads each on no device map, for the Trainer to place."""
    from transformers import PreTrainedModel
    from trl import ModelConfig

    from imdb_dpo.models.modeling import set_model_init_kwargs

    asked = []
    real = PreTrainedModel.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        asked.append(kwargs.get("device_map", "(unset)"))
        kwargs.pop("device_map", None)  # there is no GPU to place it on
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(from_pretrained))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if trainer == "sft":
        import trl.trainer.utils as trl_utils

        class CudaState:  # what TRL asks of the process state to choose its device map
            device = torch.device("cuda")

        monkeypatch.setattr(trl_utils, "PartialState", CudaState)
        from trl import SFTConfig
        args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
        set_model_init_kwargs(args, ModelConfig(model_name_or_path=tiny_sft, dtype="float32"))
        trl_utils.create_model_from_path(tiny_sft, **args.model_init_kwargs)
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        from datasets import Dataset

        from imdb_dpo.models.modeling import load_tokenizer

        args = ORPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], bf16=False)
        set_model_init_kwargs(args, ModelConfig(model_name_or_path=tiny_sft, dtype="float32"))
        ORPOTrainer(model=tiny_sft, args=args, processing_class=load_tokenizer(tiny_sft, padding_side="right"),
                    train_dataset=Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}]))
    assert asked and all(device_map is None for device_map in asked), asked


def saved_dtypes(run_dir) -> set[str]:
    from safetensors import safe_open

    with safe_open(os.path.join(run_dir, "model.safetensors"), "pt") as f:
        return {str(f.get_slice(name).get_dtype()) for name in f.keys()}


def test_a_model_trained_under_bf16_autocast_is_saved_in_the_dtype_its_manifest_states(tiny_sft, tiny_pairs, tmp_path):
    """The presets train in bf16 autocast over fp32 weights: what is saved must be those fp32 weights, as the manifest
    says, or the evaluation would measure bf16's rounding as KL."""
    from conftest import dpo_argv, run_in_process
    from imdb_dpo.lifecycle.manifests import read_manifest

    # 64 pairs: the reference pass, cached before the first step, covers the whole set (bf16 on a CPU is slow)
    run_in_process("dpo.py", dpo_argv(tiny_sft, tiny_pairs, tmp_path, "--betas", "0.1", "--max_steps", "2",
                                      "--max_train_pairs", "64", "--bf16", "true"))
    run = tmp_path / "sigmoid_beta0.1"
    manifest = read_manifest(run)
    assert manifest["config"]["training"]["bf16"] and manifest["config"]["model"]["dtype"] == "float32"
    assert saved_dtypes(run) == {"F32"}


def test_deepspeed_with_bf16_is_refused_before_anything_loads(monkeypatch):
    """DeepSpeed holds the model's weights in bf16 under bf16 and the Trainer saves those: refused, naming DDP."""
    from imdb_dpo.methods import dpo
    from conftest import CPU_FLAGS
    from imdb_dpo.configuration.checks import check_training
    from imdb_dpo.configuration.arguments import ConfigError, parse_config

    _, training_args, _ = parse_config(dpo.STAGES, ["--config", os.path.join(REPO, "configs/tiny/dpo.yaml"),
                                                    *CPU_FLAGS])
    check_training(training_args)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    check_training(training_args)  # fp32 under DeepSpeed saves fp32
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match="DeepSpeed with bf16.*configs/accelerate/ddp.yaml"):
        check_training(training_args)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    check_training(training_args)  # DDP under bf16 autocast keeps fp32 weights
