"""The service registry: discovery entries and prefetch templates (CDS Hooks 2.0 "Discovery", P1-P4).

Templates may use only 2.0 tokens: root-level ``context.*`` fields the hook marks as prefetch
tokens, or the four user tokens; no FHIRPath (3.0 ballot only). ``patient-view`` templates use
patient-scoped tokens only (contract 5.5), because the sandbox never sends ``encounterId``.
"""

from __future__ import annotations

import re

import pytest

from cds_service.discovery import SERVICES, PrefetchTemplate, ServiceDefinition, find_service, token_value

# CDS Hooks library: context fields marked "Prefetch Token: Yes" per hook.
PREFETCH_TOKEN_FIELDS = {
    "encounter-discharge": {"userId", "patientId", "encounterId"},
    "patient-view": {"userId", "patientId", "encounterId"},
}
USER_TOKENS = {"userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}
PATIENT_SCOPED = {"context.patientId"} | USER_TOKENS
ANY_BRACES = re.compile(r"\{\{(.*?)\}\}")


def all_templates():
    return [(service, template) for service in SERVICES for template in service.prefetch]


def test_the_two_services_of_the_contract():
    assert [(s.id, s.hook) for s in SERVICES] == [
        ("brachytherapy-planning-charge", "encounter-discharge"),
        ("brachytherapy-planning-review", "patient-view"),
    ]


def test_service_ids_are_unique_and_url_safe():
    ids = [service.id for service in SERVICES]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9-]+", service_id) for service_id in ids)


def test_prefetch_keys_are_unique_per_service():
    for service in SERVICES:
        keys = [template.key for template in service.prefetch]
        assert len(keys) == len(set(keys)), service.id


@pytest.mark.parametrize(("service", "template"), all_templates(), ids=lambda v: getattr(v, "key", None))
def test_templates_use_only_cds_hooks_2_tokens(service, template):
    raw_tokens = [token.strip() for token in ANY_BRACES.findall(template.query)]
    assert raw_tokens, f"{template.key} has no token"
    for token in raw_tokens:
        if token in USER_TOKENS:
            continue
        # context.<root-level field> only: no nested paths, no FHIRPath functions or arithmetic.
        match = re.fullmatch(r"context\.([A-Za-z]+)", token)
        assert match, f"{template.key}: '{token}' is not a CDS Hooks 2.0 token"
        assert match.group(1) in PREFETCH_TOKEN_FIELDS[service.hook], f"{template.key}: {token}"
    # Every brace pair is a token the renderer understands; no stray braces are left.
    assert list(template.tokens()) == raw_tokens
    assert "{" not in ANY_BRACES.sub("", template.query) and "}" not in ANY_BRACES.sub("", template.query)


@pytest.mark.parametrize(("service", "template"), all_templates(), ids=lambda v: getattr(v, "key", None))
def test_templates_are_relative_fhir_reads_or_searches(service, template):
    assert not template.query.startswith(("/", "http:", "https:"))
    assert re.fullmatch(r"[A-Z][A-Za-z]+", template.query.split("?")[0].split("/")[0])
    assert template.query.split("?")[0].split("/")[0] == template.resource_type


def test_patient_view_templates_are_patient_scoped():
    review = find_service("brachytherapy-planning-review")
    for template in review.prefetch:
        assert set(template.tokens()) <= PATIENT_SCOPED, template.query
        # A sandbox context (patientId and userId only) fills every template.
        assert template.render({"patientId": "pat-1", "userId": "Practitioner/dr-1"}) is not None


def test_encounter_discharge_templates():
    discharge = find_service("brachytherapy-planning-charge")
    context = {"patientId": "pat-1", "encounterId": "enc-1", "userId": "Practitioner/dr-1"}
    assert {t.key: t.render(context) for t in discharge.prefetch} == {
        "encounter": "Encounter/enc-1",
        "procedures": "Procedure?encounter=enc-1",
        "charges": "ChargeItem?patient=pat-1",
        "coverage": "Coverage?patient=pat-1&status=active",
        "imaging": "ImagingStudy?encounter=enc-1",
        "documents": "DocumentReference?encounter=enc-1&status=current",
        "consent": "Consent?patient=pat-1&status=active",
    }
    # Payer and documentation evidence is optional: a missing key is fetched when a server is allowed,
    # never a 412 (contract 5.5; README "Rules and their sources").
    assert {t.key for t in discharge.prefetch if not t.required} == {"coverage", "imaging", "documents", "consent"}


