//! `ckpt catalog`: every checkpoint ckpt made, whether what it names is still there, pins, and
//! deletion (by a user, or by retention through a retainer policy).

use std::path::Path;

use serde::Serialize;

use super::Context;
use super::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::policy::bindings::{self as wit, CatalogEntry, ClusterFacts, RetainFacts};
use crate::policy::{self, Retention};
use crate::store::catalog::{self, Entry, EntryKind, Presence};

/// An entry with what is there now, as `catalog ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub entry: Entry,
    pub presence: Presence,
}

/// Whether what `entry` names is still there, and still what ckpt made.
pub fn presence(ctx: &Context, entry: &Entry) -> Presence {
    match entry.kind {
        EntryKind::Archive => catalog::archive_presence(Path::new(&entry.location), entry.digest.as_deref()),
        EntryKind::Image => match ctx.images.resolve(&entry.location) {
            Ok(info) if Some(info.manifest_digest.to_string()) == entry.digest => Presence::Present,
            Ok(_) => Presence::Changed,
            Err(_) => Presence::Missing,
        },
        EntryKind::Local => match Path::new(&entry.location).join(crate::metadata::CRIU_INVENTORY).is_file() {
            true => Presence::Present,
            false => Presence::Missing,
        },
    }
}

/// `ckpt catalog ls [CONTAINER]`: newest first; a container is named by name or ID (prefix), and
/// also matches entries of a container that is gone.
pub fn list(ctx: &Context, container: Option<&str>) -> Result<Vec<Listed>> {
    let id = container.and_then(|c| ctx.containers.lookup(c).ok()).map(|r| r.id);
    Ok(ctx
        .catalog()
        .list()?
        .into_iter()
        .filter(|e| match container {
            None => true,
            Some(c) => Some(&e.container_id) == id.as_ref() || e.container_name == c || e.container_id.starts_with(c),
        })
        .map(|entry| Listed { presence: presence(ctx, &entry), entry })
        .collect())
}

/// `ckpt catalog pin|unpin ID`.
pub fn pin(ctx: &Context, id: &str, pinned: bool) -> Result<Entry> {
    let entry = ctx.catalog().set_pinned(id, pinned)?;
    audit_pin(ctx, &entry);
    Ok(entry)
}

/// Saves `entry`, whose pin its caller changed (with whatever else goes with it), and audits the
/// pin as `ckpt catalog pin|unpin` does.
pub fn save_pin(ctx: &Context, entry: &Entry) -> Result<()> {
    ctx.catalog().add(entry)?;
    audit_pin(ctx, entry);
    Ok(())
}

fn audit_pin(ctx: &Context, entry: &Entry) {
    let (id, location) = (entry.id.clone(), entry.location.clone());
    ctx.audit(if entry.pinned {
        AuditEvent::Pin { entry: id, location }
    } else {
        AuditEvent::Unpin { entry: id, location }
    });
}

/// `ckpt catalog rm ID`: deletes what the entry names, then the entry. A pinned entry is
/// refused, and so is a file or image that changed since ckpt made it (it is not ckpt's to
/// delete any more).
pub fn remove(ctx: &Context, id: &str) -> Result<Entry> {
    let entry = ctx.catalog().get(id)?;
    if entry.pinned {
        return Err(Error::invalid(format!(
            "catalog entry {} is pinned; 'ckpt catalog unpin {}' first",
            entry.id, entry.id
        )));
    }
    delete(ctx, &entry)?;
    ctx.audit(AuditEvent::CatalogRm { entry: entry.id.clone(), kind: entry.kind, location: entry.location.clone() });
    Ok(entry)
}

fn delete(ctx: &Context, entry: &Entry) -> Result<()> {
    // Every local entry of a container names the same directory, which a dump in flight empties
    // and writes again under the container's lock: whether it is there means something only
    // under that lock.
    let _lock = match entry.kind {
        EntryKind::Local => Some(crate::store::ContainerLock::try_acquire(
            &ctx.roots.locks_dir(),
            &entry.container_id,
            &entry.container_name,
        )?),
        _ => None,
    };
    match presence(ctx, entry) {
        Presence::Missing => {}
        Presence::Changed => {
            return Err(Error::invalid(format!(
                "{} {:?} of catalog entry {} changed since ckpt made it (its digest no longer matches); ckpt leaves it alone: delete it yourself, then 'ckpt catalog rm {}' forgets it",
                entry.kind, entry.location, entry.id, entry.id
            )));
        }
        Presence::Present => match entry.kind {
            EntryKind::Archive => {
                // The signature first: one left without its archive matches nothing.
                if let Some(signature) = &entry.signature {
                    crate::util::remove_file_if_exists(Path::new(signature))?;
                }
                crate::util::remove_file_if_exists(Path::new(&entry.location))?
            }
            EntryKind::Image => drop(ctx.images.remove(&entry.location)?),
            EntryKind::Local => {
                let record = ctx.containers.load(&entry.container_id).ok();
                if record.as_ref().is_some_and(|r| r.state.checkpoint_in_progress) {
                    return Err(Error::invalid(format!(
                        "catalog entry {} names the checkpoint of container {:?}, which is being checkpointed; try again when it has finished",
                        entry.id, entry.container_name
                    )));
                }
                if record.is_some_and(|r| r.state.checkpointed && !r.state.restored) {
                    return Err(Error::invalid(format!(
                        "catalog entry {} is the checkpoint container {:?} waits in; restore or remove the container instead",
                        entry.id, entry.container_name
                    )));
                }
                crate::util::remove_dir_all(Path::new(&entry.location))?;
            }
        },
    }
    ctx.catalog().forget(&entry.id).map_err(Error::from)
}

