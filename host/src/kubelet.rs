//! The kubelet's checkpoint API (KEP-2008: `POST /checkpoint/{namespace}/{pod}/{container}` on
//! its port, 10250), reached as the checkpoint-restore-operator reaches it: over TLS with a
//! client certificate the kubelet trusts. curl makes the request, behind a trait, as skopeo and
//! ssh make theirs.

use std::path::PathBuf;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error(
        "the kubelet needs a client certificate: set [engines] kubelet-client-cert and kubelet-client-key in the host config (a certificate the kubelet's --client-ca-file trusts, for a user RBAC lets create nodes/checkpoint)"
    )]
    NoClientCertificate,
    #[error("{0:?} is not a container of Kubernetes: give k8s:NAMESPACE/POD/CONTAINER, each a DNS name")]
    BadName(String),
    #[error("curl, which makes the kubelet's requests, cannot be run: {0}")]
    NoCurl(std::io::Error),
    #[error("the kubelet at {address} does not answer: {stderr}")]
    Unreachable { address: String, stderr: String },
    #[error(
        "the kubelet has no {what} (HTTP 404): {message}; is the pod running on this node, and the ContainerCheckpoint feature gate on?"
    )]
    NotFound { what: String, message: String },
    #[error(
        "the kubelet refused the client certificate (HTTP {status}): {message}; RBAC must grant nodes/checkpoint create"
    )]
    Forbidden { status: u16, message: String },
    #[error("the kubelet could not checkpoint {what} (HTTP {status}): {message}")]
    Failed { what: String, status: u16, message: String },
    #[error("the kubelet's answer about {what} is not KEP-2008's: {detail}")]
    Protocol { what: String, detail: String },
}

/// A pod's container, as the kubelet's API names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodContainer {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// How a pod's container is named to ckpt: `k8s:NAMESPACE/POD/CONTAINER`.
pub const PREFIX: &str = "k8s:";

impl PodContainer {
    pub fn parse(name: &str) -> Result<PodContainer, KubeletError> {
        let bad = || KubeletError::BadName(name.to_string());
        let rest = name.strip_prefix(PREFIX).ok_or_else(bad)?;
        match rest.split('/').collect::<Vec<_>>().as_slice() {
            [namespace, pod, container] => PodContainer::new(namespace, pod, container).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    /// Each name a DNS name, as Kubernetes makes them, so that it is safe in the kubelet's path
    /// and in an image name.
    pub fn new(namespace: &str, pod: &str, container: &str) -> Result<PodContainer, KubeletError> {
        let dns = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
        };
        if ![namespace, pod, container].iter().all(|s| dns(s)) {
            return Err(KubeletError::BadName(format!("{PREFIX}{namespace}/{pod}/{container}")));
        }
        Ok(PodContainer { namespace: namespace.into(), pod: pod.into(), container: container.into() })
    }

    /// The container's pod, named as its container is: `k8s:NAMESPACE/POD`.
    pub fn pod_name(&self) -> String {
        format!("{PREFIX}{}/{}", self.namespace, self.pod)
    }

    /// The container's namespace: `k8s:NAMESPACE`.
    pub fn namespace_name(&self) -> String {
        format!("{PREFIX}{}", self.namespace)
    }
}

impl std::fmt::Display for PodContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}/{}/{}", self.namespace, self.pod, self.container)
    }
}

/// The kubelet's API, behind a trait as runc and CRIU are.
pub trait KubeletApi {
    /// Has the kubelet checkpoint `target`; returns the archives it wrote (its `items`).
    fn checkpoint(&self, target: &PodContainer, timeout_secs: Option<u64>) -> Result<Vec<String>, KubeletError>;
}

/// The kubelet at an address, with the client certificate it trusts.
pub struct KubeletClient {
    pub address: String,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The CA of the kubelet's serving certificate; the system's when unset.
    pub ca: Option<PathBuf>,
}

impl KubeletClient {
    pub fn from_config(rules: &crate::config::EngineRules) -> Result<KubeletClient, KubeletError> {
        match (&rules.kubelet_client_cert, &rules.kubelet_client_key) {
            (Some(cert), Some(key)) => Ok(KubeletClient {
                address: rules.kubelet_address.trim_end_matches('/').to_string(),
                client_cert: cert.clone(),
                client_key: key.clone(),
                ca: rules.kubelet_ca.clone(),
            }),
            _ => Err(KubeletError::NoClientCertificate),
        }
    }
}

/// What the kubelet answered: its status and its body.
fn split_answer(output: &str) -> Option<(u16, &str)> {
    let (body, status) = output.rsplit_once('\n')?;
    Some((status.trim().parse().ok()?, body))
}

/// The message of a kubelet's error: its body, trimmed and bounded.
fn message(body: &str) -> String {
    body.trim().chars().take(2000).collect()
}

impl KubeletApi for KubeletClient {
    fn checkpoint(&self, target: &PodContainer, timeout_secs: Option<u64>) -> Result<Vec<String>, KubeletError> {
        let mut url = format!("{}/checkpoint/{}/{}/{}", self.address, target.namespace, target.pod, target.container);
        if let Some(timeout) = timeout_secs {
            url.push_str(&format!("?timeout={timeout}"));
        }
        let mut curl = Command::new("curl");
        curl.args(["--silent", "--show-error", "--request", "POST", "--write-out", "\n%{http_code}"])
            .arg("--cert")
            .arg(&self.client_cert)
            .arg("--key")
            .arg(&self.client_key);
        if let Some(ca) = &self.ca {
            curl.arg("--cacert").arg(ca);
        }
        let output = curl.arg("--").arg(&url).output().map_err(KubeletError::NoCurl)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(KubeletError::Unreachable {
                address: self.address.clone(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        let what = target.to_string();
        let (status, body) = split_answer(&stdout)
            .ok_or_else(|| KubeletError::Protocol { what: what.clone(), detail: "no HTTP status".into() })?;
        match status {
            200 => {
                let doc: serde_json::Value = serde_json::from_str(body)
                    .map_err(|e| KubeletError::Protocol { what: what.clone(), detail: e.to_string() })?;
                let items = doc["items"].as_array().ok_or_else(|| KubeletError::Protocol {
                    what: what.clone(),
                    detail: format!("no items in {}", message(body)),
                })?;
                Ok(items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect())
            }
            404 => Err(KubeletError::NotFound { what, message: message(body) }),
            401 | 403 => Err(KubeletError::Forbidden { status, message: message(body) }),
            status => Err(KubeletError::Failed { what, status, message: message(body) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_containers_are_named_as_the_kubelets_path_takes_them() {
        let target = PodContainer::parse("k8s:default/web-7d4f/web").unwrap();
        assert_eq!(
            (target.namespace.as_str(), target.pod.as_str(), target.container.as_str()),
            ("default", "web-7d4f", "web")
        );
        assert_eq!(target.to_string(), "k8s:default/web-7d4f/web");
        for bad in [
            "default/web/web",
            "k8s:default/web",
            "k8s:default/web/a/b",
            "k8s:Default/web/web",
            "k8s:a/../b",
            "k8s:a/b?x=1/c",
        ] {
            assert!(PodContainer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_answer_is_its_body_then_its_status() {
        assert_eq!(split_answer("{\"items\":[]}\n200"), Some((200, "{\"items\":[]}")));
        assert_eq!(split_answer("not found\n404"), Some((404, "not found")));
        assert_eq!(split_answer("garbage"), None);
    }
}
