"""The model registry: versions, their artifacts and metadata, in SQL.

Versions are integers the registry assigns. Allocation is one ``UPDATE ... RETURNING`` on
the model's row inside a write transaction, so two processes registering at once (on
SQLite or on PostgreSQL) always get distinct, consecutive versions.

>>> registry = Registry.open(Settings(home="/tmp/stalwart-doctest"))  # doctest: +SKIP
>>> mv = registry.register("iris", model, sample=X)                    # doctest: +SKIP
>>> mv.version                                                           # doctest: +SKIP
1
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Row, select

from stalwart.config import Settings
from stalwart.errors import ConfigError, FlavorError, ModelNotFound, VersionNotFound
from stalwart.registry.artifacts import ArtifactStore
from stalwart.registry.audit import AuditEvent, append_event, process_actor, query_events
from stalwart.registry.flavors import LoadPolicy, Predictor, detect_flavor, get_flavor
from stalwart.registry.memory import MemoryRecords
from stalwart.registry.schemas import SchemaStore, learn_from_sample
from stalwart.registry.signature import Signature, sample_arrays
from stalwart.storage import Database
from stalwart.storage import tables as t

if TYPE_CHECKING:
    from stalwart.monitoring.profiles import Profile
    from stalwart.validation.schema import Schema

__all__ = ["ModelSummary", "ModelVersion", "Registry"]

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registered, immutable version of a model."""

    name: str
    version: int
    flavor: str
    sha256: str
    artifact_file: str
    artifact_size: int
    signature: Signature
    flavor_options: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    trust: str | None
    training: dict[str, Any] | None
    description: str
    created_at: float

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True, slots=True)
class ModelSummary:
    name: str
    latest_version: int
    description: str
    created_at: float
    versions: list[int] = field(default_factory=list)


