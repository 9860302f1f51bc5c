{{/* The name of a component's objects: `<release>-<component>`. */}}
{{- define "chat.name" -}}
{{- printf "%s-%s" .root.Release.Name .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "chat.selectorLabels" -}}
app.kubernetes.io/name: chat
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "chat.labels" -}}
{{ include "chat.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: chat
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "chat.image" -}}
{{- $registry := .root.Values.image.registry -}}
{{- $repository := ternary .image.repository (printf "%s/%s" $registry .image.repository) (empty $registry) -}}
{{- printf "%s:%s" $repository (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{- define "chat.secretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-secrets" .Release.Name) -}}
{{- end -}}

{{/* Every process's NATS: the bundled server's Service, or `nats.url`. */}}
{{- define "chat.natsUrl" -}}
{{- if .Values.nats.enabled -}}
nats://{{ .Release.Name }}-nats:4222
{{- else -}}
{{- required "nats.url is required when nats.enabled is false" .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{/* The routers in the order of their StatefulSet index: the order every process splits users by. */}}
{{- define "chat.routerUrls" -}}
{{- $urls := list -}}
{{- $name := include "chat.name" (dict "root" . "component" "router") -}}
{{- range $i := until (int .Values.router.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s:%v" $name $i $name $.Values.router.port) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/* Environment entries for a component's `config` map: `fooBar` becomes CHAT_FOO_BAR; null is left out. */}}
{{- define "chat.configEnv" -}}
{{- $env := list -}}
{{- range $key, $value := . -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $env = append $env (dict "name" (printf "CHAT_%s" ($key | snakecase | upper)) "value" ($value | toString)) -}}
{{- end -}}
{{- end -}}
{{- with $env }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/* The environment every process shares. */}}
{{- define "chat.commonEnv" -}}
- name: CHAT_NATS_URL
  value: {{ include "chat.natsUrl" . | quote }}
- name: CHAT_LOG_JSON
  value: {{ .Values.logJson | quote }}
{{- with include "chat.configEnv" (dict
      "otlpEndpoint" .Values.tracing.otlpEndpoint
      "traceSampleRatio" .Values.tracing.sampleRatio) }}
{{ . }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by the components: `.values` is the component's values. */}}
{{- define "chat.podSpec" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
automountServiceAccountToken: false
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* `--jwt-public-key` entries for `auth.publicKeys`: `[KID=]ALG:PATH`, comma-separated. */}}
{{- define "chat.publicKeys" -}}
{{- $entries := list -}}
{{- range $i, $key := . -}}
{{- $alg := required "auth.publicKeys[].alg is required (RS256 or ES256)" $key.alg -}}
{{- $entry := printf "%s:/etc/chat/keys/key-%d.pem" $alg $i -}}
{{- if $key.kid }}{{ $entry = printf "%s=%s" $key.kid $entry }}{{ end -}}
{{- $entries = append $entries $entry -}}
{{- end -}}
{{- join "," $entries -}}
{{- end -}}
