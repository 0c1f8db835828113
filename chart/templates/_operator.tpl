{{/*
The Prometheus Operator objects: which the chart creates, with which labels, in
which namespace, and which Prometheus objects in the cluster will pick each one up.
One plan (JSON) for the monitors, the rule and NOTES.txt, so that what NOTES reports
is what was rendered. Each template that needs it computes it again (Helm has no
per-render cache): a few small reads of the API server each time.

Per part (serviceMonitor, podMonitor, prometheusRule), in order:
  create      npe.partCreate: <part>.enabled true; or "auto" and the kind is served
              and nothing the part would need is missing
  namespace   npe.partNamespace: <part>.namespace; else the release namespace; else,
              when no Prometheus accepts that one, the first Prometheus's own
  labels      npe.partLabels: the chart's and <part>.labels, then what each
              Prometheus's selector needs that contradicts none of them
  selectedBy  npe.partJudged: every Prometheus checked against the final labels and
  missedBy    namespace; the others with the reason
The Prometheus objects come from Helm's `lookup` (prometheusDiscovery). Without a
cluster (`helm template`, client-side --dry-run) lookup returns nothing, which the
plan tells apart from "none there" by looking up kube-system.

Prometheus Operator semantics used throughout: a <prefix>Selector unset selects
nothing and {} everything; a <prefix>NamespaceSelector unset means the Prometheus's
own namespace only and {} every namespace. <prefix> is serviceMonitor, podMonitor or
rule.
*/}}
{{- define "npe.operatorPlan" -}}
{{- $root := . }}
{{- $lookup := "off" }}
{{- $prometheuses := list }}
{{- /* dig: a release upgraded with --reuse-values may carry values from before this key */}}
{{- if dig "enabled" true (.Values.prometheusDiscovery | default dict) }}
{{- if lookup "v1" "Namespace" "" "kube-system" }}
{{- $lookup = "on" }}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/Prometheus" }}
{{- $prometheuses = (lookup "monitoring.coreos.com/v1" "Prometheus" "" "").items | default list }}
{{- end }}
{{- else }}
{{- $lookup = "unavailable" }}
{{- end }}
{{- end }}
{{- $cache := dict }}
{{- $parts := dict }}
{{- range $part, $kind := dict "serviceMonitor" "ServiceMonitor" "podMonitor" "PodMonitor" "prometheusRule" "PrometheusRule" }}
{{- $context := dict "root" $root "part" $part "kind" $kind "values" (get $root.Values $part | default dict) "prefix" (ternary "rule" $part (eq $part "prometheusRule")) "prometheuses" $prometheuses "cache" $cache "lookup" $lookup }}
{{- $plan := include "npe.partCreate" $context | fromJson }}
{{- $plan = merge $plan (include "npe.partNamespace" $context | fromJson) }}
{{- $_ := set $context "namespace" $plan.namespace }}
{{- $_ := set $plan "labels" (include "npe.partLabels" $context | fromJson) }}
{{- $_ := set $context "labels" $plan.labels }}
{{- $plan = merge $plan (include "npe.partJudged" $context | fromJson) (dict "kind" $kind) }}
{{- $_ := set $parts $part $plan }}
{{- end }}
{{- $names := list }}
{{- range $p := $prometheuses }}{{ $names = append $names (printf "%s/%s" $p.metadata.namespace $p.metadata.name) }}{{ end }}
{{- toJson (dict "lookup" $lookup "prometheuses" $names "parts" $parts) }}
{{- end }}

