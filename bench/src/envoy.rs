//! The Envoy reference: the same reverse proxy (one static listener → one static cluster)
//! with the Zipkin tracer (HTTP_JSON, 100% random sampling, `shared_span_context: false`) on
//! or off, as in the classic Envoy + Jaeger tracing demo.

/// Ports of one Envoy instance.
#[derive(Debug, Clone, Copy)]
pub struct EnvoyPorts {
    /// Listener (clients connect here).
    pub listen: u16,
    /// Admin interface.
    pub admin: u16,
    /// The upstream app.
    pub upstream: u16,
    /// Zipkin collector (spans POSTed to /api/v2/spans).
    pub collector: u16,
}

/// Envoy bootstrap YAML; `tracing` switches the Zipkin tracer on.
pub fn config(p: EnvoyPorts, tracing: bool) -> String {
    let tracing_block = if tracing {
        r#"          tracing:
            random_sampling: {value: 100}
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: collector
                collector_endpoint: "/api/v2/spans"
                collector_endpoint_version: HTTP_JSON
                shared_span_context: false
"#
    } else {
        ""
    };
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          generate_request_id: true
{tracing_block}          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
  - name: collector
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: collector
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {collector}}}}}}}
"#,
        admin = p.admin,
        listen = p.listen,
        upstream = p.upstream,
        collector = p.collector,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracer_block_only_when_on() {
        let p = EnvoyPorts {
            listen: 1,
            admin: 2,
            upstream: 3,
            collector: 4,
        };
        let on = config(p, true);
        let off = config(p, false);
        assert!(on.contains("envoy.tracers.zipkin"));
        assert!(on.contains("shared_span_context: false"));
        assert!(!off.contains("tracing:"));
        assert!(off.contains("port_value: 3}"));
        assert!(off.contains("port_value: 4}"));
    }
}
