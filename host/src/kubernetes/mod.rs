//! The Kubernetes API server, through kube-rs: ckpt's custom resources (`crd`) and the running
//! pods of one node that a schedule selects. The node agent asks it on each pass; kube-rs's
//! client is async, so each `Cluster` drives its own single-threaded runtime.

pub mod crd;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};

pub use crd::{CheckpointRetention, CheckpointSchedule};

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error(
        "cannot reach the Kubernetes API server: {0}; run the agent in a pod with its service account, or set KUBECONFIG"
    )]
    NoClient(String),
    #[error("the Kubernetes API server did not {action}: {detail}")]
    Api { action: String, detail: String },
    #[error("{what} {name:?} {detail}")]
    Invalid { what: &'static str, name: String, detail: String },
}

type Result<T> = std::result::Result<T, KubernetesError>;

/// A pod this node runs, and the containers a schedule may checkpoint in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningPod {
    pub namespace: String,
    pub name: String,
    pub containers: Vec<String>,
}

/// Something a kubelet's checkpoint was taken of, at the operator's three levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object<'a> {
    Namespace(&'a str),
    Pod { namespace: &'a str, pod: &'a str },
    Container { namespace: &'a str, pod: &'a str, container: &'a str },
}

pub struct Cluster {
    client: kube::Client,
    runtime: tokio::runtime::Runtime,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KubernetesError::NoClient(format!("cannot start a runtime: {e}")))
}

impl Cluster {
    /// The API server this pod's service account reaches (or `KUBECONFIG`'s).
    pub fn connect() -> Result<Cluster> {
        let runtime = runtime()?;
        let client =
            runtime.block_on(kube::Client::try_default()).map_err(|e| KubernetesError::NoClient(e.to_string()))?;
        Ok(Cluster { client, runtime })
    }

    /// A cluster behind any client: kube-rs's mocked service in tests. `make` runs inside the
    /// runtime, where a client must be made.
    #[cfg(test)]
    pub fn with_client(make: impl FnOnce() -> kube::Client) -> Result<Cluster> {
        let runtime = runtime()?;
        let client = {
            let _inside = runtime.enter();
            make()
        };
        Ok(Cluster { client, runtime })
    }

    /// The runtime, for a test's mocked API server to run on beside the client.
    #[cfg(test)]
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// The `CheckpointRetention` named `name`.
    pub fn retention(&self, name: &str) -> Result<CheckpointRetention> {
        let api: Api<CheckpointRetention> = Api::all(self.client.clone());
        self.runtime.block_on(api.get(name)).map_err(|e| api_error(format!("get CheckpointRetention {name:?}"), e))
    }

    /// Every `CheckpointSchedule`.
    pub fn schedules(&self) -> Result<Vec<CheckpointSchedule>> {
        let api: Api<CheckpointSchedule> = Api::all(self.client.clone());
        let listed = self.runtime.block_on(api.list(&ListParams::default()));
        Ok(listed.map_err(|e| api_error("list CheckpointSchedules".into(), e))?.items)
    }

    /// The running pods on `node` in `namespace` that `selector` picks.
    pub fn running_pods(&self, namespace: &str, selector: &LabelSelector, node: &str) -> Result<Vec<RunningPod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = ListParams::default()
            .labels(&label_selector(selector).map_err(|detail| KubernetesError::Invalid {
                what: "label selector of namespace",
                name: namespace.to_string(),
                detail,
            })?)
            .fields(&format!("spec.nodeName={node},status.phase=Running"));
        let listed = self.runtime.block_on(api.list(&params));
        let pods =
            listed.map_err(|e| api_error(format!("list the pods of namespace {namespace:?} on node {node:?}"), e))?;
        Ok(pods
            .items
            .into_iter()
            .filter_map(|pod| {
                let name = pod.metadata.name?;
                let containers = pod.spec?.containers.into_iter().map(|c| c.name).collect();
                Some(RunningPod { namespace: namespace.to_string(), name, containers })
            })
            .collect())
    }

    /// Whether the namespace exists, as the operator asks before it deletes an orphan's
    /// checkpoints.
    pub fn has_namespace(&self, namespace: &str) -> Result<bool> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let got = self.runtime.block_on(api.get(namespace));
        Ok(found(got, format!("namespace {namespace:?}"))?.is_some())
    }

    /// The containers in a pod's spec; `None` when the pod is gone.
    pub fn pod_containers(&self, namespace: &str, pod: &str) -> Result<Option<Vec<String>>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let got = self.runtime.block_on(api.get(pod));
        let found = found(got, format!("pod {namespace}/{pod}"))?;
        Ok(found
            .map(|pod| pod.spec.map(|spec| spec.containers.into_iter().map(|c| c.name).collect()).unwrap_or_default()))
    }
}

