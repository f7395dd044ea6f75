//! Named volumes: create, ls, rm, inspect.

use serde_json::{Value, json};

use super::Context;
use crate::error::{Error, Result};
use crate::store::{StoreLock, VolumeRecord};

pub fn create(ctx: &Context, name: &str, labels: &[String]) -> Result<VolumeRecord> {
    let labels = super::lifecycle::parse_key_values(labels, "--label")?;
    let _lock = StoreLock::acquire(&ctx.roots.locks_dir())?;
    ctx.volumes.create(name, labels).map_err(Error::from)
}

pub fn users(ctx: &Context, name: &str) -> Result<Vec<String>> {
    Ok(ctx
        .containers
        .list()?
        .into_iter()
        .filter(|c| c.named_volumes().any(|m| m.source == name))
        .map(|c| c.name)
        .collect())
}

pub fn remove(ctx: &Context, name: &str, force: bool) -> Result<()> {
    let _lock = StoreLock::acquire(&ctx.roots.locks_dir())?;
    ctx.volumes.get(name)?;
    let users = users(ctx, name)?;
    if let Some(user) = users.first() {
        if !force {
            return Err(Error::VolumeInUse { name: name.to_string(), container: user.clone() });
        }
        for user in &users {
            let record = ctx.containers.lookup(user)?;
            super::lifecycle::remove(ctx, &record, true, 0)?;
        }
    }
    ctx.volumes.remove(name).map_err(Error::from)
}

pub fn inspect(ctx: &Context, name: &str) -> Result<Value> {
    let v = ctx.volumes.get(name)?;
    Ok(json!({
        "Name": v.name,
        "Driver": "local",
        "Mountpoint": ctx.volumes.mountpoint(&v.name),
        "CreatedAt": v.created_at.to_rfc3339(),
        "Labels": v.labels,
        "Scope": "local",
    }))
}
