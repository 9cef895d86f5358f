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

{{/* The namespaced permissions of the operator; used by the ClusterRole or by one Role per watched namespace.
Exactly what the operator does: tests/operator/test_rbac.py compares these rules with the API requests of a whole
operator run (create, canary, promote, rollback, delete on both backends) and fails on a missing or an unused verb. */}}
{{- define "sluice.namespacedRules" -}}
# Kopf lists and watches ModelDeployments and patches them (finalizer, its progress annotations); the rollout daemon
# reads Kopf's live copy from that watch, never a GET.
- apiGroups: ["sluice.dev"]
  resources: ["modeldeployments"]
  verbs: ["list", "watch", "patch"]
# All rollout state lives in status (phase, weights, analyses, history): a merge patch of the status subresource.
- apiGroups: ["sluice.dev"]
  resources: ["modeldeployments/status"]
  verbs: ["patch"]
# Experiments: Kopf lists, watches and patches them (finalizer: deletion takes the arms off the target); the
# experiment's state lives in its status. Its controller reads the target ModelDeployment (get) and patches it: the
# arms annotation the ModelDeployment's controller renders, and spec.model when promoting the winner.
- apiGroups: ["sluice.dev"]
  resources: ["experiments"]
  verbs: ["list", "watch", "patch"]
# An experiment's verdict, per-arm statistics and phase: a merge patch of its status subresource.
- apiGroups: ["sluice.dev"]
  resources: ["experiments/status"]
  verbs: ["patch"]
# The Experiment and DriftPolicy controllers read their target ModelDeployment (exists? mid-rollout? its spec).
- apiGroups: ["sluice.dev"]
  resources: ["modeldeployments"]
  verbs: ["get"]
# backend ray: one KubeRay RayService per ModelDeployment; weights change in place in serveConfigV2. Watched (list,
# watch) so that readiness reads the live children from memory, as are the Deployments below.
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# backend triton: a tritonserver Deployment per model version and the router Deployment in front.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# backend triton: Services of the router and of each tritonserver version; the router's ConfigMap with its weights.
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "create", "patch", "delete"]
# backend triton: the router follows its ConfigMap through the API, as its own ServiceAccount with a Role allowing
# get/list/watch on that one ConfigMap (the operator may grant it because it holds configmaps get/list itself; watch
# below for the same reason: RBAC refuses to grant what the granter lacks).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create", "patch", "delete"]
# backend triton: the router's Role and RoleBinding (see above).
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch", "delete"]
# Granting the router's Role needs the operator to hold what it grants (no escalate/bind verbs asked for).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["watch"]
# The router's admin-token Secret (<name>-router-admin), created once per ModelDeployment and never rewritten: create
# only. The operator never reads a Secret (no get/list/watch): a 409 on create tells it one is already there.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
# Children no longer desired are found by the owner's label on every child kind, ServiceMonitors included (the API
# answers 404 while prometheus-operator's CRD is absent).
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["list"]
{{- if .Values.monitoring.modelServiceMonitors.enabled }}
# monitoring.modelServiceMonitors: a ServiceMonitor for each ModelDeployment's router and model servers, applied and
# pruned like the other children (backend ray also gets a Service over the Ray head: the services rule above).
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "create", "patch", "delete"]
{{- end }}
# GPU placement: the model pods of each version are read to report InsufficientGPU (Unschedulable for nvidia.com/gpu).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# DriftPolicies: Kopf lists, watches and patches them (finalizer: deletion takes the policy's bins off its target).
- apiGroups: ["sluice.dev"]
  resources: ["driftpolicies"]
  verbs: ["list", "watch", "patch"]
# A DriftPolicy's state, score, per-feature table and conditions: a merge patch of its status subresource.
- apiGroups: ["sluice.dev"]
  resources: ["driftpolicies/status"]
  verbs: ["patch"]
# The DriftPolicy controller reads its target ModelDeployment (the get above) and patches it (the patch above): its
# bins as an annotation, the undo command (rollback), spec.model to a retrained version.
# DriftPolicy retrain: a Job from the policy's jobTemplate (create), followed until it finishes (get); its pods are
# listed (pods list, above) for the termination message naming the new model.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "create"]
# Events for every phase change, promotion and rollback (the operator) and handler outcomes (Kopf).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
