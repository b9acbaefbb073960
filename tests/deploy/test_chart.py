"""deploy/helm/stalwart rendered by Helm's own engine and checked as a cluster would: every
object against the Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields
fail), the custom resources against models generated from their CRDs, the probes against
the real server's endpoints, the settings against Stalwart's Settings, the secrets by
reference only."""

from __future__ import annotations

from typing import Any

import helm_python
import kubernetes_validate
import pytest
from dockerfile_parse import DockerfileParser

from stalwart.config import Settings, load_settings
from tests.deploy.chart import (
    CHART,
    FULLNAME,
    MINIMAL,
    NAMESPACE,
    ROOT,
    Manifests,
    container,
    render,
)
from tests.deploy.conftest import Exported
from tests.deploy.promql import parse

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the
# validator ships schemas for.
KUBERNETES = ("1.25.0", kubernetes_validate.utils.latest_version())
CUSTOM = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "ServiceMonitor")}
# Every optional object on, every option that changes the pod's shape used.
EVERYTHING: dict[str, Any] = {
    "secret": {"create": True, "values": {"database-url": "postgresql://stalwart:pw@pg/stalwart", "admin-token": "t0ken", "redis-url": "redis://redis:6379/0"}},
    "keda": {"enabled": True, "prometheus": {"serverAddress": "http://prometheus-operated.monitoring.svc:9090"}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "project": {"configMap": "fraud-project"},
    "artifacts": {"existingClaim": "models"},
    "extraEnv": [{"name": "STALWART_OTEL_ENDPOINT", "value": "http://collector:4318"}],
    "nodeSelector": {"kubernetes.io/arch": "amd64"},
    "tolerations": [{"key": "ml", "operator": "Exists", "effect": "NoSchedule"}],
}
CHART_OWNED = {"STALWART_HOME", "STALWART_HOST", "STALWART_PORT", "STALWART_PROJECT"}


def _settings_env() -> tuple[set[str], set[str]]:
    """Stalwart's setting variables: (secret ones, the others), from Settings itself."""
    secret, plain = set(), set()
    for name, field in Settings.model_fields.items():
        (secret if "SecretStr" in repr(field.annotation) else plain).add(f"STALWART_{name.upper()}")
    return secret, plain


def _config_map(manifests: Manifests) -> dict[str, str]:
    data: dict[str, str] = manifests.one("ConfigMap")["data"]
    return data


def _image() -> DockerfileParser:
    parser = DockerfileParser(str(ROOT / "deploy" / "Dockerfile"))
    return parser


def test_helm_lint_finds_nothing() -> None:
    """`helm lint --strict` (warnings are errors) passes on the oldest supported Kubernetes."""
    for version in ("v1.25.0", f"v{KUBERNETES[1]}"):
        report = helm_python.lint(CHART, MINIMAL, strict=True, namespace=NAMESPACE, kube_version=version)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", [MINIMAL, EVERYTHING, {**MINIMAL, "autoscaling": {"enabled": False}}], ids=["minimal", "everything", "fixed-replicas"])
def test_every_object_validates_against_the_kubernetes_schemas(values: dict[str, Any]) -> None:
    """What the API server would accept, field by field, on the oldest and newest releases."""
    manifests = render(values)
    validated = set()
    for manifest in manifests:
        if (manifest["apiVersion"], manifest["kind"]) in CUSTOM:
            continue
        for version in KUBERNETES:
            # Raises ValidationError naming the path, or SchemaNotFoundError for an API
            # version that release does not serve.
            kubernetes_validate.validate(manifest, version, strict=True)
        validated.add(manifest["kind"])
    assert {"ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"} <= validated
    assert validated == manifests.kinds() - {kind for _, kind in CUSTOM}


def _conforms(manifest: dict[str, Any]) -> None:
    """``manifest`` against the model generated from its CRD's openAPIV3Schema: types,
    patterns, enums and required fields by validation, unknown fields by the round trip
    (the model drops what its schema does not name)."""
    from cloudcoil.models.keda.v1alpha1 import ScaledObject
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    model = {"ScaledObject": ScaledObject, "ServiceMonitor": ServiceMonitor}[manifest["kind"]]
    parsed = model.model_validate(manifest)
    assert parsed.model_dump(by_alias=True, exclude_unset=True, mode="json") == manifest, f"{manifest['kind']} has fields its CRD does not define"


@pytest.mark.slow  # importing the prometheus-operator models takes seconds
def test_the_custom_resources_match_their_crds() -> None:
    """The ServiceMonitor and the KEDA ScaledObject are what their operators accept."""
    manifests = render(EVERYTHING)
    custom = [m for m in manifests if (m["apiVersion"], m["kind"]) in CUSTOM]
    assert sorted(m["kind"] for m in custom) == ["ScaledObject", "ServiceMonitor"]
    for manifest in custom:
        _conforms(manifest)
    # The check refuses what the operator would: a field the CRD lacks, a malformed interval.
    monitor = manifests.one("ServiceMonitor")
    typo = {**monitor, "spec": {**monitor["spec"], "endpoint": monitor["spec"]["endpoints"]}}
    with pytest.raises(AssertionError, match="fields its CRD does not define"):
        _conforms(typo)
    endpoint = {**monitor["spec"]["endpoints"][0], "interval": "15 seconds"}
    with pytest.raises(ValueError, match="interval"):
        _conforms({**monitor, "spec": {**monitor["spec"], "endpoints": [endpoint]}})


def test_probes_ask_endpoints_the_server_answers(exported: Exported) -> None:
    """Startup and liveness ask /v2/health/live, readiness /v2/health/ready, on the port
    the server listens on; the real server answers each with 200."""
    manifests = render(MINIMAL)
    main = container(manifests)
    probes = {kind: main[f"{kind}Probe"]["httpGet"] for kind in ("startup", "readiness", "liveness")}
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startup": "/v2/health/live", "readiness": "/v2/health/ready", "liveness": "/v2/health/live",
    }
    (port,) = main["ports"]
    assert all(probe["port"] == port["name"] == "http" for probe in probes.values())
    assert str(port["containerPort"]) == _config_map(manifests)["STALWART_PORT"]
    for probe in probes.values():
        response = exported.server.get(probe["path"])
        assert response.status_code == 200, (probe["path"], response.text)


