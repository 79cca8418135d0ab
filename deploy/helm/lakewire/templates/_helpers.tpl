{{/* Names and labels shared by every object. */}}
{{- define "lakewire.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lakewire.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lakewire.labels" -}}
{{ include "lakewire.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "lakewire.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "lakewire.jwtSecretName" -}}
{{ .Values.jwt.existingSecret | default (printf "%s-jwt" (include "lakewire.fullname" .)) }}
{{- end -}}

{{/* Environment both roles get: the listen address, the shutdown grace, JWT, the user's env. */}}
{{- define "lakewire.env" -}}
- name: LAKEWIRE_WEBSOCKET__LISTEN
  value: "0.0.0.0:{{ .Values.port }}"
- name: LAKEWIRE_WEBSOCKET__SHUTDOWN_GRACE_MS
  value: {{ .Values.gateway.shutdownGraceMs | int | quote }}
{{- if .Values.jwt.enabled }}
- name: LAKEWIRE_AUTH__MODE
  value: "jwt"
{{- if eq .Values.jwt.algorithm "hs256" }}
- name: LAKEWIRE_AUTH__HS256_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "lakewire.jwtSecretName" . }}
      key: hs256-secret
{{- else if has .Values.jwt.algorithm (list "rs256" "es256") }}
- name: LAKEWIRE_AUTH__{{ upper .Values.jwt.algorithm }}_PUBLIC_KEY_FILE
  value: /etc/lakewire/jwt/{{ .Values.jwt.algorithm }}.pem
{{- else }}
{{- fail "jwt.algorithm must be hs256, rs256 or es256" }}
{{- end }}
{{- end }}
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Probes on the one HTTP port: /healthz (alive) and /readyz (Kafka answers, consumers assigned). */}}
{{- define "lakewire.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* Volumes: the configuration, a writable /tmp, the JWT key files. */}}
{{- define "lakewire.volumeMounts" -}}
- name: config
  mountPath: /etc/lakewire/lakewire.toml
  subPath: lakewire.toml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if and .Values.jwt.enabled (ne .Values.jwt.algorithm "hs256") }}
- name: jwt
  mountPath: /etc/lakewire/jwt
  readOnly: true
{{- end }}
{{- end -}}

{{- define "lakewire.jwtVolume" -}}
{{- if and .Values.jwt.enabled (ne .Values.jwt.algorithm "hs256") }}
- name: jwt
  secret:
    secretName: {{ include "lakewire.jwtSecretName" . }}
{{- end }}
{{- end -}}
