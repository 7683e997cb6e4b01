//! The original destination of a connection redirected by iptables `REDIRECT`, read with
//! `getsockopt(SO_ORIGINAL_DST)` (IPv4) or `getsockopt(IP6T_SO_ORIGINAL_DST)` (IPv6) from the
//! conntrack entry the NAT table created. One of the two places in the crate that need `unsafe` (the other is [`crate::reclaim`]).
#![allow(unsafe_code)]

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

// `SO_ORIGINAL_DST` (`linux/netfilter_ipv4.h`) at level `SOL_IP`, and
// `IP6T_SO_ORIGINAL_DST` (`linux/netfilter_ipv6/ip6_tables.h`) at level `SOL_IPV6`: both are 80,
// told apart by the level. Taken from libc (which has both) rather than written here, so the
// proxy and the tests that check NAT (`init-iptables/tests/netns.rs`) ask the kernel the same
// question.
use libc::{IP6T_SO_ORIGINAL_DST, SO_ORIGINAL_DST};

/// Reads the pre-NAT destination of an accepted socket. `local_is_v4` says which address family
/// the connection uses (an IPv4 client on a dual-stack `::` listener is IPv4 at the NAT layer).
/// Fails with `ENOENT` when the connection has no conntrack NAT entry (a direct connect).
pub fn original_dst(sock: &impl AsRawFd, local_is_v4: bool) -> io::Result<SocketAddr> {
    let fd = sock.as_raw_fd();
    if local_is_v4 {
        let mut addr = MaybeUninit::<libc::sockaddr_in>::zeroed();
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `fd` is an open socket owned by `sock` for the duration of the call; `addr`
        // points to writable memory of `len` bytes and the kernel writes at most `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                addr.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: getsockopt succeeded and filled a sockaddr_in (the memory was zeroed first,
        // so a short write still leaves it initialised).
        let addr = unsafe { addr.assume_init() };
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(addr.sin_port),
        )))
    } else {
        let mut addr = MaybeUninit::<libc::sockaddr_in6>::zeroed();
        let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: as above, with a sockaddr_in6-sized buffer.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                IP6T_SO_ORIGINAL_DST,
                addr.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: getsockopt succeeded on zeroed memory of the right size.
        let addr = unsafe { addr.assume_init() };
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(addr.sin6_port),
            addr.sin6_flowinfo,
            addr.sin6_scope_id,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_loopback_connection_has_no_nat_entry_or_reports_itself() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        // Without conntrack the kernel says ENOENT (or ENOPROTOOPT without the module); with
        // conntrack loaded and no REDIRECT it reports the address that was dialled. Either way
        // it is never some other address, and it never crashes.
        match original_dst(&server, true) {
            Ok(dst) => assert_eq!(dst, addr),
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
    }
}