# render() and token_value()


def test_render_url_encodes_token_values():
    template = PrefetchTemplate("x", "Procedure?subject={{context.patientId}}&_count=50", True, "Procedure")
    assert template.render({"patientId": "a b/c&d=e?#%"}) == "Procedure?subject=a%20b%2Fc%26d%3De%3F%23%25&_count=50"


def test_render_tolerates_spaces_inside_braces():
    template = PrefetchTemplate("x", "Encounter/{{ context.encounterId }}", True, "Encounter")
    assert template.tokens() == ("context.encounterId",)
    assert template.render({"encounterId": "enc-1"}) == "Encounter/enc-1"


@pytest.mark.parametrize(
    "context",
    [{}, {"patientId": "pat-1"}, {"patientId": "pat-1", "encounterId": ""}, {"patientId": "pat-1", "encounterId": 7},
     {"patientId": "pat-1", "encounterId": None}],
)
def test_render_returns_none_when_a_token_is_missing(context):
    template = PrefetchTemplate("x", "Procedure?patient={{context.patientId}}&encounter={{context.encounterId}}",
                                True, "Procedure")
    assert template.render(context) is None


@pytest.mark.parametrize(
    ("token", "user_id", "value"),
    [
        ("userPractitionerId", "Practitioner/dr-1", "dr-1"),
        ("userPractitionerRoleId", "PractitionerRole/role-9", "role-9"),
        ("userPatientId", "Patient/pat-1", "pat-1"),
        ("userRelatedPersonId", "RelatedPerson/rp-2", "rp-2"),
        ("userPractitionerId", "PractitionerRole/role-9", None),
        ("userPractitionerRoleId", "Practitioner/dr-1", None),
        ("userPractitionerId", "Practitioner/", None),
        ("userPractitionerId", None, None),
        ("userSomethingElse", "Practitioner/dr-1", None),
    ],
)
def test_user_tokens_come_from_user_id(token, user_id, value):
    context = {"patientId": "pat-1"} if user_id is None else {"patientId": "pat-1", "userId": user_id}
    assert token_value(token, context) == value


def test_user_token_template_renders_and_is_none_for_another_user_type():
    template = PrefetchTemplate("me", "Practitioner/{{userPractitionerId}}", False, "Practitioner")
    assert template.render({"userId": "Practitioner/dr 1"}) == "Practitioner/dr%201"
    assert template.render({"userId": "Patient/pat-1"}) is None


# Discovery entries (CDS Hooks D3, G2)


def empty_values(value, path="$"):
    """Paths of null or empty values (CDS Hooks G2)."""
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in empty_values(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [p for index, item in enumerate(value) for p in empty_values(item, f"{path}[{index}]")]
    return []


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.id)
def test_discovery_entry_has_the_required_fields_and_no_empty_values(service):
    entry = service.discovery_entry()
    assert empty_values(entry) == []
    assert set(entry) == {"hook", "id", "title", "description", "prefetch", "usageRequirements"}
    assert (entry["hook"], entry["id"]) == (service.hook, service.id)
    assert entry["prefetch"] == {t.key: t.query for t in service.prefetch}
    assert all(isinstance(v, str) for v in entry.values() if not isinstance(v, dict))


def test_find_service():
    assert find_service("brachytherapy-planning-review").hook == "patient-view"
    assert find_service("nope") is None
    assert find_service("") is None


def test_a_service_without_templates_or_usage_requirements_omits_them():
    # CDS Hooks G2: optional attributes without a value are left out, never sent as {} or null.
    bare = ServiceDefinition("bare", "patient-view", "Bare", "A service with nothing optional.", ())
    assert bare.discovery_entry() == {
        "hook": "patient-view",
        "id": "bare",
        "title": "Bare",
        "description": "A service with nothing optional.",
    }
