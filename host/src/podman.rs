//! podman, reached through its own REST API (the libpod endpoints of `podman system service`,
//! on a unix socket), never through its storage: podman stays the owner of its containers, and
//! ckpt asks it to inspect, checkpoint and restore them as `podman` itself would.
//!
//! HTTP/1.1 over the socket, one request a connection (`Connection: close`): podman's server is
//! Go's net/http, which answers with a `Content-Length` or a chunked body.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// How a podman container is named to ckpt: `podman:NAME`.
pub const PREFIX: &str = "podman:";

/// The libpod API version ckpt speaks: podman 4.0 and later answer it.
const API: &str = "/v4.0.0/libpod";
/// The most a response's status line and headers may take.
const MAX_HEAD: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error(
        "podman's API socket {socket:?} does not answer ({source}); start it with 'podman system service --time 0 unix://{}' or 'systemctl start podman.socket', or name another with [engines] podman-socket",
        socket.display()
    )]
    Unreachable { socket: PathBuf, source: std::io::Error },
    #[error("no such container {0:?} in podman")]
    NoSuchContainer(String),
    #[error("{0:?} is not a podman container name or ID (letters, digits, '_', '.', '-')")]
    BadName(String),
    #[error("podman could not {action} container {container:?} (HTTP {status}): {message}")]
    Failed { action: &'static str, container: String, status: u16, message: String },
    #[error("podman's answer to {request} is not HTTP ckpt can read: {detail}")]
    Protocol { request: String, detail: String },
    #[error("reading podman's answer to {request}: {source}")]
    Io { request: String, source: std::io::Error },
}

pub type Result<T, E = PodmanError> = std::result::Result<T, E>;

/// What ckpt needs of a podman container, from podman's inspect.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodmanContainer {
    pub id: String,
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    pub labels: Vec<(String, String)>,
    /// `running`, `exited`, `created`, `paused`…
    pub state: String,
    /// Its first process on the host, 0 when it runs none.
    pub pid: i32,
    /// Stopped by a checkpoint whose files podman keeps.
    pub checkpointed: bool,
}

impl PodmanContainer {
    fn from_inspect(doc: &serde_json::Value) -> Option<PodmanContainer> {
        let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
        let mut labels: Vec<(String, String)> = doc["Config"]["Labels"]
            .as_object()
            .map(|l| l.iter().filter_map(|(k, v)| Some((k.clone(), text(v)?))).collect())
            .unwrap_or_default();
        labels.sort();
        Some(PodmanContainer {
            id: text(&doc["Id"])?,
            name: text(&doc["Name"])?.trim_start_matches('/').to_string(),
            image: text(&doc["ImageName"]).unwrap_or_default(),
            labels,
            state: text(&doc["State"]["Status"]).unwrap_or_default(),
            pid: doc["State"]["Pid"].as_i64().and_then(|p| i32::try_from(p).ok()).unwrap_or(0),
            checkpointed: doc["State"]["Checkpointed"].as_bool().unwrap_or(false),
        })
    }
}

/// podman's checkpoint options, as its API names them (`podman container checkpoint`'s flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointOptions {
    pub leave_running: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub ignore_rootfs: bool,
    pub keep: bool,
}

impl CheckpointOptions {
    fn query(&self) -> String {
        let flag = |name: &str, on: bool| format!("{name}={on}");
        [
            "export=true".to_string(),
            flag("leaveRunning", self.leave_running),
            flag("tcpEstablished", self.tcp_established),
            flag("fileLocks", self.file_locks),
            flag("ignoreRootFS", self.ignore_rootfs),
            flag("keep", self.keep),
        ]
        .join("&")
    }
}

/// podman's options for restoring an imported archive (`podman container restore --import`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportOptions {
    /// A new name, in place of the archive's.
    pub name: Option<String>,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub ignore_rootfs: bool,
    pub ignore_volumes: bool,
    pub ignore_static_ip: bool,
    pub ignore_static_mac: bool,
    /// `-p`, in podman's syntax.
    pub publish_ports: Vec<String>,
}

impl ImportOptions {
    fn query(&self) -> String {
        let flag = |name: &str, on: bool| format!("{name}={on}");
        let mut query = vec![
            "import=true".to_string(),
            flag("tcpEstablished", self.tcp_established),
            flag("fileLocks", self.file_locks),
            flag("ignoreRootFS", self.ignore_rootfs),
            flag("ignoreVolumes", self.ignore_volumes),
            flag("ignoreStaticIP", self.ignore_static_ip),
            flag("ignoreStaticMAC", self.ignore_static_mac),
        ];
        if let Some(name) = &self.name {
            query.push(format!("name={}", percent_encoded(name)));
        }
        if !self.publish_ports.is_empty() {
            // podman splits the value at spaces.
            query.push(format!("publishPorts={}", percent_encoded(&self.publish_ports.join(" "))));
        }
        query.join("&")
    }
}

