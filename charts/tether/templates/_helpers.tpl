{{/*
Shared definitions of the tether chart. Object names are prefixed with the add-on name (not the
release name): the OCM add-on framework renders the chart with the add-on name as release name,
and the names stay the ones the cluster-proxy add-on uses.
*/}}

{{/* Render the hosting cluster's manifests? */}}
{{- define "tether.hosting" -}}
{{- if has .Values.target (list "hosting" "all") }}true{{ end -}}
{{- end }}

{{/* Render the managed cluster's manifests? */}}
{{- define "tether.managed" -}}
{{- if has .Values.target (list "managed" "all") }}true{{ end -}}
{{- end }}

{{/* Render the credential controller of the hosting cluster (target=controller)? */}}
{{- define "tether.controllerTarget" -}}
{{- if eq .Values.target "controller" }}true{{ end -}}
{{- end }}

{{/* Render the credential controller's hub RBAC (target=controller-hub)? */}}
{{- define "tether.controllerHubTarget" -}}
{{- if eq .Values.target "controller-hub" }}true{{ end -}}
{{- end }}

{{/* A per-cluster release whose generated Secret the hosting cluster's credential controller keeps: no provisioner here. */}}
{{- define "tether.byController" -}}
{{- if .Values.credentialController.enabled }}true{{ end -}}
{{- end }}

{{/* The split layout: a provisioner Deployment and an agent Deployment with one container per component. */}}
{{- define "tether.split" -}}
{{- if eq .Values.layout "split" }}true{{ end -}}
{{- end }}

{{/* Is the service relay part of this install (service proxy on, mode Relay)? */}}
{{- define "tether.relay" -}}
{{- if and .Values.enableServiceProxy (eq .Values.hostedServiceProxyMode "Relay") }}true{{ end -}}
{{- end }}

{{/* The managed cluster name, required wherever the hosting manifests need it. */}}
{{- define "tether.clusterName" -}}
{{- required "clusterName is required for target hosting/all: the managed cluster's name (the ManagedCluster on the hub)" .Values.clusterName -}}
{{- end }}

{{/* Namespace of the source kubeconfig Secret: externalManagedKubeConfigSecretNamespace, else clusterName. */}}
{{- define "tether.sourceNamespace" -}}
{{- default (include "tether.clusterName" .) .Values.externalManagedKubeConfigSecretNamespace -}}
{{- end }}

{{/* The relay's own ServiceAccount. */}}
{{- define "tether.relayServiceAccount" -}}
{{- default .Values.serviceRelayName .Values.serviceRelay.serviceAccountName -}}
{{- end }}

{{/* The username the relay trusts: the minted ServiceAccount of the add-on namespace. */}}
{{- define "tether.trustedCaller" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ .Values.serviceAccountName }}
{{- end }}

{{/*
Labels. Call with (dict "root" $ "component" "<component-name>").
*/}}
{{- define "tether.selectorLabels" -}}
open-cluster-management.io/addon: {{ .root.Values.addonName }}
proxy.open-cluster-management.io/component-name: {{ .component }}
{{- end }}

{{- define "tether.labels" -}}
{{ include "tether.selectorLabels" . }}
app.kubernetes.io/name: tether
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{/* Placement of a hosting-cluster manifest in OCM hosted mode. */}}
{{- define "tether.hostingAnnotations" -}}
addon.open-cluster-management.io/hosted-manifest-location: hosting
{{- end }}

{{- define "tether.image" -}}
{{ printf "%s:%s" .Values.image.repository (toString .Values.image.tag) }}
{{- end }}

{{/* The container fields every tether container shares. */}}
{{- define "tether.containerCommon" -}}
image: {{ include "tether.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
command:
{{- toYaml .Values.image.command | nindent 2 }}
securityContext:
{{- toYaml .Values.securityContext | nindent 2 }}
{{- end }}

{{/* Pod-level fields every pod shares. */}}
{{- define "tether.podCommon" -}}
securityContext:
{{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* POD_NAMESPACE from the downward API. */}}
{{/*
The runtime settings of every tether container (runtimeEnv: Node's flags, glibc's malloc), the
same the image sets; an empty value leaves the variable out.
*/}}
{{- define "tether.runtimeEnv" -}}
{{- range $name, $value := .Values.runtimeEnv }}
{{- if ne (toString $value) "" }}
- name: {{ $name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tether.podNamespaceEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}

{{/*
HTTP probes on a port: liveness on /healthz, readiness on /readyz.
Call with (dict "port" 8000).
*/}}
{{- define "tether.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  initialDelaySeconds: 5
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  initialDelaySeconds: 2
  periodSeconds: 5
  failureThreshold: 3
{{- end }}

{{/*
A Go duration in seconds (a float), for the render-time checks the CLI would otherwise only make
at startup. The schema has already checked the syntax.
*/}}
{{- define "tether.durationSeconds" -}}
{{- $total := 0.0 -}}
{{- $units := dict "ns" 0.000000001 "us" 0.000001 "µs" 0.000001 "μs" 0.000001 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 -}}
{{- range regexFindAll "([0-9]+\\.?[0-9]*|\\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)" (toString .) -1 -}}
{{- $number := regexFind "^([0-9]+\\.?[0-9]*|\\.[0-9]+)" . -}}
{{- $unit := trimPrefix $number . -}}
{{- $total = addf $total (mulf (float64 $number) (get $units $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end }}

{{/* The host the proxy-agent delivers service-proxy traffic to (mapped to 127.0.0.1 in the pod). */}}
{{- define "tether.serviceProxyHost" -}}
{{- printf "cluster-%s" (sha256sum .Values.clusterName) | trunc 56 }}.open-cluster-management.proxy
{{- end }}

{{/* The konnectivity proxy-agent container (agent.proxyAgent): image and arguments passed through unchecked. */}}
{{- define "tether.proxyAgentContainer" -}}
- name: proxy-agent
  image: {{ .Values.agent.proxyAgent.image }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- with .Values.agent.proxyAgent.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.agent.proxyAgent.resources | nindent 4 }}
{{- end }}

{{/* The agent pod's hostAliases: the proxy-agent delivers user-server's requests for this cluster to this host on :7443. */}}
{{- define "tether.serviceProxyHostAliases" -}}
hostAliases:
  - ip: 127.0.0.1
    hostnames:
      - {{ include "tether.serviceProxyHost" . }}
{{- end }}
