{{/* Names and labels. */}}
{{- define "pac.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "pac.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "pac.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "pac.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pac.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pac.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pac.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "pac.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pac
{{- end -}}

{{- define "pac.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "pac.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pac.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: named by the user or generated for MinIO. */}}
{{- define "pac.s3Secret" -}}
{{- if .Values.s3.existingSecret -}}
{{- .Values.s3.existingSecret -}}
{{- else if eq .Values.s3.mode "external" -}}
{{- fail "s3.existingSecret is required with s3.mode=external: a Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (credentials never go in values)" -}}
{{- else -}}
{{- printf "%s-s3" (include "pac.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "pac.s3Endpoint" -}}
{{- if eq .Values.s3.mode "minio" -}}
{{- printf "http://%s-minio.%s.svc:9000" (include "pac.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "s3.endpoint is required with s3.mode=external, e.g. https://s3.eu-west-1.amazonaws.com" .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "pac.mlflowHost" -}}
{{- printf "%s-mlflow.%s.svc" (include "pac.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "pac.mlflowUri" -}}
{{- printf "http://%s:%d" (include "pac.mlflowHost" .) (int .Values.mlflow.service.port) -}}
{{- end -}}

{{/* The object-store root of every step: s3://<bucket>/<prefix>. */}}
{{- define "pac.storageRoot" -}}
{{- printf "s3://%s/%s" .Values.s3.bucket .Values.s3.prefix | trimSuffix "/" -}}
{{- end -}}

{{/* Restricted pod-security profile: every pod and container. */}}
{{- define "pac.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "pac.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Non-secret endpoints and S3 credentials as env, the same way the pipeline's steps get them. */}}
{{- define "pac.storeEnv" -}}
- name: PAC_S3_SECRET_NAME  # named in pac's credential errors
  value: {{ include "pac.s3Secret" . }}
- name: AWS_ENDPOINT_URL
  valueFrom:
    configMapKeyRef: {name: {{ include "pac.fullname" . }}-endpoints, key: AWS_ENDPOINT_URL}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ include "pac.s3Secret" . }}, key: AWS_ACCESS_KEY_ID}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "pac.s3Secret" . }}, key: AWS_SECRET_ACCESS_KEY}
{{- end -}}

{{/* Guards for combinations the schema cannot express. */}}
{{- define "pac.validate" -}}
{{- if and (eq .Values.mlflow.backendStore.type "database") (not .Values.mlflow.backendStore.database.existingSecret) -}}
{{- fail "mlflow.backendStore.database.existingSecret is required with mlflow.backendStore.type=database: a Secret holding the database URI" -}}
{{- end -}}
{{- if and (eq .Values.mlflow.backendStore.type "sqlite") (gt (int .Values.mlflow.replicas) 1) -}}
{{- fail "mlflow.replicas must be 1 with mlflow.backendStore.type=sqlite (one writer); use type=database to scale out" -}}
{{- end -}}
{{- if and (eq .Values.s3.mode "minio") .Values.s3.endpoint -}}
{{- fail "s3.endpoint is for s3.mode=external; with s3.mode=minio the chart's MinIO is the endpoint" -}}
{{- end -}}
{{- if and (ne .Values.schedule.mode "none") (not .Values.mlflow.enabled) -}}
{{- fail "schedule.mode needs mlflow.enabled=true: every retraining run is tracked and registered in MLflow" -}}
{{- end -}}
{{- end -}}

{{/*
The pod spec of a `pac` command run by the chart (hook Jobs, the CronJob, helm tests): the project image, the
restricted security context, endpoints and credentials from the ConfigMap and Secrets, the pipeline ConfigMap
at /etc/pac. Arguments: root (the chart context), args (the pac command line), resources, token (mount the
KFP service-account token), writable (the root filesystem stays writable: in-pod training compiles DeepSpeed's
CPU op into the home cache).
*/}}
{{- define "pac.commandPod" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "pac.serviceAccountName" $root }}
automountServiceAccountToken: false
restartPolicy: {{ default "Never" .restartPolicy }}
securityContext:
  {{- include "pac.podSecurityContext" $root | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: pac
    image: {{ include "pac.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- toYaml .args | nindent 6 }}
    env:
      - name: MLFLOW_TRACKING_URI
        valueFrom:
          configMapKeyRef: {name: {{ include "pac.fullname" $root }}-endpoints, key: MLFLOW_TRACKING_URI}
      {{- include "pac.storeEnv" $root | nindent 6 }}
      {{- with $root.Values.mlflow.authSecret }}
      - name: MLFLOW_TRACKING_USERNAME
        valueFrom:
          secretKeyRef: {name: {{ . }}, key: MLFLOW_TRACKING_USERNAME}
      - name: MLFLOW_TRACKING_PASSWORD
        valueFrom:
          secretKeyRef: {name: {{ . }}, key: MLFLOW_TRACKING_PASSWORD}
      {{- end }}
      {{- if not .writable }}
      - name: HOME
        value: /tmp
      {{- end }}
      {{- if .token }}
      - name: KF_PIPELINES_SA_TOKEN_PATH
        value: /var/run/secrets/kubeflow/pipelines/token
      {{- end }}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: {{ not .writable }}
      capabilities:
        drop: [ALL]
    resources:
      {{- toYaml .resources | nindent 6 }}
    volumeMounts:
      - {name: tmp, mountPath: /tmp}
      - {name: pipeline, mountPath: /etc/pac, readOnly: true}
      {{- if .writable }}
      - {name: work, mountPath: /workspace}
      {{- end }}
      {{- if .token }}
      - {name: kfp-token, mountPath: /var/run/secrets/kubeflow/pipelines, readOnly: true}
      {{- end }}
volumes:
  - name: tmp
    emptyDir: {}
  - name: pipeline
    configMap:
      name: {{ include "pac.fullname" $root }}-pipeline
  {{- if .writable }}
  - name: work
    emptyDir: {}
  {{- end }}
  {{- if .token }}
  - name: kfp-token
    projected:
      sources:
        - serviceAccountToken:
            path: token
            audience: pipelines.kubeflow.org
            expirationSeconds: 3600
  {{- end }}
{{- end -}}

{{/* `--param name=value` arguments from pipeline.parameters. */}}
{{- define "pac.paramArgs" -}}
{{- range $k, $v := .Values.pipeline.parameters }}
- --param
- {{ printf "%s=%v" $k $v | quote }}
{{- end }}
{{- end -}}
