"""Turn FHIR R4 (and R5-shaped) resources into small immutable facts for the coding core.

This package makes no billing decision. Importing it stays cheap and pure: the modules that use
fhir.resources (``resources``, ``extract``) are imported by name where they are needed.
"""
