//! Signed archives: a detached SSH signature (OpenSSH's `PROTOCOL.sshsig`, made and checked by
//! `ssh-keygen -Y`), beside the archive as `ARCHIVE.sig`, so that anyone with the signer's public
//! key checks it with `ssh-keygen -Y verify` too. ckpt checks it against the host config's
//! trusted keys before it reads a single member.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The signatures' namespace: a signature made for anything else never passes for an archive's.
pub const NAMESPACE: &str = "ckpt-archive";
/// The principal the trusted keys are listed under in the `allowed_signers` ckpt writes.
const PRINCIPAL: &str = "ckpt";

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("signing {archive:?} with {key:?} failed: ssh-keygen: {detail}")]
    Sign { archive: PathBuf, key: PathBuf, detail: String },
    #[error(
        "archive {archive:?} has no signature ({signature:?} is missing), and the host config requires one ([signatures] require = true); nothing was restored"
    )]
    Unsigned { archive: PathBuf, signature: PathBuf },
    #[error(
        "the signature of archive {archive:?} does not verify against the host config's trusted keys (it was changed, or signed by a key not trusted here); nothing was restored: ssh-keygen: {detail}"
    )]
    Rejected { archive: PathBuf, detail: String },
    #[error(
        "archive {archive:?} is signed, but the host config trusts no key to check it with; add the signer's public key to [signatures] trusted"
    )]
    NoTrustedKeys { archive: PathBuf },
    #[error("trusted key {key:?} in the host config is not an SSH public key (ssh-ed25519 …, ssh-rsa …, ecdsa-sha2-…)")]
    BadTrustedKey { key: String },
    #[error("{action} {path:?}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot make a signing key at {path:?}: {detail}")]
    Generate { path: PathBuf, detail: String },
}

pub type Result<T, E = SignatureError> = std::result::Result<T, E>;

/// Where an archive's signature lives.
pub fn signature_path(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_os_string();
    name.push(".sig");
    PathBuf::from(name)
}

fn ssh_keygen() -> Command {
    let mut command = Command::new("ssh-keygen");
    command.stdin(Stdio::null());
    command
}

fn stderr_of(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if text.is_empty() { format!("exit status {}", out.status) } else { text }
}

/// Signs `file` with the SSH private key `key`: writes `FILE.sig` and returns its path.
pub fn sign(file: &Path, key: &Path) -> Result<PathBuf> {
    let failed = |detail: String| SignatureError::Sign { archive: file.to_path_buf(), key: key.to_path_buf(), detail };
    let out = ssh_keygen()
        .args(["-q", "-Y", "sign", "-n", NAMESPACE, "-f"])
        .arg(key)
        .arg(file)
        .output()
        .map_err(|e| failed(format!("{e}; run scripts/setup, which installs openssh-client")))?;
    if !out.status.success() {
        return Err(failed(stderr_of(&out)));
    }
    Ok(signature_path(file))
}

/// The public key that made the signature beside `archive`, as an `allowed_signers` or
/// `[signatures] trusted` line names it (`ssh-ed25519 AAAA…`); `None` when it has none or it is
/// not an SSH signature. It says who claims to have signed, not that the claim holds: only
/// [`verify`] checks that.
pub fn signer(archive: &Path) -> Option<String> {
    use base64::Engine;
    let armored = std::fs::read_to_string(signature_path(archive)).ok()?;
    let body: String = armored.lines().filter(|line| !line.starts_with("-----")).collect();
    let blob = base64::engine::general_purpose::STANDARD.decode(body.trim()).ok()?;
    // PROTOCOL.sshsig: "SSHSIG", a u32 version, then the public key as an SSH string.
    let rest = blob.strip_prefix(b"SSHSIG")?.get(4..)?;
    let (public_key, _) = ssh_string(rest)?;
    let (key_type, _) = ssh_string(public_key)?;
    let key_type = std::str::from_utf8(key_type).ok()?;
    Some(format!("{key_type} {}", base64::engine::general_purpose::STANDARD.encode(public_key)))
}

/// An SSH wire-format string (a u32 length, then the bytes) and what follows it.
fn ssh_string(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let length = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let rest = &bytes[4..];
    (rest.len() >= length).then(|| rest.split_at(length))
}

