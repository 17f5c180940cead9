{{/* Chart name, 63 characters at most. */}}
{{- define "conveyor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name "<release>-<chart>", or the release name when it already holds the chart's. */}}
{{- define "conveyor.fullname" -}}
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

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "conveyor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: minimal, since a Deployment's selector is immutable. */}}
{{- define "conveyor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "conveyor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every resource. */}}
{{- define "conveyor.labels" -}}
helm.sh/chart: {{ include "conveyor.chart" . }}
{{ include "conveyor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: conveyor
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "scheduler"). */}}
{{- define "conveyor.componentSelectorLabels" -}}
{{ include "conveyor.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of one component's resources: (dict "root" $ "component" "scheduler"). */}}
{{- define "conveyor.componentLabels" -}}
{{ include "conveyor.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Name of the ServiceAccount the pods use. */}}
{{- define "conveyor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "conveyor.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Conveyor image reference: digest wins over tag; the tag defaults to appVersion. */}}
{{- define "conveyor.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Name of the bundled Redis (StatefulSet and its headless Service). */}}
{{- define "conveyor.redis.fullname" -}}
{{- printf "%s-redis" (include "conveyor.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Secret and key of the Redis password, or nothing when Redis has none. */}}
{{- define "conveyor.redis.passwordSecret" -}}
{{- if .Values.redis.enabled -}}
{{- .Values.redis.auth.existingSecret -}}
{{- else -}}
{{- .Values.externalRedis.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.redis.passwordKey" -}}
{{- if .Values.redis.enabled -}}
{{- .Values.redis.auth.existingSecretPasswordKey -}}
{{- else -}}
{{- .Values.externalRedis.existingSecretPasswordKey -}}
{{- end -}}
{{- end -}}

{{/*
REDIS_URL without the password. With a password Secret, the password is spliced in as
$(REDIS_PASSWORD), which the kubelet expands from the env var defined before it: the
password never appears in a rendered manifest.
*/}}
{{- define "conveyor.redis.url" -}}
{{- $secret := include "conveyor.redis.passwordSecret" . -}}
{{- $auth := "" -}}
{{- if $secret -}}
{{- $auth = printf "%s:$(REDIS_PASSWORD)@" (ternary "" .Values.externalRedis.username .Values.redis.enabled) -}}
{{- end -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s%s:%v/0" $auth (include "conveyor.redis.fullname" .) .Values.redis.port -}}
{{- else -}}
{{- $url := required "externalRedis.url is required when redis.enabled is false" .Values.externalRedis.url -}}
{{- $parts := splitn "://" 2 $url -}}
{{- if eq $parts._0 "unix" -}}
{{- if $secret -}}
{{- $sep := ternary "&" "?" (contains "?" $url) -}}
{{- $user := ternary (printf "&username=%s" .Values.externalRedis.username) "" (ne .Values.externalRedis.username "") -}}
{{- printf "%s%spassword=$(REDIS_PASSWORD)%s" $url $sep $user -}}
{{- else -}}
{{- $url -}}
{{- end -}}
{{- else -}}
{{- printf "%s://%s%s" $parts._0 $auth $parts._1 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by the scheduler and the workers. */}}
{{- define "conveyor.env" -}}
{{- $secret := include "conveyor.redis.passwordSecret" . -}}
{{- if $secret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ include "conveyor.redis.passwordKey" . }}
{{- end }}
- name: REDIS_URL
  value: {{ include "conveyor.redis.url" . | quote }}
- name: CONVEYOR_PREFIX
  value: {{ .Values.config.prefix | quote }}
- name: CONVEYOR_RUNTIME
  value: {{ .Values.config.runtime | quote }}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .Values.config.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Security context of every Conveyor container. */}}
{{- define "conveyor.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The default probe: TCP on the named metrics port. */}}
{{- define "conveyor.defaultProbe" -}}
tcpSocket:
  port: metrics
initialDelaySeconds: 10
periodSeconds: 20
failureThreshold: 3
{{- end -}}

{{/*
The pod spec shared by the scheduler and the worker Deployments.
(dict "root" $ "component" "worker" "values" .Values.worker "args" (list ...)
      "env" (list ...) "volumes" (list ...) "mounts" (list ...) "initContainers" (list ...)
      "sidecars" (list ...) "supplementalGroups" (list ...) "automountToken" bool)
*/}}
{{- define "conveyor.podSpec" -}}
{{- $root := .root -}}
{{- $v := .values -}}
serviceAccountName: {{ include "conveyor.serviceAccountName" $root }}
automountServiceAccountToken: {{ .automountToken }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ $root.Values.podSecurityContext.runAsUser }}
  runAsGroup: {{ $root.Values.podSecurityContext.runAsGroup }}
  fsGroup: {{ $root.Values.podSecurityContext.fsGroup }}
  {{- with .supplementalGroups }}
  supplementalGroups:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  seccompProfile:
    type: RuntimeDefault
{{- with .initContainers }}
initContainers:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: {{ .component }}
    image: {{ include "conveyor.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- toYaml .args | nindent 6 }}
    env:
      {{- include "conveyor.env" $root | trim | nindent 6 }}
      {{- with .env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
      {{- with $v.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    ports:
      - name: metrics
        containerPort: {{ $v.metricsPort }}
        protocol: TCP
    livenessProbe:
      {{- toYaml (default (include "conveyor.defaultProbe" . | fromYaml) $v.livenessProbe) | nindent 6 }}
    readinessProbe:
      {{- toYaml (default (dict "tcpSocket" (dict "port" "metrics") "periodSeconds" 10) $v.readinessProbe) | nindent 6 }}
    resources:
      {{- toYaml $v.resources | nindent 6 }}
    securityContext:
      {{- include "conveyor.containerSecurityContext" . | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      {{- with .mounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
  {{- with .sidecars }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
volumes:
  - name: tmp
    emptyDir: {}
  {{- with .volumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml $v.topologySpreadConstraints | nindent 2 }}
{{- else if .defaultSpread }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "conveyor.componentSelectorLabels" (dict "root" $root "component" .component) | nindent 8 }}
{{- end }}
{{- end -}}

{{/* git-sync container (init or sidecar): (dict "root" $ "name" "git-sync" "oneTime" bool). */}}
{{- define "conveyor.gitSyncContainer" -}}
{{- $g := .root.Values.dags.gitSync -}}
name: {{ .name }}
image: {{ printf "%s:%s" $g.image.repository $g.image.tag }}
imagePullPolicy: {{ $g.image.pullPolicy }}
env:
  - name: GITSYNC_REPO
    value: {{ required "dags.gitSync.repo is required when dags.gitSync.enabled is true" $g.repo | quote }}
  - name: GITSYNC_REF
    value: {{ $g.ref | quote }}
  - name: GITSYNC_ROOT
    value: /git
  - name: GITSYNC_LINK
    value: current
  - name: GITSYNC_PERIOD
    value: {{ $g.period | quote }}
  - name: GITSYNC_ONE_TIME
    value: {{ .oneTime | quote }}
  - name: HOME
    value: /tmp
  {{- if $g.credentialsSecret }}
  - name: GITSYNC_USERNAME
    valueFrom:
      secretKeyRef:
        name: {{ $g.credentialsSecret }}
        key: username
  - name: GITSYNC_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ $g.credentialsSecret }}
        key: password
  {{- end }}
  {{- if $g.sshKeySecret }}
  - name: GITSYNC_SSH
    value: "true"
  - name: GITSYNC_SSH_KEY_FILE
    value: /etc/git-secret/ssh
  {{- end }}
resources:
  {{- toYaml $g.resources | nindent 2 }}
securityContext:
  {{- include "conveyor.containerSecurityContext" . | nindent 2 }}
volumeMounts:
  - name: dags
    mountPath: /git
  - name: tmp
    mountPath: /tmp
  {{- if $g.sshKeySecret }}
  - name: git-ssh-key
    mountPath: /etc/git-secret
    readOnly: true
  {{- end }}
{{- end -}}
