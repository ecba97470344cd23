"""Our ids as the API writes them."""

from __future__ import annotations

import re
from uuid import UUID

# A UUID as RFC 9562 writes it and the OpenAPI document's `format: uuid` takes it: 8-4-4-4-12 hex digits (either case).
# Python's UUID() also takes 32 digits with no hyphens, braces, `urn:uuid:` and hyphens anywhere: the document refuses
# those, so the API does too (each is no such payment, or a malformed body), never another spelling of an id.
CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII)


def canonical_uuid(text: str) -> UUID | None:
    """The UUID `text` writes in the canonical form, else None."""
    return UUID(text) if CANONICAL_UUID.fullmatch(text) else None
