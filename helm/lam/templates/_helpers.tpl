{{/*
Names, labels, and the parts every LAM pod shares. Each pod-building helper takes a dict
{ctx: the root context, component: serve|worker|verify}.
*/}}

{{- define "lam.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lam.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's resource name: fullname-component, kept within 63 characters. */}}
{{- define "lam.componentName" -}}
{{- printf "%s-%s" (include "lam.fullname" .ctx | trunc 52 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "lam.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "lam.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lam
{{- end -}}

{{/* Every pod of the release, whatever its component (the NetworkPolicy's selector). */}}
{{- define "lam.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "lam.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lam.selectorLabels" -}}
{{ include "lam.releaseSelectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lam.componentLabels" -}}
{{ include "lam.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lam.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lam.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "lam.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "lam.secretName" -}}
{{- if .Values.secrets.create -}}
{{- include "lam.fullname" . -}}
{{- else if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- fail "secrets: set secrets.existingSecret to the Secret that holds LAM's Slack tokens (and its Redis URL with store=redis), or set secrets.create=true with secrets.values (see values.yaml)" -}}
{{- end -}}
{{- end -}}

{{- define "lam.policyConfigMapName" -}}
{{- if eq .Values.policies.source "configMap" -}}
{{- required "policies.existingConfigMap.name is required with policies.source=configMap" .Values.policies.existingConfigMap.name -}}
{{- else -}}
{{- printf "%s-policies" (include "lam.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}
{{- end -}}

{{- define "lam.configConfigMapName" -}}
{{- printf "%s-config" (include "lam.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}

{{/*
Whether a component runs actions, and so needs what the sandbox needs. With store=sqlite
there is no job queue: the serve pod runs every approved request itself.
*/}}
{{- define "lam.runsActions" -}}
{{- $v := .ctx.Values -}}
{{- if or (eq .component "worker") (and (eq .component "serve") (or (eq $v.store "sqlite") (gt (int $v.serve.inProcessWorkers) 0))) -}}
true
{{- end -}}
{{- end -}}

{{/* Cross-value checks that the schema cannot express; each names what to change. */}}
{{- define "lam.validate" -}}
{{- $envs := .Values.settings.environments -}}
{{- if not (has .Values.settings.defaultEnvironment $envs) -}}
{{- fail (printf "settings.defaultEnvironment %q is not one of settings.environments %v" .Values.settings.defaultEnvironment $envs) -}}
{{- end -}}
{{- range $channel, $env := .Values.settings.channelEnvironments -}}
{{- if not (has $env $envs) -}}
{{- fail (printf "settings.channelEnvironments binds %s to %q, which is not one of settings.environments %v" $channel $env $envs) -}}
{{- end -}}
{{- end -}}
{{- $replicas := int .Values.serve.replicas -}}
{{- if eq .Values.store "sqlite" -}}
{{- if gt $replicas 1 -}}
{{- fail (printf "serve.replicas is %d but store=sqlite allows 1: the SQLite store is one file on one pod's volume; set store=redis (and REDIS_URL in the Secret) for more serve pods" $replicas) -}}
{{- end -}}
{{- if not .Values.serve.persistence.enabled -}}
{{- fail "store=sqlite needs serve.persistence.enabled=true: the store and its audit trail live in LAM_HOME, which would otherwise be lost with the pod" -}}
{{- end -}}
{{- if .Values.worker.enabled -}}
{{- fail "store=sqlite needs worker.enabled=false: worker pods take jobs from Redis, and with SQLite the serve pod runs approved requests itself" -}}
{{- end -}}
{{- if .Values.auditVerify.enabled -}}
{{- fail "store=sqlite needs auditVerify.enabled=false: the CronJob cannot mount serve's volume; run `lam audit verify` in the serve pod instead" -}}
{{- end -}}
{{- else if and (not .Values.worker.enabled) (eq (int .Values.serve.inProcessWorkers) 0) -}}
{{- fail "nothing would run approved actions: set worker.enabled=true or serve.inProcessWorkers above 0" -}}
{{- end -}}
{{- if and (gt $replicas 1) .Values.serve.persistence.enabled -}}
{{- fail (printf "serve.replicas is %d but serve.persistence.enabled=true mounts one ReadWriteOnce volume: use replicas 1 with the volume (store=sqlite, or the one upgrade that moves slack-state.json into Redis), or turn persistence off" $replicas) -}}
{{- end -}}
{{- $minAvailable := .Values.serve.podDisruptionBudget.minAvailable -}}
{{- if and .Values.serve.podDisruptionBudget.enabled (gt $replicas 1) (not (kindIs "string" $minAvailable)) (ge (int $minAvailable) $replicas) -}}
{{- fail (printf "serve.podDisruptionBudget.minAvailable (%d) must be below serve.replicas (%d), or a node drain could never evict a serve pod" (int $minAvailable) $replicas) -}}
{{- end -}}
{{- if and (eq .Values.mode "socket") (gt $replicas 9) -}}
{{- fail (printf "serve.replicas is %d but Slack gives an app 10 Socket Mode connections, one per pod and one more while a pod is replaced: use at most 9, or mode=http" $replicas) -}}
{{- end -}}
{{- if and .Values.ingress.enabled (ne .Values.mode "http") -}}
{{- fail "ingress.enabled needs mode=http: in Socket Mode Slack is reached over a WebSocket and nothing comes in" -}}
{{- end -}}
{{- $secret := include "lam.secretName" . -}}
{{- end -}}

{{/* Pod annotations: checksums that roll the pods when what they read at start changes. */}}
{{- define "lam.podAnnotations" -}}
{{- $ctx := .ctx -}}
{{- if $ctx.Values.lamConfig }}
checksum/config: {{ include (print $ctx.Template.BasePath "/configmap-config.yaml") $ctx | sha256sum }}
{{- end }}
{{- if $ctx.Values.secrets.create }}
checksum/secret: {{ include (print $ctx.Template.BasePath "/secret.yaml") $ctx | sha256sum }}
{{- end }}
{{- if and $ctx.Values.policies.rollOnChange (eq $ctx.Values.policies.source "values") }}
checksum/policies: {{ include (print $ctx.Template.BasePath "/configmap-policies.yaml") $ctx | sha256sum }}
{{- end }}
{{- if and $ctx.Values.metrics.podAnnotations (ne .component "verify") }}
prometheus.io/scrape: "true"
prometheus.io/path: /metrics
prometheus.io/port: {{ include "lam.healthPort" . | quote }}
{{- end }}
{{- with $ctx.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The port a component answers /healthz, /readyz and /metrics on. */}}
{{- define "lam.healthPort" -}}
{{- if eq .component "worker" -}}
{{- .ctx.Values.worker.healthPort | int64 -}}
{{- else -}}
{{- .ctx.Values.serve.port | int64 -}}
{{- end -}}
{{- end -}}

{{/*
Seconds LAM's work in progress gets after SIGTERM (LAM_SHUTDOWN_GRACE_SECONDS): the pod's
termination grace, less the preStop delay (which Kubernetes counts in it), less 5 seconds
to close connections and post the last audit events before SIGKILL.
*/}}
{{- define "lam.shutdownGrace" -}}
{{- $v := .ctx.Values -}}
{{- $total := int $v.serve.terminationGracePeriodSeconds -}}
{{- $preStop := 0 -}}
{{- if eq .component "worker" -}}
{{- $total = int $v.worker.terminationGracePeriodSeconds -}}
{{- end -}}
{{- if and (eq .component "serve") (eq $v.mode "http") (not $v.serve.persistence.enabled) -}}
{{- $preStop = int $v.serve.preStopSeconds -}}
{{- end -}}
{{- $grace := sub (sub $total $preStop) 5 -}}
{{- if lt (int $grace) 1 -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must exceed the preStop delay (%d) by more than 5 seconds, the time LAM keeps to close down" .component $total $preStop) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}

{{- define "lam.podSecurityContext" -}}
{{- $ctx := .ctx -}}
runAsNonRoot: true
runAsUser: {{ $ctx.Values.securityContext.runAsUser | int64 }}
runAsGroup: {{ $ctx.Values.securityContext.runAsGroup | int64 }}
fsGroup: {{ $ctx.Values.securityContext.fsGroup | int64 }}
fsGroupChangePolicy: OnRootMismatch
{{- if and (eq $ctx.Values.sandbox.mode "bubblewrap") (include "lam.runsActions" .) }}
{{- with $ctx.Values.sandbox.seccompProfile }}
seccompProfile:
  type: {{ .type }}
  {{- if eq .type "Localhost" }}
  localhostProfile: {{ .localhostProfile }}
  {{- end }}
{{- end }}
{{- with $ctx.Values.sandbox.appArmorProfile }}
appArmorProfile:
  type: {{ .type }}
  {{- if eq .type "Localhost" }}
  localhostProfile: {{ .localhostProfile }}
  {{- end }}
{{- end }}
{{- else }}
seccompProfile:
  type: RuntimeDefault
{{- end }}
{{- end -}}

{{- define "lam.containerSecurityContext" -}}
{{- $ctx := .ctx -}}
runAsNonRoot: true
runAsUser: {{ $ctx.Values.securityContext.runAsUser | int64 }}
runAsGroup: {{ $ctx.Values.securityContext.runAsGroup | int64 }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
{{- if and (eq $ctx.Values.sandbox.mode "bubblewrap") (include "lam.runsActions" .) }}
# The sandbox mounts a fresh /proc, which the kernel refuses over a masked one.
procMount: Unmasked
{{- else }}
seccompProfile:
  type: RuntimeDefault
{{- end }}
{{- end -}}

{{/* Pod-level fields shared by every LAM pod (after metadata). */}}
{{- define "lam.podSpecCommon" -}}
{{- $ctx := .ctx -}}
serviceAccountName: {{ include "lam.serviceAccountName" $ctx }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- if and (eq $ctx.Values.sandbox.mode "bubblewrap") (include "lam.runsActions" .) }}
# The pod gets its own user namespace: Kubernetes allows an unmasked /proc only then.
hostUsers: false
{{- end }}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "lam.podSecurityContext" . | nindent 2 }}
{{- with $ctx.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Environment variables: settings, then secrets for what the component needs. */}}
{{- define "lam.env" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values -}}
{{- $secret := include "lam.secretName" $ctx -}}
- name: LAM_HOME
  value: /var/lib/lam
- name: LAM_POLICY_DIR
  value: /etc/lam/policies
{{- if $v.lamConfig }}
- name: LAM_CONFIG
  value: /etc/lam/config/lam.yaml
{{- end }}
- name: LAM_LOG_FORMAT
  value: json
- name: LAM_LOG_LEVEL
  value: {{ $v.settings.logLevel | quote }}
- name: LAM_ENVIRONMENTS
  value: {{ join "," $v.settings.environments | quote }}
- name: LAM_DEFAULT_ENVIRONMENT
  value: {{ $v.settings.defaultEnvironment | quote }}
- name: LAM_APPROVAL_TTL_SECONDS
  value: {{ $v.settings.approvalTtlSeconds | int64 | quote }}
- name: LAM_POLICY_RELOAD_SECONDS
  value: {{ $v.settings.policyReloadSeconds | quote }}
- name: LAM_REDIS_PREFIX
  value: {{ $v.settings.redisPrefix | quote }}
- name: LAM_JOB_IDLE_SECONDS
  value: {{ $v.settings.jobIdleSeconds | quote }}
- name: LAM_JOB_MAX_DELIVERIES
  value: {{ $v.settings.jobMaxDeliveries | int64 | quote }}
{{- if ne .component "verify" }}
# The CLI reads LAM_HEALTH_PORT as --health-port; the image's default (3000) would
# otherwise win over the chart's ports in Socket Mode.
- name: LAM_HEALTH_PORT
  value: {{ include "lam.healthPort" . | quote }}
- name: LAM_SHUTDOWN_GRACE_SECONDS
  value: {{ include "lam.shutdownGrace" . | quote }}
{{- end }}
{{- /* Without REDIS_URL LAM opens the embedded SQLite store in LAM_HOME. */}}
{{- if eq $v.store "redis" }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $v.secrets.keys.redisUrl }}
{{- end }}
{{- if ne .component "verify" }}
{{- with $v.llm.model }}
- name: LAM_MODEL
  value: {{ . | quote }}
{{- end }}
{{- with $v.llm.baseUrl }}
- name: OPENAI_BASE_URL
  value: {{ . | quote }}
{{- end }}
- name: LAM_LLM_TIMEOUT_SECONDS
  value: {{ $v.llm.timeoutSeconds | quote }}
- name: LAM_LLM_MAX_RETRIES
  value: {{ $v.llm.maxRetries | int64 | quote }}
- name: LAM_LLM_MAX_REPAIRS
  value: {{ $v.llm.maxRepairs | int64 | quote }}
- name: LAM_LLM_TOKEN_BUDGET
  value: {{ $v.llm.tokenBudget | int64 | quote }}
- name: OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $v.secrets.keys.openaiApiKey }}
      optional: true
{{- end }}
{{- if eq .component "serve" }}
- name: LAM_SERVE_WORKERS
  value: {{ $v.serve.inProcessWorkers | int64 | quote }}
- name: LAM_APPROVER_NOTIFY
  value: {{ $v.settings.approverNotify | quote }}
{{- if $v.settings.channelEnvironments }}
- name: LAM_CHANNEL_ENVIRONMENTS
  value: {{ include "lam.pairs" $v.settings.channelEnvironments | quote }}
{{- end }}
{{- if $v.settings.approverGroups }}
- name: LAM_APPROVER_GROUPS
  value: {{ include "lam.pairs" $v.settings.approverGroups | quote }}
{{- end }}
{{- /* Every serve pod gets the channel: the one holding the Slack lease posts. */}}
{{- with $v.auditChannel.id }}
- name: LAM_AUDIT_CHANNEL
  value: {{ . | quote }}
{{- end }}
{{- /* Compared as text: 0 is a valid update interval but false to `if`. */}}
{{- if ne (toString $v.settings.slackLeaseSeconds) "" }}
- name: LAM_SLACK_LEASE_SECONDS
  value: {{ $v.settings.slackLeaseSeconds | toString | quote }}
{{- end }}
{{- if ne (toString $v.settings.slackUpdateSeconds) "" }}
- name: LAM_SLACK_UPDATE_SECONDS
  value: {{ $v.settings.slackUpdateSeconds | toString | quote }}
{{- end }}
- name: SLACK_BOT_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $v.secrets.keys.slackBotToken }}
{{- /* lam serve picks Socket Mode exactly when SLACK_APP_TOKEN is set, so only the mode's own secret is passed. */}}
{{- if eq $v.mode "socket" }}
- name: SLACK_APP_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $v.secrets.keys.slackAppToken }}
{{- else }}
- name: SLACK_SIGNING_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $v.secrets.keys.slackSigningSecret }}
{{- end }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A map as KEY=VALUE,KEY=VALUE in key order (LAM_CHANNEL_ENVIRONMENTS, LAM_APPROVER_GROUPS). */}}
{{- define "lam.pairs" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{- define "lam.volumeMounts" -}}
{{- $ctx := .ctx -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /var/lib/lam
{{- if ne $ctx.Values.policies.source "image" }}
- name: policies
  mountPath: /etc/lam/policies
  readOnly: true
{{- end }}
{{- if $ctx.Values.lamConfig }}
- name: config
  mountPath: /etc/lam/config
  readOnly: true
{{- end }}
{{- range $index, $secret := $ctx.Values.connectorSecrets }}
- name: connector-secret-{{ $index }}
  mountPath: {{ $secret.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Volumes; LAM_HOME is an emptyDir unless the caller passes homeClaim. */}}
{{- define "lam.volumes" -}}
{{- $ctx := .ctx -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $ctx.Values.tmpSizeLimit }}
{{- if .homeClaim }}
- name: home
  persistentVolumeClaim:
    claimName: {{ .homeClaim }}
{{- else }}
- name: home
  emptyDir:
    sizeLimit: {{ $ctx.Values.homeSizeLimit }}
{{- end }}
{{- if ne $ctx.Values.policies.source "image" }}
- name: policies
  configMap:
    name: {{ include "lam.policyConfigMapName" $ctx }}
    # Test files live under tests/, where LAM runs them before adopting a changed policy.
    items:
      - key: model.conf
        path: model.conf
      - key: policy.csv
        path: policy.csv
      {{- if eq $ctx.Values.policies.source "values" }}
      {{- range $path, $_ := $ctx.Values.policies.files }}
      {{- if hasPrefix "tests/" $path }}
      - key: {{ trimPrefix "tests/" $path }}
        path: {{ $path }}
      {{- end }}
      {{- end }}
      {{- else }}
      {{- range $ctx.Values.policies.existingConfigMap.tests }}
      - key: {{ . }}
        path: tests/{{ . }}
      {{- end }}
      {{- end }}
{{- end }}
{{- if $ctx.Values.lamConfig }}
- name: config
  configMap:
    name: {{ include "lam.configConfigMapName" $ctx }}
{{- end }}
{{- range $index, $secret := $ctx.Values.connectorSecrets }}
- name: connector-secret-{{ $index }}
  secret:
    secretName: {{ $secret.secretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* The LAM container's common fields: image, security, env, mounts. */}}
{{- define "lam.containerCommon" -}}
{{- $ctx := .ctx -}}
image: {{ include "lam.image" $ctx }}
imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
securityContext:
  {{- include "lam.containerSecurityContext" . | nindent 2 }}
env:
  {{- include "lam.env" . | nindent 2 }}
volumeMounts:
  {{- include "lam.volumeMounts" . | nindent 2 }}
{{- end -}}

{{/* liveness, readiness and startup probes on a component's health port. */}}
{{- define "lam.probes" -}}
{{- $probes := .probes -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  {{- toYaml $probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  {{- toYaml $probes.readiness | nindent 2 }}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  {{- toYaml $probes.startup | nindent 2 }}
{{- end -}}

{{/* An int-or-string field: a number printed as an integer (Helm reads numbers as floats), a percentage quoted. */}}
{{- define "lam.intOrPercent" -}}
{{- if kindIs "string" . -}}
{{- . | quote -}}
{{- else -}}
{{- . | int64 -}}
{{- end -}}
{{- end -}}
