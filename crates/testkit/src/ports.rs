//! Picking loopback ports for members.
//!
//! Ports come from below the kernel's ephemeral range, so that no outgoing connection
//! (a client, or a member dialing a peer) is given one as its local port while the
//! member that owns it is down for a restart. A port is handed out at most once per
//! test process, so parallel tests in one binary never collide.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// Lowest port ever handed out.
const PORT_MIN: u16 = 15_000;
/// Used when `/proc/sys/net/ipv4/ip_local_port_range` cannot be read.
const EPHEMERAL_START_DEFAULT: u16 = 32_768;
/// Most ports one call may ask for.
const PORTS_PER_CALL_MAX: usize = 64;

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Returns `count` distinct loopback ports that were free a moment ago and were never
/// returned before by this process.
pub fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    assert!(count <= PORTS_PER_CALL_MAX, "asked for {count} ports, at most {PORTS_PER_CALL_MAX}");
    let end = ephemeral_start().max(PORT_MIN + 1024);
    let span = u32::from(end - PORT_MIN);
    // Start at a random place, so concurrent test processes rarely race for a port.
    let offset = (random_u64() % u64::from(span)) as u32;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut ports = Vec::with_capacity(count);
    for step in 0..span {
        if ports.len() == count {
            break;
        }
        let port = PORT_MIN + ((offset + step) % span) as u16;
        if handed_out.contains(&port) || !bindable(port) {
            continue;
        }
        handed_out.insert(port);
        ports.push(port);
    }
    if ports.len() < count {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("found only {} free loopback ports in {PORT_MIN}..{end}", ports.len()),
        ));
    }
    Ok(ports)
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// First port of the kernel's ephemeral range.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(EPHEMERAL_START_DEFAULT)
}

fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_not_ephemeral() {
        let first = free_ports(5).unwrap();
        let second = free_ports(5).unwrap();
        let all: BTreeSet<u16> = first.iter().chain(second.iter()).copied().collect();
        assert_eq!(all.len(), 10, "a port was handed out twice: {first:?} {second:?}");
        for port in &all {
            assert!(*port >= PORT_MIN && *port < ephemeral_start(), "{port} is out of range");
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, *port));
            assert!(listener.is_ok(), "port {port} is not bindable: {listener:?}");
        }
    }

    #[test]
    fn zero_ports_is_empty() {
        assert_eq!(free_ports(0).unwrap(), Vec::<u16>::new());
    }
}