/// One deletion retention made, or could not make.
#[derive(Debug, Clone, Serialize)]
pub struct Retained {
    pub entry: String,
    pub reason: String,
    pub error: Option<String>,
}

/// Which of a container's catalog entries a retainer is shown, and so may delete.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Only what this schedule made: the default retainer never sees a backup the user
    /// exported by hand, or another schedule's.
    Schedule(&'a str),
    /// Every entry of the container, for a retainer the admin chose.
    Container,
    /// Every entry of every container named below the ID, which names a group: a Kubernetes pod
    /// (`k8s:NAMESPACE/POD`) or namespace (`k8s:NAMESPACE`), the operator's wider levels.
    Below,
}

impl Scope<'_> {
    fn holds(&self, container_id: &str, entry: &Entry) -> bool {
        match self {
            Scope::Schedule(name) => entry.container_id == container_id && entry.schedule.as_deref() == Some(*name),
            Scope::Container => entry.container_id == container_id,
            Scope::Below => entry.container_id.strip_prefix(container_id).is_some_and(|below| below.starts_with('/')),
        }
    }
}

/// Asks `retention` about one container's entries in `scope` (with what the cluster says of it)
/// and deletes what it names. A failed or refused answer deletes nothing (fail closed); the
/// decision is recorded either way.
pub fn retain(
    ctx: &Context,
    retention: &Retention,
    (container_id, scope): (&str, Scope<'_>),
    cluster: &ClusterFacts,
) -> Result<Vec<Retained>> {
    let entries: Vec<Entry> = ctx.catalog().list()?.into_iter().filter(|e| scope.holds(container_id, e)).collect();
    let Some(first) = entries.first() else { return Ok(Vec::new()) };
    let container_name = match scope {
        Scope::Below => container_id.to_string(),
        _ => first.container_name.clone(),
    };
    let now = crate::util::now();
    let facts = RetainFacts {
        container_id: container_id.to_string(),
        container_name,
        entries: entries.iter().map(contract_entry).collect(),
        now: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        now_unix_ms: now.timestamp_millis().max(0) as u64,
    };
    let (deletions, record) = retention.retain(&facts, cluster);
    if let Err(e) = policy::record::append(&ctx.roots.policy_log(), std::slice::from_ref(&record)) {
        tracing::error!("cannot write the decision log {}: {e}", ctx.roots.policy_log().display());
    }
    let deletions = deletions.inspect_err(|e| {
        ctx.audit(AuditEvent::RetentionFailed {
            container_id: Some(container_id.to_string()),
            schedule: None,
            error: e.to_string(),
        })
    })?;
    let mut out = Vec::new();
    for deletion in deletions {
        let entry = entries.iter().find(|e| e.id == deletion.id).expect("checked against the facts");
        // Pinned since the retainer was asked: the pin holds.
        let result = match ctx.catalog().get(&entry.id) {
            Ok(now) if now.pinned => Err(Error::EntryPinned(entry.id.clone())),
            _ => delete(ctx, entry),
        };
        let error = result.err().map(|e| e.to_string());
        ctx.audit(AuditEvent::RetentionDelete {
            entry: entry.id.clone(),
            container: entry.container_name.clone(),
            location: entry.location.clone(),
            reason: deletion.reason.clone(),
            policy: retention.retainer.digest.clone(),
            error: error.clone(),
        });
        out.push(Retained { entry: entry.id.clone(), reason: deletion.reason, error });
    }
    Ok(out)
}

fn contract_entry(entry: &Entry) -> CatalogEntry {
    CatalogEntry {
        id: entry.id.clone(),
        kind: match entry.kind {
            EntryKind::Local => wit::EntryKind::Local,
            EntryKind::Archive => wit::EntryKind::Archive,
            EntryKind::Image => wit::EntryKind::Image,
        },
        location: entry.location.clone(),
        size_bytes: entry.size_bytes,
        created: entry.created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        created_unix_ms: entry.created.timestamp_millis().max(0) as u64,
        trigger: entry.trigger.clone(),
        schedule: entry.schedule.clone(),
        pinned: entry.pinned,
        policy_digest: entry.policy.digest.clone(),
    }
}
