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

{{/* Name of the Secret the chart generates for the bundled Redis's password. */}}
{{- define "conveyor.redis.generatedSecret" -}}
{{- printf "%s-redis-auth" (include "conveyor.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Secret and key of the Redis password, or nothing when Redis has none. */}}
{{- define "conveyor.redis.passwordSecret" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.enabled -}}
{{- default (include "conveyor.redis.generatedSecret" .) .Values.redis.auth.existingSecret -}}
{{- end -}}
{{- else -}}
{{- .Values.externalRedis.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.redis.passwordKey" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecretPasswordKey -}}
{{- else -}}
redis-password
{{- end -}}
{{- else -}}
{{- .Values.externalRedis.existingSecretPasswordKey -}}
{{- end -}}
{{- end -}}

{{/* Secret and key holding the CA certificate Conveyor checks Redis's TLS certificate against, or nothing. */}}
{{- define "conveyor.redis.caSecret" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.tls.enabled -}}
{{- required "redis.tls.existingSecret is required when redis.tls.enabled is true" .Values.redis.tls.existingSecret -}}
{{- end -}}
{{- else -}}
{{- .Values.externalRedis.tls.caSecret -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.redis.caKey" -}}
{{- ternary "ca.crt" .Values.externalRedis.tls.caKey .Values.redis.enabled -}}
{{- end -}}

{{/* Where the Conveyor containers find Redis's CA certificate. */}}
{{- define "conveyor.redis.caPath" -}}
/etc/conveyor/redis-ca/ca.crt
{{- end -}}

{{/* Name of the Secret the chart generates for the plan-signing key. */}}
{{- define "conveyor.signing.generatedSecret" -}}
{{- printf "%s-signing" (include "conveyor.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "conveyor.signing.secret" -}}
{{- default (include "conveyor.signing.generatedSecret" .) .Values.signing.existingSecret -}}
{{- end -}}

{{/* Name of the Secret the chart generates for the server's tokens file. */}}
{{- define "conveyor.server.generatedSecret" -}}
{{- printf "%s-server-tokens" (include "conveyor.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "conveyor.server.tokensSecret" -}}
{{- default (include "conveyor.server.generatedSecret" .) .Values.server.tokens.existingSecret -}}
{{- end -}}

{{- define "conveyor.server.tokensKey" -}}
{{- ternary .Values.server.tokens.existingSecretKey "tokens" (ne .Values.server.tokens.existingSecret "") -}}
{{- end -}}

{{- define "conveyor.signing.key" -}}
{{- ternary .Values.signing.existingSecretKey "signing-key" (ne .Values.signing.existingSecret "") -}}
{{- end -}}

{{/*
A random value for a generated Secret, kept across upgrades: the value already in the cluster
(Helm lookup) when there is one, else a new one. (dict "root" $ "name" NAME "key" KEY "length" N)
Renders the base64 form, ready for a Secret's data. Offline (helm template) lookup finds nothing:
every render then makes a new value.
*/}}
{{- define "conveyor.keptRandom" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum (int .length) | b64enc -}}
{{- end -}}
{{- end -}}

{{/* A duration value ("10", 10, "10s", "2m", "1h") as plain seconds, for CONVEYOR_* variables. */}}
{{- define "conveyor.seconds" -}}
{{- $v := toString . -}}
{{- if hasSuffix "h" $v -}}
{{- mulf (trimSuffix "h" $v | float64) 3600 -}}
{{- else if hasSuffix "m" $v -}}
{{- mulf (trimSuffix "m" $v | float64) 60 -}}
{{- else -}}
{{- trimSuffix "s" $v -}}
{{- end -}}
{{- end -}}

{{/*
REDIS_URL without the password. With a password Secret, the password is spliced in as
$(REDIS_PASSWORD), which the kubelet expands from the env var defined before it: the
password never appears in a rendered manifest. With TLS and a CA Secret, the URL names the
mounted CA file (ssl_ca_certs, which redis-py reads from the URL's query).
*/}}
{{- define "conveyor.redis.url" -}}
{{- $secret := include "conveyor.redis.passwordSecret" . -}}
{{- $auth := "" -}}
{{- if $secret -}}
{{- $auth = printf "%s:$(REDIS_PASSWORD)@" (ternary "" .Values.externalRedis.username .Values.redis.enabled) -}}
{{- end -}}
{{- $url := "" -}}
{{- if .Values.redis.enabled -}}
{{- $scheme := ternary "rediss" "redis" .Values.redis.tls.enabled -}}
{{- $url = printf "%s://%s%s:%v/0" $scheme $auth (include "conveyor.redis.fullname" .) .Values.redis.port -}}
{{- else -}}
{{- $external := required "externalRedis.url is required when redis.enabled is false" .Values.externalRedis.url -}}
{{- $parts := splitn "://" 2 $external -}}
{{- if eq $parts._0 "unix" -}}
{{- if $secret -}}
{{- $sep := ternary "&" "?" (contains "?" $external) -}}
{{- $user := ternary (printf "&username=%s" .Values.externalRedis.username) "" (ne .Values.externalRedis.username "") -}}
{{- $url = printf "%s%spassword=$(REDIS_PASSWORD)%s" $external $sep $user -}}
{{- else -}}
{{- $url = $external -}}
{{- end -}}
{{- else -}}
{{- $url = printf "%s://%s%s" $parts._0 $auth $parts._1 -}}
{{- end -}}
{{- end -}}
{{- if include "conveyor.redis.caSecret" . -}}
{{- $url = printf "%s%sssl_ca_certs=%s" $url (ternary "&" "?" (contains "?" $url)) (include "conveyor.redis.caPath" .) -}}
{{- end -}}
{{- $url -}}
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
- name: CONVEYOR_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "conveyor.signing.secret" . }}
      key: {{ include "conveyor.signing.key" . }}
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

{{/* The default liveness probe: /healthz on the metrics port, or the podSpec's portName (the process answers). */}}
{{- define "conveyor.defaultLivenessProbe" -}}
httpGet:
  path: /healthz
  port: {{ .portName | default "metrics" }}
initialDelaySeconds: 10
periodSeconds: 20
timeoutSeconds: 5
failureThreshold: 3
{{- end -}}

{{/* The default readiness probe: /readyz (Redis answers, the loop turned recently). */}}
{{- define "conveyor.defaultReadinessProbe" -}}
httpGet:
  path: /readyz
  port: {{ .portName | default "metrics" }}
periodSeconds: 10
timeoutSeconds: 5
failureThreshold: 3
{{- end -}}

{{/*
The pod spec shared by the scheduler, worker and server Deployments.
(dict "root" $ "component" "worker" "values" .Values.worker "args" (list ...)
      "env" (list ...) "volumes" (list ...) "mounts" (list ...) "initContainers" (list ...)
      "sidecars" (list ...) "supplementalGroups" (list ...) "automountToken" bool
      "port" N "portName" NAME)   (the one port; default: values.metricsPort named "metrics")
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
      - name: {{ .portName | default "metrics" }}
        containerPort: {{ .port | default $v.metricsPort }}
        protocol: TCP
    livenessProbe:
      {{- toYaml (default (include "conveyor.defaultLivenessProbe" . | fromYaml) $v.livenessProbe) | nindent 6 }}
    readinessProbe:
      {{- toYaml (default (include "conveyor.defaultReadinessProbe" . | fromYaml) $v.readinessProbe) | nindent 6 }}
    resources:
      {{- toYaml $v.resources | nindent 6 }}
    securityContext:
      {{- include "conveyor.containerSecurityContext" . | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      {{- if include "conveyor.redis.caSecret" $root }}
      - name: redis-ca
        mountPath: {{ include "conveyor.redis.caPath" $root | dir }}
        readOnly: true
      {{- end }}
      {{- with .mounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
  {{- with .sidecars }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
volumes:
  - name: tmp
    emptyDir: {}
  {{- with include "conveyor.redis.caSecret" $root }}
  - name: redis-ca
    secret:
      secretName: {{ . }}
      items:
        - key: {{ include "conveyor.redis.caKey" $root }}
          path: {{ include "conveyor.redis.caPath" $root | base }}
  {{- end }}
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