{{/* Is the part created, and why (JSON {create, why})? auto leaves a monitor out
    where it could not work: output=textfile, or a setting it would need is missing
    (true keeps such a monitor, and npe.checkMetrics fails the install naming it). */}}
{{- define "npe.partCreate" -}}
{{- $root := .root }}
{{- $enabled := toString .values.enabled }}
{{- $gvk := printf "monitoring.coreos.com/v1/%s" .kind }}
{{- $served := $root.Capabilities.APIVersions.Has $gvk }}
{{- if not $served }}
{{- /* `helm template --api-versions monitoring.coreos.com/v1` names no kind: it stands
    for all. A cluster lists every kind it serves, so there a kind missing is missing. */}}
{{- $kinds := false }}
{{- range list "ServiceMonitor" "PodMonitor" "PrometheusRule" "Prometheus" "Probe" }}
{{- if $root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" .) }}{{ $kinds = true }}{{ end }}
{{- end }}
{{- $served = and ($root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") (not $kinds) }}
{{- end }}
{{- $tls := $root.Values.metrics.tls }}
{{- $missing := "" }}
{{- if ne .part "prometheusRule" }}
{{- if and $tls.clientAuth.enabled (not .values.tlsConfig) (not $tls.clientAuth.clientSecretName) }}
{{- $missing = printf "metrics.tls.clientAuth needs metrics.tls.clientAuth.clientSecretName or %s.tlsConfig" .part }}
{{- else if and (eq .part "podMonitor") $root.Values.metrics.auth.kubernetes (not (dig "bearerTokenSecret" "name" "" .values)) }}
{{- $missing = "metrics.auth.kubernetes needs podMonitor.bearerTokenSecret.name" }}
{{- end }}
{{- end }}
{{- $create := false }}
{{- $why := "" }}
{{- if ne $enabled "auto" }}
{{- $create = eq $enabled "true" }}
{{- $why = printf "%s.enabled=%s" .part $enabled }}
{{- else if not $served }}
{{- if eq .lookup "on" }}
{{- $why = printf "the cluster does not serve %s (no Prometheus Operator CRDs)" (replace "/v1/" "/v1 " $gvk) }}
{{- else if eq .lookup "unavailable" }}
{{- $why = printf "helm template does not see %s: pass --api-versions %s, or %s.enabled=true" (replace "/v1/" "/v1 " $gvk) $gvk .part }}
{{- else }}
{{- $why = printf "%s is not served (no Prometheus Operator CRDs; under helm template: not in --api-versions)" $gvk }}
{{- end }}
{{- else if and (ne .part "prometheusRule") (eq $root.Values.output "textfile") }}
{{- $why = "output=textfile: node-exporter carries the agents' series" }}
{{- else if $missing }}
{{- $why = printf "auto, and %s" $missing }}
{{- else }}
{{- $create = true }}
{{- $why = printf "%s %s" (ternary "--api-versions names" "the cluster serves" (eq .lookup "unavailable")) (replace "/v1/" "/v1 " $gvk) }}
{{- end }}
{{- toJson (dict "create" $create "why" $why) }}
{{- end }}

{{/* Where the part goes (JSON {namespace, stayed}). A monitor that refers to Secrets
    (the CA of metrics.tls, a bearer token) needs them in its own namespace, and one
    moved away from its Service finds no targets under a Prometheus with
    ignoreNamespaceSelectors: such a monitor stays in the release namespace, and
    `stayed` says where it would have gone. */}}
{{- define "npe.partNamespace" -}}
{{- $release := include "npe.namespace" .root }}
{{- $namespace := $release }}
{{- $stayed := "" }}
{{- if .values.namespace }}
{{- $namespace = .values.namespace }}
{{- else }}
{{- $monitor := ne .part "prometheusRule" }}
{{- $secrets := and $monitor (or (and .root.Values.metrics.tls.enabled (not .values.tlsConfig)) (dig "bearerTokenSecret" "name" "" .values)) }}
{{- $accepted := false }}
{{- $fallback := "" }}
{{- $selecting := false }}
{{- range $p := .prometheuses }}
{{- if not (kindIs "invalid" (index ($p.spec | default dict) (printf "%sSelector" $.prefix))) }}
{{- $selecting = true }}
{{- if not (include "npe.namespaceMismatch" (dict "p" $p "prefix" $.prefix "cache" $.cache "namespace" $release)) }}{{ $accepted = true }}{{ end }}
{{- $own := $p.metadata.namespace }}
{{- if and (not $fallback) (not (and $monitor (dig "spec" "ignoreNamespaceSelectors" false $p))) (not (include "npe.namespaceMismatch" (dict "p" $p "prefix" $.prefix "cache" $.cache "namespace" $own))) }}
{{- $fallback = $own }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $selecting (not $accepted) $fallback }}
{{- if $secrets }}{{ $stayed = $fallback }}{{ else }}{{ $namespace = $fallback }}{{ end }}
{{- end }}
{{- end }}
{{- toJson (dict "namespace" $namespace "stayed" $stayed) }}
{{- end }}

{{/* The part's labels (JSON): the chart's, <part>.labels over them, then what the
    selector of each Prometheus that accepts .namespace needs. */}}
{{- define "npe.partLabels" -}}
{{- $labels := merge (deepCopy (.values.labels | default dict)) (include "npe.labels" .root | fromYaml) }}
{{- range $p := .prometheuses }}
{{- $selector := index ($p.spec | default dict) (printf "%sSelector" $.prefix) }}
{{- if and (not (kindIs "invalid" $selector)) (not (include "npe.namespaceMismatch" (dict "p" $p "prefix" $.prefix "cache" $.cache "namespace" $.namespace))) }}
{{- with include "npe.selectorNeeds" (dict "selector" $selector "labels" $labels) }}
{{- $labels = merge (fromJson .) $labels }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $labels }}
{{- end }}

{{/* Who will pick the part up (JSON {selectedBy, missedBy}), judged on its final
    .labels and .namespace; missedBy entries carry the reason. */}}
{{- define "npe.partJudged" -}}
{{- $selectedBy := list }}
{{- $missedBy := list }}
{{- range $p := .prometheuses }}
{{- $selector := index ($p.spec | default dict) (printf "%sSelector" $.prefix) }}
{{- $miss := "" }}
{{- if kindIs "invalid" $selector }}
{{- $miss = printf "its %sSelector is unset, so it selects no %s" $.prefix $.kind }}
{{- else }}
{{- $miss = include "npe.namespaceMismatch" (dict "p" $p "prefix" $.prefix "cache" $.cache "namespace" $.namespace) }}
{{- if not $miss }}
{{- with include "npe.selectorMismatch" (dict "selector" $selector "labels" $.labels) }}
{{- $miss = printf "its %sSelector needs %s" $.prefix . }}
{{- end }}
{{- end }}
{{- end }}
{{- $name := printf "%s/%s" $p.metadata.namespace $p.metadata.name }}
{{- if $miss }}
{{- $missedBy = append $missedBy (printf "%s: %s" $name $miss) }}
{{- else }}
{{- $selectedBy = append $selectedBy $name }}
{{- end }}
{{- end }}
{{- toJson (dict "selectedBy" $selectedBy "missedBy" $missedBy) }}
{{- end }}

{{/*
Why a Prometheus (.p) will not look for .prefix objects in .namespace; empty when it
will. Namespace labels are looked up once per plan into .cache; a namespace that does
not exist yet (--create-namespace) has the one label the API server will give it,
kubernetes.io/metadata.name.
*/}}
{{- define "npe.namespaceMismatch" -}}
{{- $selector := index (.p.spec | default dict) (printf "%sNamespaceSelector" .prefix) }}
{{- if kindIs "invalid" $selector }}
{{- if ne .namespace .p.metadata.namespace }}it looks for {{ .prefix }}s in its own namespace {{ .p.metadata.namespace }} only ({{ .prefix }}NamespaceSelector unset){{ end }}
{{- else }}
{{- if not (hasKey .cache .namespace) }}
{{- $labels := dig "metadata" "labels" dict (lookup "v1" "Namespace" "" .namespace) }}
{{- $_ := set .cache .namespace (merge (dict "kubernetes.io/metadata.name" .namespace) $labels) }}
{{- end }}
{{- with include "npe.selectorMismatch" (dict "selector" $selector "labels" (get .cache .namespace)) }}its {{ $.prefix }}NamespaceSelector needs {{ . }}, which namespace {{ $.namespace }} lacks{{ end }}
{{- end }}
{{- end }}

{{/* What in a label .selector the .labels fail ("release=x and team In a,b"); empty
    when they match. An empty selector matches everything. */}}
{{- define "npe.selectorMismatch" -}}
{{- $labels := .labels }}
{{- $failed := list }}
{{- range $key, $value := .selector.matchLabels | default dict }}
{{- if not (and (hasKey $labels $key) (eq (toString (get $labels $key)) (toString $value))) }}
{{- $failed = append $failed (printf "%s=%s" $key (toString $value)) }}
{{- end }}
{{- end }}
{{- range $e := .selector.matchExpressions | default list }}
{{- $present := hasKey $labels $e.key }}
{{- $listed := has (toString (get $labels $e.key)) ($e.values | default list) }}
{{- $ok := false }}
{{- if eq $e.operator "In" }}{{ $ok = and $present $listed }}
{{- else if eq $e.operator "NotIn" }}{{ $ok = not (and $present $listed) }}
{{- else if eq $e.operator "Exists" }}{{ $ok = $present }}
{{- else if eq $e.operator "DoesNotExist" }}{{ $ok = not $present }}
{{- end }}
{{- if not $ok }}
{{- $failed = append $failed (trim (printf "%s %s %s" $e.key $e.operator (join "," ($e.values | default list)))) }}
{{- end }}
{{- end }}
{{- join " and " $failed }}
{{- end }}

{{/* The labels (JSON) to add to .labels so that .selector matches: matchLabels as
    given, an In expression's first value, "true" for Exists. Empty when no labels
    can: a key already set otherwise, NotIn or DoesNotExist against what is there. */}}
{{- define "npe.selectorNeeds" -}}
{{- $have := .labels }}
{{- $need := dict }}
{{- range $key, $value := .selector.matchLabels | default dict }}
{{- if not (hasKey $have $key) }}{{ $_ := set $need $key (toString $value) }}{{ end }}
{{- end }}
{{- range $e := .selector.matchExpressions | default list }}
{{- if and (has $e.operator (list "In" "Exists")) (not (hasKey $have $e.key)) (not (hasKey $need $e.key)) }}
{{- $_ := set $need $e.key (toString (first ($e.values | default (list "true")))) }}
{{- end }}
{{- end }}
{{- if not (include "npe.selectorMismatch" (dict "selector" .selector "labels" (merge (deepCopy $need) $have))) }}
{{- toJson $need }}
{{- end }}
{{- end }}

{{/*
The dashboards' ConfigMaps: their namespace, and the Grafana dashboard sidecars
(kiwigrid k8s-sidecar, as the grafana chart in kube-prometheus-stack runs it) that
will or will not load them. Sidecars are looked for in the Deployments and
StatefulSets of the release namespace, dashboards.namespace and the Prometheus
objects' namespaces (where kube-prometheus-stack puts its Grafana), each read from
its environment: LABEL, LABEL_VALUE (unset: any value), NAMESPACE (unset: its own
namespace; ALL; or a comma-separated list), RESOURCE (configmap, secret or both).
With dashboards.namespace empty, the ConfigMaps go to the release namespace, or,
when no sidecar watches that, to the namespace of the first sidecar that watches
their label. `grafana` is the first sidecar that loads them (for NOTES' port-forward).
*/}}
{{- define "npe.dashboardsPlan" -}}
{{- $root := . }}
{{- $operator := include "npe.operatorPlan" . | fromJson }}
{{- $release := include "npe.namespace" . }}
{{- $label := .Values.dashboards.label }}
{{- $value := toString .Values.dashboards.labelValue }}
{{- $sidecars := list }}
{{- if eq $operator.lookup "on" }}
{{- $places := list $release }}
{{- with .Values.dashboards.namespace }}{{ $places = append $places . }}{{ end }}
{{- range $operator.prometheuses }}{{ $places = append $places (first (splitList "/" .)) }}{{ end }}
{{- range $place := uniq $places }}
{{- range $kind := list "Deployment" "StatefulSet" }}
{{- range $workload := (lookup "apps/v1" $kind $place "").items | default list }}
{{- range $c := dig "spec" "template" "spec" "containers" list $workload }}
{{- $env := dict }}
{{- range $e := $c.env | default list }}{{ if hasKey $e "value" }}{{ $_ := set $env $e.name (toString $e.value) }}{{ end }}{{ end }}
{{- if and (hasKey $env "LABEL") (or (contains "dashboard" $c.name) (contains "dashboard" $env.LABEL)) }}
{{- $watches := list $workload.metadata.namespace }}
{{- with $env.NAMESPACE }}{{ $watches = list }}{{ range splitList "," . }}{{ $watches = append $watches (trim .) }}{{ end }}{{ end }}
{{- $labelMiss := "" }}
{{- if ne $env.LABEL $label }}
{{- $labelMiss = printf "it watches label %s (dashboards.label)" $env.LABEL }}
{{- else if and (hasKey $env "LABEL_VALUE") (ne $env.LABEL_VALUE $value) }}
{{- $labelMiss = printf "it wants %s=%s (dashboards.labelValue)" $env.LABEL $env.LABEL_VALUE }}
{{- else if eq (get $env "RESOURCE") "secret" }}
{{- $labelMiss = "it loads Secrets only (RESOURCE=secret)" }}
{{- end }}
{{- $sidecars = append $sidecars (dict "name" (printf "%s/%s" $workload.metadata.namespace $workload.metadata.name) "kind" (lower $kind) "container" $c.name "namespaces" $watches "labelMiss" $labelMiss) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $namespace := .Values.dashboards.namespace | default "" }}
{{- if not $namespace }}
{{- $namespace = $release }}
{{- $watched := not $sidecars }}
{{- $fallback := "" }}
{{- range $sidecars }}
{{- if or (has "ALL" .namespaces) (has $release .namespaces) }}{{ $watched = true }}{{ end }}
{{- if and (not $fallback) (not .labelMiss) }}{{ $fallback = first .namespaces }}{{ end }}
{{- end }}
{{- if and (not $watched) $fallback }}{{ $namespace = $fallback }}{{ end }}
{{- end }}
{{- $found := list }}
{{- $grafana := dict }}
{{- range $s := $sidecars }}
{{- $miss := list }}
{{- with $s.labelMiss }}{{ $miss = append $miss . }}{{ end }}
{{- if not (or (has "ALL" $s.namespaces) (has $namespace $s.namespaces)) }}
{{- $miss = append $miss (printf "it watches namespace %s only (dashboards.namespace)" (join "," $s.namespaces)) }}
{{- end }}
{{- $entry := dict "name" $s.name "kind" $s.kind "container" $s.container "miss" (join "; " $miss) }}
{{- if and (not $miss) (not $grafana) }}{{ $grafana = $entry }}{{ end }}
{{- $found = append $found $entry }}
{{- end }}
{{- toJson (dict "lookup" $operator.lookup "namespace" $namespace "sidecars" $found "grafana" $grafana) }}
{{- end }}
