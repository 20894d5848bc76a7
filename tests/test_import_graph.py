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
