//! `ckpt migrate NAME ssh://HOST`: move a running container to ckpt on another machine;
//! `ckpt migrate podman:NAME ssh://HOST`: a podman container to the podman there.
//!
//! The dump is an ordinary checkpoint (planned by the policy, past the gates), and handing it to
//! the destination is its last step, inside the checkpoint's rollback. The archive streams down
//! the ssh channel into `ckpt restore --import -` there (`--engine podman` for podman's), or
//! goes through a registry (`--via`).
//! Until the destination says the container runs, the source keeps its checkpoint; a failure
//! brings the container back here. Only then is the source removed (or kept, `--keep-source`).

use std::cell::Cell;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Context;
use super::checkpoint::export;
use super::checkpoint::{CheckpointRequest, Handoff, Outgoing};
use crate::archive::Compression;
use crate::config::PostCopy;
use crate::error::{Error, Result};
use crate::podman::PodmanApi;
use crate::policy::bindings as wit;
use crate::policy::json;
use crate::ssh::{Destination, RemoteCkpt, Ssh, SshError, SshOptions};
use crate::store::ContainerRecord;

#[derive(Debug, Clone, Default)]
pub struct MigrateRequest {
    pub container: String,
    /// `ssh://[USER@]HOST[:PORT][/ROOT]`.
    pub destination: String,
    /// A registry reference to go through instead of the ssh channel.
    pub via: Option<String>,
    pub keep_source: bool,
    /// `--strategy`: what the user asks for; the planner may choose otherwise.
    pub strategy: Option<wit::Strategy>,
    pub compress: Option<String>,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub policy: Option<String>,
    pub policy_config: Option<String>,
    pub gates: Vec<(String, String)>,
    pub ssh: SshOptions,
}

/// What a migration did, for the user and the audit log.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Migrated {
    pub container: String,
    pub id: String,
    pub destination: String,
    /// `ssh` (streamed) or `registry`.
    pub transport: &'static str,
    pub strategy: &'static str,
    /// Why that strategy: the planner's reason.
    pub strategy_reason: String,
    /// From the freeze to the destination's word that the container runs.
    pub downtime_ms: u64,
    pub total_ms: u64,
    /// The archive's bytes down the channel (0 through a registry, which skopeo moves).
    pub bytes_sent: u64,
    /// `removed` or `kept` (checkpointed, `--keep-source`).
    pub source: &'static str,
}

/// The `ext` fact a planner's strategy question carries when the link was measured: bytes a
/// second, in decimal.
pub const LINK_RATE_FACT: &str = "link-bytes-per-second";

