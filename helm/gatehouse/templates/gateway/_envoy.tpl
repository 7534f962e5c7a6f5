{{/*
The gateway's Envoy bootstrap: envoy/gateway.yaml's gateway listener, filters and clusters,
in-cluster. Differences from the reference: no mTLS listener and no forward-auth filter (the
chart's Envoy calls extauth over gRPC); the services are reached through their headless
Services (STRICT_DNS); the admin API stays on loopback and a probes listener passes only
/ready and /stats/prometheus to it; the built-in upstream listens on loopback.
*/}}
{{- define "gatehouse.envoyConfig" -}}
{{- $g := .Values.gateway -}}
{{- $ns := .Release.Namespace -}}
{{- $builtinUpstreamPort := 10001 -}}
# Rendered by the gatehouse Helm chart (templates/gateway/_envoy.tpl) after envoy/gateway.yaml.
admin:
  # Loopback only: the admin API can reconfigure and stop Envoy. The probes listener below
  # passes /ready and /stats/prometheus through.
  address:
    socket_address: { address: 127.0.0.1, port_value: {{ $g.ports.admin }} }
static_resources:
  listeners:
  - name: gateway
    address:
      socket_address: { address: 0.0.0.0, port_value: {{ $g.ports.listener }} }
    {{- if $g.proxyProtocol }}
    # The load balancer sends a PROXY protocol header: the client's address is taken from it.
    listener_filters:
    - name: envoy.filters.listener.proxy_protocol
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol
    {{- end }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          # HTTP/1.1, or HTTP/2 with prior knowledge (h2c), on one port.
          codec_type: AUTO
          # The TCP peer (or the PROXY header's source) is the client, plus
          # xff_num_trusted_hops proxies in front: the `remote_address` action and extauth see
          # that address, and a client cannot pick its own bucket by forging X-Forwarded-For.
          use_remote_address: true
          xff_num_trusted_hops: {{ $g.xffNumTrustedHops }}
          # Policies and transformations are chosen by path prefix: match on the normalized
          # path, so /auth/keys/../admin or //auth cannot slip past a route.
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT
          route_config:
            name: gateway_routes
            virtual_hosts:
            - name: all
              domains: ["*"]
              # ext_authz and ext_proc are off unless a route turns them on by naming its
              # extauth policy or its transformation.
              {{- if or .Values.extauth.enabled .Values.transform.enabled }}
              typed_per_filter_config:
                {{- if .Values.extauth.enabled }}
                envoy.filters.http.ext_authz:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                  disabled: true
                {{- end }}
                {{- if .Values.transform.enabled }}
                envoy.filters.http.ext_proc:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                  disabled: true
                {{- end }}
              {{- end }}
              routes:
              {{- if $g.routes }}
              {{- toYaml $g.routes | nindent 14 }}
              {{- else }}
              {{- include "gatehouse.envoyDemoRoutes" . | trim | nindent 14 }}
              {{- end }}
          http_filters:
          {{- if .Values.extauth.enabled }}
          # gatehouse-extauth, first: transformations see authorized requests only, and limits
          # can key on the identity it returns in dynamic metadata.
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service:
                envoy_grpc: { cluster_name: gatehouse_extauth }
                timeout: 1s
                # A call that never reached a working replica is retried once on another;
                # max_interval is also each try's timeout.
                retry_policy:
                  retry_on: connect-failure,refused-stream,reset,unavailable
                  num_retries: 1
                  retry_back_off: { base_interval: 0.025s, max_interval: 0.5s }
                  retry_host_predicate:
                  - name: envoy.retry_host_predicates.previous_hosts
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                  host_selection_retry_max_attempts: 3
              failure_mode_allow: {{ $g.extAuthz.failureModeAllow }}
              status_on_error: { code: ServiceUnavailable }
              with_request_body: { max_request_bytes: 8192, allow_partial_message: true, pack_as_bytes: true }
          {{- end }}
          {{- if .Values.transform.enabled }}
          # gatehouse-transform: only the request headers are sent; the service asks for more
          # per request (mode_override). Bodies stay NONE here (docs/transform.md).
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: { cluster_name: gatehouse_transform }
                # No retry_policy: its max_interval would become a per-try timeout cutting
                # streams that live as long as the request.
              processing_mode:
                request_header_mode: SEND
                response_header_mode: SKIP
                request_body_mode: NONE
                response_body_mode: NONE
                request_trailer_mode: SKIP
                response_trailer_mode: SKIP
              allow_mode_override: true
              message_timeout: 1s
              failure_mode_allow: {{ $g.extProc.failureModeAllow }}
              mutation_rules:
                allow_all_routing: true
              metadata_options:
                receiving_namespaces:
                  untyped: [gatehouse.transform]
          {{- end }}
          {{- if .Values.ratelimit.enabled }}
          # gatehouse-ratelimit, after both: descriptors can read their dynamic metadata.
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: {{ $g.rateLimit.domain | quote }}
              stage: 0
              timeout: 0.5s
              failure_mode_deny: {{ $g.rateLimit.failureModeDeny }}
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              rate_limit_service:
                transport_api_version: V3
                grpc_service:
                  envoy_grpc: { cluster_name: gatehouse_ratelimit }
                  # Each try's timeout is max_interval, above the service's REDIS_TIMEOUT.
                  retry_policy:
                    retry_on: connect-failure,refused-stream,reset,unavailable
                    num_retries: 1
                    retry_back_off: { base_interval: 0.025s, max_interval: 0.25s }
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                    host_selection_retry_max_attempts: 3
          {{- end }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  # The kubelet's probes and Prometheus: /ready and /stats/prometheus of the admin API, and
  # nothing else of it.
  - name: probes
    address:
      socket_address: { address: 0.0.0.0, port_value: {{ $g.ports.probes }} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: probes
          route_config:
            name: probes
            virtual_hosts:
            - name: probes
              domains: ["*"]
              routes:
              - match: { path: /ready, headers: [{ name: ":method", string_match: { exact: GET } }] }
                route: { cluster: envoy_admin }
              - match: { path: /stats/prometheus, headers: [{ name: ":method", string_match: { exact: GET } }] }
                route: { cluster: envoy_admin }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  {{- if not $g.upstream.host }}
  # The built-in upstream (gateway.upstream.host is empty): a fixed 200, on loopback.
  - name: builtin_upstream
    address:
      socket_address: { address: 127.0.0.1, port_value: {{ $builtinUpstreamPort }} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: builtin_upstream
          route_config:
            name: builtin_upstream
            virtual_hosts:
            - name: builtin_upstream
              domains: ["*"]
              routes:
              - match: { prefix: / }
                direct_response:
                  status: 200
                  body: { inline_string: "hello from the gatehouse gateway's built-in upstream (set gateway.upstream.host)\n" }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  {{- end }}
  clusters:
  - name: upstream
    {{- if $g.upstream.host }}
    type: STRICT_DNS
    {{- else }}
    type: STATIC
    {{- end }}
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: {{ $g.upstream.host | default "127.0.0.1" }}
                port_value: {{ ternary $g.upstream.port $builtinUpstreamPort (not (empty $g.upstream.host)) }}
  - name: envoy_admin
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: envoy_admin
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: {{ $g.ports.admin }} }
  {{- range $service := list "ratelimit" "extauth" "transform" }}
  {{- $v := index $.Values $service }}
  {{- if $v.enabled }}
  # gatehouse-{{ $service }}: h2c, every ready pod of the headless Service an endpoint
  # (re-resolved every 5 s, Envoy's default), each gRPC-health-checked every second. A replica in
  # SHUTDOWN_DRAIN answers NOT_SERVING and leaves the rotation before it closes.
  - name: gatehouse_{{ $service }}
    type: STRICT_DNS
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
    # Retries bounded by a budget rather than Envoy's default of 3 concurrent retries: when a
    # replica dies, every call in flight to it is retried at once.
    circuit_breakers:
      thresholds:
      - retry_budget: { budget_percent: { value: 25 }, min_retry_concurrency: 64 }
    health_checks:
    - timeout: 0.25s
      interval: 1s
      no_traffic_interval: 1s
      unhealthy_threshold: 1
      healthy_threshold: 1
      grpc_health_check: {}
    load_assignment:
      cluster_name: gatehouse_{{ $service }}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: {{ printf "%s-headless.%s.svc.%s" (include "gatehouse.componentName" (dict "root" $ "component" $service)) $ns $.Values.clusterDomain }}
                port_value: {{ $v.ports.grpc }}
  {{- end }}
  {{- end }}
# Caps downstream connections across all listeners.
overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 50000
{{- end -}}

{{/*
The demo routes for the enabled services, matching the default configs in values.yaml.
Routes are matched in order; the catch-all "/" is last.
*/}}
{{- define "gatehouse.envoyDemoRoutes" -}}
{{- if .Values.extauth.enabled }}
{{- range $policy := list "keys" "basic" "rules" "public" }}
# /auth/{{ $policy }}: the extauth policy "{{ $policy }}".
- match: { prefix: /auth/{{ $policy }} }
  route: { cluster: upstream }
  typed_per_filter_config:
    envoy.filters.http.ext_authz:
      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
      check_settings: { context_extensions: { gatehouse_policy: {{ $policy }} } }
{{- end }}
# /auth/limited: the policy "keys", then a limit per API key id, which extauth passes on in
# dynamic metadata.
- match: { prefix: /auth/limited }
  route:
    cluster: upstream
    rate_limits:
    - actions:
      - metadata:
          descriptor_key: api_key_id
          metadata_key:
            key: envoy.filters.http.ext_authz
            path: [{ key: subject }]
          source: DYNAMIC
  typed_per_filter_config:
    envoy.filters.http.ext_authz:
      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
      check_settings: { context_extensions: { gatehouse_policy: keys } }
{{- end }}
{{- if .Values.transform.enabled }}
{{- range $name := list "headers" "rewrite" "json" "envelope" "errors" }}
# /tx/{{ $name }}: the transformation "{{ $name }}", named in the stream's gRPC metadata.
- match: { prefix: /tx/{{ $name }} }
  route: { cluster: upstream }
  typed_per_filter_config:
    envoy.filters.http.ext_proc:
      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
      overrides: { grpc_initial_metadata: [{ key: x-gatehouse-transform, value: {{ $name }} }] }
{{- end }}
{{- end }}
{{- if .Values.ratelimit.enabled }}
# /rl/remote: per client address.
- match: { prefix: /rl/remote }
  route:
    cluster: upstream
    rate_limits:
    - actions:
      - remote_address: {}
# /rl/header: per x-api-key value; no header, no descriptor, no limit.
- match: { prefix: /rl/header }
  route:
    cluster: upstream
    rate_limits:
    - actions:
      - request_headers: { header_name: x-api-key, descriptor_key: api_key, skip_if_absent: false }
# /rl/generic: one bucket for everyone.
- match: { prefix: /rl/generic }
  route:
    cluster: upstream
    rate_limits:
    - actions:
      - generic_key: { descriptor_value: generic }
# /rl/nested with x-user: [("generic_key", "nested"), ("user", <x-user>)].
- match: { prefix: /rl/nested }
  route:
    cluster: upstream
    rate_limits:
    - actions:
      - generic_key: { descriptor_value: nested }
      - request_headers: { header_name: x-user, descriptor_key: user }
{{- end }}
# Everything else: the default limit.
- match: { prefix: / }
  route:
    cluster: upstream
    {{- if .Values.ratelimit.enabled }}
    rate_limits:
    - actions:
      - generic_key: { descriptor_value: default }
    {{- end }}
{{- end -}}
