//! Image commands: import, load, save, ls, rm.

use std::path::Path;

use super::Context;
use crate::error::{Error, Result};
use crate::image::ImageInfo;

pub fn remove(ctx: &Context, name: &str, force: bool) -> Result<ImageInfo> {
    let info = ctx.images.resolve(name)?;
    let users: Vec<_> = ctx.containers.list()?.into_iter().filter(|c| c.image_id == info.id).collect();
    if let Some(user) = users.first() {
        if !force {
            return Err(Error::ImageInUse { name: name.to_string(), container: user.name.clone() });
        }
        for user in &users {
            super::lifecycle::remove(ctx, user, true, 0)?;
        }
    }
    ctx.images.remove(name)
}

pub fn import(ctx: &Context, tarball: &Path, name: &str) -> Result<ImageInfo> {
    if !tarball.is_file() {
        return Err(Error::invalid(format!(
            "image tarball {:?} does not exist or is not a file",
            tarball.display().to_string()
        )));
    }
    ctx.images.import_rootfs(tarball, name)
}
