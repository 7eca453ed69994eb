"""hangar-edge: the device agent of a Hangar edge fleet.

It enrols a device with an enrolment token and a freshly generated Ed25519
key, pulls the desired state from Hangar (ETag, jitter), downloads the signed
bundle and verifies it before unpacking, runs its program as a supervised
process, reports status, and keeps the program's spans and its own run records
in a local SQLite buffer that it uploads to Hangar's OTLP endpoint when online.
Standard library and ``cryptography`` only; run it as ``hangar-edge`` or
``python -m hangar_edge``."""

__version__ = "0.1.0"