def test_secret_settings_come_only_from_the_secret() -> None:
    """Every secret setting Stalwart has (its SecretStr fields) is read from the Secret by
    reference; none is in the ConfigMap, and the values refuse one there."""
    secret_settings, _ = _settings_env()
    manifests = render({**MINIMAL, "secret": {**MINIMAL["secret"], "keys": {"database-url": "uri"}}})
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(manifests)["env"] if "valueFrom" in e}
    assert set(refs) == secret_settings
    assert {ref["name"] for ref in refs.values()} == {"stalwart-credentials"}
    assert refs["STALWART_DB_URL"]["key"] == "uri"  # secret.keys renames a key
    assert refs["STALWART_ADMIN_TOKEN"]["key"] == "admin-token"
    required = {name for name, ref in refs.items() if not ref["optional"]}
    assert required == {"STALWART_DB_URL", "STALWART_ADMIN_TOKEN"}
    assert not secret_settings & set(_config_map(manifests))
    assert manifests.of("Secret") == []  # the chart makes none when given one
    with pytest.raises(helm_python.HelmValuesError, match="STALWART_DB_URL"):
        render({**MINIMAL, "config": {"STALWART_DB_URL": "postgresql://u:pw@pg/db"}})


def test_the_chart_says_what_to_set_when_a_secret_is_missing() -> None:
    """Without a Secret the pods cannot share a database or a token: rendering fails and
    names the values to set; secret.create makes one, and rolls the pods when it changes."""
    with pytest.raises(helm_python.HelmRenderError, match=r"secret\.existingSecret"):
        render({})
    with pytest.raises(helm_python.HelmRenderError, match=r"secret\.values\.database-url"):
        render({"secret": {"create": True, "values": {"admin-token": "t"}}})
    manifests = render(EVERYTHING)
    secret = manifests.one("Secret")
    assert secret["metadata"]["name"] == FULLNAME
    assert secret["stringData"] == EVERYTHING["secret"]["values"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container(manifests)["env"] if "valueFrom" in e}
    assert refs == {FULLNAME}
    other = render({**EVERYTHING, "secret": {**EVERYTHING["secret"], "values": {**EVERYTHING["secret"]["values"], "admin-token": "new"}}})
    annotations = [m.one("Deployment")["spec"]["template"]["metadata"]["annotations"] for m in (manifests, other)]
    assert annotations[0]["checksum/secret"] != annotations[1]["checksum/secret"]


