//! The TCP connections a dump holds, read from its `files.img` (images/fdinfo.proto's
//! `file_entry.isk`, an images/sk-inet.proto `inet_sk_entry`), so that a restore on another
//! host can tell its firewall which side opened each one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::CriuError;
use super::proto::{IMG_COMMON_MAGIC, Value, decode_message, entries};

const FILES_MAGIC: u32 = 0x5630_3138;
/// Far above any real file entry; a larger length means a corrupt or hostile file.
const MAX_FILE_ENTRY_LEN: usize = 1 << 20;

const FILE_ENTRY_INET_SOCKET: u64 = 4;
const INET_FAMILY: u64 = 3;
const INET_PROTO: u64 = 5;
const INET_STATE: u64 = 6;
const INET_SRC_PORT: u64 = 7;
const INET_DST_PORT: u64 = 8;
const INET_SRC_ADDR: u64 = 11;
const INET_DST_ADDR: u64 = 12;

const AF_INET6: u64 = 10;
const IPPROTO_TCP: u64 = 6;
const TCP_ESTABLISHED: u64 = 1;
const TCP_LISTEN: u64 = 10;

/// An established TCP connection that a peer opened to a port the container listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundConnection {
    pub peer: IpAddr,
    pub peer_port: u16,
    pub local: IpAddr,
    pub local_port: u16,
}

/// The established connections in the dump at `dir` whose local port is one the dump also
/// listens on: the ones a peer opened. A dump without `files.img` holds none.
pub fn inbound_tcp(dir: &Path) -> Result<Vec<InboundConnection>, CriuError> {
    let path = dir.join("files.img");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CriuError::Image { path, detail: e.to_string() }),
    };
    let sockets = tcp_sockets(&bytes).map_err(|detail| CriuError::Image { path, detail: detail.to_string() })?;
    let listening: Vec<u16> = sockets.iter().filter(|s| s.state == TCP_LISTEN).map(|s| s.local_port).collect();
    Ok(sockets
        .into_iter()
        .filter(|s| s.state == TCP_ESTABLISHED && listening.contains(&s.local_port))
        .map(|s| InboundConnection { peer: s.peer, peer_port: s.peer_port, local: s.local, local_port: s.local_port })
        .collect())
}

struct TcpSocket {
    state: u64,
    local: IpAddr,
    local_port: u16,
    peer: IpAddr,
    peer_port: u16,
}

fn tcp_sockets(bytes: &[u8]) -> Result<Vec<TcpSocket>, &'static str> {
    let mut out = Vec::new();
    for entry in entries(bytes, IMG_COMMON_MAGIC, FILES_MAGIC, MAX_FILE_ENTRY_LEN)? {
        let file = decode_message(entry).ok_or("malformed file entry")?;
        let Some(socket) = file.iter().find_map(|(f, v)| match v {
            Value::Bytes(b) if *f == FILE_ENTRY_INET_SOCKET => Some(*b),
            _ => None,
        }) else {
            continue;
        };
        let socket = decode_message(socket).ok_or("malformed inet socket entry")?;
        let number = |field: u64| {
            socket.iter().find_map(|(f, v)| match v {
                Value::Varint(n) if *f == field => Some(*n),
                _ => None,
            })
        };
        if number(INET_PROTO) != Some(IPPROTO_TCP) {
            continue;
        }
        let v6 = number(INET_FAMILY) == Some(AF_INET6);
        let port = |field| number(field).and_then(|p| u16::try_from(p).ok()).ok_or("a socket without a port");
        out.push(TcpSocket {
            state: number(INET_STATE).ok_or("a socket without a state")?,
            local: address(&socket, INET_SRC_ADDR, v6)?,
            local_port: port(INET_SRC_PORT)?,
            peer: address(&socket, INET_DST_ADDR, v6)?,
            peer_port: port(INET_DST_PORT)?,
        });
    }
    Ok(out)
}