/// What a GET found: `None` for the API server's 404.
fn found<T>(result: std::result::Result<T, kube::Error>, what: String) -> Result<Option<T>> {
    match result {
        Ok(found) => Ok(Some(found)),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(None),
        Err(e) => Err(api_error(format!("get {what}"), e)),
    }
}

fn api_error(action: String, error: kube::Error) -> KubernetesError {
    KubernetesError::Api { action, detail: error.to_string() }
}

/// A `LabelSelector` in the API server's query syntax: `k=v`, `k in (a,b)`, `k notin (a)`, `k`,
/// `!k`.
pub fn label_selector(selector: &LabelSelector) -> std::result::Result<String, String> {
    let mut terms: Vec<String> =
        selector.match_labels.iter().flatten().map(|(key, value)| format!("{key}={value}")).collect();
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default().join(",");
        let key = &expression.key;
        terms.push(match expression.operator.as_str() {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            other => return Err(format!("has the operator {other:?}; use In, NotIn, Exists or DoesNotExist")),
        });
    }
    Ok(terms.join(","))
}

/// kube-rs's mocked client, answered by a test: each request is recorded as `METHOD PATH?QUERY`
/// (the query decoded) and answered with the status and JSON `answer` gives for it.
#[cfg(test)]
pub(crate) mod mocked {
    use std::sync::{Arc, Mutex};

    use http::{Request, Response};
    use kube::client::Body;

    use super::Cluster;

    pub type Seen = Arc<Mutex<Vec<String>>>;