pub fn migrate(ctx: &Context, req: &MigrateRequest) -> Result<Migrated> {
    let started = Instant::now();
    let destination = Destination::parse(&req.destination)?;
    let compression = Compression::parse(req.compress.as_deref().unwrap_or("zstd"))?;
    if let Some(via) = &req.via {
        crate::registry::check_reference(via)?;
    }
    let on_podman = req.container.strip_prefix(crate::podman::PREFIX);
    if on_podman.is_some() {
        refuse_what_podman_cannot(req)?;
    }
    if req.via.is_none() && !req.gates.is_empty() {
        return Err(Error::invalid(
            "--gate needs --via REF: a gate sees the finished checkpoint image before it leaves, and an ssh stream is never finished before it leaves",
        ));
    }
    let moving = match on_podman {
        Some(name) => Moving::Podman(ctx.podman().inspect(name)?),
        None => Moving::Own(Box::new(ctx.containers.lookup(&req.container)?)),
    };
    let name = moving.name();
    let shown = destination.to_string();
    let remote = Ssh::connect(destination, req.ssh.clone(), &ctx.roots.runroot)
        .map_err(|e| Error::DestinationUnusable { destination: shown.clone(), cause: Box::new(e.into()) })?;
    refuse_taken_name(&remote, &name)?;
    // What the link carries, for a planner that weighs how long a stop-and-copy would freeze
    // the container. Only a fact: a far side that cannot answer (an older ckpt) leaves it out.
    let link_bytes_per_second = match req.via {
        Some(_) => None,
        None => crate::ssh::measure_link(&remote)
            .inspect(|rate| tracing::info!("the link to {shown} carries {rate} bytes/s"))
            .inspect_err(|e| tracing::warn!("the link to {shown} was not measured: {e}"))
            .ok(),
    };
    let possible = match moving {
        Moving::Own(_) => possible_strategies(ctx, req)?,
        // podman's API dumps the container whole, once.
        Moving::Podman(_) => vec![wit::Strategy::StopAndCopy],
    };
    let transport = if req.via.is_some() { "registry" } else { "ssh" };
    let handoff = ToDestination {
        remote: &remote,
        via: req.via.clone(),
        compression,
        facts: wit::MigrationFacts {
            destination: remote.destination(),
            transport: transport.into(),
            possible,
            requested: req.strategy,
        },
        link_bytes_per_second,
        chosen: std::cell::RefCell::new(None),
        lazy_from: std::cell::RefCell::new(None),
        frozen_at: Cell::new(None),
        confirmed_at: Cell::new(None),
        bytes_sent: Cell::new(0),
    };
    let checkpoint = CheckpointRequest {
        containers: vec![match &moving {
            Moving::Own(record) => record.id.clone(),
            Moving::Podman(_) => name.clone(),
        }],
        tcp_established: req.tcp_established,
        file_locks: req.file_locks,
        registry: req.via.clone(),
        policy: req.policy.clone(),
        policy_config: req.policy_config.clone(),
        gates: req.gates.clone(),
        trigger: "migrate".into(),
        ..CheckpointRequest::default()
    };
    let (done, result) = super::checkpoint::checkpoint_handing_off(ctx, &checkpoint, Some(&handoff));
    result?;
    // Only the destination's word that it runs what was sent lets the source go; anything else
    // (a skip that slipped through, a handoff never made) keeps it.
    if handoff.confirmed_at.get().is_none() || done.first().is_none_or(|d| d.skipped.is_some()) {
        return Err(Error::MigrationNotConfirmed { name, destination: remote.destination() });
    }
    let stats = done.first().map(|d| d.stats.runtime_checkpoint_duration).unwrap_or(0);
    let source = if req.keep_source {
        "kept"
    } else {
        let removed = match &moving {
            Moving::Own(record) => remove_source(ctx, &record.id),
            Moving::Podman(container) => ctx.podman().remove(&container.name).map_err(Error::from),
        };
        removed.map_err(|e| Error::SourceNotRemoved {
            name: name.clone(),
            destination: remote.destination(),
            cause: Box::new(e),
        })?;
        "removed"
    };
    let choice = handoff.chosen.borrow().clone().expect("the checkpoint asked for a strategy");
    let delivered = match (handoff.frozen_at.get(), handoff.confirmed_at.get()) {
        (Some(from), Some(to)) => to.duration_since(from),
        _ => Duration::ZERO,
    };
    let migrated = Migrated {
        container: name,
        id: moving.id().to_string(),
        destination: remote.destination(),
        transport,
        strategy: json::strategy_name(choice.strategy),
        strategy_reason: choice.reason,
        downtime_ms: (Duration::from_micros(stats) + delivered).as_millis() as u64,
        total_ms: started.elapsed().as_millis() as u64,
        bytes_sent: handoff.bytes_sent.get(),
        source,
    };
    ctx.audit(super::audit::AuditEvent::Migrate(migrated.clone()));
    Ok(migrated)
}

/// The container a migration moves: one of ckpt's, or one of podman's.
enum Moving {
    Own(Box<ContainerRecord>),
    Podman(crate::podman::PodmanContainer),
}

impl Moving {
    /// As the user and the destination name it: podman's as `podman:NAME`.
    fn name(&self) -> String {
        match self {
            Moving::Own(record) => record.name.clone(),
            Moving::Podman(container) => format!("{}{}", crate::podman::PREFIX, container.name),
        }
    }

    fn id(&self) -> &str {
        match self {
            Moving::Own(record) => &record.id,
            Moving::Podman(container) => &container.id,
        }
    }
}

/// What a podman container's migration cannot do, refused while nothing has changed.
fn refuse_what_podman_cannot(req: &MigrateRequest) -> Result<()> {
    if req.via.is_some() || !req.gates.is_empty() {
        return Err(Error::invalid(
            "--via sends a checkpoint image of ckpt's, which podman's API cannot restore from, and --gate needs --via; a podman container migrates over the ssh channel (drop --via and --gate)",
        ));
    }
    if let Some(asked) = req.strategy.filter(|s| *s != wit::Strategy::StopAndCopy) {
        return Err(Error::Unsupported(format!(
            "--strategy {} is not possible for a podman container: podman's API dumps a container whole, once, so it migrates by stop-and-copy; nothing was changed",
            json::strategy_name(asked)
        )));
    }
    Ok(())
}

