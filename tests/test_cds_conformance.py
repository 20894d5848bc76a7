"""The response checker used on every hook response fails on the problems peers were seen to have."""

from __future__ import annotations

import copy

import pytest

from tests.cds_conformance import NonConformant, check_response

GOOD = {
    "cards": [
        {
            "uuid": "u1",
            "summary": "Bill 77317-26",
            "indicator": "info",
            "source": {"label": "brachy-cds", "topic": {"system": "https://brachy-cds.org/fhir/CodeSystem/card-topic",
                                                         "code": "charge-suggestion"}},
            "selectionBehavior": "at-most-one",
            "suggestions": [
                {
                    "uuid": "s1",
                    "label": "Add charge 77317-26",
                    "isRecommended": True,
                    "actions": [
                        {
                            "type": "create",
                            "description": "Create a ChargeItem",
                            "resource": {
                                "resourceType": "ChargeItem",
                                "status": "billable",
                                "extension": [{
                                    "url": "https://brachy-cds.org/fhir/StructureDefinition/chargeitem-modifier",
                                    "valueCodeableConcept": {"coding": [{"system": "http://www.ama-assn.org/go/cpt",
                                                                         "code": "26"}]}}],
                                "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "77317"}]},
                                "subject": {"reference": "Patient/p"},
                                "context": {"reference": "Encounter/e"},
                                "quantity": {"value": 1},
                                "service": [{"reference": "Procedure/x"}],
                            },
                        }
                    ],
                }
            ],
        }
    ]
}


def mutated(change):
    body = copy.deepcopy(GOOD)
    change(body["cards"][0])
    return body


def test_good_response_and_empty_cards_pass():
    check_response(GOOD)
    check_response({"cards": []})


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.update(summary="x" * 140),
        lambda c: c.update(detail=None),
        lambda c: c.update(detail=""),
        lambda c: c.pop("selectionBehavior"),
        lambda c: c["suggestions"][0]["actions"][0].update(type="CREATE"),
        lambda c: c["suggestions"][0]["actions"][0].pop("description"),
        lambda c: c["suggestions"][0]["actions"][0].update(resource='{"resourceType": "ChargeItem"}'),
        lambda c: c["suggestions"][0]["actions"][0]["resource"].update(status="banana", foo=1),
        lambda c: c["suggestions"].append(copy.deepcopy(c["suggestions"][0])),
        lambda c: c.pop("uuid"),
        lambda c: c.update(overrideReasons=[{"system": "s", "code": "c"}]),
        lambda c: c["suggestions"][0]["actions"][0]["resource"]["extension"][0]["valueCodeableConcept"]["coding"][0]
        .update(system="http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"),
        lambda c: c["suggestions"][0]["actions"].append({"type": "delete", "description": "d"}),
    ],
)
def test_broken_responses_are_rejected(change):
    with pytest.raises(NonConformant):
        check_response(mutated(change))
