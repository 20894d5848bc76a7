"""parse_feedback against the CDS Hooks 2.0 feedback examples (S2 L827-926) and malformed variants."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from cds_service.errors import BadRequest
from cds_service.feedback import Coding, FeedbackItem, parse_feedback

# The three examples of CDS Hooks 2.0 "Feedback", verbatim.
SPEC_ACCEPTED = {
    "feedback": [
        {
            "card": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
            "outcomeTimestamp": "2021-12-11T10:05:31Z",
        }
    ]
}
SPEC_OVERRIDDEN = {
    "feedback": [
        {
            "card": "f6b95768-b1c8-40dc-8385-bf3504b82ffb",
            "outcome": "overridden",
            "outcomeTimestamp": "2020-12-11T00:00:00Z",
        }
    ]
}
SPEC_OVERRIDDEN_WITH_REASON = {
    "feedback": [
        {
            "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
            "outcome": "overridden",
            "overrideReason": {
                "reason": {"code": "d7ecf885", "system": "https://example.com/cds-hooks/override-reason-system"},
                "userComment": "A comment entered by the clinician.",
            },
            "outcomeTimestamp": "2020-12-11T00:00:00Z",
        }
    ]
}


def test_spec_example_suggestion_accepted():
    assert parse_feedback(SPEC_ACCEPTED) == [
        FeedbackItem(
            card="4e0a3a1e-3283-4575-ab82-028d55fe2719",
            outcome="accepted",
            outcome_timestamp=datetime(2021, 12, 11, 10, 5, 31, tzinfo=UTC),
            accepted_suggestions=("e56e1945-20b3-4393-8503-a1a20fd73152",),
        )
    ]


def test_spec_example_overridden_without_reason():
    assert parse_feedback(SPEC_OVERRIDDEN) == [
        FeedbackItem(
            card="f6b95768-b1c8-40dc-8385-bf3504b82ffb",
            outcome="overridden",
            outcome_timestamp=datetime(2020, 12, 11, tzinfo=UTC),
        )
    ]


def test_spec_example_overridden_with_reason():
    assert parse_feedback(SPEC_OVERRIDDEN_WITH_REASON) == [
        FeedbackItem(
            card="9368d37b-283f-44a0-93ea-547cebab93ed",
            outcome="overridden",
            outcome_timestamp=datetime(2020, 12, 11, tzinfo=UTC),
            override_reason=Coding("d7ecf885", "https://example.com/cds-hooks/override-reason-system"),
            user_comment="A comment entered by the clinician.",
        )
    ]


def test_batch_of_several_cards_with_display_offsets_and_unknown_keys():
    body = {
        "feedback": [
            {
                "card": "card-1",
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "s-1"}, {"id": "s-2", "label": "ignored"}],
                "outcomeTimestamp": "1985-04-12T23:20:50.52Z",
                "overrideReason": "ignored on an accepted card",
                "x-vendor": {"anything": True},
            },
            {
                "card": "card-2",
                "outcome": "overridden",
                "acceptedSuggestions": "ignored on an overridden card",
                "overrideReason": {
                    "reason": {"code": "already-billed", "system": "urn:x", "display": "Already billed"},
                },
                "outcomeTimestamp": "2025-06-01t14:00:00+02:00",
            },
            {
                "card": "card-3",
                "outcome": "overridden",
                "overrideReason": {"userComment": "comment only"},
                "outcomeTimestamp": "2025-06-01 12:00:00.123456789-05:00",
            },
        ],
        "hookInstance": "unknown top-level keys are tolerated",
    }
    assert parse_feedback(body) == [
        FeedbackItem(
            "card-1",
            "accepted",
            datetime(1985, 4, 12, 23, 20, 50, 520000, tzinfo=UTC),
            accepted_suggestions=("s-1", "s-2"),
        ),
        FeedbackItem(
            "card-2",
            "overridden",
            datetime(2025, 6, 1, 12, 0, tzinfo=UTC),
            override_reason=Coding("already-billed", "urn:x", "Already billed"),
        ),
        FeedbackItem(
            "card-3", "overridden", datetime(2025, 6, 1, 17, 0, 0, 123456, tzinfo=UTC), user_comment="comment only"
        ),
    ]


def test_items_are_frozen():
    item = parse_feedback(SPEC_ACCEPTED)[0]
    with pytest.raises(AttributeError):
        item.outcome = "overridden"  # type: ignore[misc]


SECRET = "PATIENT-SECRET-4711"


def _variant(base: dict, index: int = 0, **changes) -> dict:
    body = copy.deepcopy(base)
    for key, value in changes.items():
        if value is ...:
            body["feedback"][index].pop(key, None)
        else:
            body["feedback"][index][key] = value
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "The feedback body must be a JSON object"),
        ([SPEC_ACCEPTED], "The feedback body must be a JSON object"),
        ({}, "'feedback' is required and must be a non-empty array"),
        ({"feedback": []}, "'feedback' is required and must be a non-empty array"),
        ({"feedback": {"card": SECRET}}, "'feedback' is required and must be a non-empty array"),
        ({"feedback": [SECRET]}, "feedback[0] must be an object"),
        (_variant(SPEC_ACCEPTED, card=...), "feedback[0].card is required and must be a non-empty string"),
        (_variant(SPEC_ACCEPTED, card=""), "feedback[0].card is required and must be a non-empty string"),
        (_variant(SPEC_ACCEPTED, card=4711), "feedback[0].card is required and must be a non-empty string"),
        (
            _variant(SPEC_ACCEPTED, outcome=...),
            "feedback[0].outcome is required and must be 'accepted' or 'overridden'",
        ),
        (_variant(SPEC_ACCEPTED, outcome=SECRET), "feedback[0].outcome is required and must be"),
        (_variant(SPEC_ACCEPTED, outcome="Accepted"), "feedback[0].outcome is required and must be"),
        (_variant(SPEC_ACCEPTED, outcome=["accepted"]), "feedback[0].outcome is required and must be"),
        (
            _variant(SPEC_ACCEPTED, acceptedSuggestions=...),
            "feedback[0].acceptedSuggestions is required for an accepted card and must be a non-empty array",
        ),
        (_variant(SPEC_ACCEPTED, acceptedSuggestions=[]), "feedback[0].acceptedSuggestions is required"),
        (_variant(SPEC_ACCEPTED, acceptedSuggestions={"id": "x"}), "feedback[0].acceptedSuggestions is required"),
        (
            _variant(SPEC_ACCEPTED, acceptedSuggestions=[{"id": "ok"}, {"id": 7}]),
            "feedback[0].acceptedSuggestions[1].id is required and must be a non-empty string",
        ),
        (_variant(SPEC_ACCEPTED, acceptedSuggestions=[SECRET]), "feedback[0].acceptedSuggestions[0].id is required"),
        (_variant(SPEC_ACCEPTED, acceptedSuggestions=[{}]), "feedback[0].acceptedSuggestions[0].id is required"),
        (_variant(SPEC_OVERRIDDEN, overrideReason=SECRET), "feedback[0].overrideReason must be an object"),
        (
            _variant(SPEC_OVERRIDDEN, overrideReason={"reason": SECRET}),
            "feedback[0].overrideReason.reason must be a Coding object",
        ),
        (
            _variant(SPEC_OVERRIDDEN, overrideReason={"reason": {"code": SECRET}}),
            "feedback[0].overrideReason.reason.system is required and must be a non-empty string",
        ),
        (
            _variant(SPEC_OVERRIDDEN, overrideReason={"reason": {"system": "urn:x", "code": ""}}),
            "feedback[0].overrideReason.reason.code is required and must be a non-empty string",
        ),
        (
            _variant(SPEC_OVERRIDDEN, overrideReason={"reason": {"system": "urn:x", "code": "c", "display": 5}}),
            "feedback[0].overrideReason.reason.display must be a string",
        ),
        (
            _variant(SPEC_OVERRIDDEN, overrideReason={"userComment": ["x"]}),
            "feedback[0].overrideReason.userComment must be a string",
        ),
        (
            _variant(SPEC_ACCEPTED, outcomeTimestamp=...),
            "feedback[0].outcomeTimestamp is required and must be an RFC 3339 date-time with a time zone",
        ),
        (_variant(SPEC_ACCEPTED, outcomeTimestamp="2021-12-11T10:05:31"), "feedback[0].outcomeTimestamp is required"),
        (_variant(SPEC_ACCEPTED, outcomeTimestamp="2021-12-11"), "feedback[0].outcomeTimestamp is required"),
        (_variant(SPEC_ACCEPTED, outcomeTimestamp="2021-02-30T10:05:31Z"), "feedback[0].outcomeTimestamp is required"),
        (_variant(SPEC_ACCEPTED, outcomeTimestamp="2021-12-11T10:05:31+0100"), "feedback[0].outcomeTimestamp is"),
        (_variant(SPEC_ACCEPTED, outcomeTimestamp="2021-12-11T25:05:31Z"), "feedback[0].outcomeTimestamp is"),
        (_variant(SPEC_ACCEPTED, outcomeTimestamp=1639217131), "feedback[0].outcomeTimestamp is required"),
        (_variant(SPEC_ACCEPTED, outcomeTimestamp=SECRET), "feedback[0].outcomeTimestamp is required"),
        (
            {"feedback": [SPEC_ACCEPTED["feedback"][0], {**SPEC_OVERRIDDEN["feedback"][0], "card": None}]},
            "feedback[1].card is required and must be a non-empty string",
        ),
    ],
)
def test_malformed_feedback_names_the_field_and_never_echoes_a_value(body, message):
    with pytest.raises(BadRequest) as caught:
        parse_feedback(body)
    assert caught.value.status == 400
    assert caught.value.message.startswith(message)
    assert SECRET not in caught.value.message
