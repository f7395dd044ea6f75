//! Sealed checkpoints: an archive encrypted with age (age-encryption.org/v1, the `age` crate)
//! to X25519 recipients (`age1…`) or SSH public keys, so that Debian's `age -d -i KEY` opens it
//! too. Beside the recipients' own stanzas, the header names each recipient in a stanza of
//! ckpt's (`ckpt-recipient`), which age's identities skip as they skip any stanza type they do
//! not know: X25519 stanzas do not say whose key they are for, and a restore without the right
//! identity should say which ones would open it. Those names are covered by the header's MAC,
//! so they are checked as soon as the archive is opened, and are only a hint before.

use std::collections::HashSet;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use age_core::format::{FileKey, Stanza};

/// The first line of every age file.
pub const MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// The type of the stanzas that name the recipients.
const NAME_STANZA: &str = "ckpt-recipient";
/// Far beyond any real header: what is read to find the names without opening the file.
const MAX_HEADER: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "recipient {value:?} is neither an age recipient (age1…) nor an SSH public key (ssh-ed25519 …, ssh-rsa …): {detail}"
    )]
    BadRecipient { value: String, detail: String },
    #[error(
        "identity file {path:?} cannot be used: {detail}; give an age identity (AGE-SECRET-KEY-1…, as 'ckpt key generate' or age-keygen writes) or an unencrypted SSH private key"
    )]
    BadIdentity { path: PathBuf, detail: String },
    #[error("{origin} is sealed (to {sealed_to}); give an identity that opens it with --identity FILE")]
    NoIdentity { origin: String, sealed_to: String },
    #[error("{origin} is sealed to {sealed_to}, and none of the identities given ({given}) opens it")]
    NoMatchingIdentity { origin: String, sealed_to: String, given: String },
    #[error("{origin} cannot be opened: {detail}")]
    Unreadable { origin: String, detail: String },
    #[error("identity file {path:?} cannot be written: {source}")]
    WriteIdentity { path: PathBuf, source: std::io::Error },
}

pub type Result<T, E = SealError> = std::result::Result<T, E>;

/// Whom a checkpoint is sealed to, as typed (in the order given, each once) and as age uses them.
#[derive(Default)]
pub struct Recipients {
    names: Vec<String>,
    parsed: Vec<Box<dyn age::Recipient + Send>>,
}

impl Recipients {
    /// `values`: age recipients (`age1…`) and SSH public keys (`ssh-ed25519 AAAA… [comment]`).
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Recipients> {
        let mut recipients = Recipients::default();
        for value in values {
            let value = value.as_ref().trim();
            let (name, parsed): (String, Box<dyn age::Recipient + Send>) = if value.starts_with("age1") {
                let key = value
                    .parse::<age::x25519::Recipient>()
                    .map_err(|detail| SealError::BadRecipient { value: value.into(), detail: detail.to_string() })?;
                (key.to_string(), Box::new(key))
            } else {
                let key = value
                    .parse::<age::ssh::Recipient>()
                    .map_err(|e| SealError::BadRecipient { value: value.into(), detail: format!("{e:?}") })?;
                (key.to_string(), Box::new(key))
            };
            if !recipients.names.contains(&name) {
                recipients.names.push(name);
                recipients.parsed.push(parsed);
            }
        }
        Ok(recipients)
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Each recipient as age writes it (`age1…`, `ssh-ed25519 AAAA…`).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Adds `other`'s recipients that are not here yet.
    pub fn extend(&mut self, other: Recipients) {
        for (name, parsed) in other.names.into_iter().zip(other.parsed) {
            if !self.names.contains(&name) {
                self.names.push(name);
                self.parsed.push(parsed);
            }
        }
    }
}

/// The stanzas that name the recipients; they carry nothing of the file key.
struct Names<'a>(&'a [String]);

impl age::Recipient for Names<'_> {
    fn wrap_file_key(&self, _: &FileKey) -> Result<(Vec<Stanza>, HashSet<String>), age::EncryptError> {
        let stanzas = self
            .0
            .iter()
            .map(|name| Stanza {
                tag: NAME_STANZA.to_string(),
                args: name.split_whitespace().take(2).map(String::from).collect(),
                body: Vec::new(),
            })
            .collect();
        Ok((stanzas, HashSet::new()))
    }
}

