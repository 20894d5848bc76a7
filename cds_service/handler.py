"""Answer one hook call: parse, gather FHIR, map to facts, decide, render cards.

The data flow of style.md, in one readable function per step; the Flask view only calls
``HookHandler.handle``. Every step raises a ``CdsError`` for what the caller did wrong or what
could not be had (400, 412); nothing here swallows an error into an empty card list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cds_service.cards import CardRenderer
from cds_service.coding import decide
from cds_service.config import Settings
from cds_service.discovery import ServiceDefinition
from cds_service.fhir_client import Deadline
from cds_service.gather import Gatherer
from cds_service.hooks import parse_hook_request
from fhir_mappings import extract
from fhir_mappings.rules import RuleSet


@dataclass
class HookOutcome:
    """The response body plus PHI-free facts for the access log."""

    body: dict[str, Any]
    hook_instance: str
    topics: list[str] = field(default_factory=list)
    encounters: int = 0
    fetches: int = 0


@dataclass
class HookHandler:
    """Run the hook pipeline with the app's settings, rules, gatherer and card renderer."""

    settings: Settings
    rules: RuleSet
    gatherer: Gatherer
    renderer: CardRenderer

    def handle(
        self, service: ServiceDefinition, body: Mapping[str, Any], deadline: Deadline | None = None
    ) -> HookOutcome:
        """Return the cards for one hook call (CDS Hooks 2.0 "HTTP Response") within ``deadline``."""
        request = parse_hook_request(body, service)
        gathered = self.gatherer.gather(service, request, deadline)
        patient_ref = f"Patient/{request.patient_id}"
        cards: list[dict[str, Any]] = []
        topics: list[str] = []
        for encounter_ref in gathered.encounter_refs:
            facts = extract.encounter_facts(
                gathered.pool, encounter_ref, patient_ref, self.rules, checked=gathered.checked
            )
            decision = decide(facts, self.rules, self.settings.sites)
            cards.extend(self.renderer.cards(decision))
            topics.extend(decision.topics)
        return HookOutcome(
            body={"cards": cards},
            hook_instance=request.hook_instance,
            topics=topics,
            encounters=len(gathered.encounter_refs),
            fetches=getattr(gathered, "fetch_count", 0),
        )