/// Makes a new Ed25519 signing key at `path` (mode 0600, never over an existing file) with
/// `ssh-keygen`, and returns its public key line, for `[signatures] trusted` elsewhere.
pub fn generate_signing_key(path: &Path) -> Result<String> {
    let failed = |detail: String| SignatureError::Generate { path: path.to_path_buf(), detail };
    let mut public = path.as_os_str().to_os_string();
    public.push(".pub");
    let public = PathBuf::from(public);
    if path.exists() || public.exists() {
        return Err(failed("it or its .pub exists; ckpt never writes over a key".into()));
    }
    let out = ssh_keygen()
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ckpt signing key", "-f"])
        .arg(path)
        .output()
        .map_err(|e| failed(format!("{e}; run scripts/setup, which installs openssh-client")))?;
    if !out.status.success() {
        return Err(failed(stderr_of(&out)));
    }
    std::fs::read_to_string(&public).map(|line| line.trim().to_string()).map_err(|e| failed(e.to_string()))
}

/// Checks `archive` against its `ARCHIVE.sig` and the `trusted` public keys. Returns whether it
/// was signed; an unsigned archive is an error when `required`.
pub fn verify(archive: &Path, trusted: &[String], required: bool, scratch: &Path) -> Result<bool> {
    let signature = signature_path(archive);
    if !signature.exists() {
        if required {
            return Err(SignatureError::Unsigned { archive: archive.to_path_buf(), signature });
        }
        return Ok(false);
    }
    if trusted.is_empty() {
        return Err(SignatureError::NoTrustedKeys { archive: archive.to_path_buf() });
    }
    let mut allowed = String::new();
    for key in trusted {
        let key = key.trim();
        let words: Vec<&str> = key.split_whitespace().collect();
        let known = ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"];
        if words.len() < 2 || !known.contains(&words[0]) || key.contains('\n') {
            return Err(SignatureError::BadTrustedKey { key: key.to_string() });
        }
        allowed.push_str(&format!("{PRINCIPAL} namespaces=\"{NAMESPACE}\" {} {}\n", words[0], words[1]));
    }
    let allowed_path = scratch.join("allowed_signers");
    std::fs::write(&allowed_path, allowed).map_err(|source| SignatureError::Io {
        action: "write",
        path: allowed_path.clone(),
        source,
    })?;
    let input = std::fs::File::open(archive).map_err(|source| SignatureError::Io {
        action: "open",
        path: archive.to_path_buf(),
        source,
    })?;
    let out = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", NAMESPACE, "-I", PRINCIPAL, "-f"])
        .arg(&allowed_path)
        .arg("-s")
        .arg(&signature)
        .stdin(input)
        .output()
        .map_err(|source| SignatureError::Io {
            action: "run ssh-keygen to verify",
            path: archive.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        let detail = format!("{} {}", String::from_utf8_lossy(&out.stdout).trim(), stderr_of(&out));
        return Err(SignatureError::Rejected { archive: archive.to_path_buf(), detail: detail.trim().to_string() });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
        let key = dir.join(name);
        let out = ssh_keygen().args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        (key, public.trim().to_string())
    }

    #[test]
    fn a_signed_archive_verifies_only_unchanged_and_by_a_trusted_key() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = keygen(dir.path(), "signer");
        let (_, stranger) = keygen(dir.path(), "stranger");
        let archive = dir.path().join("a.tar");
        std::fs::write(&archive, b"an archive's bytes").unwrap();
        assert!(!verify(&archive, std::slice::from_ref(&public), false, dir.path()).unwrap(), "unsigned, not required");
        let unsigned = verify(&archive, std::slice::from_ref(&public), true, dir.path()).unwrap_err().to_string();
        assert!(unsigned.contains("has no signature"), "{unsigned}");

        assert_eq!(sign(&archive, &key).unwrap(), dir.path().join("a.tar.sig"));
        assert!(verify(&archive, &[stranger.clone(), public.clone()], true, dir.path()).unwrap());
        let untrusted = verify(&archive, &[stranger], true, dir.path()).unwrap_err().to_string();
        assert!(untrusted.contains("does not verify"), "{untrusted}");
        let none = verify(&archive, &[], false, dir.path()).unwrap_err().to_string();
        assert!(none.contains("trusts no key"), "{none}");
        std::fs::write(&archive, b"an archive's byteS").unwrap();
        let changed = verify(&archive, &[public], true, dir.path()).unwrap_err().to_string();
        assert!(changed.contains("does not verify"), "{changed}");
        let bad = verify(&archive, &["nonsense".into()], true, dir.path()).unwrap_err().to_string();
        assert!(bad.contains("not an SSH public key"), "{bad}");
    }
}
