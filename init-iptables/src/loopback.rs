//! The IPv6 passthrough source on `lo`.
//!
//! The proxy forwards inbound connections to the pod IP from a source address that the rules
//! never capture (127.0.0.6 / ::6, [`sidetrace_contract::defaults::PASSTHROUGH_SOURCE_V4`]).
//! 127.0.0.6 is on `lo` already (all of 127/8 is), but `::6` is not: without it the proxy
//! cannot bind it, and the app's replies to it would have no route. So when IPv6 is
//! programmed, `::6/128` (no duplicate address detection) is added to `lo`, with
//! one rtnetlink `RTM_NEWADDR` request (what `ip -6 addr replace ::6/128 dev lo` sends): the
//! init image carries no iproute2.
//!
//! [`new_address_request`] builds the message (pure, unit-tested byte for byte); [`add`]
//! sends it and reads the kernel's acknowledgement.

use std::net::Ipv6Addr;

use crate::{Error, Result};

const NLMSG_HDRLEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTA_HDRLEN: usize = 4;
const RTM_NEWADDR: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET6: u8 = 10;
const IFA_F_NODAD: u8 = 0x02;
/// The kernel derives an IPv6 address's scope from the address itself (`::6` is global).
const RT_SCOPE_UNIVERSE: u8 = 0;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// The `RTM_NEWADDR` request adding `addr/128` to interface `ifindex` (create or replace, so
/// a rerun is a no-op), no DAD.
pub fn new_address_request(addr: Ipv6Addr, ifindex: u32, seq: u32) -> Vec<u8> {
    let attr_len = RTA_HDRLEN + 16;
    let len = NLMSG_HDRLEN + IFADDRMSG_LEN + 2 * attr_len;
    let mut m = Vec::with_capacity(len);
    // nlmsghdr: length, type, flags, sequence, port id (0: the kernel).
    m.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend_from_slice(&RTM_NEWADDR.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // ifaddrmsg: family, prefix length, flags, scope, interface index.
    m.extend_from_slice(&[AF_INET6, 128, IFA_F_NODAD, RT_SCOPE_UNIVERSE]);
    m.extend_from_slice(&ifindex.to_ne_bytes());
    for kind in [IFA_LOCAL, IFA_ADDRESS] {
        m.extend_from_slice(&u16::try_from(attr_len).unwrap_or(u16::MAX).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&addr.octets());
    }
    m
}

/// The outcome the kernel reported for request `seq`: `Ok(())` for an acknowledgement,
/// `Err(errno)` for a refusal; `None` when `reply` is not the answer to it.
pub fn parse_ack(reply: &[u8], seq: u32) -> Option<std::result::Result<(), i32>> {
    let field = |at: usize, n: usize| reply.get(at..at + n);
    let kind = u16::from_ne_bytes(field(4, 2)?.try_into().ok()?);
    let got_seq = u32::from_ne_bytes(field(8, 4)?.try_into().ok()?);
    if kind != NLMSG_ERROR || got_seq != seq {
        return None;
    }
    let errno = i32::from_ne_bytes(field(NLMSG_HDRLEN, 4)?.try_into().ok()?);
    Some(if errno == 0 { Ok(()) } else { Err(-errno) })
}

fn failed(what: &str, source: std::io::Error) -> Error {
    Error::Netlink {
        what: format!(
            "add {}/128 to lo: {what}",
            sidetrace_contract::defaults::PASSTHROUGH_SOURCE_V6
        ),
        source,
    }
}

/// Adds [`sidetrace_contract::defaults::PASSTHROUGH_SOURCE_V6`]`/128` to `lo` in this network
/// namespace.
#[allow(unsafe_code)]
pub fn add_passthrough_source_v6() -> Result<()> {
    let addr = sidetrace_contract::defaults::PASSTHROUGH_SOURCE_V6;
    // SAFETY: the name is a NUL-terminated literal; if_nametoindex only reads it.
    let ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if ifindex == 0 {
        return Err(failed("no lo interface", std::io::Error::last_os_error()));
    }
    let seq = 1;
    let request = new_address_request(addr, ifindex, seq);
    // SAFETY: plain socket(2) call; the returned descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(failed("netlink socket", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: the buffer is valid for its length; a zeroed sockaddr_nl addresses the kernel.
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            raw,
            request.as_ptr().cast(),
            request.len(),
            0,
            std::ptr::from_ref(&kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(failed("send", std::io::Error::last_os_error()));
    }
    let mut reply = [0u8; 512];
    // SAFETY: the buffer is valid for writes of its length.
    let n = unsafe { libc::recv(raw, reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(failed("receive", std::io::Error::last_os_error()));
    }
    let n = usize::try_from(n).unwrap_or(0);
    match parse_ack(&reply[..n], seq) {
        Some(Ok(())) => Ok(()),
        Some(Err(errno)) => Err(failed("refused", std::io::Error::from_raw_os_error(errno))),
        None => Err(failed(
            "unexpected reply",
            std::io::Error::other(format!("{n} bytes that are not the acknowledgement")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_what_ip_addr_replace_sends() {
        let m = new_address_request("::6".parse().unwrap(), 1, 7);
        assert_eq!(m.len(), 64);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 64);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_NEWADDR);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 0x505);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[10, 128, IFA_F_NODAD, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 1);
        for at in [24, 44] {
            assert_eq!(u16::from_ne_bytes(m[at..at + 2].try_into().unwrap()), 20);
            let mut six = [0u8; 16];
            six[15] = 6;
            assert_eq!(&m[at + 4..at + 20], &six);
        }
        assert_eq!(u16::from_ne_bytes(m[26..28].try_into().unwrap()), IFA_LOCAL);
        assert_eq!(
            u16::from_ne_bytes(m[46..48].try_into().unwrap()),
            IFA_ADDRESS
        );
    }

    #[test]
    fn acknowledgements_and_refusals_are_told_apart() {
        let reply = |kind: u16, seq: u32, errno: i32| {
            let mut r = vec![0u8; 36];
            r[0..4].copy_from_slice(&36u32.to_ne_bytes());
            r[4..6].copy_from_slice(&kind.to_ne_bytes());
            r[8..12].copy_from_slice(&seq.to_ne_bytes());
            r[16..20].copy_from_slice(&errno.to_ne_bytes());
            r
        };
        assert_eq!(parse_ack(&reply(NLMSG_ERROR, 3, 0), 3), Some(Ok(())));
        assert_eq!(parse_ack(&reply(NLMSG_ERROR, 3, -1), 3), Some(Err(1)));
        assert_eq!(parse_ack(&reply(NLMSG_ERROR, 4, 0), 3), None);
        assert_eq!(parse_ack(&reply(20, 3, 0), 3), None);
        assert_eq!(parse_ack(&[0u8; 5], 3), None);
    }
}
