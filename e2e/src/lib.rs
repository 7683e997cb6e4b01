//! End-to-end test support: the harnesses that run sidetrace's real binaries against real
//! peers (iptables in network namespaces, a real collector, a real kube-apiserver).
