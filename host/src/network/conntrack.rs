//! The host's connection tracking, told about the connections a restore brings in. CRIU
//! restores a connection's socket, not the firewall state of the host it left: on another host,
//! the first packet that conntrack sees is the container's, so the network's masquerade rule
//! would rewrite the container's address and the peer would reset the connection. An entry in
//! the peer's direction, made before the restore, keeps both addresses as they were.

use std::process::Command;

use super::NetworkError;
use crate::criu::sockets::InboundConnection;

/// Where Debian's conntrack-tools puts `conntrack`.
const CONNTRACK: &str = "/usr/sbin/conntrack";

/// How long an entry lives without a packet: the kernel's own default for an established one.
const ESTABLISHED_TIMEOUT_SECS: &str = "432000";

/// Records each of `connections` as established from its peer; an entry the host already has (a
/// restore where the container was checkpointed) is left as it is. Each failure comes back
/// with the connection it is about; the restore goes on without that entry.
pub fn record_inbound(container: &str, connections: &[InboundConnection]) -> Vec<NetworkError> {
    let mut failed = Vec::new();
    for connection in connections {
        let outcome = Command::new(CONNTRACK).args(arguments(connection)).output();
        let detail = match outcome {
            Ok(out) if out.status.success() => continue,
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
                if stderr.contains("exists") {
                    continue;
                }
                stderr
            }
            Err(e) => format!("{CONNTRACK}: {e}; run scripts/setup, which installs Debian's conntrack"),
        };
        failed.push(NetworkError::Conntrack {
            container: container.to_string(),
            connection: describe(connection),
            detail,
        });
    }
    failed
}

fn describe(c: &InboundConnection) -> String {
    format!("{}:{} -> {}:{}", c.peer, c.peer_port, c.local, c.local_port)
}

fn arguments(c: &InboundConnection) -> Vec<String> {
    let mut args: Vec<String> = vec!["-I".into(), "-p".into(), "tcp".into()];
    for (flag, value) in [
        ("-s", c.peer.to_string()),
        ("-d", c.local.to_string()),
        ("--sport", c.peer_port.to_string()),
        ("--dport", c.local_port.to_string()),
        ("--state", "ESTABLISHED".into()),
        ("-u", "SEEN_REPLY,ASSURED".into()),
        ("-t", ESTABLISHED_TIMEOUT_SECS.into()),
    ] {
        args.extend([flag.to_string(), value]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_runs_from_the_peer_to_the_container() {
        let connection = InboundConnection {
            peer: "10.253.0.2".parse().unwrap(),
            peer_port: 40000,
            local: "10.91.0.2".parse().unwrap(),
            local_port: 7,
        };
        assert_eq!(
            arguments(&connection).join(" "),
            "-I -p tcp -s 10.253.0.2 -d 10.91.0.2 --sport 40000 --dport 7 --state ESTABLISHED -u SEEN_REPLY,ASSURED -t 432000"
        );
        assert_eq!(describe(&connection), "10.253.0.2:40000 -> 10.91.0.2:7");
    }
}