/// The strategies this host can migrate with: stop-and-copy always, pre-copy with memory dirty
/// tracking, post-copy when the host config allows it and CRIU's lazy pages work. A strategy
/// asked for that is not among them is refused here, saying why, while nothing has changed.
fn possible_strategies(ctx: &Context, req: &MigrateRequest) -> Result<Vec<wit::Strategy>> {
    let criu = ctx.criu()?;
    let mut possible = vec![wit::Strategy::StopAndCopy];
    if criu.memory_tracking().is_ok() {
        possible.push(wit::Strategy::PreCopy);
    }
    // The destination fetches pages through the channel while the container runs there.
    let config_path = || ctx.config.source.as_deref().unwrap_or(Path::new(crate::config::DEFAULT_PATH)).display();
    let post_copy = if req.via.is_some() {
        Err("post-copy fetches memory through the ssh channel, not a registry (drop --via)".to_string())
    } else {
        match ctx.config.migration.post_copy {
            PostCopy::Off => Err(format!(
                "post-copy is off on this host: the host config ({}) says [migration] post-copy = false",
                config_path()
            )),
            PostCopy::On => criu.lazy_pages().map_err(|e| e.to_string()),
            PostCopy::Auto => criu.lazy_pages().and_then(|()| criu.lazy_page_server()).map_err(|e| e.to_string()),
        }
    };
    if post_copy.is_ok() {
        possible.push(wit::Strategy::PostCopy);
    }
    if let Some(asked) = req.strategy
        && !possible.contains(&asked)
    {
        return Err(Error::Unsupported(format!(
            "--strategy {} is not possible here: {}; nothing was changed",
            json::strategy_name(asked),
            match (asked, post_copy) {
                (wit::Strategy::PostCopy, Err(why)) => why,
                _ =>
                    "this host has no memory dirty tracking ('criu check --feature mem_dirty_track' fails)".to_string(),
            }
        )));
    }
    Ok(possible)
}

/// The source, once the destination runs it, with its named volumes; one that another container
/// still uses stays.
fn remove_source(ctx: &Context, id: &str) -> Result<()> {
    let record = ctx.containers.load(id)?;
    super::lifecycle::remove(ctx, &record, true, 0)?;
    for volume in record.named_volumes() {
        if super::volumes::users(ctx, &volume.source)?.is_empty() {
            super::volumes::remove(ctx, &volume.source, false)?;
        }
    }
    Ok(())
}

/// A container of the same name at the destination would make the import fail after the
/// freeze; find out first, while nothing has changed.
fn refuse_taken_name(remote: &dyn RemoteCkpt, name: &str) -> Result<()> {
    match inspect_there(remote, name, "{{.Id}}") {
        Ok(None) => Ok(()),
        Ok(Some(_)) => {
            Err(Error::NameTakenAtDestination { destination: remote.destination().to_string(), name: name.to_string() })
        }
        Err(e) => {
            Err(Error::DestinationUnusable { destination: remote.destination().to_string(), cause: Box::new(e.into()) })
        }
    }
}

/// `ckpt inspect --format FORMAT NAME` at the destination: `None` when it has no such container.
fn inspect_there(remote: &dyn RemoteCkpt, name: &str, format: &str) -> std::result::Result<Option<String>, SshError> {
    match remote.run(&["inspect", "--format", format, name].map(String::from), None) {
        Ok(out) => Ok(Some(out.trim().to_string())),
        Err(SshError::Failed { stderr, .. }) if stderr.contains("no such container") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sends the dump to the destination and waits for its word.
struct ToDestination<'a> {
    remote: &'a dyn RemoteCkpt,
    via: Option<String>,
    compression: Compression,
    facts: wit::MigrationFacts,
    /// What the link to the destination carries, as measured before anything was frozen.
    link_bytes_per_second: Option<u64>,
    chosen: std::cell::RefCell<Option<wit::StrategyChoice>>,
    /// Post-copy: the socket at the destination that leads to the page server here.
    lazy_from: std::cell::RefCell<Option<String>>,
    frozen_at: Cell<Option<Instant>>,
    confirmed_at: Cell<Option<Instant>>,
    bytes_sent: Cell<u64>,
}

impl ToDestination<'_> {
    /// Whether the container runs at the destination: `Ok(false)` when it is not there at all.
    fn runs_there(&self, name: &str) -> std::result::Result<bool, SshError> {
        Ok(inspect_there(self.remote, name, "{{.State.Status}}")?.is_some_and(|status| status == "running"))
    }
}

