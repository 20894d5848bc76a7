"""The ``brachy-cds`` console script (contract section 1): serve, and the tools around the service."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from cds_service.config import ConfigError, check_bind, load_settings
from fhir_mappings.rules import RuleFileError

log = logging.getLogger("brachy_cds.cli")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """brachy-cds: CDS Hooks service for brachytherapy isodose planning charges."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to bind.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Run the production WSGI server (gunicorn) with N worker processes; without it, the development server.",
)
def serve(host: str, port: int, workers: int | None) -> None:
    """Start the CDS Hooks service."""
    from cds_service import create_app, logs

    try:
        settings = load_settings(os.environ)
        check_bind(settings, host)
        logs.configure(settings.log_level)
        if settings.auth != "required":
            log.warning(
                "authentication is off: no JWT checks",
                extra={"fields": {"auth": settings.auth, "host": host}},
            )
        if workers is None:
            app = create_app(settings)
    except (ConfigError, RuleFileError) as exc:
        raise click.ClickException(str(exc)) from None
    if workers is None:
        log.info("serving (development server)", extra={"fields": {"host": host, "port": port}})
        app.run(host=host, port=port, threaded=True, debug=False, use_reloader=False)
        return
    _gunicorn(settings, host, port, workers)


@main.command()
@click.option("--check", is_flag=True, help="Only validate the rule files; exit non-zero on a problem.")
def rules(check: bool) -> None:
    """List the loaded rules with id, version, grade and source."""
    from fhir_mappings.rules import load_rules

    try:
        settings = load_settings(os.environ)
        ruleset = load_rules(settings.canonical_base)
    except (ConfigError, RuleFileError) as exc:
        raise click.ClickException(str(exc)) from None
    if check:
        click.echo(f"ok: {len(ruleset.rules)} rules, rule set {ruleset.version}")
        return
    click.echo(f"rule set {ruleset.version}")
    for rule in ruleset.rules:
        click.echo(f"{rule.id}\t{rule.version}\t{rule.grade}\t{rule.effective}\t{rule.file}\t{rule.title}")
        for source in rule.sources:
            click.echo(f"    {source}")


def _gunicorn(settings: Any, host: str, port: int, workers: int) -> None:
    """Run gunicorn in-process: app built once per worker (post-fork), graceful shutdown on SIGTERM."""
    from gunicorn.app.base import BaseApplication

    from cds_service import create_app

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", 4)
            self.cfg.set("graceful_timeout", 20)
            self.cfg.set("timeout", 30)
            self.cfg.set("accesslog", None)
            self.cfg.set("limit_request_line", 8190)

        def load(self) -> Any:
            return create_app(settings)

    log.info("serving (gunicorn)", extra={"fields": {"host": host, "port": port, "workers": workers}})
    Server().run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
