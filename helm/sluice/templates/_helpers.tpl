{{/* Full name of the release's objects, at most 63 characters. */}}
{{- define "sluice.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "sluice.labels" -}}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) -}}
{{- end -}}

{{/* The namespaced permissions of the operator; used by the ClusterRole or by one Role per watched namespace. */}}
{{- define "sluice.namespacedRules" -}}
# Kopf watches the three kinds and patches them (finalizers, annotations); handlers read specs.
- apiGroups: ["sluice.dev"]
  resources: ["modeldeployments", "experiments", "driftpolicies"]
  verbs: ["get", "list", "watch", "patch", "update"]
# All rollout state lives in status (phase, weights, analyses, history).
- apiGroups: ["sluice.dev"]
  resources: ["modeldeployments/status", "experiments/status", "driftpolicies/status"]
  verbs: ["get", "patch", "update"]
# backend ray: one KubeRay RayService per ModelDeployment; weights change in place in serveConfigV2.
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# backend triton: a tritonserver Deployment per model version and the router Deployment in front.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Services of the router and of each tritonserver version; ConfigMaps with router weights and Triton model config.
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Kopf and the rollout post Events (step reached, check failed, rolled back).
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# DriftPolicy action retrain runs a Job from spec.action.jobTemplate.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Leader election between operator replicas.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
{{- end -}}
