use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::error::Result;
use crate::ops::{Context, images};

/// Manage images.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Create an image from a root filesystem tarball (plain, gzip or zstd).
    Import { tarball: PathBuf, name: String },
    /// Load images from an OCI archive or an OCI image layout directory.
    Load(LoadArgs),
    /// Write an image as an OCI archive.
    Save(SaveArgs),
    /// List images.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long)]
        format: Option<super::OutputFormat>,
    },
    /// Remove images.
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The OCI archive or layout directory.
    #[arg(short, long = "input")]
    pub input: Option<PathBuf>,
    /// The archive or layout, when -i is not used.
    pub path: Option<PathBuf>,
    /// Name for an image that carries none.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    #[arg(short, long = "output")]
    pub output: PathBuf,
    pub image: String,
}

pub fn run(ctx: &Context, command: ImageCommand) -> Result<i32> {
    match command {
        ImageCommand::Import { tarball, name } => {
            let info = images::import(ctx, &tarball, &name)?;
            println!("{}", info.id);
        }
        ImageCommand::Load(args) => {
            let Some(path) = args.input.or(args.path) else {
                return Err(crate::Error::invalid("image load needs an archive or layout: -i PATH"));
            };
            for reference in ctx.images.load(&path, args.name.as_deref())? {
                println!("Loaded image: {reference}");
            }
        }
        ImageCommand::Save(args) => ctx.images.save(&args.image, &args.output)?,
        ImageCommand::Ls { quiet, format } => {
            let list = ctx.images.list()?;
            let mut out = std::io::stdout().lock();
            match format {
                Some(super::OutputFormat::Json) => {
                    let values: Vec<_> = list
                        .iter()
                        .map(|i| serde_json::json!({"Id": i.id, "Names": [i.reference], "Digest": i.manifest_digest, "Created": i.created, "Size": i.size, "Annotations": i.annotations}))
                        .collect();
                    writeln!(out, "{}", serde_json::to_string_pretty(&values).expect("json")).ok();
                }
                None if quiet => list.iter().for_each(|i| drop(writeln!(out, "{}", crate::util::short_id(&i.id)))),
                None => {
                    writeln!(out, "{:<40}  {:<10}  {:<12}  {:<30}  SIZE", "REPOSITORY", "TAG", "IMAGE ID", "CREATED")
                        .ok();
                    for i in &list {
                        let (repo, tag) = i.reference.rsplit_once(':').unwrap_or((&i.reference, ""));
                        writeln!(
                            out,
                            "{repo:<40}  {tag:<10}  {:<12}  {:<30}  {}",
                            crate::util::short_id(&i.id),
                            i.created.as_deref().unwrap_or(""),
                            i.size
                        )
                        .ok();
                    }
                }
            }
        }
        ImageCommand::Rm { force, images: names } => {
            crate::ops::each(&names, |name| {
                let info = images::remove(ctx, name, force)?;
                println!("Untagged: {}", info.reference);
                Ok(())
            })?;
        }
    }
    Ok(0)
}
