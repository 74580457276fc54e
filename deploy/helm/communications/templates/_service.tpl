{{/*
A service's ServiceAccount, Service and Deployment, as in
deploy/k8s/base/<name>.yaml. Arguments: root, name.
*/}}
{{- define "communications.service" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $v := index $root.Values $name -}}
{{- $gateway := eq $name "gateway" -}}
{{- $prefix := upper $name -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "communications.labels" (dict "root" $root "name" $name) | nindent 4 }}
automountServiceAccountToken: false
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "communications.labels" (dict "root" $root "name" $name) | nindent 4 }}
spec:
  selector:
    app.kubernetes.io/name: {{ $name }}
  ports:
    {{- if $gateway }}
    - name: http
      port: 80
      targetPort: http
    {{- end }}
    - name: debug
      port: 9090
      targetPort: debug
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "communications.labels" (dict "root" $root "name" $name) | nindent 4 }}
spec:
  {{- if not (and $gateway $v.autoscaling.enabled) }}
  replicas: {{ $v.replicas }}
  {{- else }}
  {{- /*
  The autoscaler owns the count: an upgrade must not change it. On an
  existing release, keep the live Deployment's count (dropping the field
  would reset it to 1 when autoscaling is switched on, draining the
  gateways' clients); on install, and offline (helm template, where lookup
  finds nothing), no field: the autoscaler raises the count to minReplicas.
  */}}
  {{- $live := lookup "apps/v1" "Deployment" $root.Release.Namespace $name }}
  {{- with $live }}
  {{- with .spec.replicas }}
  replicas: {{ . }}
  {{- end }}
  {{- end }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- if $gateway }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  {{- end }}
  selector:
    matchLabels:
      app.kubernetes.io/name: {{ $name }}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: {{ $name }}
        app.kubernetes.io/part-of: communications
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "9090"
        # A change of the ConfigMap rolls the pods.
        checksum/config: {{ include "communications.config" . | sha256sum }}
    spec:
      serviceAccountName: {{ $name }}
      automountServiceAccountToken: false
      # Service links would add {{ $prefix }}_SERVICE_HOST and the like to the
      # environment, inside the service's own variable prefix.
      enableServiceLinks: false
      {{- if $gateway }}
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      {{- else }}
      # Above the 20 s shutdown timeout plus the 5 s telemetry flush.
      terminationGracePeriodSeconds: 30
      {{- end }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: {{ $name }}
          image: {{ include "communications.image" . }}
          ports:
            {{- if $gateway }}
            - name: http
              containerPort: 8080
            {{- end }}
            - name: debug
              containerPort: 9090
          env:
            {{- if $gateway }}
            - name: GATEWAY_HTTP_ADDR
              value: 0.0.0.0:8080
            {{- end }}
            - name: {{ $prefix }}_DEBUG_ADDR
              value: 0.0.0.0:9090
            {{- if $gateway }}
            - name: GATEWAY_DRAIN_TIMEOUT
              value: {{ $v.drainTimeout }}
            - name: GATEWAY_SHUTDOWN_TIMEOUT
              value: {{ $v.shutdownTimeout }}
            {{- else }}
            - name: {{ $prefix }}_POSTGRES_URL
              valueFrom:
                secretKeyRef:
                  name: {{ $root.Values.postgres.secretName }}
                  key: {{ $root.Values.postgres.secretKey }}
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ $name }}
          {{- if $gateway }}
          lifecycle:
            preStop:
              sleep:
                seconds: {{ $v.preStopSleepSeconds }}
          {{- end }}
          {{- if $gateway }}
          # The gateway has no migrations, but connects to NATS before its
          # debug server listens: the same minute of start-up.
          {{- else }}
          # Migrations run before the debug server listens: give start-up
          # a minute before liveness counts.
          {{- end }}
          startupProbe:
            httpGet:
              path: /healthz
              port: debug
            periodSeconds: 2
            failureThreshold: 30
          livenessProbe:
            httpGet:
              path: /healthz
              port: debug
            periodSeconds: 10
            timeoutSeconds: 2
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: debug
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 2
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            runAsNonRoot: true
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities:
              drop: ["ALL"]
            seccompProfile:
              type: RuntimeDefault
{{- end }}
