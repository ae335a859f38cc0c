"""The queries of claims (collection `claims`): the leases that let workers share work.

Only the store's own single-document guarantees coordinate, no transactions and no consensus of
our own, so it works the same on nx-27017 and on a MongoDB replica set (with majority writes
and retryable writes, a claim acknowledged to one worker is never lost on a fail-over):

- claim: `insert_one` on the deterministic `_id`; a DuplicateKeyError means someone holds it;
- renew: `replace_one({_id, owner, revision})` with revision + 1 and a later expiry: matches
  only while we still own the revision we wrote, else the lease is lost;
- take over: read the claim, decide it is free (expired by our clock, or its owner's process
  is gone on this host), then `replace_one({_id, revision})` with us as owner: of two workers
  racing for it, and of a late renewal racing a takeover, exactly one replace matches;
- release: `delete_one({_id, owner})`: never deletes a claim someone else took over.

Whole-document replaces, never `$set`: nx-27017 would store a `$set` datetime as a string and
`expires_at` must stay a date. tests/workers/ checks these rules on nx-27017 with racing
processes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from evaluator.records import SCHEMA_VERSION, ClaimKind, ClaimRecord

# Decides whether a stored claim may be taken over now (`evaluator/workers.py` passes one that
# checks the expiry and, on the same host, whether the owner's process still lives).
IsFree = Callable[[ClaimRecord, datetime], bool]


def _doc(claim: ClaimRecord) -> dict[str, Any]:
    doc = claim.to_doc()
    doc["schema_version"] = SCHEMA_VERSION
    return doc


def _body(claim: ClaimRecord) -> dict[str, Any]:
    doc = _doc(claim)
    doc.pop("_id")
    return doc


def expired(claim: ClaimRecord, now: datetime) -> bool:
    return claim.expires_at <= now


class Leases:
    """Claims in one collection; every method is one or two single-document operations."""

    def __init__(self, collection: Collection[dict[str, Any]]) -> None:
        self._claims = collection

    def get(self, key: str) -> ClaimRecord | None:
        doc = self._claims.find_one({"_id": key})
        return None if doc is None else ClaimRecord.from_doc(doc)

    def claim(
        self,
        key: str,
        kind: ClaimKind,
        *,
        owner: str,
        host: str,
        pid: int,
        owner_started_at: datetime,
        now: datetime,
        lease_s: float,
        is_free: IsFree = expired,
    ) -> ClaimRecord | None:
        """Our claim on `key` (new or taken over), or None while someone else holds it."""
        mine = ClaimRecord(
            _id=key,
            kind=kind,
            owner=owner,
            host=host,
            pid=pid,
            owner_started_at=owner_started_at,
            claimed_at=now,
            expires_at=now + timedelta(seconds=lease_s),
        )
        try:
            self._claims.insert_one(_doc(mine))
            return mine
        except DuplicateKeyError:
            pass
        current = self.get(key)
        if current is None:  # released between our insert and our read: try once more
            try:
                self._claims.insert_one(_doc(mine))
                return mine
            except DuplicateKeyError:
                return None
        if current.owner == owner:  # ours already (a claim of ours that we lost track of)
            return current
        if not is_free(current, now):
            return None
        taken = mine.model_copy(
            update={
                "revision": current.revision + 1,
                "takeovers": current.takeovers + 1,
                "previous_owner": current.owner,
            }
        )
        result = self._claims.replace_one({"_id": key, "revision": current.revision}, _body(taken))
        return taken if result.matched_count == 1 else None

    def renew(self, claim: ClaimRecord, now: datetime, lease_s: float) -> ClaimRecord | None:
        """The renewed claim, or None when it is no longer ours (taken over after it expired)."""
        renewed = claim.model_copy(
            update={"revision": claim.revision + 1, "expires_at": now + timedelta(seconds=lease_s)}
        )
        result = self._claims.replace_one(
            {"_id": claim.id, "owner": claim.owner, "revision": claim.revision}, _body(renewed)
        )
        return renewed if result.matched_count == 1 else None

    def release(self, claim: ClaimRecord) -> bool:
        """Delete our claim; False when it was no longer ours (nothing deleted)."""
        return self._claims.delete_one({"_id": claim.id, "owner": claim.owner}).deleted_count == 1

    def held_by(self, owner: str) -> list[ClaimRecord]:
        """The claims `owner` holds now (or held when it died)."""
        return [ClaimRecord.from_doc(d) for d in self._claims.find({"owner": owner})]
