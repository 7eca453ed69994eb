"""Encryption at rest for secrets and target credentials.

Values are encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under the keys in
``settings.HANGAR_ENCRYPTION_KEYS``; the first key encrypts and every key
decrypts, so keys rotate by prepending a new one (``manage.py rotate_keys``
re-encrypts). The database only ever holds the ``fernet:`` token.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models

PREFIX = "fernet:"


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(k) for k in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.HANGAR_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return PREFIX + fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    if not token.startswith(PREFIX):
        raise ValueError("value is not an encrypted token")
    try:
        return fernet().decrypt(token[len(PREFIX) :].encode()).decode()
    except InvalidToken as exc:
        raise ValueError("cannot decrypt: wrong HANGAR_ENCRYPTION_KEY?") from exc


def rotate(token: str) -> str:
    return PREFIX + fernet().rotate(token[len(PREFIX) :].encode()).decode()


class EncryptedTextField(models.TextField):
    """A text column whose stored form is always a Fernet token."""

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None:
            return None
        return encrypt(value)


class EncryptedJSONField(models.TextField):
    """A JSON document stored encrypted (target connection settings)."""

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return {}
        return json.loads(decrypt(value))

    def to_python(self, value: Any):
        if isinstance(value, dict):
            return value
        if value in (None, ""):
            return {}
        return json.loads(value)

    def get_prep_value(self, value):
        if value is None:
            value = {}
        return encrypt(json.dumps(value, sort_keys=True))

    def value_to_string(self, obj):  # used by dumpdata: never dump plaintext
        return self.get_prep_value(self.value_from_object(obj))
