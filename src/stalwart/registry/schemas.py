"""Input schemas and training profiles of model versions, in the registry's database.

Every schema a version ever had is kept as a numbered revision: the one inferred at
registration (``source="inferred"``) and each one a person attached after editing it
(``source="edited"``). One revision per version is *active*, the one that serves. Attaching
an edited schema makes it active; an earlier revision can be activated again; inferring
again never displaces an active schema a person chose.

Revisions are allocated like model versions: one ``UPDATE ... RETURNING`` on the version's
head row inside a write transaction, so two processes attaching at once get distinct
numbers on SQLite and PostgreSQL alike, and the active pointer is a single column that is
always one existing revision.

>>> store = SchemaStore(registry.db)                                       # doctest: +SKIP
>>> store.attach("churn", 3, Schema.from_file("churn.yaml")).revision      # doctest: +SKIP
2
>>> store.active("churn", 3).source                                        # doctest: +SKIP
'edited'
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, Row, select

from stalwart.errors import ConfigError, ModelNotFound, SchemaNotFound, VersionNotFound
from stalwart.registry.audit import append_event, process_actor
from stalwart.storage import Database
from stalwart.storage import tables as t

if TYPE_CHECKING:
    from stalwart.monitoring.profiles import Profile
    from stalwart.registry.signature import Signature
    from stalwart.validation.schema import Schema

__all__ = ["MIN_SAMPLE_ROWS", "Learned", "SchemaRevision", "SchemaStore", "learn_from_sample"]

Source = Literal["inferred", "edited"]

# A schema inferred from fewer rows than this would reject much of what is normal: a
# sample that small describes the model's inputs (the signature), not their distribution.
MIN_SAMPLE_ROWS = 50


@dataclass(frozen=True, slots=True)
class SchemaRevision:
    """One stored revision of a version's input schema."""

    name: str
    version: int
    revision: int
    source: Source
    schema: Schema
    note: str
    created_at: float
    active: bool

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class SchemaStore:
    """Schema revisions and training profiles over a :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- schemas ----------------------------------------------------------------------

    def save_inferred(self, name: str, version: int, schema: Schema, *, note: str = "", actor: str | None = None) -> SchemaRevision:
        """Store a schema learned from data; it becomes active only if none is yet.
        ``actor``: who, for the audit log (default ``user@host`` of this process)."""
        return self._add(name, version, schema, "inferred", note, activate=False, actor=_who(actor))

    def attach(
        self,
        name: str,
        version: int,
        schema: Schema,
        *,
        note: str = "",
        actor: str | None = None,
        source: Source = "edited",
    ) -> SchemaRevision:
        """Store a schema a person edited (or wrote); it becomes the active one.
        ``actor``: who, for the audit log (default ``user@host`` of this process)."""
        return self._add(name, version, schema, source, note, activate=True, actor=_who(actor))

    def activate(self, name: str, version: int, revision: int, *, actor: str | None = None) -> SchemaRevision:
        """Make an existing revision the one that serves (``actor`` as for :meth:`attach`)."""
        who = _who(actor)
        now = time.time()
        with self.db.write() as conn:
            _require_version(conn, name, version)
            exists = conn.execute(
                select(t.model_schemas.c.revision).where(
                    t.model_schemas.c.name == name,
                    t.model_schemas.c.version == version,
                    t.model_schemas.c.revision == revision,
                )
            ).scalar_one_or_none()
            if exists is None:
                raise SchemaNotFound(f"{name}:{version}", revision)
            conn.execute(
                t.model_schema_heads.update()
                .where(t.model_schema_heads.c.name == name, t.model_schema_heads.c.version == version)
                .values(active_revision=revision, updated_at=now)
            )
            _audit(conn, now, who, "schema.activate", name, version, {"revision": revision})
        return self.get(name, version, revision)

    def active(self, name: str, version: int) -> SchemaRevision | None:
        """The revision that serves, or None when the version has no schema."""
        heads, schemas = t.model_schema_heads, t.model_schemas
        with self.db.read() as conn:
            row = conn.execute(
                select(schemas)
                .join(
                    heads,
                    (heads.c.name == schemas.c.name)
                    & (heads.c.version == schemas.c.version)
                    & (heads.c.active_revision == schemas.c.revision),
                )
                .where(schemas.c.name == name, schemas.c.version == version)
            ).one_or_none()
        return None if row is None else _revision(row, active=True)

    def get(self, name: str, version: int, revision: int | None = None) -> SchemaRevision:
        """One revision (the active one when ``revision`` is None)."""
        if revision is None:
            found = self.active(name, version)
            if found is None:
                with self.db.read() as conn:
                    _require_version(conn, name, version)
                raise SchemaNotFound(f"{name}:{version}")
            return found
        for rev in self.revisions(name, version):
            if rev.revision == revision:
                return rev
        raise SchemaNotFound(f"{name}:{version}", revision)

    def revisions(self, name: str, version: int) -> list[SchemaRevision]:
        """Every revision of the version's schema, oldest first (empty when it has none)."""
        schemas, heads = t.model_schemas, t.model_schema_heads
        with self.db.read() as conn:
            _require_version(conn, name, version)
            active = conn.execute(
                select(heads.c.active_revision).where(heads.c.name == name, heads.c.version == version)
            ).scalar_one_or_none()
            rows = conn.execute(
                select(schemas)
                .where(schemas.c.name == name, schemas.c.version == version)
                .order_by(schemas.c.revision)
            ).all()
        return [_revision(r, active=r.revision == active) for r in rows]

    def active_revisions(self) -> dict[tuple[str, int], int]:
        """``{(model, version): active revision}`` in one query (what servers poll, to
        rebuild a model's validation when someone attaches or activates a schema)."""
        heads = t.model_schema_heads
        with self.db.read() as conn:
            rows = conn.execute(select(heads.c.name, heads.c.version, heads.c.active_revision)).all()
        return {(name, int(version)): int(active) for name, version, active in rows}

    def _add(
        self,
        name: str,
        version: int,
        schema: Schema,
        source: Source,
        note: str,
        *,
        activate: bool,
        actor: str,
    ) -> SchemaRevision:
        revision = self.db.transact(
            lambda conn: self.add_in(conn, name, version, schema, source, note, activate=activate, actor=actor)
        )
        return self.get(name, version, revision)

    def add_in(
        self,
        conn: Connection,
        name: str,
        version: int,
        schema: Schema,
        source: Source,
        note: str,
        *,
        activate: bool,
        actor: str,
    ) -> int:
        """Store a revision inside the caller's write transaction; returns its number."""
        heads = t.model_schema_heads
        now = time.time()
        _require_version(conn, name, version)
        conn.execute(
            self.db.insert_ignoring_conflicts(
                heads, name=name, version=version, latest_revision=0, active_revision=0, updated_at=now
            )
        )
        revision, active = conn.execute(
            heads.update()
            .where(heads.c.name == name, heads.c.version == version)
            .values(latest_revision=heads.c.latest_revision + 1, updated_at=now)
            .returning(heads.c.latest_revision, heads.c.active_revision)
        ).one()
        conn.execute(
            t.model_schemas.insert().values(
                name=name,
                version=version,
                revision=revision,
                source=source,
                body=schema.to_dict(),
                note=note,
                created_at=now,
            )
        )
        if activate or active == 0:
            conn.execute(
                heads.update()
                .where(heads.c.name == name, heads.c.version == version)
                .values(active_revision=revision)
            )
        action = "schema.infer" if source == "inferred" else "schema.attach"
        _audit(conn, now, actor, action, name, version, {"revision": int(revision), "note": note})
        return int(revision)

    # -- training profiles ---------------------------------------------------------------

    def save_profile(self, name: str, version: int, profile: Profile, *, kind: str = "training") -> None:
        """Store (or replace) a profile of the version's data, ``training`` by default."""
        self.db.transact(lambda conn: self.save_profile_in(conn, name, version, profile, kind=kind))

    def save_profile_in(self, conn: Connection, name: str, version: int, profile: Profile, *, kind: str = "training") -> None:
        """:meth:`save_profile` inside the caller's write transaction."""
        now = time.time()
        profiles = t.model_profiles
        _require_version(conn, name, version)
        conn.execute(
            profiles.delete().where(
                profiles.c.name == name, profiles.c.version == version, profiles.c.kind == kind
            )
        )
        conn.execute(
            profiles.insert().values(
                name=name, version=version, kind=kind, rows=profile.rows,
                body=profile.to_dict(), created_at=now,
            )
        )

    def profile(self, name: str, version: int, *, kind: str = "training") -> Profile | None:
        """The stored profile, or None."""
        from stalwart.monitoring.profiles import Profile

        profiles = t.model_profiles
        with self.db.read() as conn:
            body = conn.execute(
                select(profiles.c.body).where(
                    profiles.c.name == name, profiles.c.version == version, profiles.c.kind == kind
                )
            ).scalar_one_or_none()
        return None if body is None else Profile.from_dict(body)

    def save_learned(self, name: str, version: int, learned: Learned, *, actor: str | None = None) -> None:
        """Store what :func:`learn_from_sample` found at registration, in one transaction."""
        who = _who(actor)
        self.db.transact(lambda conn: self.save_learned_in(conn, name, version, learned, actor=who))

    def save_learned_in(self, conn: Connection, name: str, version: int, learned: Learned, *, actor: str) -> None:
        """:meth:`save_learned` inside the caller's write transaction (the registration's,
        so a version is never visible without its schema and profile)."""
        if learned.profile is not None:
            self.save_profile_in(conn, name, version, learned.profile)
        # An inferred schema never displaces one a person chose; a given one is the choice.
        activate = learned.source != "inferred"
        self.add_in(conn, name, version, learned.schema, learned.source, learned.note, activate=activate, actor=actor)