    pub fn cluster(answer: impl Fn(&str) -> (u16, serde_json::Value) + Send + 'static) -> (Cluster, Seen) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let cluster = Cluster::with_client(|| kube::Client::new(service, "default")).unwrap();
        let seen = Seen::default();
        let record = seen.clone();
        cluster.runtime().spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let asked = format!("{} {}", request.method(), decoded(&request.uri().to_string()));
                let (status, body) = answer(&asked);
                record.lock().unwrap().push(asked);
                let body = Body::from(serde_json::to_vec(&body).unwrap());
                respond.send_response(Response::builder().status(status).body(body).unwrap());
            }
        });
        (cluster, seen)
    }

    /// A query as the API server reads it: `+` is a space, `%XX` a byte.
    fn decoded(uri: &str) -> String {
        let bytes = uri.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match (bytes[i], std::str::from_utf8(bytes.get(i + 1..i + 3).unwrap_or_default())) {
                (b'%', Ok(hex)) if u8::from_str_radix(hex, 16).is_ok() => {
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                }
                (byte, _) => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The API server's answer for an object that is not there.
    pub fn not_found(what: &str) -> (u16, serde_json::Value) {
        let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{what} not found"), "reason": "NotFound", "code": 404});
        (404, status)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    #[test]
    fn a_checkpoint_retention_becomes_the_kubelet_retainers_settings() {
        let (cluster, seen) = mocked::cluster(|asked| match asked {
            "GET /apis/ckpt.io/v1alpha1/checkpointretentions/default" => (
                200,
                serde_json::json!({"apiVersion": "ckpt.io/v1alpha1", "kind": "CheckpointRetention",
                    "metadata": {"name": "default"},
                    "spec": {"globalPolicy": {"retainOrphan": true, "maxCheckpointsPerPod": 5, "maxCheckpointSize": "1Gi"},
                             "podPolicies": [{"namespace": "shop", "pod": "db-0", "maxCheckpoints": 2}]}}),
            ),
            "GET /apis/ckpt.io/v1alpha1/checkpointretentions/strict" => (
                200,
                serde_json::json!({"apiVersion": "ckpt.io/v1alpha1", "kind": "CheckpointRetention",
                    "metadata": {"name": "strict"},
                    "spec": {"namespacePolicies": [{"namespace": "shop", "retainOrphan": false}]}}),
            ),
            _ => mocked::not_found("checkpointretentions.ckpt.io \"other\""),
        });
        let settings = cluster.retention("default").unwrap().spec.retainer_settings();
        assert_eq!(
            settings,
            serde_json::json!({"retainOrphan": true, "maxCheckpointsPerPod": 5, "maxCheckpointSize": "1Gi",
                "podPolicies": [{"namespace": "shop", "pod": "db-0", "maxCheckpoints": 2}]})
        );
        let strict = cluster.retention("strict").unwrap().spec.retainer_settings();
        assert_eq!(strict, serde_json::json!({"namespacePolicies": [{"namespace": "shop", "retainOrphan": false}]}));
        let missing = cluster.retention("other").unwrap_err().to_string();
        assert!(missing.contains("get CheckpointRetention \"other\"") && missing.contains("not found"), "{missing}");
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn whether_a_namespace_pod_or_container_is_gone_is_asked_of_the_api_server() {
        let (cluster, seen) = mocked::cluster(|asked| match asked {
            "GET /api/v1/namespaces/shop" => {
                (200, serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
            }
            "GET /api/v1/namespaces/shop/pods/web-0" => (
                200,
                serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "shop"},
                    "spec": {"containers": [{"name": "web"}]}}),
            ),
            "GET /api/v1/namespaces/shop/pods/db-0" => (
                403,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "pods \"db-0\" is forbidden", "reason": "Forbidden", "code": 403}),
            ),
            other => mocked::not_found(other),
        });
        assert!(cluster.has_namespace("shop").unwrap());
        assert!(!cluster.has_namespace("gone").unwrap());
        assert_eq!(cluster.pod_containers("shop", "web-0").unwrap(), Some(vec!["web".to_string()]));
        assert_eq!(cluster.pod_containers("shop", "web-1").unwrap(), None);
        // Not knowing is not "gone": the caller keeps everything.
        let forbidden = cluster.pod_containers("shop", "db-0").unwrap_err().to_string();
        assert!(forbidden.contains("get pod shop/db-0") && forbidden.contains("forbidden"), "{forbidden}");
        assert_eq!(seen.lock().unwrap().len(), 5);
    }

    #[test]
    fn label_selectors_read_as_the_api_servers_query() {
        let requirement = |key: &str, operator: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        };
        let selector = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                requirement("tier", "In", &["a", "b"]),
                requirement("zone", "NotIn", &["x"]),
                requirement("canary", "DoesNotExist", &[]),
                requirement("team", "Exists", &[]),
            ]),
        };
        assert_eq!(label_selector(&selector).unwrap(), "app=web,tier in (a,b),zone notin (x),!canary,team");
        assert_eq!(label_selector(&LabelSelector::default()).unwrap(), "", "an empty selector picks every pod");
        let odd = LabelSelector { match_expressions: Some(vec![requirement("a", "Near", &[])]), ..Default::default() };
        assert!(label_selector(&odd).unwrap_err().contains("\"Near\""));
    }

    /// The definitions in `deploy/kubernetes/crds.yaml` are the ones ckpt makes.
    #[test]
    fn the_deployed_custom_resource_definitions_are_ckpts() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/crds.yaml");
        let deployed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            deployed == crd::definitions(),
            "{} is not what ckpt makes; run: ckpt node-agent --print-crds > deploy/kubernetes/crds.yaml",
            path.display()
        );
    }
}
