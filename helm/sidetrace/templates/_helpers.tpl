{{/* Common labels. */}}
{{- define "sidetrace.labels" -}}
app.kubernetes.io/part-of: sidetrace
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* An image reference: registry/repository:tag, where registry is the image's own `registry`
when it has that key (Jaeger: the Jaeger project's image keeps its registry whatever
images.registry says) and images.registry otherwise. Args: (dict "root" . "image" .Values.images.X) */}}
{{- define "sidetrace.image" -}}
{{- $reg := .root.Values.images.registry -}}
{{- if hasKey .image "registry" }}{{ $reg = .image.registry }}{{ end -}}
{{- $tag := .image.tag | default .root.Values.images.tag | default .root.Chart.AppVersion -}}
{{- if $reg }}{{ printf "%s/%s:%s" $reg .image.repository $tag }}{{ else }}{{ printf "%s:%s" .image.repository $tag }}{{ end -}}
{{- end }}

{{/* Where spans go. */}}
{{- define "sidetrace.collector" -}}
{{- if .Values.collector.endpoint -}}
{{ .Values.collector.endpoint }}
{{- else if .Values.jaeger.enabled -}}
{{ printf "http://jaeger-collector.%s:4318/v1/traces" .Release.Namespace }}
{{- else -}}
{{ fail "collector.endpoint is required when jaeger.enabled is false" }}
{{- end -}}
{{- end }}

{{/* Namespaces never injected. */}}
{{- define "sidetrace.excludedNamespaces" -}}
{{- $ns := list "kube-system" "kube-public" .Release.Namespace -}}
{{- concat $ns .Values.webhook.excludedNamespaces | uniq | toJson -}}
{{- end }}

{{/* The oldest Kubernetes the chart installs on: 1.27, the floor the chart has declared from
the start (nothing older is tested here; the injector uses native sidecars from 1.29 and classic
sidecars below). As Chart.yaml's kubeVersion it also refused `helm template` without a cluster,
because helm then compares it with its offline placeholder v1.20.0 (what a helm built without
version ldflags assumes). So the check lives here and applies whenever the version is real: a
live cluster answered (lookup finds its kube-system Namespace: install, upgrade,
--dry-run=server), or the user named a version with `helm template --kube-version`. Only helm's
placeholder with no cluster behind it renders unchecked. */}}
{{- define "sidetrace.kubeVersionFloor" -}}1.27.0-0{{- end }}
{{- define "sidetrace.checkKubeVersion" -}}
{{- $version := .Capabilities.KubeVersion.Version -}}
{{- $live := lookup "v1" "Namespace" "" "kube-system" -}}
{{- if or $live (ne $version "v1.20.0") -}}
{{- if semverCompare (printf "<%s" (include "sidetrace.kubeVersionFloor" .)) $version -}}
{{- fail (printf "sidetrace needs Kubernetes >= %s, not %s" (include "sidetrace.kubeVersionFloor" . | trimSuffix "-0") $version) -}}
{{- end -}}
{{- end -}}
{{- end }}
