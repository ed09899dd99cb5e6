{{/* Names, labels and the shared pieces of the roomcast templates. */}}

{{- define "roomcast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name; components append -gateway, -presence, -redis. */}}
{{- define "roomcast.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "roomcast.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Common labels; call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "roomcast.labels" -}}
helm.sh/chart: {{ include "roomcast.chart" .ctx }}
{{ include "roomcast.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: roomcast
{{- end -}}

{{- define "roomcast.selectorLabels" -}}
app.kubernetes.io/name: {{ include "roomcast.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "roomcast.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "roomcast.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "roomcast.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret with api-key, resume-secret, presence-key, jwt-secret. */}}
{{- define "roomcast.secretName" -}}
{{- default (include "roomcast.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "roomcast.presenceUrl" -}}
{{- printf "http://%s-presence:%d" (include "roomcast.fullname" .) (int .Values.presence.port) -}}
{{- end -}}

{{/*
One key of the chart-created Secret, base64-encoded: the value given in
values, else the value already stored in the release's Secret (so upgrades
keep it), else a new random one. Letters first, so it never reads as a number.
Call with (list $ "api-key" .Values.secrets.apiKey).
*/}}
{{- define "roomcast.secretValue" -}}
{{- $ctx := index . 0 -}}
{{- $key := index . 1 -}}
{{- $given := index . 2 -}}
{{- if $given -}}
{{- $given | b64enc -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace (include "roomcast.fullname" $ctx) -}}
{{- $data := dict -}}
{{- if $existing -}}{{- $data = default (dict) $existing.data -}}{{- end -}}
{{- if hasKey $data $key -}}
{{- index $data $key -}}
{{- else -}}
{{- printf "rc-%s" (randAlphaNum 40) | b64enc -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The ROOMCAST_REDIS__URL env entry (gateways and presence). */}}
{{- define "roomcast.redisUrlEnv" -}}
- name: ROOMCAST_REDIS__URL
{{- if .Values.redis.bundled.enabled }}
  value: {{ printf "redis://%s-redis:6379" (include "roomcast.fullname" .) | quote }}
{{- else if .Values.redis.url }}
  valueFrom:
    secretKeyRef:
      name: {{ include "roomcast.fullname" . }}-redis
      key: url
{{- else }}
{{- $secret := default .Values.secrets.existingSecret .Values.redis.existingSecret }}
{{- if not $secret }}
{{- fail "Redis: set redis.url, enable redis.bundled, or name a Secret holding the URL (redis.existingSecret or secrets.existingSecret, key redis.existingSecretKey)" }}
{{- end }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- end }}
{{- end -}}

{{/* Refuses settings that would make a drain be cut short. */}}
{{- define "roomcast.checkDrain" -}}
{{- $g := .Values.gateway -}}
{{- if ge (int64 $g.drain.windowMs) (int64 $g.drain.timeoutMs) -}}
{{- fail (printf "gateway.drain.windowMs (%d) must be less than gateway.drain.timeoutMs (%d)" (int64 $g.drain.windowMs) (int64 $g.drain.timeoutMs)) -}}
{{- end -}}
{{- $needed := add (mul (int64 $g.preStopSleepSeconds) 1000) (int64 $g.drain.timeoutMs) -}}
{{- if le (mul (int64 $g.terminationGracePeriodSeconds) 1000) $needed -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d s) must exceed gateway.preStopSleepSeconds + gateway.drain.timeoutMs (%d ms), or Kubernetes kills gateways in the middle of their drain" (int64 $g.terminationGracePeriodSeconds) $needed) -}}
{{- end -}}
{{- end -}}

{{/* OTEL_* env entries; call with (list $ "service-name"). */}}
{{- define "roomcast.otlpEnv" -}}
{{- $ctx := index . 0 -}}
{{- if $ctx.Values.otlp.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $ctx.Values.otlp.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $ctx.Values.otlp.protocol | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ index . 1 | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"
{{- end }}
{{- end -}}

{{/*
The Secret and key holding admin.key: admin.existingSecret, else the chart's
own <fullname>-admin. Refuses an enabled admin page without exactly one key
source, and a key that equals secrets.apiKey (the node would refuse to start).
*/}}
{{- define "roomcast.adminKeyRef" -}}
{{- $a := .Values.admin -}}
{{- if and $a.existingSecret $a.key -}}
{{- fail "admin: set admin.existingSecret or admin.key, not both" -}}
{{- else if $a.existingSecret -}}
name: {{ $a.existingSecret | quote }}
key: {{ $a.existingSecretKey | quote }}
{{- else if $a.key -}}
{{- if eq $a.key .Values.secrets.apiKey -}}
{{- fail "admin.key must differ from secrets.apiKey: the admin page has its own key" -}}
{{- end }}
name: {{ include "roomcast.fullname" . }}-admin
key: admin-key
{{- else -}}
{{- fail "admin.enabled is true but the admin page has no key: set admin.existingSecret (a Secret holding the key under admin.existingSecretKey) or admin.key (at least 16 characters, stored in a Secret the chart creates)" -}}
{{- end -}}
{{- end -}}
