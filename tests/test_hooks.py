"""parse_hook_request against CDS Hooks 2.0 "HTTP Request" and the two services of the contract.

Required fields (``hook``, ``hookInstance``, ``context``), invariant cds-r-1 (``fhirServer`` with
``fhirAuthorization``), prefetch values, and the per-hook context (``encounterId`` required for
``encounter-discharge``, optional for ``patient-view``). A 400 names the field, never its value.
"""

from __future__ import annotations

import copy

import pytest

from cds_service.discovery import find_service
from cds_service.errors import BadRequest
from cds_service.hooks import HookRequest, parse_hook_request

DISCHARGE = find_service("brachytherapy-planning-charge")
REVIEW = find_service("brachytherapy-planning-review")
TOKEN = "eyJhbGciOiJSUzM4NCJ9.c2VjcmV0LWFjY2Vzcy10b2tlbg.c2lnbmF0dXJl"
PATIENT = "pat-secret-4711"
ENCOUNTER = "enc-secret-0815"
ENCOUNTER_RESOURCE = {"resourceType": "Encounter", "id": ENCOUNTER, "status": "finished"}


def discharge_body() -> dict:
    return {
        "hook": "encounter-discharge",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": "https://ehr.example.org/fhir/R4",
        "fhirAuthorization": {
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/Encounter.read patient/Procedure.read",
            "subject": "brachy-cds",
            "patient": PATIENT,
        },
        "context": {"userId": "Practitioner/dr-1", "patientId": PATIENT, "encounterId": ENCOUNTER},
        "prefetch": {"encounter": ENCOUNTER_RESOURCE, "procedures": None},
    }


def review_body() -> dict:
    return {
        "hook": "patient-view",
        "hookInstance": "1b0c6e0a-5f55-4a4b-9f0e-7d2c3b1a0f9e",
        "context": {"userId": "Practitioner/dr-1", "patientId": PATIENT},
    }


def bad_request(body: object, service=DISCHARGE) -> str:
    with pytest.raises(BadRequest) as caught:
        parse_hook_request(body, service)
    assert caught.value.status == 400
    return caught.value.message


def test_full_encounter_discharge_request():
    request = parse_hook_request(discharge_body(), DISCHARGE)
    assert request == HookRequest(
        hook="encounter-discharge",
        hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        patient_id=PATIENT,
        context={"userId": "Practitioner/dr-1", "patientId": PATIENT, "encounterId": ENCOUNTER},
        encounter_id=ENCOUNTER,
        user_id="Practitioner/dr-1",
        fhir_server="https://ehr.example.org/fhir/R4",
        access_token=TOKEN,
        prefetch={"encounter": ENCOUNTER_RESOURCE, "procedures": None},
    )


def test_access_token_and_prefetch_stay_out_of_repr():
    text = repr(parse_hook_request(discharge_body(), DISCHARGE))
    assert TOKEN not in text
    assert "finished" not in text  # the prefetched Encounter's status


def test_minimal_patient_view_request_without_encounter():
    request = parse_hook_request(review_body(), REVIEW)
    assert (request.patient_id, request.encounter_id, request.fhir_server, request.access_token) == (
        PATIENT, None, None, None)
    assert request.prefetch is None


def test_patient_view_with_encounter_id():
    body = review_body()
    body["context"]["encounterId"] = ENCOUNTER
    assert parse_hook_request(body, REVIEW).encounter_id == ENCOUNTER


def test_encounter_id_is_required_for_encounter_discharge():
    body = discharge_body()
    del body["context"]["encounterId"]
    assert bad_request(body) == "'context.encounterId' is required"


