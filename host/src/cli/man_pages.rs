//! Man pages from the clap definitions, one per command as podman ships them:
//! `ckpt.1`, `ckpt-checkpoint.1`, `ckpt-container-checkpoint.1`, `ckpt-image-ls.1`, ...

use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::error::{Error, Result};

/// Writes every page into `dir`; returns their paths.
pub fn write_all(dir: &Path) -> Result<Vec<PathBuf>> {
    crate::util::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut root = super::Cli::command();
    root.build();
    write_tree(&root, "ckpt", dir, &mut written)?;
    Ok(written)
}

fn write_tree(command: &clap::Command, name: &str, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    // Each page is named after the full command, so `man ckpt-checkpoint` finds it.
    let page = command.clone().name(name.to_string());
    let mut text = Vec::new();
    clap_mangen::Man::new(page).render(&mut text).map_err(Error::io("render man page", name))?;
    let path = dir.join(format!("{name}.1"));
    crate::util::write_atomic(&path, &text, 0o644)?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        write_tree(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