impl Handoff for ToDestination<'_> {
    fn migration(&self) -> wit::MigrationFacts {
        self.facts.clone()
    }

    fn chose(&self, choice: &wit::StrategyChoice) {
        *self.chosen.borrow_mut() = Some(choice.clone());
    }

    fn link_facts(&self) -> Vec<wit::KeyValue> {
        let rate = self.link_bytes_per_second.map(|rate| rate.to_string());
        rate.map(|value| wit::KeyValue { key: LINK_RATE_FACT.into(), value }).into_iter().collect()
    }

    fn carrier(&self) -> Option<&str> {
        self.via.as_deref()
    }

    fn page_server(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        let post_copy = self.chosen.borrow().as_ref().is_some_and(|c| c.strategy == wit::Strategy::PostCopy);
        if !post_copy {
            return Ok(None);
        }
        // No port on either host: CRIU talks on one end of a socket pair, and the other end is
        // relayed to the first connection ssh brings from a root-only socket at the destination.
        let remote_socket = format!("/run/ckpt-pages-{}.sock", crate::util::random_id());
        let listener = self.remote.forward_to_here(&remote_socket)?;
        let (for_criu, relayed) =
            std::os::unix::net::UnixStream::pair().map_err(Error::io("make a socket pair for", "the page channel"))?;
        crate::ssh::relay_first_connection(listener, relayed);
        *self.lazy_from.borrow_mut() = Some(remote_socket);
        Ok(Some(for_criu.into()))
    }
    fn deliver(&self, ctx: &Context, outgoing: Outgoing<'_>, options: &wit::CheckpointOptions) -> Result<()> {
        // The dump has just stopped the container: its downtime starts with the freeze the
        // runtime's checkpoint measured, and goes on from here.
        self.frozen_at.set(Some(Instant::now()));
        let mut args: Vec<String> = vec!["restore".into()];
        if options.tcp_established {
            args.push("--tcp-established".into());
        }
        if options.file_locks {
            args.push("--file-locks".into());
        }
        let name = match outgoing {
            Outgoing::Own { record, .. } => {
                if record.network.networks.iter().any(|(name, _)| name != crate::config::DEFAULT_NETWORK) {
                    args.push("--create-networks".into());
                }
                record.name.clone()
            }
            Outgoing::Podman { name, .. } => {
                args.extend(["--engine".into(), "podman".into()]);
                format!("{}{name}", crate::podman::PREFIX)
            }
        };
        // What this host keeps off its disks, the destination keeps off its own.
        if ctx.config.exports.encrypt == crate::config::EncryptRule::Always {
            args.push("--private-memory".into());
        }
        if let Some(socket) = self.lazy_from.borrow().as_ref() {
            args.push(format!("--lazy-pages-from={socket}"));
        }
        let sent = match (&self.via, outgoing) {
            (Some(reference), _) => {
                // By digest: a stale image of the same name at the destination is never restored.
                let pushed = ctx.images.resolve(reference)?;
                args.push(format!("{reference}@{}", pushed.manifest_digest));
                self.remote.run(&args, None)
            }
            (None, outgoing) => {
                args.extend(["--import".into(), "-".into()]);
                let shown = Path::new("the migration stream");
                let mut stream = |out: &mut dyn Write| {
                    let bytes = match outgoing {
                        Outgoing::Own { record, content } => {
                            export::stream_archive(ctx, record, content, self.compression, out, shown).map(|(_, n)| n)
                        }
                        Outgoing::Podman { archive, .. } => {
                            super::checkpoint::podman::stream_archive(archive, self.compression, out, shown)
                        }
                    };
                    self.bytes_sent.set(bytes.map_err(std::io::Error::other)?);
                    Ok(())
                };
                self.remote.run(&args, Some(&mut stream))
            }
        };
        // The destination's restore returns once the container runs there: that is its word.
        let lost = match sent {
            Ok(_) => {
                self.confirmed_at.set(Some(Instant::now()));
                return Ok(());
            }
            Err(e) if e.is_unknown_outcome() => e,
            Err(e) => return Err(e.into()),
        };
        // The channel broke: ask again before deciding which side runs it.
        match self.runs_there(&name) {
            Ok(true) => {
                self.confirmed_at.set(Some(Instant::now()));
                Ok(())
            }
            Ok(false) => Err(lost.into()),
            Err(e) => Err(Error::HandoffUnconfirmed {
                name,
                destination: self.remote.destination(),
                cause: Box::new(e.into()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::*;
    use crate::store::Roots;

    /// A destination that answers from a script and records what it was asked.
    #[derive(Default)]
    struct ScriptedRemote {
        answers: RefCell<VecDeque<std::result::Result<String, SshError>>>,
        asked: RefCell<Vec<Vec<String>>>,
    }

    impl RemoteCkpt for ScriptedRemote {
        fn destination(&self) -> String {
            "ssh://far".into()
        }

        fn forward_to_here(
            &self,
            _remote_socket: &str,
        ) -> std::result::Result<std::os::unix::net::UnixListener, SshError> {
            unreachable!("post-copy is not scripted here")
        }

        fn run(
            &self,
            args: &[String],
            _input: Option<crate::ssh::Upload<'_>>,
        ) -> std::result::Result<String, SshError> {
            self.asked.borrow_mut().push(args.to_vec());
            self.answers.borrow_mut().pop_front().expect("an answer for every question")
        }
    }

    fn lost() -> SshError {
        SshError::Unreachable { destination: "ssh://far".into(), stderr: "Connection reset".into() }
    }

    fn failed(stderr: &str) -> SshError {
        SshError::Failed {
            destination: "ssh://far".into(),
            command: "x".into(),
            status: "1".into(),
            stderr: stderr.into(),
        }
    }

    /// Delivers through the registry path (no archive to write) against `answers`.
    fn deliver(answers: Vec<std::result::Result<String, SshError>>) -> (Result<()>, Vec<Vec<String>>, String) {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context::new(Roots::new(dir.path().join("root"), dir.path().join("run")), "runc".into());
        let record: ContainerRecord = serde_json::from_value(serde_json::json!({
            "id": "ab".repeat(32), "name": "web", "image_name": "busybox", "image_ref": "busybox:latest",
            "image_id": "c".repeat(64), "command": ["sh"], "env": [], "labels": {}, "mounts": [],
            "auto_remove": false, "created_at": "2026-01-01T00:00:00Z", "runtime": "runc",
            "state": crate::store::StateFlags::default()
        }))
        .unwrap();
        let pushed = ctx.images.add_image("localhost:5000/ckpt/web:1", &[], None, Default::default()).unwrap();
        let remote = ScriptedRemote { answers: RefCell::new(answers.into()), ..Default::default() };
        let handoff = ToDestination {
            remote: &remote,
            via: Some("localhost:5000/ckpt/web:1".into()),
            compression: Compression::Zstd,
            facts: wit::MigrationFacts {
                destination: "ssh://far".into(),
                transport: "registry".into(),
                possible: vec![wit::Strategy::StopAndCopy],
                requested: None,
            },
            link_bytes_per_second: None,
            chosen: std::cell::RefCell::new(None),
            lazy_from: std::cell::RefCell::new(None),
            frozen_at: Cell::new(None),
            confirmed_at: Cell::new(None),
            bytes_sent: Cell::new(0),
        };
        let mut options = crate::policy::bindings::CheckpointOptions::none();
        options.tcp_established = true;
        let result =
            handoff.deliver(&ctx, Outgoing::Own { record: &record, content: &export::Content::default() }, &options);
        (result, remote.asked.into_inner(), pushed.manifest_digest.to_string())
    }

    #[test]
    fn a_restore_that_returns_is_the_destinations_word() {
        let (result, asked, digest) = deliver(vec![Ok("web\n".into())]);
        result.unwrap();
        let pinned = format!("localhost:5000/ckpt/web:1@{digest}");
        assert_eq!(asked, vec![vec!["restore", "--tcp-established", pinned.as_str()]], "restored by digest");
    }

    #[test]
    fn a_refusal_there_brings_the_container_back_here() {
        let (result, asked, _) = deliver(vec![Err(failed("Error: no space left"))]);
        let err = result.unwrap_err();
        assert!(!matches!(err, Error::HandoffUnconfirmed { .. }), "a clear no rolls back: {err}");
        assert!(err.to_string().contains("no space left"), "{err}");
        assert_eq!(asked.len(), 1, "no need to ask again");
    }

    #[test]
    fn a_broken_channel_asks_again_before_choosing_a_side() {
        // It runs there after all: done.
        let (result, asked, _) = deliver(vec![Err(lost()), Ok("running\n".into())]);
        result.unwrap();
        assert_eq!(asked[1], vec!["inspect", "--format", "{{.State.Status}}", "web"]);
        // It is not there: roll back here.
        let (result, _, _) = deliver(vec![Err(lost()), Err(failed("Error: no such container \"web\""))]);
        assert!(matches!(result.unwrap_err(), Error::Ssh(SshError::Unreachable { .. })));
        // Nobody can tell: keep the checkpoint here and say what to do.
        let (result, _, _) = deliver(vec![Err(lost()), Err(lost())]);
        let err = result.unwrap_err();
        assert!(matches!(err, Error::HandoffUnconfirmed { .. }));
        let text = err.to_string();
        assert!(text.contains("cannot be confirmed") && text.contains("'ckpt restore web' here"), "{text}");
    }
}