def test_references_in_context_become_logical_ids_for_the_templates():
    # Some EHRs send "Patient/123"; the prefetch templates must be filled with the logical id.
    body = discharge_body()
    body["context"].update(patientId=f"Patient/{PATIENT}", encounterId=f"Encounter/{ENCOUNTER}")
    request = parse_hook_request(body, DISCHARGE)
    assert (request.patient_id, request.encounter_id) == (PATIENT, ENCOUNTER)
    rendered = {template.key: template.render(request.context) for template in DISCHARGE.prefetch}
    assert rendered == {
        "encounter": f"Encounter/{ENCOUNTER}",
        "procedures": f"Procedure?encounter={ENCOUNTER}",
        "charges": f"ChargeItem?patient={PATIENT}",
        "coverage": f"Coverage?patient={PATIENT}&status=active",
        "imaging": f"ImagingStudy?encounter={ENCOUNTER}",
        "documents": f"DocumentReference?encounter={ENCOUNTER}&status=current",
        "consent": f"Consent?patient={PATIENT}&status=active",
    }


def test_token_type_is_case_insensitive_and_may_be_left_out():
    body = discharge_body()
    body["fhirAuthorization"]["token_type"] = "bearer"
    assert parse_hook_request(body, DISCHARGE).access_token == TOKEN
    del body["fhirAuthorization"]["token_type"]
    assert parse_hook_request(body, DISCHARGE).access_token == TOKEN


def test_fhir_server_without_authorization_is_fine():
    body = discharge_body()
    del body["fhirAuthorization"]
    request = parse_hook_request(body, DISCHARGE)
    assert (request.fhir_server, request.access_token) == ("https://ehr.example.org/fhir/R4", None)


def test_prefetch_may_hold_bundles_operation_outcomes_and_null():
    body = discharge_body()
    body["prefetch"] = {
        "procedures": {"resourceType": "Bundle", "type": "searchset", "entry": []},
        "charges": {"resourceType": "OperationOutcome", "issue": []},
        "coverage": None,
    }
    assert parse_hook_request(body, DISCHARGE).prefetch == body["prefetch"]


# 400s: each names the field


@pytest.mark.parametrize("body", [None, [], "encounter-discharge", 42])
def test_body_must_be_an_object(body):
    assert bad_request(body) == "The request body must be a JSON object"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("hook",), None, "'hook' is required and must be a string"),
        (("hook",), "", "'hook' is required and must be a string"),
        (("hook",), 7, "'hook' is required and must be a string"),
        (("hookInstance",), None, "'hookInstance' is required"),
        (("hookInstance",), "  ", "'hookInstance' is required"),
        (("hookInstance",), 12345, "'hookInstance' is required"),
        (("hookInstance",), "x" * 201, "'hookInstance' is required and must be a non-empty string of at most 200"),
        (("context",), None, "'context' is required and must be a JSON object"),
        (("context",), [PATIENT], "'context' is required and must be a JSON object"),
        (("context", "patientId"), None, "'context.patientId' is required"),
        (("context", "patientId"), 4711, "'context.patientId' must be a FHIR logical id"),
        (("context", "patientId"), "pat 4711", "'context.patientId' must be a FHIR logical id"),
        (("context", "patientId"), "Patient/", "'context.patientId' must be a FHIR logical id"),
        (("context", "encounterId"), "e" * 65, "'context.encounterId' must be a FHIR logical id"),
        (("context", "userId"), 17, "'context.userId' must be a string"),
        (("fhirServer",), "ehr.example.org/fhir", "'fhirServer' must be an absolute http(s) URL"),
        (("fhirServer",), "ftp://ehr.example.org/fhir", "'fhirServer' must be an absolute http(s) URL"),
        (("fhirServer",), "http://[::1", "'fhirServer' must be an absolute http(s) URL"),
        (("fhirServer",), "https://ehr.example.org:port/fhir", "'fhirServer' must be an absolute http(s) URL"),
        (("fhirServer",), "https://", "'fhirServer' must be an absolute http(s) URL"),
        (("fhirServer",), ["https://ehr.example.org/fhir"], "'fhirServer' must be an absolute http(s) URL"),
        (("fhirAuthorization",), TOKEN, "'fhirAuthorization' must be a JSON object"),
        (("fhirAuthorization", "access_token"), None, "'fhirAuthorization.access_token' is required"),
        (("fhirAuthorization", "access_token"), "", "'fhirAuthorization.access_token' is required"),
        (("fhirAuthorization", "token_type"), "MAC", "'fhirAuthorization.token_type' must be 'Bearer'"),
        (("fhirAuthorization", "token_type"), "DPoP", "'fhirAuthorization.token_type' must be 'Bearer'"),
        (("fhirAuthorization", "token_type"), 1, "'fhirAuthorization.token_type' must be 'Bearer'"),
        (("prefetch",), [ENCOUNTER_RESOURCE], "'prefetch' must be a JSON object of FHIR resources"),
        (("prefetch", "encounter"), [ENCOUNTER_RESOURCE], "prefetch 'encounter' must be a FHIR resource"),
        (("prefetch", "encounter"), {"id": ENCOUNTER}, "prefetch 'encounter' must be a FHIR resource"),
        (("prefetch", "encounter"), f"Encounter/{ENCOUNTER}", "prefetch 'encounter' must be a FHIR resource"),
        (("prefetch", "procedures"), 0, "prefetch 'procedures' must be a FHIR resource"),
    ],
)
def test_malformed_field_gives_400_naming_it(path, value, message):
    body = discharge_body()
    target = body
    for name in path[:-1]:
        target = target[name]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    assert bad_request(body).startswith(message)