class Registry:
    """Model versions in a :class:`Database`, artifacts in an :class:`ArtifactStore`."""

    def __init__(self, db: Database, artifacts: ArtifactStore, *, policy: LoadPolicy | None = None) -> None:
        """``policy``: what loading a version may run (default: pickles as registered, no
        python-flavor classes)."""
        self.db = db
        self.artifacts = artifacts
        self.schemas = SchemaStore(db)
        self.memory = MemoryRecords(db)  # each version's memory as last measured at load
        self.policy = policy if policy is not None else LoadPolicy()

    @classmethod
    def open(cls, settings: Settings) -> Registry:
        """The registry the settings point at (migrating its schema if needed), loading
        what ``STALWART_ALLOW_PICKLE`` and ``STALWART_PYTHON_MODULES`` allow."""
        policy = LoadPolicy(allow_pickle=settings.allow_pickle, python_modules=settings.allowed_python_modules())
        return cls(Database(settings.resolved_db_url()), ArtifactStore(settings.artifact_root()), policy=policy)

    def register(
        self,
        name: str,
        model: object,
        *,
        flavor: str | None = None,
        signature: Signature | Mapping[str, Any] | None = None,
        sample: object | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        description: str = "",
        trust_pickle: bool = False,
        trusted_types: Sequence[str] | None = None,
        training: Mapping[str, Any] | None = None,
        training_set: Any = None,
        flavor_options: Mapping[str, Any] | None = None,
        schema: Schema | Mapping[str, Any] | None = None,
        training_profile: Profile | Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> ModelVersion:
        """Save ``model`` as the next version of ``name``.

        ``flavor`` is detected from the model's type when omitted. ``signature`` is inferred
        from the model and ``sample`` (a few input rows) when omitted. ``trust_pickle``
        stores the model with pickle, and is recorded on the version. ``training_set`` (a
        :class:`stalwart.features.TrainingSet`) records the features, their FeatureSet
        versions and the data profile, and gives the sample.

        The version's input schema is ``schema`` when given, else inferred from
        ``training_profile``, else from the training set's features, else from ``sample``
        when it is a DataFrame or mapping of columns of at least 50 rows (see
        :func:`stalwart.registry.schemas.learn_from_sample`); it is kept in :attr:`schemas`.

        The audit log records the registration (and the schema) as done by ``actor``, by
        default ``user@host`` of this process.
        """
        _check_name(name)
        who = actor if actor is not None else process_actor()
        if training_set is not None:
            training = training_set.metadata()
            if training_profile is None and schema is None:
                training_profile = training_set.profile
            if sample is None:
                sample = _training_sample(model, training_set)
        chosen = get_flavor(flavor) if flavor else detect_flavor(model)
        options = dict(flavor_options or {})
        options.update(trust_pickle=trust_pickle, trusted_types=list(trusted_types or []))
        saved = chosen.serialize(model, sample=sample, options=options)
        if signature is None:
            try:
                sig = chosen.signature(model, sample, saved.options)
            except (KeyError, ValueError, TypeError) as exc:
                # Inferring outputs calls the model on the sample; a sample that does not
                # fit is the user's to fix, said as such rather than as a library traceback.
                raise FlavorError(
                    f"the model cannot predict on the sample, so its signature cannot be "
                    f"inferred: {exc}; pass a sample shaped like the training data, or signature="
                ) from exc
        elif isinstance(signature, Signature):
            sig = signature
        else:
            sig = Signature.from_dict(signature)
        # The live object's own module is the caller's, imported already: loading the artifact
        # back imports nothing new, so it is allowed here whatever the server allows.
        own = replace(self.policy, python_modules=(*self.policy.python_modules, type(model).__module__))
        self._check_loads(chosen.name, saved.data, saved.options, saved.trust, sig, sample, own)
        # Worked out before anything is stored, so a schema that does not fit aborts.
        learned = learn_from_sample(
            sample, sig, schema=schema, training_profile=training_profile,
            training_data=training_set.frame[training_set.features] if training_set is not None and training_set.frame is not None else None,
        )
        stored = self.artifacts.put(saved.data, chosen.suffix)
        row = {
            "flavor": chosen.name,
            "artifact_sha256": stored.sha256,
            "artifact_file": stored.file,
            "artifact_size": stored.size,
            "signature": sig.to_dict(),
            "flavor_options": saved.options,
            "metrics": _clean_metrics(metrics),
            "tags": {str(k): str(v) for k, v in (tags or {}).items()},
            "trust": saved.trust,
            "training": dict(training) if training is not None else None,
            "description": description,
        }
        # One transaction: a version becomes visible together with its schema and profile,
        # or not at all (a registering process killed halfway leaves nothing half-made).
        def insert(conn: Connection) -> int:
            version = self._insert_version(conn, name, row, who)
            if learned is not None:
                self.schemas.save_learned_in(conn, name, version, learned, actor=who)
            return version

        return self.get(name, self.db.transact(insert))

    def register_file(
        self,
        name: str,
        path: str,
        *,
        flavor: str,
        signature: Signature | Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        description: str = "",
        trust_pickle: bool = False,
        trusted_types: Sequence[str] | None = None,
    ) -> ModelVersion:
        """Register an artifact file saved elsewhere (``.skops``, ``.onnx``, LightGBM text,
        XGBoost ``.ubj``/``.json``, or a pickle with ``trust_pickle=True``)."""
        with open(path, "rb") as fh:
            data = fh.read()
        chosen = get_flavor(flavor)
        options: dict[str, Any] = {"trusted_types": list(trusted_types or [])}
        trust = "pickle" if trust_pickle else None
        model = chosen.deserialize(data, options, trust=trust, policy=self.policy)
        if chosen.name == "onnx":
            # An onnxruntime session cannot give its graph back; the file's bytes are the model.
            model = data
        # Saved again through the flavor, which records what the file alone may not state
        # (a tree model's objective, the types skops was told to trust).
        return self.register(
            name, model, flavor=chosen.name, signature=signature, metrics=metrics, tags=tags,
            description=description, trust_pickle=trust_pickle, trusted_types=trusted_types,
        )

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """A version of ``name``; the latest when ``version`` is None."""
        if not _valid_name(name):
            # Nothing by that name can be registered; PostgreSQL would also refuse some such
            # names (a NUL byte) with an error of its own rather than "not found".
            raise ModelNotFound(name)
        with self.db.read() as conn:
            if version is None:
                latest = conn.execute(
                    select(t.models.c.latest_version).where(t.models.c.name == name)
                ).scalar_one_or_none()
                if latest is None:
                    raise ModelNotFound(name)
                version = int(latest)
            row = conn.execute(
                select(t.model_versions).where(
                    t.model_versions.c.name == name, t.model_versions.c.version == version
                )
            ).one_or_none()
            if row is None:
                exists = conn.execute(
                    select(t.models.c.name).where(t.models.c.name == name)
                ).scalar_one_or_none()
                if exists is None:
                    raise ModelNotFound(name)
                raise VersionNotFound(name, version)
        return _version_from_row(row)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        if not _valid_name(name):
            raise ModelNotFound(name)
        with self.db.read() as conn:
            rows = conn.execute(
                select(t.model_versions)
                .where(t.model_versions.c.name == name)
                .order_by(t.model_versions.c.version)
            ).all()
        if not rows:
            raise ModelNotFound(name)
        return [_version_from_row(r) for r in rows]

    def models(self) -> list[ModelSummary]:
        """Every model, with its version numbers."""
        with self.db.read() as conn:
            heads = conn.execute(select(t.models).order_by(t.models.c.name)).all()
            numbers = conn.execute(
                select(t.model_versions.c.name, t.model_versions.c.version).order_by(
                    t.model_versions.c.name, t.model_versions.c.version
                )
            ).all()
        by_name: dict[str, list[int]] = {}
        for n, v in numbers:
            by_name.setdefault(n, []).append(int(v))
        return [
            ModelSummary(
                name=h.name,
                latest_version=int(h.latest_version),
                description=h.description,
                created_at=float(h.created_at),
                versions=by_name.get(h.name, []),
            )
            for h in heads
        ]

    def latest_versions(self) -> dict[str, int]:
        """``{model name: latest version}`` in one query (what servers poll)."""
        with self.db.read() as conn:
            rows = conn.execute(select(t.models.c.name, t.models.c.latest_version)).all()
        return {name: int(version) for name, version in rows}

    def load(self, mv: ModelVersion) -> Predictor:
        """Verify the artifact's sha256, deserialise it and wrap it for serving."""
        flavor = get_flavor(mv.flavor)
        data = self.artifacts.read_verified(mv.artifact_file, mv.sha256)
        model = flavor.deserialize(data, mv.flavor_options, trust=mv.trust, policy=self.policy)
        return flavor.predictor(model, mv.signature, mv.flavor_options)

    def audit(self, actor: str, action: str, subject: str, detail: Mapping[str, Any]) -> AuditEvent:
        """Append an event to the audit log: ``actor`` (a token's name, or ``user@host``)
        did ``action`` (dotted, e.g. ``rollout.weight``) to ``subject`` (e.g. a deployment
        or ``model:version``); ``detail`` is JSON (numbers kept exactly, never secrets).
        The event joins the log's hash chain (:mod:`stalwart.registry.audit`)."""
        return self.db.transact(lambda conn: append_event(conn, actor, action, subject, detail))

    def record_event(self, actor: str, action: str, subject: str, detail: Mapping[str, Any]) -> None:
        """:meth:`audit` under its earlier name."""
        self.audit(actor, action, subject, detail)

    def events(
        self,
        subject: str | None = None,
        limit: int | None = 100,
        *,
        action: str | None = None,
        actor: str | None = None,
        since: float | None = None,
    ) -> list[dict[str, Any]]:
        """The newest audit events first, as dicts, filtered as
        :func:`~stalwart.registry.audit.query_events` does (``subject`` also matches a
        model name's versions)."""
        found = query_events(self.db, action=action, subject=subject, actor=actor, since=since, limit=limit)
        return [event.as_dict() for event in found]

    def _insert_version(self, conn: Connection, name: str, row: dict[str, Any], actor: str) -> int:
        """Allocate the next version of ``name`` and insert its row; returns the number."""
        now = time.time()
        conn.execute(
            self.db.insert_ignoring_conflicts(
                t.models, name=name, latest_version=0, description="", created_at=now
            )
        )
        version = conn.execute(
            t.models.update()
            .where(t.models.c.name == name)
            .values(latest_version=t.models.c.latest_version + 1)
            .returning(t.models.c.latest_version)
        ).scalar_one()
        conn.execute(t.model_versions.insert().values(name=name, version=version, created_at=now, **row))
        detail = {"sha256": row["artifact_sha256"], "flavor": row["flavor"], "trust": row["trust"]}
        append_event(conn, actor, "register", f"{name}:{version}", detail, at=now)
        return int(version)

    def _check_loads(
        self,
        flavor_name: str,
        data: bytes,
        options: Mapping[str, Any],
        trust: str | None,
        signature: Signature,
        sample: object | None,
        policy: LoadPolicy,
    ) -> None:
        """Refuse to register what could not be served: load the bytes back, and when a
        sample is given, call the loaded model on it through the serving path."""
        flavor = get_flavor(flavor_name)
        model = flavor.deserialize(data, options, trust=trust, policy=policy)
        predictor = flavor.predictor(model, signature, options)
        if sample is not None and signature.outputs:
            try:
                predictor.predict(sample_arrays(sample, signature.inputs), signature.output_names)
            except (KeyError, ValueError, TypeError) as exc:
                raise FlavorError(
                    f"the model, loaded back from its artifact, cannot predict on the sample "
                    f"through signature {signature.input_names} -> {signature.output_names}: {exc}"
                ) from exc


def _training_sample(model: object, training_set: Any) -> object:
    """Rows shaped the way the model was fitted: named columns if it knows feature names,
    otherwise the feature matrix in training-set order."""
    head = training_set.sample(100)
    if getattr(model, "feature_names_in_", None) is not None:
        return head
    try:
        return head.to_numpy(dtype="float64")
    except (TypeError, ValueError):
        return head


def _valid_name(name: str) -> bool:
    return bool(name) and len(name) <= 200 and set(name) <= _NAME_CHARS and name[0] not in "-."


def _check_name(name: str) -> None:
    if not _valid_name(name):
        raise ConfigError(
            f"model name {name!r} is not allowed; use letters, digits, '-', '_' and '.', "
            f"starting with a letter or digit, at most 200 characters"
        )


def _clean_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    cleaned: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(f"metric '{key}' is {number}; metrics must be finite numbers")
        cleaned[str(key)] = number
    return cleaned


def _version_from_row(row: Row[Any]) -> ModelVersion:
    return ModelVersion(
        name=row.name,
        version=int(row.version),
        flavor=row.flavor,
        sha256=row.artifact_sha256,
        artifact_file=row.artifact_file,
        artifact_size=int(row.artifact_size),
        signature=Signature.from_dict(row.signature),
        flavor_options=dict(row.flavor_options or {}),
        metrics=dict(row.metrics or {}),
        tags=dict(row.tags or {}),
        trust=row.trust,
        training=row.training,
        description=row.description,
        created_at=float(row.created_at),
    )
