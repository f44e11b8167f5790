"""The factory's shared secrets: made by whichever member asks first, the same for all."""

from __future__ import annotations

import secrets

from sqlalchemy.exc import IntegrityError

from adapters.store.db import Store, utcnow_iso
from adapters.store.tables import SecretRow


def factory_secret(store: Store, name: str) -> bytes:
    """The secret called ``name``, made (32 random bytes) on first use. Two members asking
    at once both end up with the one that was stored first."""
    for _ in range(3):
        with store.session() as s:
            row = s.get(SecretRow, name)
            if row is not None:
                return bytes.fromhex(row.value)
            s.add(SecretRow(name=name, value=secrets.token_hex(32), created_at=utcnow_iso()))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()  # another member stored it first: read theirs
    raise RuntimeError(f"could not read or store the factory secret {name!r}")
