{{/*
The Prometheus Operator objects: which the chart creates, with which labels, in
which namespace, and which Prometheus objects in the cluster will pick each one up.
One plan (JSON) for the monitors, the rule and NOTES.txt, so that what NOTES reports
is what was rendered.

Per part (serviceMonitor, podMonitor, prometheusRule):
  create      <part>.enabled true; or "auto" and the cluster serves the kind
              (.Capabilities.APIVersions: the API server's list on install and
              upgrade; Helm's built-ins plus --api-versions under `helm template`,
              where monitoring.coreos.com/v1 alone counts too)
  namespace   <part>.namespace; else the release namespace; else, when no Prometheus
              accepts that one, the first Prometheus's own namespace it accepts
  labels      the chart's labels and <part>.labels, then what each Prometheus's
              selector needs that they do not contradict (matchLabels; In and
              Exists expressions)
  selectedBy  the Prometheus objects that will pick it up, checked against the final
  missedBy    labels and namespace; the others with the reason
The cluster's Prometheus objects come from Helm's `lookup` (prometheusDiscovery);
without a cluster (`helm template`, client-side --dry-run) it returns nothing, which
the plan tells apart from "none there" by looking up kube-system.
*/}}
{{- define "npe.operatorPlan" -}}
{{- $root := . }}
{{- $lookup := "off" }}
{{- $prometheuses := list }}
{{- if .Values.prometheusDiscovery.enabled }}
{{- if lookup "v1" "Namespace" "" "kube-system" }}
{{- $lookup = "on" }}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/Prometheus" }}
{{- $prometheuses = (lookup "monitoring.coreos.com/v1" "Prometheus" "" "").items | default list }}
{{- end }}
{{- else }}
{{- $lookup = "unavailable" }}
{{- end }}
{{- end }}
{{- $namespaces := dict }}
{{- $parts := dict }}
{{- range $part, $kind := dict "serviceMonitor" "ServiceMonitor" "podMonitor" "PodMonitor" "prometheusRule" "PrometheusRule" }}
{{- $values := get $root.Values $part }}
{{- $field := ternary "rule" $part (eq $part "prometheusRule") }}
{{- $enabled := toString $values.enabled }}
{{- $create := eq $enabled "true" }}
{{- $why := printf "%s.enabled=%s" $part $enabled }}
{{- if eq $enabled "auto" }}
{{- if not (or ($root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind)) ($root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) }}
{{- $why = printf "the cluster does not serve monitoring.coreos.com/v1 %s (no Prometheus Operator CRDs)" $kind }}
{{- else if and (ne $part "prometheusRule") (eq $root.Values.output "textfile") }}
{{- $why = "output=textfile: node-exporter carries the agents' series" }}
{{- else }}
{{- $create = true }}
{{- $why = printf "the cluster serves monitoring.coreos.com/v1 %s" $kind }}
{{- end }}
{{- end }}
{{- /* The namespace. */}}
{{- $namespace := $values.namespace | default "" }}
{{- if not $namespace }}
{{- $namespace = include "npe.namespace" $root }}
{{- $accepted := false }}
{{- $fallback := "" }}
{{- $selecting := false }}
{{- range $p := $prometheuses }}
{{- if not (kindIs "invalid" (index ($p.spec | default dict) (printf "%sSelector" $field))) }}
{{- $selecting = true }}
{{- if not (include "npe.namespaceMismatch" (dict "p" $p "field" $field "cache" $namespaces "namespace" $namespace)) }}{{ $accepted = true }}{{ end }}
{{- if and (not $fallback) (not (include "npe.namespaceMismatch" (dict "p" $p "field" $field "cache" $namespaces "namespace" $p.metadata.namespace))) }}
{{- $fallback = $p.metadata.namespace }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $selecting (not $accepted) $fallback }}{{ $namespace = $fallback }}{{ end }}
{{- end }}
{{- /* The labels: the chart's and the values' are fixed; each Prometheus adds what its
    selector needs where that contradicts nothing already there. */}}
{{- $labels := merge (deepCopy ($values.labels | default dict)) (include "npe.labels" $root | fromYaml) }}
{{- range $p := $prometheuses }}
{{- $selector := index ($p.spec | default dict) (printf "%sSelector" $field) }}
{{- if and (not (kindIs "invalid" $selector)) (not (include "npe.namespaceMismatch" (dict "p" $p "field" $field "cache" $namespaces "namespace" $namespace))) }}
{{- with include "npe.selectorNeeds" (dict "selector" $selector "labels" $labels) }}
{{- $labels = merge (fromJson .) $labels }}
{{- end }}
{{- end }}
{{- end }}
{{- /* Who picks it up, judged on the result. */}}
{{- $selectedBy := list }}
{{- $missedBy := list }}
{{- range $p := $prometheuses }}
{{- $selector := index ($p.spec | default dict) (printf "%sSelector" $field) }}
{{- $miss := "" }}
{{- if kindIs "invalid" $selector }}
{{- $miss = printf "its %sSelector is unset, so it selects no %s" $field $kind }}
{{- else }}
{{- $miss = include "npe.namespaceMismatch" (dict "p" $p "field" $field "cache" $namespaces "namespace" $namespace) }}
{{- if not $miss }}
{{- with include "npe.selectorMismatch" (dict "selector" $selector "labels" $labels) }}
{{- $miss = printf "its %sSelector needs %s" $field . }}
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
{{- $_ := set $parts $part (dict "kind" $kind "create" $create "why" $why "namespace" $namespace "labels" $labels "selectedBy" $selectedBy "missedBy" $missedBy) }}
{{- end }}
{{- $names := list }}
{{- range $p := $prometheuses }}{{ $names = append $names (printf "%s/%s" $p.metadata.namespace $p.metadata.name) }}{{ end }}
{{- toJson (dict "lookup" $lookup "prometheuses" $names "parts" $parts) }}
{{- end }}

