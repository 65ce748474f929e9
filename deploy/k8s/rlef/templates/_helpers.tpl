{{/* Names and labels. */}}
{{- define "rlef.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "rlef.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "actor"). */}}
{{- define "rlef.selector" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "rlef.hubService" -}}{{ include "rlef.fullname" . }}-hub{{- end -}}
{{- define "rlef.brokerService" -}}{{ include "rlef.fullname" . }}-executor-broker{{- end -}}
{{- define "rlef.learnerHeadless" -}}{{ include "rlef.fullname" . }}-learner{{- end -}}

{{/* Endpoint ports: from config.endpoints, else the schema's defaults. */}}
{{- define "rlef.port" -}}
{{- $defaults := dict "rollout_port" 5555 "weights_port" 5556 "control_port" 5557 "broker_frontend_port" 5560 "broker_backend_port" 5561 -}}
{{- $endpoints := default dict .ctx.Values.config.endpoints -}}
{{- index $endpoints .name | default (index $defaults .name) -}}
{{- end -}}

{{/* The run config every process reads: values.config plus what the deployment itself decides. */}}
{{- define "rlef.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $endpoints := merge (dict "learner_host" (printf "%s.%s.svc" (include "rlef.hubService" .) .Release.Namespace) "broker_host" (printf "%s.%s.svc" (include "rlef.brokerService" .) .Release.Namespace) "bind_host" "0.0.0.0") (default dict $cfg.endpoints) -}}
{{- $_ := set $endpoints "learner_host" (printf "%s.%s.svc" (include "rlef.hubService" .) .Release.Namespace) -}}
{{- $_ := set $endpoints "broker_host" (printf "%s.%s.svc" (include "rlef.brokerService" .) .Release.Namespace) -}}
{{- $_ := set $endpoints "bind_host" "0.0.0.0" -}}
{{- $_ := set $cfg "endpoints" $endpoints -}}
{{- $deploy := merge (dict "actors" (int .Values.actors.replicas) "executors" (int .Values.executors.replicas) "learner_nodes" (int .Values.learner.nodes) "learner_ranks" (int .Values.learner.ranksPerNode)) (default dict $cfg.deploy) -}}
{{- $_ := set $deploy "actors" (int .Values.actors.replicas) -}}
{{- $_ := set $deploy "executors" (int .Values.executors.replicas) -}}
{{- $_ := set $deploy "learner_nodes" (int .Values.learner.nodes) -}}
{{- $_ := set $deploy "learner_ranks" (int .Values.learner.ranksPerNode) -}}
{{- $_ := set $cfg "deploy" $deploy -}}
{{- range $section, $port := dict "learner" .Values.metrics.learnerPort "actor" .Values.metrics.actorPort "executor" .Values.metrics.executorPort -}}
{{- $s := default dict (index $cfg $section) -}}
{{- $_ := set $s "metrics_port" (int $port) -}}
{{- $_ := set $cfg $section $s -}}
{{- end -}}
{{- if .Values.curve.enabled -}}
{{- $transport := default dict $cfg.transport -}}
{{- $_ := set $transport "curve_keys_dir" .Values.curve.mountPath -}}
{{- $_ := set $cfg "transport" $transport -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Pod annotations: Prometheus scraping + a config checksum (pods restart when the config changes). */}}
{{- define "rlef.podAnnotations" -}}
{{- if .ctx.Values.metrics.scrape -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{ end -}}
checksum/config: {{ include "rlef.config" .ctx | sha256sum }}
{{- end -}}

{{- define "rlef.env" -}}
- name: HF_HUB_OFFLINE
  value: "1"
- name: HF_DATASETS_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
- name: TOKENIZERS_PARALLELISM
  value: "false"
- name: PYTHONUNBUFFERED
  value: "1"
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "rlef.volumeMounts" -}}
- name: config
  mountPath: /etc/rlef/config
  readOnly: true
{{- if .Values.sharedVolume.enabled }}
- name: shared
  mountPath: {{ .Values.sharedVolume.mountPath }}
{{- end }}
{{- if .Values.curve.enabled }}
- name: curve
  mountPath: {{ .Values.curve.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "rlef.volumes" -}}
- name: config
  configMap:
    name: {{ include "rlef.fullname" . }}-config
{{- if .Values.sharedVolume.enabled }}
- name: shared
  persistentVolumeClaim:
    claimName: {{ .Values.sharedVolume.claimName }}
{{- end }}
{{- if .Values.curve.enabled }}
- name: curve
  secret:
    secretName: {{ .Values.curve.existingSecret }}
    defaultMode: 0400
    items:
      - {key: server.key, path: server.key}
      - {key: server.key_secret, path: server.key_secret}
      - {key: client.key, path: client.key}
      - {key: client.key_secret, path: client.key_secret}
      - {key: client.key, path: authorized/client.key}
{{- end }}
{{- end -}}

{{- define "rlef.image" -}}
image: {{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- end -}}

{{/* resources + nvidia.com/gpu limit: call with (dict "resources" R "gpus" N). */}}
{{- define "rlef.resources" -}}
{{- $res := deepCopy (default dict .resources) -}}
{{- if gt (int .gpus) 0 -}}
{{- $limits := default dict $res.limits -}}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpus) -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}
