"""wandb: one wandb run per beta of a DPO sweep, and a missing API key refused before any work."""

import glob

import pytest
import wandb

from imdb_dpo.methods import dpo
import sft
from conftest import dpo_argv
from imdb_dpo.configuration.arguments import ConfigError, parse_config
from imdb_dpo.lifecycle.manifests import read_manifest
from imdb_dpo.lifecycle.tracking import check_wandb_credentials
from offline_wandb import read_offline_run
from test_sft import sft_argv

API_KEY = "k" * 40
FIX = r"report_to.*wandb login.*WANDB_API_KEY.*WANDB_MODE=offline.*wandb sync.*--report_to none"


@pytest.fixture(autouse=True)
def fresh_wandb():
    """wandb reads its environment once per process; each test starts a new wandb session under its own."""
    wandb.teardown()
    yield
    wandb.teardown()


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """Online mode with no key anywhere wandb looks; returns the empty home directory."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    return home


def reporting_to_wandb(argv):
    argv[argv.index("--report_to") + 1] = "wandb"
    return argv


def test_each_beta_of_a_sweep_gets_its_own_wandb_run(tiny_sft, tiny_pairs, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = tmp_path / "sweep"
    argv = reporting_to_wandb(dpo_argv(tiny_sft, tiny_pairs, out, "--betas", "0.1", "0.5", "--max_train_pairs", "64",
                                       "--max_steps", "2"))
    assert dpo.main(*parse_config(dpo.STAGES, argv)) == 0

    runs = [read_offline_run(d) for d in glob.glob(str(tmp_path / "wandb" / "offline-run-*"))]
    by_beta = {config["beta"]: run for run, config in runs}
    assert len(runs) == 2 and sorted(by_beta) == [0.1, 0.5]
    for beta, run in by_beta.items():
        assert run.display_name == f"sigmoid_beta{beta}"
        assert run.run_group == "sweep"
        assert run.run_id == read_manifest(out / run.display_name)["run_id"]
    assert by_beta[0.1].run_id != by_beta[0.5].run_id


def test_dpo_without_a_wandb_key_fails_before_any_work(no_credentials, tiny_sft, tiny_pairs, tmp_path):
    out = tmp_path / "dpo"
    with pytest.raises(ConfigError, match=FIX):
        dpo.main(*parse_config(dpo.STAGES, reporting_to_wandb(dpo_argv(tiny_sft, tiny_pairs, out))))
    assert not out.exists()


def test_sft_without_a_wandb_key_fails_before_any_work(no_credentials, tiny_base, tmp_path):
    out = tmp_path / "sft"
    with pytest.raises(ConfigError, match=FIX):
        sft.main(*parse_config(sft.STAGES, reporting_to_wandb(sft_argv(tiny_base, out))))
    assert not out.exists()


@pytest.mark.parametrize("setting", ["WANDB_API_KEY", "netrc", "offline", "disabled", "report_to none"])
def test_credentials_check_passes_with_a_key_or_without_a_server(no_credentials, monkeypatch, setting):
    report_to = ["wandb"]
    if setting == "WANDB_API_KEY":
        monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    elif setting == "netrc":
        (no_credentials / ".netrc").write_text(f"machine api.wandb.ai login user password {API_KEY}\n")
    elif setting == "report_to none":
        report_to = []
    else:
        monkeypatch.setenv("WANDB_MODE", setting)
    check_wandb_credentials(report_to)


def test_credentials_check_wants_a_key_for_the_configured_server(no_credentials, monkeypatch):
    (no_credentials / ".netrc").write_text(f"machine api.wandb.ai login user password {API_KEY}\n")
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    with pytest.raises(ConfigError, match=r"wandb\.example\.com"):
        check_wandb_credentials(["wandb"])
