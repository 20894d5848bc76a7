"""The integration-tester kit: sample patients, their loader and an EHR simulator (contract section 1).

``brachy-cds load-samples`` (``kit.samples``) puts the shipped sample patients into a FHIR server;
``brachy-cds invoke`` (``kit.invoke``) acts as an EHR against any brachy-cds: discovery, prefetch,
the hook call with an optional CDS Hooks JWT (``kit.signing``), and the cards for a person
(``kit.show``). None of this runs inside the service; it talks to it over HTTP like a client would.
"""