def test_config_takes_every_setting_and_refuses_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    """`config` accepts exactly Stalwart's non-secret settings (less the four the chart
    sets), so a misspelt variable fails at install instead of being ignored; the ConfigMap
    rendered is settings Stalwart loads."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    _, plain = _settings_env()
    allowed = set(schema["properties"]["config"]["propertyNames"]["enum"])
    assert allowed == plain - CHART_OWNED, "values.schema.json's config names differ from stalwart.config.Settings"
    with pytest.raises(helm_python.HelmValuesError, match="STALWART_GRACEFULL_SHUTDOWN_SECONDS"):
        render({**MINIMAL, "config": {"STALWART_GRACEFULL_SHUTDOWN_SECONDS": "30"}})
    data = _config_map(render({**MINIMAL, "project": {"file": "/app/project.py"}}))
    assert set(data) <= plain
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.host, settings.port, str(settings.home)) == ("0.0.0.0", 8080, "/var/lib/stalwart")  # noqa: S104 - a container listens on its own interface
    assert str(settings.project) == "/app/project.py"
    assert settings.graceful_shutdown_seconds == 20
    assert settings.model_memory == 1 << 30


@pytest.mark.parametrize(
    ("graceful", "drain_seconds", "expected"),
    [(None, None, 5 + 20 + 15), ("45.5", None, 5 + 46 + 15), ("3", None, 5 + 3 + 15), ("3", "2.5", 5 + 6 + 15)],
)
def test_the_pod_outlives_the_servers_graceful_shutdown(graceful: str | None, drain_seconds: str | None, expected: int) -> None:
    """terminationGracePeriodSeconds covers the pre-stop pause, the server's own drain
    (STALWART_DRAIN_SECONDS plus STALWART_GRACEFUL_SHUTDOWN_SECONDS, rounded up) and the
    flush after it: the kubelet's SIGKILL never cuts a drain short."""
    values: dict[str, Any] = dict(MINIMAL)
    config = {}
    if graceful is not None:
        config["STALWART_GRACEFUL_SHUTDOWN_SECONDS"] = graceful
    if drain_seconds is not None:
        config["STALWART_DRAIN_SECONDS"] = drain_seconds
    if config:
        values["config"] = config
    manifests = render(values)
    pod = manifests.one("Deployment")["spec"]["template"]["spec"]
    settings = _config_map(manifests)
    drain = float(settings["STALWART_GRACEFUL_SHUTDOWN_SECONDS"]) + float(settings.get("STALWART_DRAIN_SECONDS", "0"))
    sleep = int(container(manifests)["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] == expected
    assert pod["terminationGracePeriodSeconds"] > sleep + drain


def test_one_autoscaler_owns_the_replica_count(exported: Exported) -> None:
    """By default an autoscaling/v2 HPA on CPU; with KEDA on, its ScaledObject instead (on
    the requests in flight, a query over series the server exports, and CPU); with neither,
    the Deployment's own replicas."""
    default = render(MINIMAL)
    hpa = default.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert "replicas" not in default.one("Deployment")["spec"]

    keda = render(EVERYTHING)
    assert keda.of("HorizontalPodAutoscaler") == []
    triggers = {t["type"]: t for t in keda.one("ScaledObject")["spec"]["triggers"]}
    assert set(triggers) == {"prometheus", "cpu"}
    query = parse(triggers["prometheus"]["metadata"]["query"])
    assert set(query.selectors) == {"stalwart_requests_in_flight"}
    assert all(exported.family_of(series) is not None for series in query.selectors)
    assert "replicas" not in keda.one("Deployment")["spec"]
    with pytest.raises(helm_python.HelmRenderError, match=r"keda\.prometheus\.serverAddress"):
        render({**MINIMAL, "keda": {"enabled": True}})

    fixed = render({**MINIMAL, "autoscaling": {"enabled": False}, "replicaCount": 3})
    assert fixed.one("Deployment")["spec"]["replicas"] == 3
    assert fixed.of("HorizontalPodAutoscaler") == fixed.of("ScaledObject") == []


def test_the_pod_runs_unprivileged_on_a_read_only_root() -> None:
    """The image's user, a read-only root filesystem, no privilege escalation or
    capabilities, no service-account token; writable space only where Stalwart writes:
    STALWART_HOME (the image's too) and /tmp as emptyDirs, the artifacts read-only."""
    manifests = render(MINIMAL)
    pod = manifests.one("Deployment")["spec"]["template"]["spec"]
    main = container(manifests)
    image = _image()
    image_uid = int([i["value"] for i in image.structure if i["instruction"] == "USER"][-1].split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid != 0
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    assert manifests.one("ServiceAccount")["automountServiceAccountToken"] is False

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    home = _config_map(manifests)["STALWART_HOME"]
    assert home == image.envs["STALWART_HOME"]
    assert "emptyDir" in volumes[mounts[home]["name"]]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    artifacts = mounts[f"{home}/artifacts"]
    assert artifacts["readOnly"] is True
    claim = volumes[artifacts["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = manifests.one("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert set(main["resources"]) == {"requests", "limits"}


def test_the_service_budget_and_monitor_select_the_pods(exported: Exported) -> None:
    """The Service, the PodDisruptionBudget and the ServiceMonitor all find the pods (their
    selectors are subsets of the pod's labels), on the named port that serves /metrics."""
    manifests = render(EVERYTHING)
    pod_labels = manifests.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = manifests.one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert manifests.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert manifests.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == container(manifests)["ports"][0]["name"]
    monitor = manifests.one("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    assert exported.server.get(endpoint["path"]).headers["content-type"].startswith("text/plain")


def test_a_changed_setting_rolls_the_pods() -> None:
    """Settings are read at start: a ConfigMap change changes the pod template."""
    before = render(MINIMAL).one("Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    after = render({**MINIMAL, "config": {"STALWART_LOG_LEVEL": "debug"}}).one("Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert before != after


def test_a_grpc_port_is_opened_on_the_pod_and_the_service() -> None:
    """With STALWART_GRPC_PORT set, the container declares it and the Service routes it
    (by name, as gRPC); without it, only HTTP is exposed."""
    plain = render(MINIMAL)
    assert [p["name"] for p in container(plain)["ports"]] == ["http"]
    assert [p["name"] for p in plain.one("Service")["spec"]["ports"]] == ["http"]
    manifests = render({**MINIMAL, "config": {"STALWART_GRPC_PORT": "8081"}})
    ports = {p["name"]: p for p in container(manifests)["ports"]}
    assert ports["grpc"]["containerPort"] == 8081
    service = {p["name"]: p for p in manifests.one("Service")["spec"]["ports"]}
    assert service["grpc"] == {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}
    for manifest in (manifests.one("Deployment"), manifests.one("Service")):
        for version in KUBERNETES:
            kubernetes_validate.validate(manifest, version, strict=True)
