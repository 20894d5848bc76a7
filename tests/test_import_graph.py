"""The decision core stays pure: importing it loads neither Flask, requests nor fhir.resources."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("flask", "requests", "fhir", "werkzeug", "urllib3")


def loaded_top_level_packages(module: str) -> set[str]:
    code = (
        "import importlib, json, sys; "
        f"importlib.import_module({module!r}); "
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out))


def test_coding_core_imports_no_web_http_or_fhir_library():
    loaded = loaded_top_level_packages("cds_service.coding")
    assert "cds_service" in loaded  # the import really happened
    assert loaded.isdisjoint(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def test_facts_and_rules_import_no_fhir_library():
    loaded = loaded_top_level_packages("fhir_mappings.rules") | loaded_top_level_packages("fhir_mappings.facts")
    assert loaded.isdisjoint(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def test_the_checker_itself_can_fail():
    # The same probe sees Flask when a module does import it, so the assertions above can fail.
    assert "flask" in loaded_top_level_packages("cds_service.routes")


def loaded_after_build(config: dict[str, str]) -> set[str]:
    """Every module loaded once ``create_app(config)`` returned (in a fresh interpreter)."""
    code = (
        "import json, sys; from cds_service import create_app; "
        f"create_app({config!r}).extensions['brachy_cds'].close(); "
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(json.loads(done.stdout))


def test_cold_start_loads_neither_pyjwt_with_auth_off_nor_the_r5_models():
    # Cold start (benchmark W4): PyJWT with cryptography costs ~0.1 s and the R5 models ~0.3 s;
    # only BRACHY_CDS_AUTH=required needs the first, only R5-shaped input the second.
    config = {"BRACHY_CDS_AUTH": "off", "BRACHY_CDS_DATABASE_URL": "sqlite://"}
    loaded = loaded_after_build(config)
    assert "fhir.resources.R4B.procedure" in loaded  # the R4B models were built (warm_up)
    assert {"jwt", "cryptography"}.isdisjoint(loaded)
    r5 = sorted(m for m in loaded if m.startswith("fhir.resources.") and not m.startswith("fhir.resources.R4B"))
    assert not r5, r5
    assert "jwt" in loaded_after_build({**config, "BRACHY_CDS_AUTH": "required"})
