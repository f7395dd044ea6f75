//! Image commands: import, load, save, ls, rm.

use std::path::Path;

use super::Context;
use crate::error::{Error, Result};
use crate::image::ImageInfo;
use crate::registry::Registry;

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
    ctx.images.remove(name).map_err(Error::from)
}

pub fn import(ctx: &Context, tarball: &Path, name: &str) -> Result<ImageInfo> {
    if !tarball.is_file() {
        return Err(Error::invalid(format!(
            "image tarball {:?} does not exist or is not a file",
            tarball.display().to_string()
        )));
    }
    ctx.images.import_rootfs(tarball, name).map_err(Error::from)
}

/// The flags of `push` and `pull`; `tls_verify` unset means: verify, unless the host config
/// lists the registry as insecure.
#[derive(Debug, Clone, Default)]
pub struct RegistryFlags {
    pub tls_verify: Option<bool>,
    pub creds: Option<String>,
    pub authfile: Option<std::path::PathBuf>,
    /// `push --sign-by`: the GPG key to sign with, over the host config's.
    pub sign_by: Option<String>,
}

pub fn registry_access(ctx: &Context, reference: &str, flags: &RegistryFlags) -> crate::registry::Access {
    let rules = &ctx.config.signatures;
    crate::registry::Access {
        tls_verify: flags.tls_verify.unwrap_or(!ctx.config.registries.is_insecure(reference)),
        creds: flags.creds.clone(),
        authfile: flags.authfile.clone(),
        signatures: crate::registry::Signatures {
            sign_by: flags.sign_by.clone().or_else(|| rules.sign_by.clone()),
            gnupg_home: rules.gnupg_home.clone(),
            registries_d: rules.registries_d.clone(),
            trusted_keyring: rules.image_keys.clone(),
        },
    }
}

/// `ckpt push IMAGE [DEST]`: DEST defaults to the image's own name, which must then name a
/// registry. Returns where it went.
pub fn push(ctx: &Context, name: &str, destination: Option<&str>, flags: &RegistryFlags) -> Result<String> {
    let info = ctx.images.resolve(name)?;
    let destination = destination.map(crate::image::normalize_reference).unwrap_or_else(|| info.reference.clone());
    crate::registry::check_reference(&destination)?;
    let registry = crate::registry::Skopeo::find()?;
    registry.push(ctx.images.layout(), &info.reference, &destination, &registry_access(ctx, &destination, flags))?;
    Ok(destination)
}

/// A registry that serves more than the store's file system holds must not fill it: what a pull
/// brings is staged, then copied into the store, so it needs room twice over, besides the reserve.
pub fn check_room_for_pull(
    ctx: &Context,
    registry: &dyn Registry,
    reference: &str,
    access: &crate::registry::Access,
) -> Result<()> {
    let Some(declared) = registry.declared_size(reference, access)? else { return Ok(()) };
    let staging_dir = ctx.roots.staging_dir();
    crate::util::create_dir_all(&staging_dir)?;
    let free = crate::hostinfo::free_bytes(&staging_dir).unwrap_or(u64::MAX);
    let reserve = crate::archive::extract::free_space_reserve(crate::hostinfo::filesystem_bytes(&staging_dir));
    let needed = declared.saturating_mul(2);
    if needed > free.saturating_sub(reserve) {
        return Err(Error::invalid(format!(
            "pulling {reference:?} needs {needed} bytes (its {declared} bytes of blobs, staged and then stored), but {} has {free} bytes free less the {reserve} kept free for the store's own records; free some space there",
            staging_dir.display()
        )));
    }
    Ok(())
}

/// `ckpt pull REF`: the image goes to a private staging layout first and is then loaded, digest
/// by digest, so an interrupted or failed pull leaves nothing in the store and a retry starts
/// clean.
pub fn pull(ctx: &Context, reference: &str, flags: &RegistryFlags) -> Result<ImageInfo> {
    pull_as(ctx, reference, &crate::image::normalize_reference(reference), flags)
}

/// [`pull`], stored under the local `name`.
pub fn pull_as(ctx: &Context, reference: &str, name: &str, flags: &RegistryFlags) -> Result<ImageInfo> {
    crate::registry::check_reference(reference)?;
    let registry = crate::registry::Skopeo::find()?;
    let access = registry_access(ctx, reference, flags);
    check_room_for_pull(ctx, &registry, reference, &access)?;
    let staging = crate::util::tempdir_in(&ctx.roots.staging_dir(), "pull")?;
    let layout = staging.path.join("oci");
    registry.pull(reference, &layout, name, &access)?;
    crate::interrupt::check()?;
    ctx.images.load(&layout, Some(name))?;
    if let Some(keyring) = &access.signatures.trusted_keyring {
        ctx.images.set_trust(&crate::image::normalize_reference(name), &format!("signed-by {}", keyring.display()))?;
    }
    ctx.images.resolve(name).map_err(Error::from)
}