def test_fhir_authorization_without_fhir_server():
    body = discharge_body()
    del body["fhirServer"]
    assert bad_request(body) == "'fhirServer' is required when 'fhirAuthorization' is given"


def test_patient_id_is_required_for_patient_view_too():
    body = review_body()
    del body["context"]["patientId"]
    assert bad_request(body, REVIEW) == "'context.patientId' is required"


@pytest.mark.parametrize(
    ("service", "hook", "message"),
    [
        (DISCHARGE, "patient-view",
         "Service 'brachytherapy-planning-charge' answers hook 'encounter-discharge', not 'patient-view'"),
        (REVIEW, "encounter-discharge",
         "Service 'brachytherapy-planning-review' answers hook 'patient-view', not 'encounter-discharge'"),
        (DISCHARGE, "order-sign",
         "Service 'brachytherapy-planning-charge' answers hook 'encounter-discharge', not 'order-sign'"),
    ],
)
def test_wrong_hook_for_the_service(service, hook, message):
    body = discharge_body() if service is DISCHARGE else review_body()
    body["hook"] = hook
    assert bad_request(body, service) == message


def test_a_long_wrong_hook_is_clipped_in_the_message():
    body = discharge_body()
    body["hook"] = "h" * 500 + "\n\x00"
    message = bad_request(body)
    assert message == f"Service 'brachytherapy-planning-charge' answers hook 'encounter-discharge', not '{'h' * 40}...'"


# Values never come back in messages


def secrets_in(message: str) -> list[str]:
    return [value for value in (TOKEN, PATIENT, ENCOUNTER, "ehr.example.org", "dr-1") if value in message]


@pytest.mark.parametrize(
    "spoil",
    [
        lambda b: b["fhirAuthorization"].update(token_type=TOKEN),
        lambda b: b["fhirAuthorization"].update(access_token=TOKEN * 400),
        lambda b: b.pop("fhirServer"),
        lambda b: b.update(fhirServer="ehr.example.org/fhir?token=" + TOKEN),
        lambda b: b["context"].update(patientId=PATIENT + " " + TOKEN),
        lambda b: b["context"].update(encounterId=ENCOUNTER + "/" + "x" * 70),
        lambda b: b["context"].update(userId={"id": PATIENT}),
        lambda b: b["prefetch"].update(encounter=TOKEN),
        lambda b: b.update(hookInstance={"id": PATIENT}),
        lambda b: b.update(context=[PATIENT, ENCOUNTER]),
    ],
)
def test_messages_never_echo_tokens_or_identifiers(spoil):
    body = copy.deepcopy(discharge_body())
    spoil(body)
    message = bad_request(body)
    assert secrets_in(message) == [], message
