{{/* Names, labels and the settings that are the chart's to decide. */}}

{{- define "stalwart.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stalwart.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "stalwart.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stalwart.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "stalwart.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "stalwart.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: server
{{- end }}

{{- define "stalwart.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stalwart.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "stalwart.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret the pods read: yours (existingSecret), or the one the chart makes. */}}
{{- define "stalwart.secretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else if .Values.secret.create }}
{{- include "stalwart.fullname" . }}
{{- else }}
{{- fail "stalwart: the pods need a Secret with database-url and admin-token: set secret.existingSecret to yours, or secret.create=true with secret.values" }}
{{- end }}
{{- end }}

{{/*
Every secret setting: its variable, its default key in the Secret, and whether the pod
may start without it. A replica needs the shared database, and the one admin token every
replica accepts; the rest are optional.
*/}}
{{- define "stalwart.secretSettings" -}}
STALWART_DB_URL: {key: database-url, optional: false}
STALWART_ADMIN_TOKEN: {key: admin-token, optional: false}
STALWART_REDIS_URL: {key: redis-url, optional: true}
STALWART_PREDICTION_LOG_KEY: {key: prediction-log-key, optional: true}
STALWART_ADMIN_TOKENS: {key: admin-tokens, optional: true}
STALWART_ALERT_WEBHOOKS: {key: alert-webhooks, optional: true}
{{- end }}

{{- define "stalwart.home" -}}/var/lib/stalwart{{- end }}
{{- define "stalwart.projectDir" -}}/etc/stalwart/project{{- end }}

{{/* STALWART_PROJECT: the file named, else project.py of the mounted ConfigMap. */}}
{{- define "stalwart.projectFile" -}}
{{- if .Values.project.file }}
{{- .Values.project.file }}
{{- else if .Values.project.configMap }}
{{- printf "%s/project.py" (include "stalwart.projectDir" .) }}
{{- end }}
{{- end }}

{{- define "stalwart.artifactsClaim" -}}
{{- default (printf "%s-artifacts" (include "stalwart.fullname" .)) .Values.artifacts.existingClaim }}
{{- end }}

{{/* Whole seconds: how long the server drains on SIGTERM (STALWART_DRAIN_SECONDS, during
which it still serves, then STALWART_GRACEFUL_SHUTDOWN_SECONDS for what is in flight). */}}
{{- define "stalwart.gracefulSeconds" -}}
{{- $graceful := get .Values.config "STALWART_GRACEFUL_SHUTDOWN_SECONDS" | default "10" }}
{{- $drain := get .Values.config "STALWART_DRAIN_SECONDS" | default "0" }}
{{- ceil (addf (float64 $graceful) (float64 $drain)) | int }}
{{- end }}
