{{/* Names */}}
{{- define "virtgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "virtgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels: (dict "root" $ "component" "broker") */}}
{{- define "virtgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "virtgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "virtgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "virtgate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "virtgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Secrets: the existing one, else the one cert-manager writes, else fail naming the value. */}}
{{- define "virtgate.secret" -}}
{{- $v := index .root.Values.tls .which -}}
{{- if $v.existingSecret -}}
{{- $v.existingSecret -}}
{{- else if .root.Values.tls.certManager.enabled -}}
{{- printf "%s-%s" (include "virtgate.fullname" .root) (.which | kebabcase) -}}
{{- else -}}
{{- fail (printf "tls.%s.existingSecret is required: name a kubernetes.io/tls Secret, or set tls.certManager.enabled=true with tls.certManager.issuerRef.name" .which) -}}
{{- end -}}
{{- end -}}

{{- define "virtgate.brokerHost" -}}
{{- printf "%s-broker.%s.svc" (include "virtgate.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "virtgate.brokerUrl" -}}
{{- default (printf "https://%s:%v" (include "virtgate.brokerHost" .) (int .Values.broker.port)) .Values.gateway.brokerUrl -}}
{{- end -}}

{{/* TOML: Helm reads every number as a float, so integers are written as integers here. */}}
{{- define "virtgate.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "virtgate.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- if eq (float64 $v) (floor $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "virtgate.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}
{{- $keys := list -}}
{{- range $k, $e := $v }}{{ if not (kindIs "invalid" $e) }}{{ $keys = append $keys $k }}{{ end }}{{ end -}}
{ {{- range $i, $k := $keys }}{{ if $i }}, {{ end }}{{ include "virtgate.tomlKey" $k }} = {{ include "virtgate.tomlValue" (get $v $k) }}{{ end -}} }
{{- else -}}
{{- fail (printf "config: %v cannot be written as TOML" $v) -}}
{{- end -}}
{{- end -}}

{{/* A whole virtgate.toml from a dict of sections. */}}
{{- define "virtgate.toml" -}}
{{- range $section, $keys := . }}
[{{ $section }}]
{{- range $k, $v := $keys }}
{{- if not (kindIs "invalid" $v) }}
{{ include "virtgate.tomlKey" $k }} = {{ include "virtgate.tomlValue" $v }}
{{- end }}
{{- end }}
{{ end -}}
{{- end -}}

{{/* Paths inside the containers. */}}
{{- define "virtgate.paths" -}}
config: /etc/virtgate/virtgate.toml
volume: /var/lib/virtgate
data: /var/lib/virtgate/data
cache: /var/cache/virtgate
gatewayServer: /etc/virtgate/tls/gateway-server
gatewayBackend: /etc/virtgate/tls/gateway-backend
brokerApi: /etc/virtgate/tls/broker-api
clientCa: /etc/virtgate/tls/client-ca
crl: /etc/virtgate/tls/crl
hostCa: /etc/virtgate/tls/host-ca
{{- end -}}

{{/* The broker's virtgate.toml. */}}
{{- define "virtgate.brokerConfig" -}}
{{- $p := include "virtgate.paths" . | fromYaml -}}
{{- $c := deepCopy .Values.config -}}
{{- $broker := dict
  "data_dir" $p.data
  "listen" (printf "0.0.0.0:%v" (int .Values.broker.port))
  "discovery" .Values.broker.discovery.enabled
  "tls_cert_file" (printf "%s/tls.crt" $p.brokerApi)
  "tls_key_file" (printf "%s/tls.key" $p.brokerApi)
  "proxy_ca_files" (list (printf "%s/ca.crt" $p.gatewayBackend))
  "client_cert_file" (printf "%s/tls.crt" $p.gatewayBackend)
  "client_key_file" (printf "%s/tls.key" $p.gatewayBackend) -}}
{{- if .Values.tls.hostCa.existingSecret }}{{ $_ := set $broker "trusted_ca_files" (list (printf "%s/%s" $p.hostCa .Values.tls.hostCa.key)) }}{{ end -}}
{{- $_ := set $c "broker" (merge $broker (default dict $c.broker)) -}}
{{- $_ := set $c "proxy" (dict "enabled" false) -}}
{{- include "virtgate.toml" $c -}}
{{- end -}}

{{/* The gateways' virtgate.toml. */}}
{{- define "virtgate.gatewayConfig" -}}
{{- $p := include "virtgate.paths" . | fromYaml -}}
{{- $c := pick (deepCopy .Values.config) "log" "proxy" "runtime" -}}
{{- $listen := list (printf "0.0.0.0:%v" (int .Values.gateway.port)) -}}
{{- if .Values.gateway.listenIPv6 }}{{ $listen = append $listen (printf "[::]:%v" (int .Values.gateway.port)) }}{{ end -}}
{{- $proxy := dict
  "listen" $listen
  "metrics_listen" (printf "0.0.0.0:%v" (int .Values.gateway.metricsPort))
  "server_cert_file" (printf "%s/tls.crt" $p.gatewayServer)
  "server_key_file" (printf "%s/tls.key" $p.gatewayServer)
  "client_ca_files" (list (printf "%s/%s" $p.clientCa .Values.tls.clientCa.key))
  "backend_cert_file" (printf "%s/tls.crt" $p.gatewayBackend)
  "backend_key_file" (printf "%s/tls.key" $p.gatewayBackend) -}}
{{- if .Values.gateway.brokerPin }}{{ $_ := set $proxy "broker_pin" .Values.gateway.brokerPin }}{{ else }}{{ $_ := set $proxy "broker_ca_file" (printf "%s/ca.crt" $p.brokerApi) }}{{ end -}}
{{- if .Values.tls.crl.existingSecret }}{{ $_ := set $proxy "crl_file" (printf "%s/%s" $p.crl .Values.tls.crl.key) }}{{ end -}}
{{- if .Values.gateway.directoryCache }}{{ $_ := set $proxy "directory_cache_file" (printf "%s/inventory.json" $p.cache) }}{{ end -}}
{{- $_ := set $c "proxy" (merge $proxy (default dict $c.proxy)) -}}
{{- if .Values.tls.hostCa.existingSecret }}{{ $_ := set $c "broker" (dict "trusted_ca_files" (list (printf "%s/%s" $p.hostCa .Values.tls.hostCa.key))) }}{{ end -}}
{{- include "virtgate.toml" $c -}}
{{- end -}}

{{/* Seconds a gateway may take to stop: the preStop sleep, the drain, the handshake grace. */}}
{{- define "virtgate.gatewayGrace" -}}
{{- $drain := .Values.config.proxy.drain_timeout | default "30s" -}}
{{- $seconds := 0 -}}
{{- if regexMatch "^[0-9]+s$" $drain -}}{{ $seconds = trimSuffix "s" $drain | int }}
{{- else if regexMatch "^[0-9]+m$" $drain -}}{{ $seconds = mul (trimSuffix "m" $drain | int) 60 }}
{{- else if regexMatch "^[0-9]+h$" $drain -}}{{ $seconds = mul (trimSuffix "h" $drain | int) 3600 }}
{{- else -}}{{ fail (printf "config.proxy.drain_timeout %q: write it as seconds, minutes or hours (60s, 2m, 1h) so the chart can size terminationGracePeriodSeconds" $drain) }}
{{- end -}}
{{- $sleep := 0 -}}
{{- if eq (include "virtgate.preStopSleep" .) "true" }}{{ $sleep = int .Values.gateway.preStopSleepSeconds }}{{ end -}}
{{- add $seconds $sleep 10 -}}
{{- end -}}

{{- define "virtgate.preStopSleep" -}}
{{- and (gt (int .Values.gateway.preStopSleepSeconds) 0) (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