@dataclass(frozen=True, slots=True)
class Learned:
    """A schema (and maybe a profile) worked out at registration, stored once the version exists."""

    schema: Schema
    source: Source
    profile: Profile | None
    note: str


def learn_from_sample(
    sample: object | None,
    signature: Signature,
    *,
    schema: Schema | Mapping[str, Any] | None = None,
    training_profile: Profile | Mapping[str, Any] | None = None,
    training_data: object | None = None,
) -> Learned | None:
    """The schema a new version gets, decided before it is stored (so a bad one aborts).

    In order: an explicit ``schema`` (stored as ``edited``: a person wrote it); a schema
    inferred from ``training_profile``; from ``training_data`` (the training set's feature
    columns, in model input order, profiled whole); from ``sample`` when it is a DataFrame
    or a mapping of columns with at least :data:`MIN_SAMPLE_ROWS` rows. Anything else (an
    array, a handful of rows) gets no schema; attach one later. The schema's features must
    match the signature: one input per feature, or one matrix column each.
    """
    from stalwart.monitoring.profiles import Profile
    from stalwart.validation.schema import Schema, infer_schema

    if schema is not None:
        chosen = schema if isinstance(schema, Schema) else Schema.from_dict(schema, source="schema=")
        profile = _as_profile(training_profile)
        _check_fits(chosen, signature, explicit=True)
        return Learned(chosen, "edited", profile, "given at registration")
    if training_profile is not None:
        profile = _as_profile(training_profile)
        if profile is None:  # pragma: no cover - _as_profile only returns None for None
            return None
        inferred = infer_schema(profile)
        _check_fits(inferred, signature, explicit=True)
        return Learned(inferred, "inferred", profile, f"inferred from the training profile ({profile.rows} rows)")
    if training_data is not None:
        profile = Profile.of(training_data)
        inferred = infer_schema(profile)
        if not _check_fits(inferred, signature, explicit=False):
            return None
        return Learned(inferred, "inferred", profile, f"inferred from the training set ({profile.rows} rows)")
    if sample is None or not _is_table(sample):
        return None
    profile = Profile.of(sample)
    if profile.rows < MIN_SAMPLE_ROWS:
        return None
    inferred = infer_schema(profile)
    if not _check_fits(inferred, signature, explicit=False):
        return None
    return Learned(inferred, "inferred", profile, f"inferred from the registration sample ({profile.rows} rows)")