/// An address kept as 32-bit words in network order (repeated, packed or not); an IPv4 address
/// mapped into IPv6 is the IPv4 address it carries on the wire.
fn address(socket: &[(u64, Value<'_>)], field: u64, v6: bool) -> Result<IpAddr, &'static str> {
    let mut words = Vec::new();
    for (_, value) in socket.iter().filter(|(f, _)| *f == field) {
        match value {
            Value::Varint(w) => words.push(*w),
            Value::Bytes(packed) => {
                let mut packed = *packed;
                while !packed.is_empty() {
                    words.push(super::proto::varint(&mut packed).ok_or("malformed address")?);
                }
            }
        }
    }
    let mut octets = Vec::with_capacity(16);
    for word in &words {
        let word = u32::try_from(*word).map_err(|_| "an address word over 32 bits")?;
        octets.extend(word.to_le_bytes());
    }
    match (v6, octets.len()) {
        (false, 4) | (false, 0) => {
            let octets: [u8; 4] = octets.get(..4).and_then(|o| o.try_into().ok()).unwrap_or([0; 4]);
            Ok(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        (true, 16) => {
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(octets).expect("16 octets"));
            Ok(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        (true, 0) => Ok(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        _ => Err("an address of the wrong length for its family"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::put_varint;
    use super::*;

    fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        put_varint(out, (field << 3) | 2);
        put_varint(out, bytes.len() as u64);
        out.extend(bytes);
    }

    fn field_varint(out: &mut Vec<u8>, field: u64, value: u64) {
        put_varint(out, field << 3);
        put_varint(out, value);
    }

    /// A file entry for a TCP socket, its addresses as CRIU writes them: words in network order.
    fn socket(v6: bool, state: u64, local: (&str, u16), peer: (&str, u16)) -> Vec<u8> {
        let mut isk = Vec::new();
        field_varint(&mut isk, INET_FAMILY, if v6 { AF_INET6 } else { 2 });
        field_varint(&mut isk, INET_PROTO, IPPROTO_TCP);
        field_varint(&mut isk, INET_STATE, state);
        field_varint(&mut isk, INET_SRC_PORT, u64::from(local.1));
        field_varint(&mut isk, INET_DST_PORT, u64::from(peer.1));
        for (field, text) in [(INET_SRC_ADDR, local.0), (INET_DST_ADDR, peer.0)] {
            let octets = match text.parse::<IpAddr>().unwrap() {
                IpAddr::V4(a) if v6 => a.to_ipv6_mapped().octets().to_vec(),
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            for word in octets.chunks(4) {
                field_varint(&mut isk, field, u64::from(u32::from_le_bytes(word.try_into().unwrap())));
            }
        }
        let mut file = Vec::new();
        field_varint(&mut file, 1, 5);
        field_bytes(&mut file, FILE_ENTRY_INET_SOCKET, &isk);
        file
    }

    fn files_image(files: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(IMG_COMMON_MAGIC.to_le_bytes());
        out.extend(FILES_MAGIC.to_le_bytes());
        for file in files {
            out.extend((file.len() as u32).to_le_bytes());
            out.extend(file);
        }
        out
    }

    #[test]
    fn only_connections_to_a_listening_port_are_inbound() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(inbound_tcp(dir.path()).unwrap(), vec![], "no files.img, no connection");
        let image = files_image(&[
            socket(true, TCP_LISTEN, ("::", 7), ("::", 0)),
            socket(true, TCP_ESTABLISHED, ("10.91.0.2", 7), ("10.253.0.2", 40000)),
            // Opened by the container: not a peer's.
            socket(false, TCP_ESTABLISHED, ("10.91.0.2", 51000), ("192.0.2.9", 443)),
            socket(false, TCP_LISTEN, ("0.0.0.0", 8080), ("0.0.0.0", 0)),
            socket(true, TCP_ESTABLISHED, ("fd00::2", 8080), ("fd00::9", 41000)),
        ]);
        std::fs::write(dir.path().join("files.img"), image).unwrap();
        let inbound = inbound_tcp(dir.path()).unwrap();
        let seen: Vec<String> =
            inbound.iter().map(|c| format!("{}:{}>{}:{}", c.peer, c.peer_port, c.local, c.local_port)).collect();
        assert_eq!(seen, ["10.253.0.2:40000>10.91.0.2:7", "fd00::9:41000>fd00::2:8080"]);

        std::fs::write(dir.path().join("files.img"), b"garbage!").unwrap();
        let refused = inbound_tcp(dir.path()).unwrap_err().to_string();
        assert!(refused.contains("files.img") && refused.contains("magic"), "{refused}");
    }
}
