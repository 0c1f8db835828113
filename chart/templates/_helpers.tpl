{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "npe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or fullnameOverride. */}}
{{- define "npe.fullname" -}}
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

{{- define "npe.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "npe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "npe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "npe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels on every object. */}}
{{- define "npe.labels" -}}
helm.sh/chart: {{ include "npe.chart" . }}
{{ include "npe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: node-ping-exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The pod template's labels: the standard ones without the chart's and the app's
    version, so that a chart upgrade that changes nothing in the pods restarts none of
    them (a new image or setting still does, through the image and the config checksum). */}}
{{- define "npe.podLabels" -}}
{{ include "npe.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: node-ping-exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "npe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "npe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "npe.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Does the agent write a textfile? */}}
{{- define "npe.textfile" -}}
{{- if has .Values.output (list "textfile" "both") }}true{{ end }}
{{- end }}

{{/* Does an init container make the textfile directory writable for the agent's group? */}}
{{- define "npe.textfilePermissions" -}}
{{- if and (include "npe.textfile" .) (not (include "npe.rawCapable" .)) .Values.textfile.setPermissions }}true{{ end }}
{{- end }}

{{/*
The textfile host directory, or a clear failure. values.schema.json (textfile.hostPath)
holds the rule, with the same two expressions; this second guard catches installs that
skip the schema (--skip-schema-validation), since the textfile-permissions init container
chgrps and chmods the directory at every pod start.
*/}}
{{- define "npe.textfileHostPath" -}}
{{- $path := toString .Values.textfile.hostPath }}
{{- if or (not (regexMatch `^(/[A-Za-z0-9._+@-]+)+/[A-Za-z0-9._+@-]*(textfile|node[-_]exporter|node-ping)[A-Za-z0-9._+@-]*$` $path)) (regexMatch `(^|/)\.\.?(/|$)|^/(etc|proc|sys|dev|boot|usr|bin|sbin|lib[^/]*|root|var/lib/(kubelet|containerd|containers|docker|etcd|cni)|opt/cni)(/|$)|^/(var|home|opt|srv|mnt|media)/[^/]+$` $path) }}
{{- fail (printf "textfile.hostPath %q is not a dedicated directory: it must be absolute and normalised (no //, . or .., no trailing /), have at least two components, the last naming what it is for (holding textfile, node-exporter, node_exporter or node-ping), and not be in /etc, /proc, /sys, /dev, /boot, /usr, /bin, /sbin, /lib*, /root, kubelet, container runtime, etcd or CNI state, nor be a direct child of /var, /home, /opt, /srv, /mnt or /media (see the chart README)" $path) }}
{{- end }}
{{- $path }}
{{- end }}

{{/* Does the pod run as root with NET_RAW (raw and auto modes)? */}}
{{- define "npe.rawCapable" -}}
{{- if has .Values.icmp.mode (list "raw" "auto") }}true{{ end }}
{{- end }}

{{/*
Relabelings shared by the ServiceMonitor and the PodMonitor, so that the
series look the same whichever is used and whatever Prometheus adds:
instance = the node name (stable; the pod name changes on every rollout),
job = node-ping-exporter, and the per-pod target labels dropped.
*/}}
{{- define "npe.relabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: instance
- sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: node
- targetLabel: job
  replacement: node-ping-exporter
- action: labeldrop
  regex: (pod|container|endpoint|service)
{{- end }}

{{/* The external targets, as JSON. The agent needs each one's name (its host when
    empty) to differ: no JSON Schema keyword can say so, so this does. */}}
{{- define "npe.externalTargets" -}}
{{- $seen := dict }}
{{- range .Values.externalTargets }}
{{- $name := toString (default .host .name) }}
{{- if hasKey $seen $name }}
{{- fail (printf "externalTargets: two targets are named %q (a target without a name is named after its host): give each its own name" $name) }}
{{- end }}
{{- $_ := set $seen $name true }}
{{- end }}
{{- toJson .Values.externalTargets }}
{{- end }}

{{/* The agent's config file. Pods restart when it changes (checksum annotation);
    a peers change in file mode does not restart them: the agent re-reads the file. */}}
{{- define "npe.config" -}}
discovery: {{ .Values.discovery.mode }}
{{- if eq .Values.discovery.mode "file" }}
peers_file: /etc/node-ping-exporter/nodes.json
{{- end }}
node_selector: {{ .Values.discovery.nodeSelector | quote }}
address_types: {{ toJson .Values.discovery.addressTypes }}
max_peers: {{ .Values.discovery.maxPeers }}
max_pairs: {{ .Values.discovery.maxPairs }}
ping_self: {{ .Values.discovery.pingSelf }}
interval: {{ .Values.probe.interval }}
timeout: {{ .Values.probe.timeout }}
window: {{ .Values.probe.window }}
payload_size: {{ .Values.probe.payloadSize }}
per_peer_histogram: {{ .Values.probe.perPeerHistogram }}
pair_metrics: {{ .Values.probe.pairMetrics }}
{{- if and .Values.probe.sizeProbeInterval (gt (int .Values.probe.payloadSize) 1232) }}
{{- fail (printf "probe.payloadSize %v would need fragmenting, and with path-MTU probes on (probe.sizeProbeInterval) echo requests are never fragmented: at most 1232 (IPv6's minimum MTU), or probe.sizeProbeInterval 0" .Values.probe.payloadSize) }}
{{- end }}
size_probe_interval: {{ .Values.probe.sizeProbeInterval }}
size_probe_bytes: {{ .Values.probe.sizeProbeBytes }}
{{- /* STAMP reaches the other nodes' reflectors at their node addresses: only with hostNetwork. */}}
stamp_port: {{ if .Values.hostNetwork }}{{ .Values.stamp.port }}{{ else }}0{{ end }}
stamp_reflect_any: {{ .Values.stamp.reflectAny }}
external_targets: {{ include "npe.externalTargets" . }}
resolve_interval: {{ .Values.externalTargetsResolveInterval }}
icmp_mode: {{ .Values.icmp.mode }}
output: {{ .Values.output }}
{{- if include "npe.bindHostIP" . }}
# metrics.bindHostIP: the DaemonSet's NODE_PING_LISTEN_ADDRESS ($(HOST_IP):{{ .Values.port }}) wins over this
{{- end }}
listen_address: ":{{ .Values.port }}"
{{- if .Values.metrics.tls.enabled }}
tls_cert_file: {{ include "npe.tlsDir" . }}/tls.crt
tls_key_file: {{ include "npe.tlsDir" . }}/tls.key
{{- if .Values.metrics.tls.clientAuth.enabled }}
tls_client_ca_file: {{ include "npe.clientCAFile" . }}
{{- end }}
{{- end }}
metrics_auth: {{ if .Values.metrics.auth.kubernetes }}kubernetes{{ else }}none{{ end }}
textfile_dir: /textfile
textfile_prefix: {{ .Values.textfile.prefix | quote }}
textfile_interval: {{ .Values.textfile.interval }}
log_format: {{ .Values.log.format }}
log_level: {{ .Values.log.level }}
{{- end }}

{{/* Where the TLS Secrets are mounted in the agent's container. */}}
{{- define "npe.tlsDir" -}}/tls{{- end }}
{{- define "npe.clientCADir" -}}/tls-client-ca{{- end }}

{{/* The agent's client CA file (metrics.tls.clientAuth): ca.crt of its own Secret, or of
    the serving Secret. */}}
{{- define "npe.clientCAFile" -}}
{{- if .Values.metrics.tls.clientAuth.caSecretName }}
{{- include "npe.clientCADir" . }}/ca.crt
{{- else }}
{{- include "npe.tlsDir" . }}/ca.crt
{{- end }}
{{- end }}

{{/* Does the agent listen on the node's own address (status.hostIP)? Only with hostNetwork:
    a pod's own network namespace holds nothing but the pod IP and loopback. */}}
{{- define "npe.bindHostIP" -}}
{{- if and .Values.metrics.bindHostIP .Values.hostNetwork }}true{{ end }}
{{- end }}

{{/* Is the ServiceAccount token needed in the pod (kubernetes discovery, or the token and
    access reviews of metrics.auth.kubernetes)? */}}
{{- define "npe.needsToken" -}}
{{- if or (eq .Values.discovery.mode "kubernetes") .Values.metrics.auth.kubernetes }}true{{ end }}
{{- end }}

{{/* The ClusterRoleBinding to system:auth-delegator (metrics.auth.kubernetes). */}}
{{- define "npe.authDelegatorName" -}}
{{- printf "%s-auth-delegator" (include "npe.fullname" . | trunc 48 | trimSuffix "-") }}
{{- end }}

{{/* The name the monitors expect in the agents' certificate. */}}
{{- define "npe.tlsServerName" -}}
{{- default (printf "%s.%s.svc" (include "npe.fullname" .) (include "npe.namespace" .)) .Values.metrics.tls.serverName }}
{{- end }}

{{/*
The rules across metrics.* values, as one clear failure each (the schema checks each
value alone; these also hold with --skip-schema-validation). Included by the DaemonSet.
*/}}
{{- define "npe.checkMetrics" -}}
{{- $tls := .Values.metrics.tls }}
{{- if and $tls.enabled (not $tls.secretName) }}
{{- fail "metrics.tls.enabled=true needs metrics.tls.secretName: an existing kubernetes.io/tls Secret in the chart's namespace with tls.crt, tls.key and ca.crt" }}
{{- end }}
{{- if and $tls.clientAuth.enabled (not $tls.enabled) }}
{{- fail "metrics.tls.clientAuth.enabled=true needs metrics.tls.enabled=true: client certificates are part of TLS" }}
{{- end }}
{{- if and .Values.metrics.auth.kubernetes (not $tls.enabled) (not .Values.metrics.auth.allowInsecure) }}
{{- fail "metrics.auth.kubernetes=true without metrics.tls.enabled=true would send Prometheus' ServiceAccount token over plain HTTP, for anyone on the path to reuse against the API server: set metrics.tls.enabled=true and metrics.tls.secretName (or, knowingly, metrics.auth.allowInsecure=true)" }}
{{- end }}
{{- $plan := (include "npe.operatorPlan" . | fromJson).parts }}
{{- if $tls.clientAuth.enabled }}
{{- range $kind, $monitor := dict "serviceMonitor" .Values.serviceMonitor "podMonitor" .Values.podMonitor }}
{{- if and (get $plan $kind).create (not $monitor.tlsConfig) (not $tls.clientAuth.clientSecretName) }}
{{- fail (printf "metrics.tls.clientAuth.enabled=true with %s.enabled=true needs metrics.tls.clientAuth.clientSecretName (a kubernetes.io/tls Secret with the client certificate Prometheus presents), or %s.tlsConfig" $kind $kind) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.metrics.auth.kubernetes $plan.podMonitor.create (not .Values.podMonitor.bearerTokenSecret.name) }}
{{- fail "metrics.auth.kubernetes=true with podMonitor.enabled=true needs podMonitor.bearerTokenSecret.name: a PodMonitor cannot send Prometheus' own ServiceAccount token (no bearerTokenFile); name a Secret holding a token of Prometheus' ServiceAccount (see the chart README), or use serviceMonitor" }}
{{- end }}
{{- end }}

{{/*
How a monitor's endpoint connects, from metrics.tls and metrics.auth: scheme and
tlsConfig, and the token Prometheus sends. Called with (dict "root" $ "monitor"
.Values.serviceMonitor "kind" "ServiceMonitor").
*/}}
{{- define "npe.endpointSecurity" -}}
{{- $root := .root }}
{{- $monitor := .monitor }}
{{- $tls := $root.Values.metrics.tls }}
{{- if $tls.enabled }}
scheme: https
tlsConfig:
  {{- if $monitor.tlsConfig }}
  {{- toYaml $monitor.tlsConfig | nindent 2 }}
  {{- else }}
  ca:
    secret:
      name: {{ $tls.secretName }}
      key: ca.crt
  serverName: {{ include "npe.tlsServerName" $root }}
  {{- if $tls.clientAuth.enabled }}
  cert:
    secret:
      name: {{ $tls.clientAuth.clientSecretName }}
      key: tls.crt
  keySecret:
    name: {{ $tls.clientAuth.clientSecretName }}
    key: tls.key
  {{- end }}
  {{- end }}
{{- else }}
scheme: http
{{- end }}
{{- if $root.Values.metrics.auth.kubernetes }}
{{- if $monitor.bearerTokenSecret.name }}
authorization:
  type: Bearer
  credentials:
    name: {{ $monitor.bearerTokenSecret.name }}
    key: {{ $monitor.bearerTokenSecret.key }}
{{- else if eq .kind "ServiceMonitor" }}
bearerTokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
{{- end }}
{{- end }}
{{- end }}

{{/* A kubelet probe of the agent: HTTP, or HTTPS with metrics.tls (the kubelet does not
    check the certificate; the health endpoints need no client certificate even with
    metrics.tls.clientAuth, only /metrics does). */}}
{{- define "npe.probeAction" -}}
httpGet:
  path: {{ .path }}
  port: metrics
  scheme: {{ if .root.Values.metrics.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/* A Prometheus duration ("1m30s", "500ms") in milliseconds. */}}
{{- define "npe.durationMs" -}}
{{- $ms := 0 -}}
{{- $unit := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" . -1 -}}
{{- $count := regexFind "^[0-9]+" . -}}
{{- $ms = add $ms (mul (int $count) (get $unit (trimPrefix $count .))) -}}
{{- end -}}
{{- $ms -}}
{{- end -}}

{{/*
A monitor endpoint's scrapeTimeout line, when set. Longer than its interval, the
install fails here: prometheus-operator would skip the whole monitor and log it,
and nothing would be scraped.
*/}}
{{- define "npe.scrapeTimeout" -}}
{{- with .monitor.scrapeTimeout -}}
{{- if gt (include "npe.durationMs" . | int) (include "npe.durationMs" $.monitor.interval | int) -}}
{{- fail (printf "%s.scrapeTimeout: %s is longer than %s.interval (%s); prometheus-operator would skip the monitor" $.kind . $.kind $.monitor.interval) -}}
{{- end -}}
scrapeTimeout: {{ . }}
{{- end -}}
{{- end -}}