def _is_table(sample: object) -> bool:
    if isinstance(sample, Mapping):
        return True
    return getattr(sample, "columns", None) is not None and hasattr(sample, "__getitem__")


def _as_profile(value: Profile | Mapping[str, Any] | None) -> Profile | None:
    from stalwart.monitoring.profiles import Profile

    if value is None or isinstance(value, Profile):
        return value
    return Profile.from_dict(value)


def _check_fits(schema: Schema, signature: Signature, *, explicit: bool) -> bool:
    """Whether the schema's features line up with the model's inputs (raise if ``explicit``)."""
    inputs = signature.inputs
    problem: str | None = None
    if signature.is_columnar:
        unknown = [name for name in schema.features if name not in signature.input_names]
        if unknown:
            problem = (
                f"the schema names {', '.join(repr(u) for u in unknown[:5])}, which the model "
                f"does not take (its inputs: {', '.join(signature.input_names[:10])})"
            )
    else:
        width = inputs[0].shape[1]
        if width != -1 and width != len(schema.features):
            problem = (
                f"the schema has {len(schema.features)} features but the model's input "
                f"'{inputs[0].name}' has {width} columns"
            )
        elif any(f.kind in ("categorical", "string") for f in schema.features.values()):
            problem = f"the model takes one matrix of numbers ('{inputs[0].name}'), but the schema has text features"
    if problem is None:
        return True
    if explicit:
        raise ConfigError(f"{problem}; give a schema whose features are the model's inputs")
    return False


def _require_version(conn: Connection, name: str, version: int) -> None:
    found = conn.execute(
        select(t.model_versions.c.version).where(
            t.model_versions.c.name == name, t.model_versions.c.version == version
        )
    ).scalar_one_or_none()
    if found is not None:
        return
    model = conn.execute(select(t.models.c.name).where(t.models.c.name == name)).scalar_one_or_none()
    if model is None:
        raise ModelNotFound(name)
    raise VersionNotFound(name, version)


def _audit(conn: Connection, now: float, actor: str, action: str, name: str, version: int, detail: dict[str, Any]) -> None:
    append_event(conn, actor, action, f"{name}:{version}", detail, at=now)


def _who(actor: str | None) -> str:
    return actor if actor is not None else process_actor()


def _revision(row: Row[Any], *, active: bool) -> SchemaRevision:
    from stalwart.validation.schema import Schema

    return SchemaRevision(
        name=row.name,
        version=int(row.version),
        revision=int(row.revision),
        source=row.source,
        schema=Schema.from_dict(row.body, source=f"stored schema {row.name}:{row.version} revision {row.revision}"),
        note=row.note,
        created_at=float(row.created_at),
        active=active,
    )
