"""wandb for runs that last hours and sweeps that train several betas in one process.

Without a key, wandb fails (or waits at a login prompt) only when the first trainer starts, after the reference
pass; `check_wandb_credentials` fails at launch instead. transformers' WandbCallback opens a wandb run only when
none is open and never finishes one, so every beta of a sweep after the first would log into the first beta's run
and overwrite its config; `own_wandb_run` gives each run directory a wandb run of its own.
"""

import contextlib
import os

from imdb_dpo.configuration.arguments import ConfigError


def check_wandb_credentials(report_to) -> None:
    """Raise ConfigError when report_to (TrainingArguments' list) has wandb but wandb has no key to log in with."""
    if "wandb" not in report_to:
        return
    # wandb's own look-up, as wandb.init does it (WANDB_API_KEY, identity token file, netrc, settings files),
    # without its prompt or a request to the server.
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    settings = wandb_setup.singleton().settings
    if settings.mode in ("offline", "dryrun", "disabled"):
        return
    host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
    if not wbauth.authenticate_session(host=host, source="check_wandb_credentials", prompt=False,
                                       update_session=False):
        raise ConfigError(
            f"report_to includes wandb, but there is no wandb API key for {host.url} (no WANDB_API_KEY, no netrc "
            "entry, no wandb settings file with a key), so logging would fail once training starts; run "
            "`wandb login`, or `export WANDB_API_KEY=...`, or set WANDB_MODE=offline and upload later with "
            "`wandb sync`, or pass --report_to none"
        )


def wandb_project() -> str:
    """The wandb project of every run of the pipeline: WANDB_PROJECT, else the WandbCallback's default."""
    return os.getenv("WANDB_PROJECT", "huggingface")


@contextlib.contextmanager
def own_wandb_run(args, run_id: str):
    """Around one trainer's life: open the wandb run of the run directory `args.output_dir`, then finish it.

    The run is named as its directory, grouped by the sweep directory above it, and keyed on `run_id` (the
    manifest's, which a resumed run keeps), so a requeued run continues its wandb run.
    """
    if "wandb" not in args.report_to or args.process_index != 0:  # WandbCallback logs from process 0 only
        yield
        return
    import wandb

    # Passed to init rather than through WANDB_RUN_GROUP and the like: wandb reads those once per process.
    run = wandb.init(project=wandb_project(),
                     name=args.run_name, group=os.path.basename(os.path.dirname(os.path.abspath(args.output_dir))),
                     id=run_id, resume="allow")
    try:
        yield
    except BaseException:
        run.finish(exit_code=1)  # shown as failed rather than finished
        raise
    run.finish()
