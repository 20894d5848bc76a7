#!/usr/bin/env python3
"""Write the sample patients (FHIR R4 transaction Bundles), their index and the example site table.

Run ``python scripts/build_samples.py`` after changing a spec below; ``tests/test_samples.py`` fails
when the files in ``cds_service/samples/`` differ from what this script writes. Those files are
package data (``brachy-cds load-samples`` reads them); this script is not shipped.

Every patient, organisation and device is synthetic. Each Bundle is self-contained (the facility,
payer, practitioners and afterloader it references are in it too) and uses only ``PUT Type/id``
entries with stable ids, so loading a Bundle twice, or two Bundles that share a facility, changes
nothing the second time. Ids start with ``bcds-`` so they do not collide with other data on a shared
sandbox server.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1] / "cds_service" / "samples"
CANON = "https://brachy-cds.org/fhir"

SCT = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
POS = "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
SOPT = "https://nahdo.org/sopt"
NPI = "http://hl7.org/fhir/sid/us-npi"
MRN = f"{CANON}/sid/sample-mrn"
MEMBER_ID = f"{CANON}/sid/sample-member-id"
COUNT = f"{CANON}/CodeSystem/brachytherapy-count"
CARE_TEAM_ROLE = f"{CANON}/CodeSystem/brachytherapy-role"
MODIFIER = f"{CANON}/StructureDefinition/chargeitem-modifier"
MCODE_MODALITY = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-radiotherapy-modality-and-technique"
UUID_NAMESPACE = uuid.UUID("8f6c1f0e-5b1a-4d33-9a57-2b0c8e6f4a10")

RADIOTHERAPY = (SCT, "1287742003", "Radiotherapy")
HDR = (SCT, "394902000", "High dose brachytherapy")
SEEDS = (SCT, "169359004", "Internal radiotherapy - permanent seeds")
INTRACAVITARY = (SCT, "384692006", "Intracavitary brachytherapy")
INTERSTITIAL = (SCT, "113120007", "Interstitial brachytherapy")
TANDEM = (SCT, "1254776009", "Brachytherapy tandem")
OVOID = (SCT, "1254777000", "Brachytherapy ovoid")
RING = (SCT, "1254778005", "Brachytherapy ring")
CYLINDER = (SCT, "1255211004", "Brachytherapy cylinder")
CATHETER = (SCT, "1254779002", "Brachytherapy catheter")
STRAND = (SCT, "1254767002", "Stranded radioactive seed")
ANAESTHESIA = (SCT, "50697003", "General anesthesia")
SPINAL = (SCT, "231249005", "Spinal anesthesia")
EBRT = (SCT, "33195004", "Teleradiotherapy procedure")


def coding(code: tuple[str, str, str | None]) -> dict[str, str]:
    system, value, display = code
    return {"system": system, "code": value, **({"display": display} if display else {})}


def concept(*codes: tuple[str, str, str | None], text: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"coding": [coding(code) for code in codes]}
    if text:
        result["text"] = text
    return result


def ref(resource_type: str, resource_id: str) -> dict[str, str]:
    return {"reference": f"{resource_type}/{resource_id}"}


# Shared resources: facilities, practitioners, payers, afterloaders (identical in every Bundle).


def organization(oid: str, name: str, *, npi: str | None = None, kind: str = "prov") -> dict[str, Any]:
    org: dict[str, Any] = {"resourceType": "Organization", "id": oid}
    if npi:
        org["identifier"] = [{"system": NPI, "value": npi}]
    org["active"] = True
    display = {"prov": "Healthcare Provider", "pay": "Payer"}[kind]
    org["type"] = [{"coding": [{"system": ORG_TYPE, "code": kind, "display": display}]}]
    org["name"] = name
    return org


def location(lid: str, name: str, org: str, *, pos: tuple[str, str] | None = None) -> dict[str, Any]:
    loc: dict[str, Any] = {"resourceType": "Location", "id": lid, "status": "active", "name": name, "mode": "instance"}
    if pos:
        loc["type"] = [{"coding": [{"system": POS, "code": pos[0], "display": pos[1]}]}]
    loc["managingOrganization"] = ref("Organization", org)
    return loc


def practitioner(pid: str, family: str, given: str, npi: str, prefix: str | None = None) -> dict[str, Any]:
    name: dict[str, Any] = {"use": "official", "family": family, "given": [given]}
    if prefix:
        name["prefix"] = [prefix]
    return {
        "resourceType": "Practitioner",
        "id": pid,
        "identifier": [{"system": NPI, "value": npi}],
        "active": True,
        "name": [name],
    }


def afterloader(did: str, org: str, serial: str) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": did,
        "identifier": [{"system": f"{CANON}/sid/sample-device-asset", "value": serial}],
        "status": "active",
        "manufacturer": "Example Brachytherapy Systems (synthetic)",
        "serialNumber": serial,
        "deviceName": [{"name": "HDR afterloader, Ir-192, 30 channels", "type": "user-friendly-name"}],
        "modelNumber": "EBS-30",
        "owner": ref("Organization", org),
    }


RIVERSIDE = organization("bcds-org-riverside", "Riverside University Hospital", npi="1670543218")
LAKESIDE = organization("bcds-org-lakeside", "Lakeside Radiation Oncology", npi="1452987609")
HARBOR = organization("bcds-org-harbor", "Harbor Cancer Center", npi="1335577999")
VALLEY = organization("bcds-org-valley", "Valley Women's Health Clinic", npi="1886402134")

RIVERSIDE_HDR = location(
    "bcds-loc-riverside-hdr", "Riverside University Hospital, Radiation Oncology HDR suite", RIVERSIDE["id"],
    pos=("22", "On Campus-Outpatient Hospital"),
)
RIVERSIDE_NORTHSIDE = location(
    "bcds-loc-riverside-northside", "Riverside Northside Cancer Center (off-campus hospital department)",
    RIVERSIDE["id"], pos=("19", "Off Campus-Outpatient Hospital"),
)
RIVERSIDE_WARD = location(
    "bcds-loc-riverside-ward7", "Riverside University Hospital, Ward 7 brachytherapy rooms", RIVERSIDE["id"],
    pos=("21", "Inpatient Hospital"),
)
LAKESIDE_CENTER = location(
    "bcds-loc-lakeside", "Lakeside Radiation Oncology (freestanding centre)", LAKESIDE["id"], pos=("11", "Office"),
)
HARBOR_CENTER = location(
    "bcds-loc-harbor", "Harbor Cancer Center (freestanding centre)", HARBOR["id"], pos=("11", "Office"),
)
VALLEY_ROOM = location("bcds-loc-valley-room2", "Valley Women's Health Clinic, procedure room 2", VALLEY["id"])

DR_NKEMELU = practitioner("bcds-dr-nkemelu", "Nkemelu", "Adaeze", "1765234905", "Dr.")
PHYSICIST_WIECZOREK = practitioner("bcds-physicist-wieczorek", "Wieczorek", "Tomasz", "1556789026")
DR_LINDQVIST = practitioner("bcds-dr-lindqvist", "Lindqvist", "Ingrid", "1432198764", "Dr.")
DR_QUINTERO = practitioner("bcds-dr-quintero", "Quintero", "Rafael", "1928374655", "Dr.")
DR_RAMAN = practitioner("bcds-dr-raman", "Raman", "Priya", "1625347988", "Dr.")
PHYSICIST_CHEN = practitioner("bcds-physicist-chen", "Chen", "Mei-Ling", "1182736458")

RIVERSIDE_AFTERLOADER = afterloader("bcds-afterloader-riverside", RIVERSIDE["id"], "EBS30-RV-0117")
LAKESIDE_AFTERLOADER = afterloader("bcds-afterloader-lakeside", LAKESIDE["id"], "EBS30-LK-0042")
VALLEY_AFTERLOADER = afterloader("bcds-afterloader-valley", VALLEY["id"], "EBS30-VW-0009")

MEDICARE = organization("bcds-payer-medicare", "Medicare Part B", kind="pay")
AETNA = organization("bcds-payer-aetna", "Aetna", kind="pay")
AETNA_MA = organization("bcds-payer-aetna-medicare-advantage", "Aetna Medicare Advantage", kind="pay")
ANTHEM = organization("bcds-payer-anthem", "Anthem Blue Cross", kind="pay")
HIGHMARK = organization("bcds-payer-highmark", "Highmark Blue Cross Blue Shield", kind="pay")
CIGNA = organization("bcds-payer-cigna", "Cigna Healthcare", kind="pay")
UHC = organization("bcds-payer-uhc", "UnitedHealthcare", kind="pay")
PRAIRIE = organization("bcds-payer-prairie", "Prairie Mutual Health Plan", kind="pay")

PAYER_TYPE = {
    MEDICARE["id"]: ("1", "MEDICARE"),
    AETNA_MA["id"]: ("11", "Medicare (Managed Care)"),
    ANTHEM["id"]: ("6", "BLUE CROSS/BLUE SHIELD"),
    HIGHMARK["id"]: ("6", "BLUE CROSS/BLUE SHIELD"),
}


@dataclass
class Facility:
    """Where a sample happens: provider organisation, location, staff and (for HDR) the afterloader."""

    org: dict[str, Any]
    location: dict[str, Any]
    oncologist: dict[str, Any]
    physicist: dict[str, Any]
    afterloader: dict[str, Any] | None


RIVERSIDE_MAIN = Facility(RIVERSIDE, RIVERSIDE_HDR, DR_NKEMELU, PHYSICIST_WIECZOREK, RIVERSIDE_AFTERLOADER)
RIVERSIDE_OFF_CAMPUS = Facility(RIVERSIDE, RIVERSIDE_NORTHSIDE, DR_NKEMELU, PHYSICIST_WIECZOREK, RIVERSIDE_AFTERLOADER)
RIVERSIDE_INPATIENT = Facility(RIVERSIDE, RIVERSIDE_WARD, DR_NKEMELU, PHYSICIST_WIECZOREK, RIVERSIDE_AFTERLOADER)
LAKESIDE_FREESTANDING = Facility(LAKESIDE, LAKESIDE_CENTER, DR_LINDQVIST, PHYSICIST_CHEN, LAKESIDE_AFTERLOADER)
HARBOR_FREESTANDING = Facility(HARBOR, HARBOR_CENTER, DR_QUINTERO, PHYSICIST_CHEN, None)
VALLEY_CLINIC = Facility(VALLEY, VALLEY_ROOM, DR_RAMAN, PHYSICIST_CHEN, VALLEY_AFTERLOADER)


@dataclass
class Applicator:
    """A linked Device: an applicator or catheter (one channel each), or a seed strand with a source count."""

    suffix: str
    kind: tuple[str, str, str]
    name: str
    sources: int | None = None
    lot: str | None = None


@dataclass
class Sample:
    """One synthetic brachytherapy encounter and what the service should say about it."""

    slug: str
    file: str
    title: str
    shows: str
    patient: tuple[str, str, str, str]
    """family, given, gender, birthDate"""
    diagnosis: tuple[str, str]
    """ICD-10-CM code and display"""
    body_site: tuple[str, str, str]
    facility: Facility
    payer: dict[str, Any]
    payer_label: str
    """The payer as the README names it (the named payer it counts as, contract 5.3)."""
    named_payer: str | None
    start: str
    """Procedure start, local time with offset"""
    minutes: int
    procedure_codes: list[tuple[str, str, str]]
    modality: tuple[str, str, str]
    technique: tuple[str, str, str]
    procedure_text: str
    devices: list[Applicator]
    expect: dict[str, Any]
    setting_label: str
    encounter_class: str = "AMB"
    anaesthesia: tuple[str, str, str] | None = ANAESTHESIA
    imaging: str = "CT"
    note: str | None = None
    external_beam: str | None = None
    charges: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    """existing ChargeItems: (id suffix, CPT code, modifiers)"""
    needs_sites: bool = False
    link_afterloader: bool = True

    @property
    def patient_id(self) -> str:
        return f"bcds-{self.slug}"

    @property
    def encounter_id(self) -> str:
        return f"bcds-{self.slug}-enc"


def timestamp(start: str, minutes: int) -> str:
    """``start`` plus ``minutes`` (same offset), for Procedure and Encounter periods."""
    from datetime import datetime, timedelta

    moment = datetime.fromisoformat(start) + timedelta(minutes=minutes)
    return moment.isoformat()


def resources(sample: Sample, number: int) -> list[dict[str, Any]]:
    """Every resource of one sample, in an order a reader can follow: who, where, what, then the money."""
    pid, eid = sample.patient_id, sample.encounter_id
    fac = sample.facility
    day = sample.start[:10]
    out: list[dict[str, Any]] = []
    family, given, gender, birth = sample.patient
    out.append(
        {
            "resourceType": "Patient",
            "id": pid,
            "identifier": [{"use": "usual", "system": MRN, "value": f"BCDS-{number:04d}"}],
            "active": True,
            "name": [{"use": "official", "family": family, "given": [given]}],
            "gender": gender,
            "birthDate": birth,
        }
    )
    out += [fac.org, fac.location, fac.oncologist, fac.physicist]
    if fac.afterloader is not None and sample.link_afterloader:
        out.append(fac.afterloader)
    out.append(sample.payer)

    encounter_start = timestamp(sample.start, -90)
    encounter_end = timestamp(sample.start, 24 * 60 if sample.encounter_class == "IMP" else sample.minutes + 120)
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {
            "system": ACT,
            "code": sample.encounter_class,
            "display": {"AMB": "ambulatory", "IMP": "inpatient encounter"}[sample.encounter_class],
        },
        "type": [concept((SCT, "308335008", "Patient encounter procedure"))],
        "serviceType": concept(RADIOTHERAPY),
        "subject": ref("Patient", pid),
        "participant": [{"individual": ref("Practitioner", fac.oncologist["id"])}],
        "period": {"start": encounter_start, "end": encounter_end},
        "reasonCode": [concept((ICD10CM, *sample.diagnosis))],
        "location": [{"location": ref("Location", fac.location["id"]), "status": "completed"}],
        "serviceProvider": ref("Organization", fac.org["id"]),
    }
    out.append(encounter)

    if sample.external_beam:
        out.append(
            {
                "resourceType": "Procedure",
                "id": f"{pid}-ebrt",
                "status": "completed",
                "category": concept(RADIOTHERAPY),
                "code": concept(EBRT, text=sample.external_beam),
                "subject": ref("Patient", pid),
                "performedPeriod": {"start": "2026-08-31", "end": "2026-10-02"},
                "performer": [{"actor": ref("Practitioner", fac.oncologist["id"])}],
                "reasonCode": [concept((ICD10CM, *sample.diagnosis))],
                "bodySite": [concept(sample.body_site)],
            }
        )
    if sample.anaesthesia:
        out.append(
            {
                "resourceType": "Procedure",
                "id": f"{pid}-anaesthesia",
                "status": "completed",
                "code": concept(sample.anaesthesia),
                "subject": ref("Patient", pid),
                "encounter": ref("Encounter", eid),
                "performedPeriod": {
                    "start": timestamp(sample.start, -60),
                    "end": timestamp(sample.start, sample.minutes),
                },
                "location": ref("Location", fac.location["id"]),
            }
        )

    devices = []
    for device in sample.devices:
        resource: dict[str, Any] = {
            "resourceType": "Device",
            "id": f"{pid}-{device.suffix}",
            "status": "active",
        }
        if device.lot:
            resource["lotNumber"] = device.lot
        resource["manufacturer"] = "Example Brachytherapy Systems (synthetic)"
        resource["deviceName"] = [{"name": device.name, "type": "user-friendly-name"}]
        resource["type"] = concept(device.kind)
        if device.sources is not None:
            resource["property"] = [
                {
                    "type": concept((COUNT, "sources", "Number of radioactive sources")),
                    "valueQuantity": [{"value": device.sources, "unit": "seeds"}],
                }
            ]
            resource["patient"] = ref("Patient", pid)
        elif fac.afterloader is not None:
            resource["parent"] = ref("Device", fac.afterloader["id"])
        devices.append(resource)
    out += devices

    procedure: dict[str, Any] = {
        "resourceType": "Procedure",
        "id": f"{pid}-brachy",
        "extension": [
            {
                "url": MCODE_MODALITY,
                "extension": [
                    {"url": "modality", "valueCodeableConcept": concept(sample.modality)},
                    {"url": "technique", "valueCodeableConcept": concept(sample.technique)},
                ],
            }
        ],
        "status": "completed",
        "category": concept(RADIOTHERAPY),
        "code": concept(*sample.procedure_codes, text=sample.procedure_text),
        "subject": ref("Patient", pid),
        "encounter": ref("Encounter", eid),
        "performedPeriod": {"start": sample.start, "end": timestamp(sample.start, sample.minutes)},
        "performer": [
            {
                "function": concept((CARE_TEAM_ROLE, "plan-approver", "Approved the isodose plan")),
                "actor": ref("Practitioner", fac.oncologist["id"]),
                "onBehalfOf": ref("Organization", fac.org["id"]),
            },
            {
                "function": concept((CARE_TEAM_ROLE, "medical-physicist", "Medical physicist")),
                "actor": ref("Practitioner", fac.physicist["id"]),
            },
        ],
        "location": ref("Location", fac.location["id"]),
        "reasonCode": [concept((ICD10CM, *sample.diagnosis))],
        "bodySite": [concept(sample.body_site)],
    }
    if sample.note:
        procedure["note"] = [{"text": sample.note}]
    if devices:
        procedure["focalDevice"] = [{"manipulated": ref("Device", d["id"])} for d in devices]
    if fac.afterloader is not None and sample.link_afterloader:
        procedure["usedReference"] = [ref("Device", fac.afterloader["id"])]
    out.append(procedure)

    out.append(imaging_study(sample, pid, eid))
    out.append(
        {
            "resourceType": "Consent",
            "id": f"{pid}-consent",
            "status": "active",
            "scope": concept(("http://terminology.hl7.org/CodeSystem/consentscope", "treatment", "Treatment")),
            "category": [concept((LOINC, "59284-0", "Consent Document"))],
            "patient": ref("Patient", pid),
            "dateTime": timestamp(sample.start, -7 * 24 * 60),
            "performer": [ref("Patient", pid)],
            "organization": [ref("Organization", fac.org["id"])],
            "policyRule": concept((ACT, "OPTIN", "opt-in")),
            "provision": {"type": "permit", "code": [concept(sample.modality)]},
        }
    )
    coverage: dict[str, Any] = {
        "resourceType": "Coverage",
        "id": f"{pid}-coverage",
        "status": "active",
    }
    if sample.payer["id"] in PAYER_TYPE:
        coverage["type"] = concept((SOPT, *PAYER_TYPE[sample.payer["id"]]))
    coverage.update(
        {
            "subscriberId": f"BCDS{number:04d}01",
            "beneficiary": ref("Patient", pid),
            "relationship": concept(
                ("http://terminology.hl7.org/CodeSystem/subscriber-relationship", "self", "Self")
            ),
            "period": {"start": "2026-01-01"},
            "payor": [ref("Organization", sample.payer["id"]) | {"display": sample.payer["name"]}],
        }
    )
    out.append(coverage)
    for suffix, code, modifiers in sample.charges:
        out.append(charge_item(sample, suffix, code, modifiers, day))
    return out


def imaging_study(sample: Sample, pid: str, eid: str) -> dict[str, Any]:
    modality, description = {
        "CT": (("CT", "Computed Tomography"), "Planning CT with the applicator in place"),
        "US": (("US", "Ultrasound"), "Transrectal ultrasound, volume study and live implant guidance"),
    }[sample.imaging]
    study_uid = "2.25." + str(uuid.uuid5(UUID_NAMESPACE, f"{pid}/study").int)
    series_uid = "2.25." + str(uuid.uuid5(UUID_NAMESPACE, f"{pid}/series").int)
    return {
        "resourceType": "ImagingStudy",
        "id": f"{pid}-imaging",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        "status": "available",
        "modality": [{"system": DCM, "code": modality[0], "display": modality[1]}],
        "subject": ref("Patient", pid),
        "encounter": ref("Encounter", eid),
        "started": timestamp(sample.start, -25),
        "numberOfSeries": 1,
        "numberOfInstances": 120 if sample.imaging == "CT" else 40,
        "description": description,
        "series": [
            {
                "uid": series_uid,
                "number": 1,
                "modality": {"system": DCM, "code": modality[0], "display": modality[1]},
                "description": description,
                "numberOfInstances": 120 if sample.imaging == "CT" else 40,
                "bodySite": coding(sample.body_site),
            }
        ],
    }


def charge_item(sample: Sample, suffix: str, code: str, modifiers: tuple[str, ...], day: str) -> dict[str, Any]:
    pid = sample.patient_id
    display = {
        "77300": "Basic radiation dosimetry calculation",
        "77316": "Simple brachytherapy isodose plan",
        "77317": "Intermediate brachytherapy isodose plan",
        "77318": "Complex brachytherapy isodose plan",
    }[code]
    item: dict[str, Any] = {"resourceType": "ChargeItem", "id": f"{pid}-charge-{suffix}"}
    if modifiers:
        item["extension"] = [
            {"url": MODIFIER, "valueCodeableConcept": {"coding": [{"system": CPT, "code": modifier}]}}
            for modifier in modifiers
        ]
    item.update(
        {
            "status": "billable",
            "code": concept((CPT, code, display)),
            "subject": ref("Patient", pid),
            "context": ref("Encounter", sample.encounter_id),
            "occurrenceDateTime": day,
            "performer": [{"actor": ref("Practitioner", sample.facility.oncologist["id"])}],
            "performingOrganization": ref("Organization", sample.facility.org["id"]),
            "quantity": {"value": 1},
            "enteredDate": timestamp(sample.start, 6 * 60),
            "service": [ref("Procedure", f"{pid}-brachy")],
        }
    )
    return item


def tandem_ovoids() -> list[Applicator]:
    return [
        Applicator("tandem", TANDEM, "Intrauterine tandem 60 mm, 30 degrees"),
        Applicator("ovoid-left", OVOID, "Ovoid 25 mm, left"),
        Applicator("ovoid-right", OVOID, "Ovoid 25 mm, right"),
    ]


def catheters(count: int, name: str) -> list[Applicator]:
    return [Applicator(f"catheter-{i:02d}", CATHETER, f"{name} {i}") for i in range(1, count + 1)]


def charge(*lines: str, recommended: bool = True) -> dict[str, Any]:
    return {"charges": [line.split("+") for line in lines], "recommended": recommended}


HDR_CERVIX = [HDR, (CPT, "77771", "Remote afterloading HDR brachytherapy, 2-12 channels")]


def samples() -> list[Sample]:
    """The sample encounters, in the order the README lists them."""
    cervix = ("C53.9", "Malignant neoplasm of cervix uteri, unspecified")
    cervix_site = (SCT, "71252005", "Cervix uteri structure")
    vagina_site = (SCT, "76784001", "Vaginal structure")
    prostate = ("C61", "Malignant neoplasm of prostate")
    prostate_site = (SCT, "41216001", "Prostatic structure")
    return [
        Sample(
            slug="cervix-hdr",
            file="cervix-hdr-tandem-ovoids-hospital-outpatient-medicare-77317-26.json",
            title="Cervix HDR, tandem and two ovoids, hospital outpatient, Medicare",
            shows="65-year-old woman with cervical cancer after external beam: HDR tandem and two ovoids under "
            "anaesthesia, CT-confirmed, 3 channels, hospital outpatient (POS 22)",
            patient=("Whitfield", "Rosa", "female", "1961-03-09"),
            diagnosis=cervix,
            body_site=cervix_site,
            facility=RIVERSIDE_MAIN,
            payer=MEDICARE,
            payer_label="Medicare",
            named_payer="Medicare",
            start="2026-10-14T10:05:00-04:00",
            minutes=28,
            procedure_codes=HDR_CERVIX,
            modality=HDR,
            technique=INTRACAVITARY,
            procedure_text="HDR intracavitary brachytherapy, cervix, tandem and ovoids, insertion 1 of 4",
            devices=tandem_ovoids(),
            note="Tandem and ovoids inserted under general anaesthesia; applicator position confirmed on CT "
            "before planning. 7 Gy to point A.",
            external_beam="External beam radiotherapy to the pelvis, 45 Gy in 25 fractions, with weekly cisplatin",
            expect={"cards": [{"topic": "charge-suggestion", **charge("77317-26")}]},
            setting_label="hospital outpatient (POS 22)",
        ),
        Sample(
            slug="endometrium-cylinder",
            file="vaginal-cuff-hdr-cylinder-1-channel-off-campus-aetna-77316-26.json",
            title="Vaginal cuff HDR, single-channel cylinder, off-campus hospital department, Aetna",
            shows="Endometrial cancer after hysterectomy: HDR vaginal cylinder, 1 channel, off-campus hospital "
            "outpatient department (POS 19)",
            patient=("Marchetti", "Helen", "female", "1968-07-22"),
            diagnosis=("C54.1", "Malignant neoplasm of endometrium"),
            body_site=vagina_site,
            facility=RIVERSIDE_OFF_CAMPUS,
            payer=AETNA,
            payer_label="Aetna",
            named_payer="Aetna",
            start="2026-10-20T09:40:00-04:00",
            minutes=15,
            procedure_codes=[HDR, (CPT, "77770", "Remote afterloading HDR brachytherapy, 1 channel")],
            modality=HDR,
            technique=INTRACAVITARY,
            procedure_text="HDR vaginal cuff brachytherapy, cylinder 3.0 cm, fraction 1 of 3",
            devices=[Applicator("cylinder", CYLINDER, "Vaginal cylinder 3.0 cm, single channel")],
            anaesthesia=None,
            expect={"cards": [{"topic": "charge-suggestion", **charge("77316-26")}]},
            setting_label="off-campus hospital outpatient (POS 19)",
        ),
        Sample(
            slug="prostate-hdr-inpatient",
            file="prostate-hdr-interstitial-16-catheters-inpatient-anthem-77318-26.json",
            title="Prostate HDR boost, 16 interstitial catheters, inpatient, Anthem Blue Cross",
            shows="Prostate HDR boost with 16 interstitial catheters under spinal anaesthesia, admitted overnight: "
            "inpatient (Encounter class IMP, POS 21)",
            patient=("Okoro", "Samuel", "male", "1955-01-30"),
            diagnosis=prostate,
            body_site=prostate_site,
            facility=RIVERSIDE_INPATIENT,
            payer=ANTHEM,
            payer_label="Anthem Blue Cross (BCBS)",
            named_payer="Blue Cross Blue Shield",
            start="2026-10-27T13:10:00-04:00",
            minutes=40,
            procedure_codes=[HDR, (CPT, "77772", "Remote afterloading HDR brachytherapy, over 12 channels")],
            modality=HDR,
            technique=INTERSTITIAL,
            procedure_text="HDR interstitial prostate brachytherapy boost, template-guided, 16 catheters",
            devices=catheters(16, "Interstitial catheter"),
            anaesthesia=SPINAL,
            encounter_class="IMP",
            imaging="CT",
            note="16 catheters placed under transrectal ultrasound guidance and spinal anaesthesia; positions "
            "confirmed on CT. Admitted overnight for the second fraction.",
            expect={"cards": [{"topic": "charge-suggestion", **charge("77318-26")}]},
            setting_label="inpatient (POS 21)",
        ),
        Sample(
            slug="breast-hdr-freestanding",
            file="breast-hdr-8-catheters-freestanding-cigna-77317-global.json",
            title="Breast HDR, 8 interstitial catheters, freestanding centre, Cigna",
            shows="Accelerated partial breast irradiation with 8 interstitial catheters at a freestanding "
            "radiation oncology centre (POS 11): global billing",
            patient=("Kowalczyk", "Dana", "female", "1964-09-02"),
            diagnosis=("C50.411", "Malignant neoplasm of upper-outer quadrant of right female breast"),
            body_site=(SCT, "76752008", "Breast structure"),
            facility=LAKESIDE_FREESTANDING,
            payer=CIGNA,
            payer_label="Cigna",
            named_payer="Cigna",
            start="2026-11-03T08:30:00-05:00",
            minutes=20,
            procedure_codes=[HDR, (CPT, "77771", "Remote afterloading HDR brachytherapy, 2-12 channels")],
            modality=HDR,
            technique=INTERSTITIAL,
            procedure_text="HDR multicatheter interstitial breast brachytherapy (APBI), fraction 1 of 10",
            devices=catheters(8, "Breast catheter"),
            anaesthesia=None,
            expect={"cards": [{"topic": "charge-suggestion", **charge("77317")}]},
            setting_label="freestanding centre (POS 11), global",
        ),
        Sample(
            slug="prostate-seeds-split",
            file="prostate-ldr-68-seeds-freestanding-split-billing-unitedhealthcare-77318-26-tc.json",
            title="Prostate LDR permanent seeds (68), freestanding centre with split billing, UnitedHealthcare",
            shows="Permanent I-125 prostate seed implant, 68 stranded seeds in two lots (explicit source counts), "
            "freestanding centre (POS 11) that bills split (site table `sites.yaml`)",
            patient=("Almeida", "Victor", "male", "1960-04-18"),
            diagnosis=prostate,
            body_site=prostate_site,
            facility=HARBOR_FREESTANDING,
            payer=UHC,
            payer_label="UnitedHealthcare",
            named_payer="UnitedHealthcare",
            start="2026-11-05T11:00:00-05:00",
            minutes=75,
            procedure_codes=[SEEDS, (CPT, "77778", "Interstitial radiation source application, complex")],
            modality=SEEDS,
            technique=INTERSTITIAL,
            procedure_text="Permanent interstitial prostate seed implant, I-125, ultrasound-guided",
            devices=[
                Applicator("strand-lot-a", STRAND, "I-125 stranded seeds, lot A", sources=40, lot="I125-2611-A"),
                Applicator("strand-lot-b", STRAND, "I-125 stranded seeds, lot B", sources=28, lot="I125-2611-B"),
            ],
            anaesthesia=SPINAL,
            imaging="US",
            expect={"cards": [{"topic": "charge-suggestion", **charge("77318-26+77318-TC")}]},
            setting_label="freestanding centre (POS 11), split billing",
            needs_sites=True,
            link_afterloader=False,
        ),
        Sample(
            slug="cervix-ring-unknown-setting",
            file="cervix-hdr-tandem-ring-setting-unknown-77317-alternatives.json",
            title="Cervix HDR, tandem and ring, setting not recorded, regional plan",
            shows="HDR tandem and ring (2 channels) in a clinic room whose Location has no type and whose "
            "organisation is not in the site table: the setting is unknown",
            patient=("Lindahl", "Grace", "female", "1979-06-11"),
            diagnosis=("C53.0", "Malignant neoplasm of endocervix"),
            body_site=cervix_site,
            facility=VALLEY_CLINIC,
            payer=PRAIRIE,
            payer_label="Prairie Mutual Health Plan (not a named payer)",
            named_payer=None,
            start="2026-11-10T10:15:00-05:00",
            minutes=25,
            procedure_codes=HDR_CERVIX,
            modality=HDR,
            technique=INTRACAVITARY,
            procedure_text="HDR intracavitary brachytherapy, cervix, tandem and ring",
            devices=[
                Applicator("tandem", TANDEM, "Intrauterine tandem 60 mm"),
                Applicator("ring", RING, "Ring applicator 30 mm"),
            ],
            anaesthesia=None,
            expect={"cards": [{"topic": "charge-suggestion", **charge("77317-26", "77317", recommended=False)}]},
            setting_label="unknown",
        ),
        Sample(
            slug="cervix-no-count",
            file="cervix-hdr-applicators-not-recorded-count-missing-aetna-medicare-advantage.json",
            title="Cervix HDR, applicators not recorded, Aetna Medicare Advantage",
            shows="HDR cervix insertion that links only the afterloader: no applicator Devices and no count, so "
            "no planning charge can be suggested",
            patient=("Ferreira", "Ana", "female", "1958-12-01"),
            diagnosis=cervix,
            body_site=cervix_site,
            facility=RIVERSIDE_MAIN,
            payer=AETNA_MA,
            payer_label="Aetna Medicare Advantage (Aetna)",
            named_payer="Aetna",
            start="2026-11-12T09:20:00-05:00",
            minutes=30,
            procedure_codes=HDR_CERVIX,
            modality=HDR,
            technique=INTRACAVITARY,
            procedure_text="HDR intracavitary brachytherapy, cervix",
            devices=[],
            note="Applicator inserted under general anaesthesia; details in the paper record.",
            expect={"cards": [{"topic": "count-missing", "charges": []}]},
            setting_label="hospital outpatient (POS 22)",
        ),
        Sample(
            slug="cervix-77300",
            file="cervix-hdr-77300-already-charged-bundling-conflict-highmark.json",
            title="Cervix HDR with a 77300 already charged, Highmark BCBS",
            shows="The canonical insertion with a basic dosimetry charge (77300) already on the encounter: "
            "77300 is bundled into 77316-77318",
            patient=("Abernathy", "Joyce", "female", "1972-02-14"),
            diagnosis=("C53.1", "Malignant neoplasm of exocervix"),
            body_site=cervix_site,
            facility=RIVERSIDE_MAIN,
            payer=HIGHMARK,
            payer_label="Highmark Blue Cross Blue Shield (BCBS)",
            named_payer="Blue Cross Blue Shield",
            start="2026-11-16T10:00:00-05:00",
            minutes=27,
            procedure_codes=HDR_CERVIX,
            modality=HDR,
            technique=INTRACAVITARY,
            procedure_text="HDR intracavitary brachytherapy, cervix, tandem and ovoids, insertion 2 of 4",
            devices=tandem_ovoids(),
            charges=[("77300", "77300", ())],
            expect={
                "cards": [
                    {"topic": "charge-suggestion", **charge("77317-26")},
                    {"topic": "bundling-conflict", "charges": [], "deletes": ["charge-77300"]},
                ]
            },
            setting_label="hospital outpatient (POS 22)",
        ),
        Sample(
            slug="cervix-wrong-level",
            file="cervix-hdr-charged-77316-for-3-channels-mismatch-cigna.json",
            title="Cervix HDR charged at the wrong level (77316-26 for 3 channels), Cigna",
            shows="Tandem and two ovoids (3 channels) already charged as 77316-26: the level is wrong",
            patient=("Romano", "Lucia", "female", "1963-08-25"),
            diagnosis=cervix,
            body_site=cervix_site,
            facility=RIVERSIDE_MAIN,
            payer=CIGNA,
            payer_label="Cigna",
            named_payer="Cigna",
            start="2026-11-18T09:45:00-05:00",
            minutes=26,
            procedure_codes=HDR_CERVIX,
            modality=HDR,
            technique=INTRACAVITARY,
            procedure_text="HDR intracavitary brachytherapy, cervix, tandem and ovoids, insertion 1 of 4",
            devices=tandem_ovoids(),
            charges=[("77316", "77316", ("26",))],
            expect={"cards": [{"topic": "charge-mismatch", **charge("77317-26"), "deletes": ["charge-77316"]}]},
            setting_label="hospital outpatient (POS 22)",
        ),
        Sample(
            slug="cylinder-already-charged",
            file="vaginal-cuff-hdr-cylinder-already-charged-77316-26-no-cards-medicare.json",
            title="Vaginal cuff HDR, already charged correctly (77316-26), Medicare",
            shows="Single-channel cylinder at the hospital (POS 22) whose 77316-26 charge is already on the "
            "encounter: nothing to say",
            patient=("Doyle", "Patricia", "female", "1950-05-05"),
            diagnosis=("C54.1", "Malignant neoplasm of endometrium"),
            body_site=vagina_site,
            facility=RIVERSIDE_MAIN,
            payer=MEDICARE,
            payer_label="Medicare",
            named_payer="Medicare",
            start="2026-11-19T14:00:00-05:00",
            minutes=15,
            procedure_codes=[HDR, (CPT, "77770", "Remote afterloading HDR brachytherapy, 1 channel")],
            modality=HDR,
            technique=INTRACAVITARY,
            procedure_text="HDR vaginal cuff brachytherapy, cylinder 2.5 cm, fraction 2 of 3",
            devices=[Applicator("cylinder", CYLINDER, "Vaginal cylinder 2.5 cm, single channel")],
            anaesthesia=None,
            charges=[("77316", "77316", ("26",))],
            expect={"cards": []},
            setting_label="hospital outpatient (POS 22)",
        ),
    ]


def bundle(sample: Sample, number: int) -> dict[str, Any]:
    """A transaction Bundle of ``PUT Type/id`` entries (no conditional requests), one per resource."""
    entries = []
    for resource in resources(sample, number):
        key = f"{resource['resourceType']}/{resource['id']}"
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid5(UUID_NAMESPACE, key)}",
                "resource": resource,
                "request": {"method": "PUT", "url": key},
            }
        )
    return {
        "resourceType": "Bundle",
        "id": f"bcds-sample-{sample.slug}",
        "meta": {"tag": [{"system": f"{CANON}/CodeSystem/sample", "code": "brachy-cds-sample"}]},
        "type": "transaction",
        "entry": entries,
    }


def index_entry(sample: Sample) -> dict[str, Any]:
    expect = json.loads(json.dumps(sample.expect))
    for card in expect["cards"]:
        card["deletes"] = [f"ChargeItem/{sample.patient_id}-{suffix}" for suffix in card.get("deletes", [])]
        if not card["deletes"]:
            del card["deletes"]
    if sample.named_payer and expect["cards"]:
        # Contract 4: a payer-note for the five named payers, naming the payer in its summary.
        expect["cards"].append({"topic": "payer-note", "charges": [], "payer": sample.named_payer})
    return {
        "name": sample.file.removesuffix(".json"),
        "file": sample.file,
        "title": sample.title,
        "shows": sample.shows,
        "patient": sample.patient_id,
        "encounter": sample.encounter_id,
        "date": sample.start[:10],
        "setting": sample.setting_label,
        "payer": sample.payer_label,
        "namedPayer": sample.named_payer,
        "needsSiteTable": sample.needs_sites,
        "expect": expect,
    }


SITES_YAML = f"""\
# Example site table for the sample patients (BRACHY_CDS_SITES; contract section 5.1).
#
# Each entry maps an identifier of an Encounter's serviceProvider Organization, or of the Location
# that decides the setting, to a CMS Place of Service and a billing model. The table wins over what
# the FHIR data says (Location type, Encounter class).
#   identifier  {{system, value}} as in the Organization or Location (here: the organisation's NPI)
#   pos         CMS Place of Service code, required (11 office/freestanding, 19/22 hospital outpatient, 21 inpatient)
#   billing     global (default) or split; only matters for POS 11
#   teaching    true for a teaching site (default false)
#   name        free text, shown in the card
#
# Harbor Cancer Center is a freestanding centre whose radiation oncologists' group bills the
# professional component itself, so the centre bills the technical component: 26 + TC
# (the "{samples()[4].file}" sample).
- identifier: {{system: "{NPI}", value: "{HARBOR['identifier'][0]['value']}"}}
  pos: "11"
  billing: split
  teaching: false
  name: Harbor Cancer Center (split billing with Harbor Radiation Oncology Associates)
"""


def main() -> None:
    """Rewrite every sample Bundle, index.json and sites.yaml in cds_service/samples/."""
    items = samples()
    wanted = {sample.file for sample in items} | {"index.json"}
    for path in HERE.glob("*.json"):
        if path.name not in wanted:
            path.unlink()
    for number, sample in enumerate(items, start=1):
        (HERE / sample.file).write_text(json.dumps(bundle(sample, number), indent=2, ensure_ascii=False) + "\n")
    index = {
        "description": "Synthetic brachytherapy encounters for brachy-cds (README: Try it with a sandbox FHIR server)",
        "siteTable": "sites.yaml",
        "samples": [index_entry(sample) for sample in items],
    }
    (HERE / "index.json").write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    (HERE / "sites.yaml").write_text(SITES_YAML)


if __name__ == "__main__":
    main()
