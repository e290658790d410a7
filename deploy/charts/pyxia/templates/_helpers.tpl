{{/* Names, labels and the flags shared by the templates. */}}

{{- define "pyxia.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pyxia.serverName" -}}{{ include "pyxia.fullname" . }}-server{{- end -}}
{{- define "pyxia.coordinatorName" -}}{{ include "pyxia.fullname" . }}-coordinator{{- end -}}

{{- define "pyxia.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pyxia.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pyxia.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "pyxia.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "pyxia.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{- define "pyxia.secretName" -}}
{{ .Values.clusterSecret.existingSecret | default (printf "%s-cluster-secret" (include "pyxia.fullname" .)) }}
{{- end -}}

{{/* A data server's DNS name: pod N of the StatefulSet behind its headless Service. */}}
{{- define "pyxia.serverHost" -}}
{{ include "pyxia.serverName" .root }}-{{ .index }}.{{ include "pyxia.serverName" .root }}.{{ .root.Release.Namespace }}.svc
{{- end -}}

{{/* The client Service's DNS name (probes over TLS check the certificate against it). */}}
{{- define "pyxia.clientHost" -}}
{{ include "pyxia.fullname" . }}.{{ .Release.Namespace }}.svc
{{- end -}}

{{- define "pyxia.coordinatorHost" -}}
{{ include "pyxia.coordinatorName" . }}.{{ .Release.Namespace }}.svc
{{- end -}}

{{/* An init container that copies the cluster secret to a 0600 file: Kubernetes mounts
     secret files readable by the pod's group (fsGroup), which pyxia refuses for a secret. */}}
{{- define "pyxia.secretInit" -}}
- name: cluster-secret
  image: {{ include "pyxia.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["install", "-m", "0600", "/etc/pyxia/secret/cluster.secret", "/var/run/pyxia/cluster.secret"]
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - {name: cluster-secret, mountPath: /etc/pyxia/secret, readOnly: true}
    - {name: run, mountPath: /var/run/pyxia}
{{- end -}}

{{- define "pyxia.secretVolumes" -}}
- name: cluster-secret
  secret:
    secretName: {{ include "pyxia.secretName" . }}
    defaultMode: 0440
- name: run
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: tmp
  emptyDir: {}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required with tls.enabled" .Values.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "pyxia.secretMounts" -}}
- {name: run, mountPath: /var/run/pyxia, readOnly: true}
- {name: tmp, mountPath: /tmp}
{{- if .Values.tls.enabled }}
- {name: tls, mountPath: /etc/pyxia/tls, readOnly: true}
{{- end }}
{{- end -}}

{{/* A probe of the gRPC health service on `port`: the kubelet's own gRPC probe, or
     `pyxia health` over TLS when TLS is on (the kubelet's probe speaks no TLS). */}}
{{- define "pyxia.healthProbe" -}}
{{- if .root.Values.tls.enabled }}
exec:
  command:
    - pyxia
    - health
    - --address
    - 127.0.0.1:{{ .port }}
    - --tls-trusted-ca-file
    - /etc/pyxia/tls/ca.crt
    - --tls-cert-file
    - /etc/pyxia/tls/tls.crt
    - --tls-key-file
    - /etc/pyxia/tls/tls.key
    - --tls-server-name
    - {{ .serverName }}
    - --timeout
    - "4"
{{- else }}
grpc:
  port: {{ .port }}
{{- end }}
{{- end -}}

{{- define "pyxia.metricsAnnotations" -}}
{{- if .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: "8080"
prometheus.io/path: /metrics
{{- end }}
{{- end -}}