/// `out`, sealed to `recipients`; what is written to it is encrypted on the way. Its `finish`
/// must be called, or the file ends short and will not open.
pub fn seal<W: Write>(out: W, recipients: &Recipients) -> std::io::Result<age::stream::StreamWriter<W>> {
    let names = Names(&recipients.names);
    let all = recipients.parsed.iter().map(|r| r.as_ref() as &dyn age::Recipient).chain(std::iter::once(&names as _));
    age::Encryptor::with_recipients(all).map_err(std::io::Error::other)?.wrap_output(out)
}

/// Whether `prefix` (a file's first bytes) starts an age file.
pub fn is_sealed(prefix: &[u8]) -> bool {
    prefix.starts_with(MAGIC)
}

/// The recipients a sealed file's header names (unchecked until it is opened); the stanza
/// types it holds when it names none (an age file that ckpt did not write).
pub fn sealed_to(header: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(&header[..header.len().min(MAX_HEADER)]);
    let mut named = Vec::new();
    let mut kinds = Vec::new();
    for line in text.lines().skip(1).take_while(|l| !l.starts_with("---")) {
        let Some(stanza) = line.strip_prefix("-> ") else { continue };
        let mut words = stanza.split(' ');
        match words.next() {
            Some(NAME_STANZA) => named.push(words.collect::<Vec<_>>().join(" ")),
            Some(kind) => kinds.push(format!("an {kind} recipient")),
            None => {}
        }
    }
    if named.is_empty() { kinds } else { named }
}

/// The identities a restore may open sealed checkpoints with, and the files they came from.
#[derive(Default)]
pub struct Identities {
    list: Vec<Box<dyn age::Identity>>,
    files: Vec<PathBuf>,
}