{{/*
Why a Prometheus (.p) will not look for .field (serviceMonitor, podMonitor, rule)
objects in .namespace; empty when it will. Its <field>NamespaceSelector unset means
its own namespace only, {} every namespace. Namespace labels are looked up once per
render into .cache; a namespace that does not exist yet (--create-namespace) has the
one label the API server will give it, kubernetes.io/metadata.name.
*/}}
{{- define "npe.namespaceMismatch" -}}
{{- $selector := index (.p.spec | default dict) (printf "%sNamespaceSelector" .field) }}
{{- if kindIs "invalid" $selector }}
{{- if ne .namespace .p.metadata.namespace }}it looks for {{ .field }}s in its own namespace {{ .p.metadata.namespace }} only ({{ .field }}NamespaceSelector unset){{ end }}
{{- else }}
{{- if not (hasKey .cache .namespace) }}
{{- $labels := dig "metadata" "labels" dict (lookup "v1" "Namespace" "" .namespace) }}
{{- $_ := set .cache .namespace (merge (dict "kubernetes.io/metadata.name" .namespace) $labels) }}
{{- end }}
{{- with include "npe.selectorMismatch" (dict "selector" $selector "labels" (get .cache .namespace)) }}its {{ $.field }}NamespaceSelector needs {{ . }}, which namespace {{ $.namespace }} lacks{{ end }}
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
will or will not load them. Sidecars are looked for in the Deployments of the
release namespace, dashboards.namespace and the Prometheus objects' namespaces (where
kube-prometheus-stack puts its Grafana); each is read from its environment: LABEL,
LABEL_VALUE (unset: any value), NAMESPACE (unset: its own namespace; ALL; or a
comma-separated list). With dashboards.namespace empty, the ConfigMaps go to the
release namespace, or to the first sidecar's namespace when no sidecar watches that.
*/}}
{{- define "npe.dashboardsPlan" -}}
{{- $root := . }}
{{- $operator := include "npe.operatorPlan" . | fromJson }}
{{- $release := include "npe.namespace" . }}
{{- $sidecars := list }}
{{- if eq $operator.lookup "on" }}
{{- $places := list $release }}
{{- with .Values.dashboards.namespace }}{{ $places = append $places . }}{{ end }}
{{- range $operator.prometheuses }}{{ $places = append $places (first (splitList "/" .)) }}{{ end }}
{{- range $place := uniq $places }}
{{- range $d := (lookup "apps/v1" "Deployment" $place "").items | default list }}
{{- range $c := dig "spec" "template" "spec" "containers" list $d }}
{{- $env := dict }}
{{- range $e := $c.env | default list }}{{ if hasKey $e "value" }}{{ $_ := set $env $e.name (toString $e.value) }}{{ end }}{{ end }}
{{- if and (hasKey $env "LABEL") (or (contains "dashboard" $c.name) (contains "dashboard" $env.LABEL)) }}
{{- $watches := list $d.metadata.namespace }}
{{- with $env.NAMESPACE }}{{ $watches = list }}{{ range splitList "," . }}{{ $watches = append $watches (trim .) }}{{ end }}{{ end }}
{{- $sidecars = append $sidecars (dict "name" (printf "%s/%s" $d.metadata.namespace $d.metadata.name) "container" $c.name "label" $env.LABEL "value" (get $env "LABEL_VALUE") "anyValue" (not (hasKey $env "LABEL_VALUE")) "namespaces" $watches) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $namespace := .Values.dashboards.namespace | default "" }}
{{- if not $namespace }}
{{- $namespace = $release }}
{{- $watched := not $sidecars }}
{{- range $sidecars }}{{ if or (has "ALL" .namespaces) (has $release .namespaces) }}{{ $watched = true }}{{ end }}{{ end }}
{{- if not $watched }}{{ $namespace = first (first $sidecars).namespaces }}{{ end }}
{{- end }}
{{- $found := list }}
{{- range $s := $sidecars }}
{{- $miss := list }}
{{- if ne $s.label $root.Values.dashboards.label }}
{{- $miss = append $miss (printf "it watches label %s (dashboards.label)" $s.label) }}
{{- else if and (not $s.anyValue) (ne $s.value (toString $root.Values.dashboards.labelValue)) }}
{{- $miss = append $miss (printf "it wants %s=%s (dashboards.labelValue)" $s.label $s.value) }}
{{- end }}
{{- if not (or (has "ALL" $s.namespaces) (has $namespace $s.namespaces)) }}
{{- $miss = append $miss (printf "it watches namespace %s only (dashboards.namespace)" (join "," $s.namespaces)) }}
{{- end }}
{{- $found = append $found (dict "name" $s.name "container" $s.container "miss" (join "; " $miss)) }}
{{- end }}
{{- toJson (dict "lookup" $operator.lookup "namespace" $namespace "sidecars" $found) }}
{{- end }}
