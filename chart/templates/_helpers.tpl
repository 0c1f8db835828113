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
{{- if or (not (regexMatch `^(/[A-Za-z0-9._+@-]+){2,}$` $path)) (regexMatch `(^|/)\.\.?(/|$)|^/(etc|proc|sys|dev|boot|usr|bin|sbin|lib[^/]*|root|var/lib/(kubelet|containerd|containers|docker|etcd|cni)|opt/cni)(/|$)|^/(var|home|opt|srv|mnt|media)/[^/]+$` $path) }}
{{- fail (printf "textfile.hostPath %q is not a dedicated directory: it must be absolute and normalised (no //, . or .., no trailing /), have at least two components, and not be in /etc, /proc, /sys, /dev, /boot, /usr, /bin, /sbin, /lib*, /root, kubelet, container runtime, etcd or CNI state, nor be a direct child of /var, /home, /opt, /srv, /mnt or /media (see the chart README)" $path) }}
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
ping_self: {{ .Values.discovery.pingSelf }}
interval: {{ .Values.probe.interval }}
timeout: {{ .Values.probe.timeout }}
window: {{ .Values.probe.window }}
payload_size: {{ .Values.probe.payloadSize }}
per_peer_histogram: {{ .Values.probe.perPeerHistogram }}
external_targets: {{ include "npe.externalTargets" . }}
resolve_interval: {{ .Values.externalTargetsResolveInterval }}
icmp_mode: {{ .Values.icmp.mode }}
output: {{ .Values.output }}
listen_address: ":{{ .Values.port }}"
textfile_dir: /textfile
textfile_prefix: {{ .Values.textfile.prefix | quote }}
textfile_interval: {{ .Values.textfile.interval }}
log_format: {{ .Values.log.format }}
log_level: {{ .Values.log.level }}
{{- end }}
