{{/*
Names. The full name is at most 40 characters so that "<fullname>-transform-headless", the
longest derived name, stays within the 63 of a DNS label.
*/}}
{{- define "gatehouse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "gatehouse.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of a component's objects: (dict "root" $ "component" "ratelimit") */}}
{{- define "gatehouse.componentName" -}}
{{- printf "%s-%s" (include "gatehouse.fullname" .root) .component -}}
{{- end -}}

{{- define "gatehouse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gatehouse.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "gatehouse.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "gatehouse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gatehouse
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A component's selector labels: (dict "root" $ "component" "ratelimit") */}}
{{- define "gatehouse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gatehouse.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* A component's labels: (dict "root" $ "component" "ratelimit") */}}
{{- define "gatehouse.componentLabels" -}}
{{ include "gatehouse.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
An image reference: (dict "root" $ "image" .Values.ratelimit.image "gatehouse" true).
Gatehouse images take image.registry as a prefix and default to the chart's appVersion.
*/}}
{{- define "gatehouse.image" -}}
{{- $repo := .image.repository -}}
{{- $tag := .image.tag -}}
{{- if .gatehouse -}}
{{- with .root.Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end -}}
{{- $tag = .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else if $tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- else -}}
{{- fail (printf "image %s: set a tag or a digest" $repo) -}}
{{- end -}}
{{- end -}}

{{/* Where the Redis counters live, as REDIS_URL; "" without Redis. */}}
{{- define "gatehouse.redisUrl" -}}
{{- if eq .Values.redis.mode "external" -}}
{{- .Values.redis.url -}}
{{- else if eq .Values.redis.mode "inChart" -}}
{{- printf "%s:6379" (include "gatehouse.componentName" (dict "root" . "component" "redis")) -}}
{{- end -}}
{{- end -}}

{{/* The Secret and key REDIS_AUTH comes from; "" without a password. */}}
{{- define "gatehouse.redisAuthSecret" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecret -}}
{{- else if .Values.redis.auth.password -}}
{{- include "gatehouse.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "gatehouse.redisAuthKey" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecretKey -}}
{{- else -}}
redis-auth
{{- end -}}
{{- end -}}

{{/* Whether the chart's own Secret (Redis password, signing key) has any data. */}}
{{- define "gatehouse.chartSecretData" -}}
{{- if and (not .Values.redis.auth.existingSecret) .Values.redis.auth.password (ne .Values.redis.mode "memory") }}
redis-auth: {{ .Values.redis.auth.password | b64enc | quote }}
{{- end }}
{{- if and .Values.extauth.enabled (not .Values.extauth.signingKey.existingSecret) .Values.extauth.signingKey.pem }}
signing-key.pem: {{ .Values.extauth.signingKey.pem | b64enc | quote }}
{{- end }}
{{- end -}}

{{/*
The REDIS_* environment of a Redis client (ratelimit, extauth with extauth.redis), as a
dict NAME -> value; REDIS_AUTH comes separately from its Secret.
*/}}
{{- define "gatehouse.redisEnv" -}}
{{- $r := .Values.redis -}}
REDIS_URL: {{ include "gatehouse.redisUrl" . | quote }}
REDIS_SOCKET_TYPE: tcp
REDIS_TYPE: {{ ternary $r.type "single" (eq $r.mode "external") | quote }}
REDIS_TIMEOUT: {{ $r.timeout | quote }}
REDIS_POOL_SIZE: {{ $r.poolSize | quote }}
{{- if and (eq $r.mode "external") $r.tls.enabled }}
REDIS_TLS: "true"
{{- if $r.tls.caSecret }}
REDIS_TLS_CACERT: /etc/gatehouse/redis-tls/ca.crt
{{- end }}
{{- if $r.tls.skipHostnameVerification }}
REDIS_TLS_SKIP_HOSTNAME_VERIFICATION: "true"
{{- end }}
{{- end }}
{{- end -}}

{{/*
A container's env: the chart's variables (a YAML dict NAME -> value) overridden by the
user's `env`, sorted by name, then REDIS_AUTH from its Secret when wanted, then extraEnv.
(dict "root" $ "vars" $yamlDict "values" .Values.ratelimit "redisAuth" true)
*/}}
{{- define "gatehouse.env" -}}
{{- $vars := merge (deepCopy (.values.env | default dict)) (fromYaml .vars) -}}
{{- range $name := keys $vars | sortAlpha }}
- name: {{ $name }}
  value: {{ index $vars $name | toString | quote }}
{{- end }}
{{- if and .redisAuth (include "gatehouse.redisAuthSecret" .root) }}
- name: REDIS_AUTH
  valueFrom:
    secretKeyRef:
      name: {{ include "gatehouse.redisAuthSecret" .root }}
      key: {{ include "gatehouse.redisAuthKey" .root }}
{{- end }}
{{- with .values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The volume and mount of the Redis CA, for Redis clients. */}}
{{- define "gatehouse.redisTlsVolume" -}}
{{- if and (eq .Values.redis.mode "external") .Values.redis.tls.enabled .Values.redis.tls.caSecret }}
- name: redis-tls
  secret:
    secretName: {{ .Values.redis.tls.caSecret }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{- define "gatehouse.redisTlsMount" -}}
{{- if and (eq .Values.redis.mode "external") .Values.redis.tls.enabled .Values.redis.tls.caSecret }}
- name: redis-tls
  mountPath: /etc/gatehouse/redis-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Liveness, readiness and startup probes of a Gatehouse service:
(dict "root" $ "grpcPort" 8081); the http type uses the container port named http.
*/}}
{{- define "gatehouse.probes" -}}
{{- $p := .root.Values.probes -}}
{{- $check := "" -}}
{{- if eq $p.type "grpc" -}}
{{- $check = dict "grpc" (dict "port" (int .grpcPort)) -}}
{{- else -}}
{{- $check = dict "httpGet" (dict "path" "/healthcheck" "port" "http") -}}
{{- end -}}
{{- $timing := dict "periodSeconds" $p.periodSeconds "timeoutSeconds" $p.timeoutSeconds "failureThreshold" $p.failureThreshold -}}
startupProbe:
  {{- toYaml (merge (dict "periodSeconds" 2 "timeoutSeconds" $p.timeoutSeconds "failureThreshold" $p.startupFailureThreshold) $check) | nindent 2 }}
livenessProbe:
  {{- toYaml (merge (deepCopy $timing) $check) | nindent 2 }}
readinessProbe:
  {{- toYaml (merge (deepCopy $timing) $check) | nindent 2 }}
{{- end -}}

{{/*
What every pod spec shares: account, pull secrets, security, scheduling.
(dict "root" $ "component" "ratelimit" "values" .Values.ratelimit)
*/}}
{{- define "gatehouse.podCommon" -}}
serviceAccountName: {{ include "gatehouse.serviceAccountName" .root }}
automountServiceAccountToken: false
# Kubernetes would otherwise put <SERVICE>_PORT=tcp://... variables of every Service in the
# namespace into the environment; a Service named "grpc" or "redis" would then collide with
# the services' own settings.
enableServiceLinks: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ .values.terminationGracePeriodSeconds }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
{{- $selector := dict "matchLabels" (fromYaml (include "gatehouse.selectorLabels" (dict "root" $.root "component" $.component))) }}
topologySpreadConstraints:
{{- range . }}
  - {{- toYaml (merge (deepCopy .) (dict "labelSelector" $selector)) | nindent 4 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod metadata: (dict "root" $ "component" "ratelimit" "values" .Values.ratelimit "annotations" dict) */}}
{{- define "gatehouse.podMetadata" -}}
labels:
  {{- include "gatehouse.componentLabels" . | nindent 2 }}
  {{- with .values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- $annotations := merge (deepCopy (.values.podAnnotations | default dict)) (.annotations | default dict) }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The container security context, and the resources: (dict "root" $ "values" ...) */}}
{{- define "gatehouse.containerCommon" -}}
securityContext:
  {{- toYaml .root.Values.containerSecurityContext | nindent 2 }}
{{- with .values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The checksum of the chart's Secret as a pod annotation (a YAML dict, empty without one), so
pods that read it at start (REDIS_AUTH, SIGNING_KEY_FILE) restart when it changes.
*/}}
{{- define "gatehouse.secretAnnotation" -}}
{{- with include "gatehouse.chartSecretData" . }}
checksum/secret: {{ . | sha256sum }}
{{- end }}
{{- end -}}

{{/* The enabled components with pods of Gatehouse services, in a stable order. */}}
{{- define "gatehouse.enabledServices" -}}
{{- range $c := list "ratelimit" "extauth" "transform" }}
{{- if (index $.Values $c).enabled }}{{ $c }} {{ end }}
{{- end }}
{{- end -}}

{{/* The components with a Deployment that can scale (HPA, PDB): the services and the gateway. */}}
{{- define "gatehouse.scalableComponents" -}}
{{- include "gatehouse.enabledServices" . -}}
{{- if .Values.gateway.enabled }}gateway{{ end -}}
{{- end -}}

{{/* gatehouse-ratelimit's variables (docs/ratelimit.md), a YAML dict. */}}
{{- define "gatehouse.ratelimitEnv" -}}
{{- $v := .Values.ratelimit -}}
GRPC_PORT: {{ $v.ports.grpc | quote }}
PORT: {{ $v.ports.http | quote }}
DEBUG_PORT: {{ $v.ports.debug | quote }}
# envoyproxy/ratelimit's layout: ROOT/SUBDIRECTORY/APPDIRECTORY, the ConfigMap's mount.
RUNTIME_ROOT: /data
RUNTIME_SUBDIRECTORY: ratelimit
RUNTIME_APPDIRECTORY: config
# A ConfigMap update swaps the ..data symlink inside the mounted directory itself, which the
# service watches; there is no RUNTIME_ROOT symlink above it to watch.
RUNTIME_WATCH_ROOT: "false"
SHUTDOWN_DRAIN: {{ $v.shutdownDrain | quote }}
LOG_LEVEL: {{ $v.logLevel | quote }}
LOG_FORMAT: json
{{- if eq .Values.redis.mode "memory" }}
BACKEND_TYPE: memory
{{- else }}
BACKEND_TYPE: redis
{{ include "gatehouse.redisEnv" . }}
{{- end }}
{{- end -}}

{{/*
A service's two Services: <name>-<component> (ClusterIP by default, every port; for meshes,
gateways and Prometheus) and <name>-<component>-headless (the gRPC port, for the chart's Envoy,
whose STRICT_DNS clusters then see, balance and health-check every ready pod).
(dict "root" $ "component" "ratelimit" "values" .Values.ratelimit)
*/}}
{{- define "gatehouse.services" -}}
{{- $v := .values -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "gatehouse.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "gatehouse.componentLabels" . | nindent 4 }}
  {{- with $v.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $v.service.type }}
  selector:
    {{- include "gatehouse.selectorLabels" . | nindent 4 }}
  ports:
    {{- range $name := list "grpc" "http" "debug" }}
    {{- with (index $v.ports $name) }}
    - name: {{ $name }}
      port: {{ . }}
      targetPort: {{ $name }}
      protocol: TCP
      appProtocol: {{ ternary "grpc" "http" (eq $name "grpc") }}
    {{- end }}
    {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "gatehouse.componentName" . }}-headless
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "gatehouse.componentLabels" . | nindent 4 }}
    gatehouse/headless: "true"
spec:
  clusterIP: None
  selector:
    {{- include "gatehouse.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $v.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
{{- end -}}

{{/* gatehouse-extauth's variables (docs/extauth.md), a YAML dict. */}}
{{- define "gatehouse.extauthEnv" -}}
{{- $v := .Values.extauth -}}
GRPC_PORT: {{ $v.ports.grpc | quote }}
PORT: {{ $v.ports.http | quote }}
EXTAUTH_CONFIG: {{ printf "/etc/gatehouse/extauth/%s" $v.config.key | quote }}
SIGNING_ISSUER: {{ $v.signingIssuer | quote }}
{{- if or $v.signingKey.existingSecret $v.signingKey.pem }}
SIGNING_KEY_FILE: /etc/gatehouse/signing/signing-key.pem
{{- end }}
SHUTDOWN_DRAIN: {{ $v.shutdownDrain | quote }}
LOG_LEVEL: {{ $v.logLevel | quote }}
LOG_FORMAT: json
{{- if and $v.redis (ne .Values.redis.mode "memory") }}
{{ include "gatehouse.redisEnv" . }}
{{- end }}
{{- end -}}

{{/* gatehouse-transform's variables (docs/transform.md), a YAML dict. */}}
{{- define "gatehouse.transformEnv" -}}
{{- $v := .Values.transform -}}
GRPC_PORT: {{ $v.ports.grpc | quote }}
PORT: {{ $v.ports.http | quote }}
TRANSFORM_CONFIG: {{ printf "/etc/gatehouse/transform/%s" $v.config.key | quote }}
SHUTDOWN_DRAIN: {{ $v.shutdownDrain | quote }}
LOG_LEVEL: {{ $v.logLevel | quote }}
LOG_FORMAT: json
{{- with $v.templateEnv }}
TRANSFORM_TEMPLATE_ENV: {{ join "," . | quote }}
{{- end }}
{{- end -}}