/// A query value with everything but unreserved characters (RFC 3986) percent-encoded.
fn percent_encoded(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What writes a request's body, as it is sent.
pub type Body<'a> = &'a mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>;

/// podman's API, behind a trait as runc and CRIU are.
pub trait PodmanApi {
    fn inspect(&self, name: &str) -> Result<PodmanContainer>;
    /// podman's whole inspect document of `name`, as `podman inspect` prints it.
    fn inspect_document(&self, name: &str) -> Result<serde_json::Value>;
    /// The running containers that carry every one of `labels` (`KEY=VALUE` or `KEY`).
    fn running_with_labels(&self, labels: &[String]) -> Result<Vec<PodmanContainer>>;
    /// Checkpoints `name` and writes the archive podman makes (an uncompressed tar) to `out`.
    fn checkpoint(&self, name: &str, options: &CheckpointOptions, out: &mut dyn Write) -> Result<()>;
    /// Restores `name` from the checkpoint podman kept of it (`podman container restore NAME`).
    fn restore(&self, name: &str, tcp_established: bool) -> Result<()>;
    /// Restores a container from the checkpoint archive `archive` writes (`podman container
    /// restore --import`); returns its ID.
    fn restore_import(&self, options: &ImportOptions, archive: Body<'_>) -> Result<String>;
    /// Removes `name`, stopping it first if it runs (`podman rm -f`); its volumes stay.
    fn remove(&self, name: &str) -> Result<()>;
}

/// A container name or ID as podman allows it, which is also safe in a URL path.
fn check_name(name: &str) -> Result<()> {
    let good = !name.is_empty()
        && name.len() <= 253
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if good { Ok(()) } else { Err(PodmanError::BadName(name.to_string())) }
}

/// podman's service on its unix socket.
pub struct PodmanService {
    socket: PathBuf,
}

impl PodmanService {
    pub fn new(socket: &Path) -> PodmanService {
        PodmanService { socket: socket.to_path_buf() }
    }

    fn send(&self, method: &str, path: &str) -> Result<Response> {
        self.send_with_body(method, path, None)
    }

    /// A request, with a body sent chunked as `body` writes it. When podman answers before the
    /// body is all sent (a refusal), its answer is what counts.
    fn send_with_body(&self, method: &str, path: &str, body: Option<Body<'_>>) -> Result<Response> {
        let request = format!("{method} {API}{path}");
        let io = |source| PodmanError::Io { request: request.clone(), source };
        let mut stream = UnixStream::connect(&self.socket)
            .map_err(|source| PodmanError::Unreachable { socket: self.socket.clone(), source })?;
        let framing = if body.is_some() { "Transfer-Encoding: chunked" } else { "Content-Length: 0" };
        let head = format!(
            "{method} {API}{path} HTTP/1.1\r\nHost: d\r\nUser-Agent: ckpt/{}\r\nConnection: close\r\n{framing}\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        stream.write_all(head.as_bytes()).map_err(io)?;
        let sent = match body {
            None => Ok(()),
            Some(body) => {
                let mut writer = std::io::BufWriter::with_capacity(1 << 20, ChunkedWriter { inner: &stream });
                body(&mut writer).and_then(|()| writer.flush()).and_then(|()| (&stream).write_all(b"0\r\n\r\n"))
            }
        };
        let response = Response::read(BufReader::with_capacity(1 << 20, stream), request.clone());
        match (sent, response) {
            (Ok(()), response) => response,
            (Err(_), Ok(response)) if response.status != 200 => Ok(response),
            (Err(source), _) => Err(io(source)),
        }
    }

    /// The error a failed request names: podman's JSON `message`, or its body as text.
    fn failed(action: &'static str, container: &str, response: Response) -> PodmanError {
        let status = response.status;
        if status == 404 {
            return PodmanError::NoSuchContainer(container.to_string());
        }
        let mut body = String::new();
        let _ = response.body.take(MAX_HEAD as u64).read_to_string(&mut body);
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|doc| doc["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.trim().to_string());
        PodmanError::Failed { action, container: container.to_string(), status, message }
    }
}

impl PodmanApi for PodmanService {
    fn inspect(&self, name: &str) -> Result<PodmanContainer> {
        check_name(name)?;
        let response = self.send("GET", &format!("/containers/{name}/json"))?;
        if response.status != 200 {
            return Err(Self::failed("inspect", name, response));
        }
        let request = response.request.clone();
        let doc = response.json()?;
        PodmanContainer::from_inspect(&doc)
            .ok_or_else(|| PodmanError::Protocol { request, detail: "the inspect document has no Id or Name".into() })
    }

    fn inspect_document(&self, name: &str) -> Result<serde_json::Value> {
        check_name(name)?;
        let response = self.send("GET", &format!("/containers/{name}/json"))?;
        if response.status != 200 {
            return Err(Self::failed("inspect", name, response));
        }
        response.json()
    }

    fn running_with_labels(&self, labels: &[String]) -> Result<Vec<PodmanContainer>> {
        let filters = serde_json::json!({ "label": labels }).to_string();
        let response = self.send("GET", &format!("/containers/json?filters={}", percent_encoded(&filters)))?;
        if response.status != 200 {
            return Err(Self::failed("list", "with those labels", response));
        }
        let request = response.request.clone();
        let listed = response.json()?;
        let rows = listed.as_array().ok_or_else(|| PodmanError::Protocol {
            request: request.clone(),
            detail: "the container list is not a JSON array".into(),
        })?;
        // The list's rows name a container differently from inspect: each is inspected, so that
        // facts come from one document whichever way a container was found.
        let ids = rows.iter().filter_map(|row| row["Id"].as_str());
        ids.map(|id| self.inspect(id)).filter(|c| !matches!(c, Err(PodmanError::NoSuchContainer(_)))).collect()
    }

    fn checkpoint(&self, name: &str, options: &CheckpointOptions, out: &mut dyn Write) -> Result<()> {
        check_name(name)?;
        let response = self.send("POST", &format!("/containers/{name}/checkpoint?{}", options.query()))?;
        if response.status != 200 {
            return Err(Self::failed("checkpoint", name, response));
        }
        let request = response.request.clone();
        let mut body = response.body;
        std::io::copy(&mut body, out).map(drop).map_err(|source| PodmanError::Io { request, source })
    }

    fn restore(&self, name: &str, tcp_established: bool) -> Result<()> {
        check_name(name)?;
        let response =
            self.send("POST", &format!("/containers/{name}/restore?keep=true&tcpEstablished={tcp_established}"))?;
        if response.status != 200 {
            return Err(Self::failed("restore", name, response));
        }
        Ok(())
    }

    fn restore_import(&self, options: &ImportOptions, archive: Body<'_>) -> Result<String> {
        if let Some(name) = &options.name {
            check_name(name)?;
        }
        // The path's name is not looked at when the body carries the archive.
        let path = format!("/containers/import/restore?{}", options.query());
        let response = self.send_with_body("POST", &path, Some(archive))?;
        let shown = options.name.clone().unwrap_or_else(|| "from the archive".into());
        if response.status != 200 {
            return Err(Self::failed("restore", &shown, response));
        }
        let request = response.request.clone();
        let report = response.json()?;
        report["Id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| PodmanError::Protocol { request, detail: format!("the restore report {report} has no Id") })
    }

    fn remove(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let response = self.send("DELETE", &format!("/containers/{name}?force=true"))?;
        if response.status != 200 {
            return Err(Self::failed("remove", name, response));
        }
        Ok(())
    }
}

/// A request body sent as chunks (RFC 9112 section 7.1), one a write.
struct ChunkedWriter<W> {
    inner: W,
}

impl<W: Write> Write for ChunkedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            // An empty chunk would end the body.
            return Ok(0);
        }
        write!(self.inner, "{:x}\r\n", buf.len())?;
        self.inner.write_all(buf)?;
        self.inner.write_all(b"\r\n")?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A response: its status, and its body as it arrives.
struct Response {
    request: String,
    status: u16,
    body: Box<dyn Read>,
}

impl Response {
    /// The body as JSON.
    fn json(self) -> Result<serde_json::Value> {
        let request = self.request;
        serde_json::from_reader(self.body).map_err(|e| PodmanError::Protocol { request, detail: e.to_string() })
    }

    fn read(mut stream: BufReader<UnixStream>, request: String) -> Result<Response> {
        let protocol = |detail: String| PodmanError::Protocol { request: request.clone(), detail };
        let mut head_bytes = 0;
        let mut line = String::new();
        let mut read_line = |line: &mut String| -> Result<()> {
            line.clear();
            let n = stream
                .by_ref()
                .take((MAX_HEAD - head_bytes.min(MAX_HEAD)) as u64)
                .read_line(line)
                .map_err(|source| PodmanError::Io { request: request.clone(), source })?;
            head_bytes += n;
            if n == 0 || !line.ends_with('\n') {
                return Err(protocol("the status line and headers end early, or are too long".into()));
            }
            Ok(())
        };
        read_line(&mut line)?;
        let status = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| protocol(format!("status line {:?}", line.trim_end())))?;
        let (mut chunked, mut length) = (false, None);
        loop {
            read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((key, value)) = header.split_once(':') else {
                return Err(protocol(format!("header {header:?}")));
            };
            let value = value.trim();
            if key.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if key.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<u64>().map_err(|_| protocol(format!("Content-Length {value:?}")))?);
            }
        }
        let body: Box<dyn Read> = match (chunked, length) {
            (true, _) => Box::new(Chunked { inner: stream, left: 0, done: false }),
            (false, Some(length)) => Box::new(stream.take(length)),
            // Connection: close: the body ends where the stream does.
            (false, None) => Box::new(stream),
        };
        Ok(Response { request, status, body })
    }
}

/// A chunked body (RFC 9112 section 7.1), read as the bytes it carries.
struct Chunked<R> {
    inner: R,
    /// Bytes left in the current chunk.
    left: u64,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        (&mut self.inner).take(4096).read_line(&mut line)?;
        if !line.ends_with('\n') {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a chunked body ends early"));
        }
        Ok(line)
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.left == 0 && !self.done {
            let line = self.line()?;
            let size = line.trim_end().split(';').next().unwrap_or_default().trim();
            self.left = u64::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("chunk size {size:?} is not hexadecimal"))
            })?;
            if self.left == 0 {
                // The trailer section, up to its empty line.
                while !self.line()?.trim_end().is_empty() {}
                self.done = true;
            }
        }
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a chunk ends early"));
        }
        self.left -= n as u64;
        if self.left == 0 {
            let end = self.line()?;
            if !end.trim_end().is_empty() {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a chunk is longer than it said"));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_reads_as_the_bytes_it_carries() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
        let mut body = String::new();
        Chunked { inner: &wire[..], left: 0, done: false }.read_to_string(&mut body).unwrap();
        assert_eq!(body, "hello, world");
        for broken in [&b"5\r\nhel"[..], b"zz\r\nhello\r\n0\r\n\r\n", b"3\r\nhello\r\n0\r\n\r\n"] {
            let mut sink = Vec::new();
            assert!(Chunked { inner: broken, left: 0, done: false }.read_to_end(&mut sink).is_err(), "{broken:?}");
        }
    }

    #[test]
    fn names_are_podmans_and_safe_in_a_path() {
        for good in ["web", "a1b2c3", "my_app.v2-x"] {
            check_name(good).unwrap();
        }
        for bad in ["", "../x", "a/b", "a?b=1", "-x", "a b", ".x"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inspect_gives_what_ckpt_needs() {
        let doc = serde_json::json!({
            "Id": "abc", "Name": "web", "ImageName": "docker.io/library/busybox:latest",
            "Config": {"Labels": {"data-class": "secret", "b": "1"}},
            "State": {"Status": "running", "Pid": 42}
        });
        let container = PodmanContainer::from_inspect(&doc).unwrap();
        assert_eq!(container.labels, vec![("b".into(), "1".into()), ("data-class".into(), "secret".into())]);
        assert_eq!((container.state.as_str(), container.pid), ("running", 42));
        assert!(PodmanContainer::from_inspect(&serde_json::json!({"Name": "x"})).is_none(), "no Id");
    }

    #[test]
    fn a_chunked_upload_reads_back_as_what_was_written() {
        let mut wire = Vec::new();
        let mut writer = ChunkedWriter { inner: &mut wire };
        writer.write_all(b"hello, ").unwrap();
        writer.write_all(b"").unwrap();
        writer.write_all(b"world").unwrap();
        wire.extend_from_slice(b"0\r\n\r\n");
        let mut body = String::new();
        Chunked { inner: &wire[..], left: 0, done: false }.read_to_string(&mut body).unwrap();
        assert_eq!(body, "hello, world");
    }

    #[test]
    fn import_options_are_podmans_query_with_values_encoded() {
        let options = ImportOptions {
            name: Some("web-2".into()),
            tcp_established: true,
            publish_ports: vec!["8080:80/tcp".into(), "127.0.0.1:53:53/udp".into()],
            ..Default::default()
        };
        assert_eq!(
            options.query(),
            "import=true&tcpEstablished=true&fileLocks=false&ignoreRootFS=false&ignoreVolumes=false&ignoreStaticIP=false&ignoreStaticMAC=false&name=web-2&publishPorts=8080%3A80%2Ftcp%20127.0.0.1%3A53%3A53%2Fudp"
        );
    }

    #[test]
    fn checkpoint_options_are_podmans_query() {
        let options = CheckpointOptions { leave_running: true, tcp_established: true, ..Default::default() };
        assert_eq!(
            options.query(),
            "export=true&leaveRunning=true&tcpEstablished=true&fileLocks=false&ignoreRootFS=false&keep=false"
        );
    }
}