impl Identities {
    /// Reads age identity files (`AGE-SECRET-KEY-1…` lines) and unencrypted SSH private keys.
    pub fn read(paths: &[PathBuf]) -> Result<Identities> {
        let mut identities = Identities::default();
        for path in paths {
            let bad = |detail: String| SealError::BadIdentity { path: path.clone(), detail };
            let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            // An SSH private key is PEM; an age identity file is lines of text.
            if text.trim_ascii_start().starts_with(b"-----BEGIN ") {
                match age::ssh::Identity::from_buffer(&text[..], Some(path.display().to_string())) {
                    Ok(age::ssh::Identity::Unencrypted(key)) => {
                        identities.list.push(Box::new(age::ssh::Identity::Unencrypted(key)));
                    }
                    Ok(age::ssh::Identity::Encrypted(_)) => {
                        return Err(bad("the SSH key is protected by a passphrase; give an unencrypted copy".into()));
                    }
                    Ok(age::ssh::Identity::Unsupported(_)) => {
                        return Err(bad("age does not take this SSH key type".into()));
                    }
                    Err(e) => return Err(bad(e.to_string())),
                }
            } else {
                let file = age::IdentityFile::from_buffer(&text[..]).map_err(|e| bad(e.to_string()))?;
                let list = file.into_identities().map_err(|e| bad(e.to_string()))?;
                if list.is_empty() {
                    return Err(bad("it holds no identity".into()));
                }
                identities.list.extend(list);
            }
            identities.files.push(path.clone());
        }
        Ok(identities)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Opens a sealed stream with `identities`: the plaintext as it is read. `origin` names it in
/// errors, which say whom it is sealed to.
pub fn open<R: BufRead>(mut input: R, identities: &Identities, origin: &str) -> Result<age::stream::StreamReader<R>> {
    let header = input.fill_buf().map(<[u8]>::to_vec).unwrap_or_default();
    let sealed_to = describe(&sealed_to(&header));
    if identities.is_empty() {
        return Err(SealError::NoIdentity { origin: origin.into(), sealed_to });
    }
    let unreadable = |detail: String| SealError::Unreadable { origin: origin.into(), detail };
    let decryptor = age::Decryptor::new_buffered(input).map_err(|e| unreadable(e.to_string()))?;
    decryptor.decrypt(identities.list.iter().map(|i| i.as_ref() as &dyn age::Identity)).map_err(|e| match e {
        age::DecryptError::NoMatchingKeys => SealError::NoMatchingIdentity {
            origin: origin.into(),
            sealed_to,
            given: identities.files.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", "),
        },
        other => unreadable(other.to_string()),
    })
}

/// Opens the sealed file at `path` with the identities in `identity_files` (see [`open`]).
pub fn open_file(
    path: &Path,
    identity_files: &[PathBuf],
) -> Result<age::stream::StreamReader<std::io::BufReader<std::fs::File>>> {
    let origin = path.display().to_string();
    let identities = Identities::read(identity_files)?;
    let file = std::fs::File::open(path)
        .map_err(|e| SealError::Unreadable { origin: origin.clone(), detail: e.to_string() })?;
    open(std::io::BufReader::with_capacity(1 << 20, file), &identities, &origin)
}

fn describe(recipients: &[String]) -> String {
    if recipients.is_empty() { "recipients it does not name".to_string() } else { recipients.join(", ") }
}

/// Reads a file's first bytes: enough to tell a sealed file and to read its header.
pub fn file_header(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut header = Vec::with_capacity(4096);
    std::fs::File::open(path)?.take(MAX_HEADER as u64).read_to_end(&mut header)?;
    Ok(header)
}

/// Writes a new age identity to `path` (mode 0600, never over an existing file) in the form
/// age-keygen writes, and returns its recipient.
pub fn generate_identity(path: &Path) -> Result<String> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let text = format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        identity.to_string().expose_secret()
    );
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write().map_err(|source| SealError::WriteIdentity { path: path.to_path_buf(), source })?;
    Ok(recipient)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSH_PUBLIC: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN test";

    #[test]
    fn a_sealed_stream_opens_with_its_identity_and_names_its_recipients_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.txt");
        let recipient = generate_identity(&key).unwrap();
        assert!(generate_identity(&key).is_err(), "never over an existing key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

        let recipients = Recipients::parse(&[recipient.clone(), SSH_PUBLIC.into(), recipient.clone()]).unwrap();
        assert_eq!(recipients.names().len(), 2, "each recipient once");
        let mut sealed = Vec::new();
        let mut writer = seal(&mut sealed, &recipients).unwrap();
        writer.write_all(b"the checkpoint's bytes").unwrap();
        writer.finish().unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(10).any(|w| w == b"checkpoint"), "nothing in the clear");
        let named = sealed_to(&sealed);
        assert_eq!(named, [recipient.clone(), SSH_PUBLIC.rsplit_once(' ').unwrap().0.to_string()]);

        let identities = Identities::read(std::slice::from_ref(&key)).unwrap();
        let mut plain = String::new();
        open(&sealed[..], &identities, "test").unwrap().read_to_string(&mut plain).unwrap();
        assert_eq!(plain, "the checkpoint's bytes");

        let none = open(&sealed[..], &Identities::default(), "archive.tar.zst.age").err().unwrap().to_string();
        assert!(none.contains("--identity") && none.contains(&recipient), "{none}");
        let other = dir.path().join("other.txt");
        generate_identity(&other).unwrap();
        let wrong = Identities::read(&[other]).unwrap();
        let refused = open(&sealed[..], &wrong, "archive").err().unwrap().to_string();
        assert!(refused.contains("none of the identities given") && refused.contains(&recipient), "{refused}");
    }

    #[test]
    fn bad_recipients_and_identities_are_refused_by_name() {
        let bad = Recipients::parse(&["age1nope"]).err().unwrap().to_string();
        assert!(bad.contains("\"age1nope\""), "{bad}");
        let dsa = Recipients::parse(&["ecdsa-sha2-nistp256 AAAA"]).err().unwrap().to_string();
        assert!(dsa.contains("neither an age recipient"), "{dsa}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "not a key\n").unwrap();
        let refused = Identities::read(&[junk]).err().unwrap().to_string();
        assert!(refused.contains("junk") && refused.contains("AGE-SECRET-KEY-1"), "{refused}");
    }
}
