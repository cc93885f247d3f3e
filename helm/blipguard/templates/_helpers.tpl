{{/* The chart name. */}}
{{- define "blipguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of every object: the release name, with the chart's unless it holds it. */}}
{{- define "blipguard.fullname" -}}
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

{{- define "blipguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "blipguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "blipguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "blipguard.labels" -}}
helm.sh/chart: {{ include "blipguard.chart" . }}
{{ include "blipguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: blipguard
{{- end }}

{{/* Labels of monitoring objects: the chart's plus monitoring.extraLabels. */}}
{{- define "blipguard.monitoringLabels" -}}
{{ include "blipguard.labels" . }}
{{- with .Values.monitoring.extraLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "blipguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "blipguard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespaces served, one a line: operator.watchNamespaces, else the release namespace. */}}
{{- define "blipguard.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- range (.Values.operator.watchNamespaces | uniq) }}
{{ . }}
{{- end }}
{{- else }}
{{ .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "blipguard.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Checks the schema cannot express; fails the render with a message naming the values. */}}
{{- define "blipguard.validate" -}}
{{- if and .Values.operator.clusterWide .Values.operator.watchNamespaces }}
{{- fail "operator.clusterWide: true serves every namespace (-A): leave operator.watchNamespaces empty" }}
{{- end }}
{{- if and .Values.exampleGuard.enabled (not (or .Values.exampleGuard.redis.enabled .Values.exampleGuard.nats.enabled)) }}
{{- fail "exampleGuard: enable exampleGuard.redis or exampleGuard.nats (a guard needs a dependency)" }}
{{- end }}
{{- if eq (int .Values.operator.metricsPort) (int .Values.operator.probePort) }}
{{- fail "operator.metricsPort and operator.probePort must differ" }}
{{- end }}
{{- end }}
