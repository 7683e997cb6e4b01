{{/* Common labels. */}}
{{- define "sidetrace.labels" -}}
app.kubernetes.io/part-of: sidetrace
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* An image reference: images.registry/repository:tag. Args: (dict "root" . "image" .Values.images.X) */}}
{{- define "sidetrace.image" -}}
{{- $reg := .root.Values.images.registry -}}
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
