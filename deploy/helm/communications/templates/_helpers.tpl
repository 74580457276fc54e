{{/*
Labels of every object: the service's name (none for shared objects), the
part-of label the kustomize base sets, and helm's own.
*/}}
{{- define "communications.labels" -}}
{{- if .name -}}
app.kubernetes.io/name: {{ .name }}
{{ end -}}
app.kubernetes.io/part-of: communications
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The image of a service. */}}
{{- define "communications.image" -}}
{{- $v := .root.Values.image -}}
{{- if $v.registry }}{{ $v.registry }}/{{ end }}communications/{{ .name }}:{{ $v.tag }}
{{- end }}

{{/* The port of a URL, or def. */}}
{{- define "communications.urlPort" -}}
{{- $host := (urlParse .url).host -}}
{{- if regexMatch ":[0-9]+$" $host }}{{ regexFind "[0-9]+$" $host }}{{ else }}{{ .default }}{{ end -}}
{{- end }}

{{/*
The ConfigMap data of a service: what differs between environments, with
the service's extra variables (each must carry its prefix).
*/}}
{{- define "communications.config" -}}
{{- $v := .root.Values -}}
{{- $data := dict -}}
{{- if eq .name "auth" }}
{{- $_ := set $data "AUTH_NATS_URL" $v.nats.url }}
{{- else if eq .name "chat" }}
{{- $_ := set $data "CHAT_NATS_URL" $v.nats.url }}
{{- $_ := set $data "CHAT_STREAM_REPLICAS" (toString $v.nats.streamReplicas) }}
{{- else if eq .name "history" }}
{{- $_ := set $data "HISTORY_NATS_URL" $v.nats.url }}
{{- $_ := set $data "HISTORY_REDIS_URL" $v.redis.url }}
{{- else if eq .name "gateway" }}
{{- $_ := set $data "GATEWAY_NATS_URL" $v.nats.url }}
{{- $_ := set $data "GATEWAY_REDIS_URL" $v.redis.url }}
{{- $_ := set $data "GATEWAY_SECURE_COOKIES" (toString $v.gateway.secureCookies) }}
{{- end }}
{{- range $k, $val := (index $v .name).env }}
{{- $_ := set $data $k (toString $val) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/* Milliseconds of a duration made of whole h, m, s and ms parts (1m30s). */}}
{{- define "communications.ms" -}}
{{- $ms := 0 -}}
{{- range regexFindAll "[0-9]+(ms|h|m|s)" . -1 -}}
{{- $n := regexFind "^[0-9]+" . -}}
{{- $u := trimPrefix $n . -}}
{{- $f := dict "h" 3600000 "m" 60000 "s" 1000 "ms" 1 -}}
{{- $ms = add $ms (mul (atoi $n) (get $f $u)) -}}
{{- end -}}
{{- $ms -}}
{{- end }}
