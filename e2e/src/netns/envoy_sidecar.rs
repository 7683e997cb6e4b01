//! Envoy as Istio runs it in a sidecar, without a control plane: the reference
//! [`super::Sidecar::Envoy`] puts in the proxy's place for the transparent-path benchmark.
//!
//! What matches Istio's sidecar (and so sidetrace's position in the pod):
//! - `virtualInbound` on the inbound capture port and `virtualOutbound` on the outbound one,
//!   each with the `original_dst` listener filter reading where iptables' `REDIRECT` sent the
//!   connection from;
//! - an HTTP connection manager on both (HTTP/1.1 and h2c, request ids generated) with the
//!   Zipkin tracer at 100 % (HTTP_JSON, `shared_span_context: false`, 128-bit trace ids), so
//!   each hop reports a SERVER span inbound and a CLIENT span outbound, as sidetrace does;
//! - upstream clusters of type `ORIGINAL_DST` (Istio's `InboundPassthroughCluster` and
//!   `PassthroughCluster`): the connection goes on to the address the app dialled; inbound it
//!   leaves from 127.0.0.6, the passthrough source the init rules never capture;
//! - uid/gid 1337 and `--concurrency 2`.
//!
//! What it leaves out: the per-service outbound listeners, routes and EDS clusters a control
//! plane would push (a request here is routed to its original destination, one cluster for all),
//! mTLS, and Istio's stats filters. Those cost Envoy more per request, not less, so the figure is
//! a lower bound for a real Istio sidecar.

use std::net::SocketAddr;

use sidetrace_contract::defaults;

/// What the config depends on.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// The Zipkin v2 receiver (`POST /api/v2/spans`).
    pub collector: SocketAddr,
}

/// Envoy's admin port inside the pod (Istio's), on loopback.
pub const ADMIN_PORT: u16 = 15000;

/// The bootstrap YAML.
pub fn config(p: &Params) -> String {
    let inbound = defaults::INBOUND_CAPTURE_PORT;
    let outbound = defaults::OUTBOUND_CAPTURE_PORT;
    let passthrough = defaults::PASSTHROUGH_SOURCE_V4;
    let (collector_ip, collector_port) = (p.collector.ip(), p.collector.port());
    let listener = |name: &str, port: u16, direction: &str, cluster: &str| {
        format!(
            r#"  - name: {name}
    address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}
    traffic_direction: {direction}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
          generate_request_id: true
          tracing:
            random_sampling: {{value: 100}}
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: zipkin
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: HTTP_JSON
                shared_span_context: false
                trace_id_128bit: true
          route_config:
            name: {name}
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: {cluster}, timeout: 0s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
        )
    };
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {ADMIN_PORT}}}}}
static_resources:
  listeners:
{inbound_listener}{outbound_listener}  clusters:
  - name: InboundPassthroughClusterIpv4
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
    upstream_bind_config: {{source_address: {{address: {passthrough}, port_value: 0}}}}
  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
  - name: zipkin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: zipkin
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {collector_ip}, port_value: {collector_port}}}}}}}
"#,
        inbound_listener = listener(
            "virtualInbound",
            inbound,
            "INBOUND",
            "InboundPassthroughClusterIpv4"
        ),
        outbound_listener = listener(
            "virtualOutbound",
            outbound,
            "OUTBOUND",
            "PassthroughCluster"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listens_where_the_rules_redirect_and_traces_both_directions() {
        let c = config(&Params {
            collector: SocketAddr::from(([10, 250, 1, 5], 9411)),
        });
        assert!(c.contains("port_value: 15006}}\n    traffic_direction: INBOUND"));
        assert!(c.contains("port_value: 15001}}\n    traffic_direction: OUTBOUND"));
        assert_eq!(c.matches("envoy.filters.listener.original_dst").count(), 2);
        assert_eq!(c.matches("envoy.tracers.zipkin").count(), 2);
        assert!(c.contains("source_address: {address: 127.0.0.6, port_value: 0}"));
        assert!(c.contains("address: 10.250.1.5, port_value: 9411"));
    }
}
