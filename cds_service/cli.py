"""The ``brachy-cds`` console script (contract section 1): serve, and the tools around the service."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
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
@click.option(
    "--markdown",
    is_flag=True,
    help='Print the rule and documentation-evidence tables of the README section "Rules and their sources".',
)
def rules(check: bool, markdown: bool) -> None:
    """List the loaded rules with id, version, grade and source.

    The rule files are the shipped ones (or ``BRACHY_CDS_RULES_DIR``), with the deployment's
    ``BRACHY_CDS_PAYERS`` and ``BRACHY_CDS_RESIDENT_CODES`` tables merged, validated exactly as at start-up.
    """
    from fhir_mappings.rules import load_rules

    try:
        settings = load_settings(os.environ)
        ruleset = load_rules(
            settings.canonical_base,
            settings.rules_dir,
            payer_table=settings.payer_table,
            resident_codes=settings.resident_codes,
        )
    except (ConfigError, RuleFileError) as exc:
        raise click.ClickException(str(exc)) from None
    if check:
        local = sum(1 for entry in ruleset.payer_table if entry.origin.startswith("BRACHY_CDS_PAYERS"))
        extra = f"; BRACHY_CDS_PAYERS: {local} entries" if settings.payer_table else ""
        click.echo(f"ok: {len(ruleset.rules)} rules, rule set {ruleset.version}{extra}")
        return
    if markdown:
        from cds_service.rule_docs import evidence_table, rules_table

        click.echo(rules_table(ruleset))
        click.echo()
        click.echo(evidence_table(ruleset))
        return
    click.echo(f"rule set {ruleset.version}")
    for rule in ruleset.rules:
        click.echo(f"{rule.id}\t{rule.version}\t{rule.grade}\t{rule.effective}\t{rule.file}\t{rule.title}")
        for source in rule.sources:
            click.echo(f"    {source}")


@main.command("load-samples")
@click.option("--fhir-server", "fhir_server", required=True, metavar="URL", help="FHIR R4 base URL to load into.")
@click.option("--token", metavar="T", default=None, help="Bearer token for the FHIR server.")
def load_samples(fhir_server: str, token: str | None) -> None:
    """Load the shipped sample patients into a FHIR server; running it again changes nothing."""
    from cds_service.kit.http import KitError
    from cds_service.kit.samples import load_samples as load

    try:
        report = load(fhir_server, token, echo=click.echo)
    except KitError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.summary())


@main.command()
@click.option("--url", required=True, metavar="BASE", help="brachy-cds base URL, without /cds-services.")
@click.option("--hook", required=True, metavar="HOOK", help="Hook to fire (encounter-discharge, patient-view).")
@click.option("--patient", required=True, metavar="ID", help="context.patientId (a FHIR logical id).")
@click.option("--encounter", metavar="ID", default=None, help="context.encounterId.")
@click.option("--fhir-server", "fhir_server", required=True, metavar="URL", help="FHIR base URL: prefetch, fhirServer.")
@click.option("--token", metavar="T", default=None, help="Bearer token for the FHIR server, sent as fhirAuthorization.")
@click.option("--no-prefetch", "no_prefetch", is_flag=True, help="Send no prefetch: the service fetches everything.")
@click.option(
    "--jwt-key",
    "jwt_key",
    metavar="PEM",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Sign a CDS Hooks JWT with this private key (EC: ES256/384/512, RSA: RS384).",
)
@click.option("--iss", metavar="ISS", default=None, help="The JWT issuer (with --jwt-key).")
@click.option("--json", "as_json", is_flag=True, help="Print exactly the service's JSON response on stdout.")
def invoke(
    url: str,
    hook: str,
    patient: str,
    encounter: str | None,
    fhir_server: str,
    token: str | None,
    no_prefetch: bool,
    jwt_key: Path | None,
    iss: str | None,
    as_json: bool,
) -> None:
    """Act as an EHR: discovery, prefetch, the hook call, then the cards (exit 0 when the service answered 200)."""
    from cds_service.kit import show
    from cds_service.kit.http import KitError
    from cds_service.kit.invoke import Invocation
    from cds_service.kit.invoke import invoke as call_service
    from cds_service.kit.signing import JwtSigner

    if (jwt_key is None) != (iss is None):
        raise click.UsageError("--jwt-key and --iss go together")

    def log(line: str) -> None:
        click.echo(line, err=True)

    try:
        signer = JwtSigner.from_pem(jwt_key, iss) if jwt_key is not None and iss is not None else None
        if signer is not None:
            log(f"signing CDS Hooks JWTs: {signer.alg}, kid {signer.kid}, iss {iss}")
        answer = call_service(
            Invocation(url, hook, patient, fhir_server, encounter, token, not no_prefetch, signer), log=log
        )
    except KitError as exc:
        raise click.ClickException(str(exc)) from None
    if not answer.ok:
        if answer.text:
            click.echo(answer.text, err=True)
        sys.exit(1)
    if as_json:
        click.echo(answer.text, nl=not answer.text.endswith("\n"))
    elif answer.body is not None and isinstance(answer.body, dict) and "cards" in answer.body:
        click.echo(show.render(answer.body), nl=False)
    else:
        click.echo(answer.text)


@main.command()
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Only feedback given on or after this day (UTC), YYYY-MM-DD.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def feedback(since: Any, as_json: bool) -> None:
    """Report how often suggestions were accepted and why they were overridden (billing managers)."""
    import datetime as dt
    import json

    from cds_service.store import Store

    try:
        settings = load_settings(os.environ)
        with Store(settings.database_url) as store:
            summary = store.feedback_summary(since.replace(tzinfo=dt.UTC) if since else None)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    services = summary.get("services", {})
    if not services:
        click.echo("no feedback stored" + (f" since {since:%Y-%m-%d}" if since else ""))
        return
    for service_id, row in sorted(services.items()):
        click.echo(
            f"{service_id}: {row['count']} cards, {row['accepted']} accepted, {row['overridden']} overridden "
            f"(acceptance {row['acceptance_rate']:.0%})"
        )
        for reason in row["override_reasons"]:
            click.echo(f"    {reason['count']:>5}  {reason['code']}  {reason.get('display') or ''}")
        if row["overridden_without_reason"]:
            click.echo(f"    {row['overridden_without_reason']:>5}  (no reason given)")


def _gunicorn(settings: Any, host: str, port: int, workers: int) -> None:
    """Run gunicorn in-process: app built once per worker (post-fork), graceful shutdown on SIGTERM.

    On SIGTERM the workers stop accepting connections and finish the requests in flight (at most
    ``graceful_timeout`` seconds, far above the FHIR budget of a hook call), then gunicorn exits 0.
    """
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
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn 25+ opens a management socket (worker count, reload, stop) in $HOME by
                # default, shared by every instance of the host: not wanted for this service.
                self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            return create_app(settings)

    log.info("serving (gunicorn)", extra={"fields": {"host": host, "port": port, "workers": workers}})
    Server().run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
