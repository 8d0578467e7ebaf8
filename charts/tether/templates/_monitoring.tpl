{{/* Definitions of the monitoring templates (monitoring-*.yaml). */}}

{{/* A Prometheus alert template reference to a label: {{ $labels.<name> }}. */}}
{{- define "tether.promLabel" -}}
{{ printf "{{ $labels.%s }}" . }}
{{- end }}

{{/* Seconds (a number) as a short duration for people: 1h, 30m, 90s. */}}
{{- define "tether.humanSeconds" -}}
{{- $s := int64 (round . 0) -}}
{{- if and (gt $s 0) (eq (mod $s 3600) 0) }}{{ div $s 3600 }}h{{ else if and (gt $s 0) (eq (mod $s 60) 0) }}{{ div $s 60 }}m{{ else }}{{ $s }}s{{ end -}}
{{- end }}

{{/*
An alert's labels and annotations. Call with (dict "root" $ "alert" <name> "severity" <severity>
"summary" <text> "description" <text>).
*/}}
{{- define "tether.alertMeta" -}}
labels:
  severity: {{ .severity }}
  {{- with .root.Values.monitoring.prometheusRule.alertLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  summary: {{ .summary | quote }}
  description: {{ .description | quote }}
  {{- with .root.Values.monitoring.prometheusRule.runbookBaseUrl }}
  runbook_url: {{ printf "%s%s" . (lower $.alert) | quote }}
  {{- end }}
{{- end }}
