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
    Ls(ImageListArgs),
    /// Remove images.
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ImageListArgs {
    #[command(flatten)]
    pub list: super::ListArgs,
    /// All images; ckpt keeps no intermediate ones, so this lists the same.
    #[arg(short, long)]
    pub all: bool,
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
        ImageCommand::Ls(ImageListArgs { list: super::ListArgs { quiet, format, noheading }, .. }) => {
            let list = ctx.images.list()?;
            let mut out = std::io::stdout().lock();
            match format {
                Some(format) => {
                    let rows: Vec<_> = list.iter().map(ImageRow::from).collect();
                    let template_rows: Vec<_> = list.iter().map(ImageTemplateRow::from).collect();
                    super::print_listing(&format, &rows, &template_rows, IMAGE_HEADINGS, noheading)?;
                }
                None if quiet => list.iter().for_each(|i| drop(writeln!(out, "{}", crate::util::short_id(&i.id)))),
                None => drop(write!(out, "{}", super::without_heading(images_table(&list), noheading))),
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

/// `ckpt image ls` as a table, in podman's columns.
fn images_table(images: &[crate::image::ImageInfo]) -> String {
    let mut table = format!("{:<40}  {:<10}  {:<12}  {:<30}  SIZE\n", "REPOSITORY", "TAG", "IMAGE ID", "CREATED");
    for image in images {
        let (repo, tag) = image.reference.rsplit_once(':').unwrap_or((&image.reference, ""));
        let row = format!(
            "{repo:<40}  {tag:<10}  {:<12}  {:<30}  {}",
            crate::util::short_id(&image.id),
            image.created.as_deref().unwrap_or(""),
            image.size
        );
        table.push_str(&crate::util::escape_controls(&row));
        table.push('\n');
    }
    table
}

/// The fields of `image ls --format '{{...}}'`, as podman's images template names them.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ImageTemplateRow<'a> {
    repository: &'a str,
    tag: &'a str,
    #[serde(rename = "ID")]
    id: &'a str,
    digest: String,
    created_at: &'a str,
    created: &'a str,
    size: String,
    names: [&'a str; 1],
    annotations: &'a std::collections::BTreeMap<String, String>,
}

const IMAGE_HEADINGS: &[(&str, &str)] =
    &[("ID", "IMAGE ID"), ("CreatedAt", "CREATED"), ("Created", "CREATED"), ("Repository", "REPOSITORY")];

impl<'a> From<&'a crate::image::ImageInfo> for ImageTemplateRow<'a> {
    fn from(image: &'a crate::image::ImageInfo) -> Self {
        let (repository, tag) = image.reference.rsplit_once(':').unwrap_or((&image.reference, ""));
        ImageTemplateRow {
            repository,
            tag,
            id: crate::util::short_id(&image.id),
            digest: image.manifest_digest.to_string(),
            created_at: image.created.as_deref().unwrap_or_default(),
            created: image.created.as_deref().unwrap_or_default(),
            size: crate::util::human_size(image.size),
            names: [&image.reference],
            annotations: &image.annotations,
        }
    }
}

/// One image in `image ls --format json`, with podman's field names.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ImageRow<'a> {
    id: &'a str,
    names: [&'a str; 1],
    digest: String,
    created: Option<&'a str>,
    size: u64,
    annotations: &'a std::collections::BTreeMap<String, String>,
}

impl<'a> From<&'a crate::image::ImageInfo> for ImageRow<'a> {
    fn from(image: &'a crate::image::ImageInfo) -> Self {
        ImageRow {
            id: &image.id,
            names: [&image.reference],
            digest: image.manifest_digest.to_string(),
            created: image.created.as_deref(),
            size: image.size,
            annotations: &image.annotations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_table_splits_repository_and_tag() {
        let image = |reference: &str, id: char, size| crate::image::ImageInfo {
            reference: reference.into(),
            id: id.to_string().repeat(64),
            manifest_digest: format!("sha256:{}", "e".repeat(64)).parse().unwrap(),
            image_manifest: format!("sha256:{}", "e".repeat(64)).parse().unwrap(),
            created: Some("2026-11-28T06:48:25.883508449Z".into()),
            size,
            annotations: Default::default(),
            trust: None,
        };
        let images = [image("busybox:latest", 'a', 1183212), image("localhost:5000/ckpt/web:2026-11-28", 'b', 21873)];
        insta::assert_snapshot!("image_table", images_table(&images));
        let rows: Vec<_> = images.iter().map(ImageRow::from).collect();
        insta::assert_json_snapshot!("image_rows", rows);
    }
}
