//! `ckpt node-agent`: ckpt's catalog and audit log over a Kubernetes node's checkpoints. The
//! kubelet writes each checkpoint (`POST /checkpoint/{namespace}/{pod}/{container}`, KEP-2008)
//! as an archive in its checkpoint directory, in its CRI runtime's layout (CRI-O's or
//! containerd's). The agent takes each new one as untrusted input (unpacked by the strict
//! extractor, its names read from `spec.dump`), makes it a checkpoint image carrying the
//! annotations CRI-O and containerd look for, pushes it when asked, and records it in the
//! catalog and the audit log. An archive it cannot read is moved aside (`refused/` in the
//! directory), never deleted, and recorded. What it took is remembered in
//! `<root>/node-agent.json`, so that a restarted agent carries on where it stopped. With a
//! cluster (`cluster`), it also runs ckpt's `CheckpointSchedule`s for its node's pods and takes
//! its retention from a `CheckpointRetention`.

mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Context;
use super::audit::AuditEvent;
use super::catalog::Scope;
use super::images::RegistryFlags;
use crate::archive::deferred::ImagesInFlight;
use crate::archive::staged::StagedCheckpoint;
use crate::error::{Error, Result};
use crate::kubelet::PodContainer;
use crate::kubernetes::{Cluster, Object};
use crate::metadata::{CRIO_ANNOTATION_PREFIX, CRIU_ANNOTATION_PREFIX};
use crate::policy::bindings::{self as wit, ClusterFacts, ClusterLevel};
use crate::policy::{self, GateVerdict, Policies};
use crate::store::catalog::{Entry, EntryKind, EntryPolicy};

/// The kubelet's checkpoint directory (`<--root-dir>/checkpoints`).
pub const DEFAULT_CHECKPOINT_DIR: &str = "/var/lib/kubelet/checkpoints";

#[derive(Debug, Clone)]
pub struct NodeAgentRequest {
    pub checkpoint_dir: PathBuf,
    /// The image each archive becomes: `{namespace}`, `{pod}`, `{container}` and `{time}` expand.
    pub image: String,
    /// Push each image to the registry its name names.
    pub push: bool,
    pub registry: RegistryFlags,
    /// One pass over the directory, then exit.
    pub once: bool,
    pub interval: Duration,
    /// Gates (component, settings) that judge each image before it is kept or pushed.
    pub gates: Vec<(String, String)>,
    /// Whom each image is sealed to (`--encrypt-to`); the host config's `[exports] recipients`
    /// are added under `encrypt = "always"`.
    pub encrypt_to: Vec<String>,
    /// The retainer (component, settings) asked about each container's checkpoints after a
    /// pass that took some; what it names goes, the kubelet's archive and ckpt's image.
    pub retainer: Option<(String, String)>,
    /// The cluster's `CheckpointRetention` whose spec, read each pass, is the retainer's settings.
    pub cluster_retention: Option<String>,
    /// This node's name: each pass runs the cluster's `CheckpointSchedule`s for its pods.
    pub schedules_on_node: Option<String>,
}

/// What became of one archive, printed as a JSON line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Taken {
    pub archive: String,
    /// `imaged`, `denied` (by a gate; the archive stays), `refused` (unreadable; moved aside),
    /// `failed` (storing or pushing, tried again on the next pass; or a schedule's request),
    /// `deleted` (by retention, with its image) or `requested` (of the kubelet by a cluster's
    /// schedule; `archive` is what it wrote).
    pub result: String,
    /// `cri-o` or `containerd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// `k8s:NAMESPACE/POD/CONTAINER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// How long an archive must stay unchanged before the agent takes it: the kubelet writes it in
/// place.
const SETTLED: Duration = Duration::from_secs(2);

/// Runs the agent: a pass over the directory every `interval` (or one), each archive's outcome
/// printed by `report` as it is taken.
pub fn run(ctx: &Context, req: &NodeAgentRequest, report: &mut dyn FnMut(&Taken)) -> Result<()> {
    validate(req)?;
    let sealed_to = sealed_to(ctx, req)?;
    let mut gates = load_gates(ctx, req)?;
    let mut retainer = req.retainer.clone().map(|(source, settings)| Retainer { source, settings, loaded: None });
    // A retainer that cannot load stops the agent before it takes anything, as a bad gate does;
    // one whose settings come from the cluster is loaded when they do.
    if let Some(retainer) = &mut retainer
        && req.cluster_retention.is_none()
    {
        retainer.for_pass(ctx, None, None)?;
    }
    if req.schedules_on_node.is_some() {
        // Schedules reach the kubelet as `ckpt schedule` does: with the host config's client
        // certificate, which must be named before the first pass.
        crate::kubelet::KubeletClient::from_config(&ctx.config.engines)?;
    }
    let mut cluster = None;
    let mut slots: cluster::Slots =
        crate::util::read_json_if_exists(&schedules_path(ctx), "node agent schedules")?.unwrap_or_default();
    loop {
        if (req.cluster_retention.is_some() || req.schedules_on_node.is_some()) && cluster.is_none() {
            match Cluster::connect() {
                Ok(connected) => cluster = Some(connected),
                Err(e) => tracing::warn!("{e}; this pass goes on without the cluster's schedules and retention"),
            }
        }
        if let (Some(node), Some(cluster)) = (&req.schedules_on_node, &cluster) {
            for requested in run_schedules(ctx, cluster, node, &mut slots)? {
                report(&requested);
            }
        }
        let taken = pass(ctx, req, gates.as_mut(), &sealed_to)?;
        for one in &taken {
            report(one);
        }
        if let Some(retainer) = &mut retainer
            && let Some(retention) = retainer.for_pass(ctx, req.cluster_retention.as_deref(), cluster.as_ref())?
        {
            for deleted in retain_levels(ctx, retention, &taken, cluster.as_ref())? {
                report(&deleted);
            }
        }
        if req.once {
            return Ok(());
        }
        let mut slept = Duration::ZERO;
        while slept < req.interval {
            crate::interrupt::check()?;
            std::thread::sleep(Duration::from_millis(200));
            slept += Duration::from_millis(200);
        }
    }
}

/// The retainer, loaded with its settings, and loaded again when the cluster's
/// `CheckpointRetention` changes them.
struct Retainer {
    source: String,
    settings: String,
    loaded: Option<policy::Retention>,
}

impl Retainer {
    /// The retention for this pass: none when the cluster's could not be read, so that nothing is
    /// deleted on settings the agent does not have.
    fn for_pass(
        &mut self,
        ctx: &Context,
        from_cluster: Option<&str>,
        cluster: Option<&Cluster>,
    ) -> Result<Option<&policy::Retention>> {
        if let Some(name) = from_cluster {
            let Some(cluster) = cluster else { return Ok(None) };
            let read = cluster.retention(name).map_err(|e| e.to_string()).map(|r| r.spec.retainer_settings());
            match read.map(|settings| settings.to_string()) {
                Ok(settings) if settings != self.settings => {
                    self.settings = settings;
                    self.loaded = None;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("CheckpointRetention {name:?}: {e}; nothing is deleted this pass");
                    return Ok(None);
                }
            }
        }
        if self.loaded.is_none() {
            let component = super::policy::component(ctx, &self.source, self.settings.clone())?;
            match policy::Retention::load(&ctx.policy_cache(), component) {
                Ok(loaded) => self.loaded = Some(loaded),
                // The cluster's settings may be wrong at any time; the agent goes on imaging.
                Err(e) if from_cluster.is_some() => {
                    tracing::warn!("CheckpointRetention {from_cluster:?}: {e}; nothing is deleted this pass");
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.loaded.as_ref())
    }
}

fn schedules_path(ctx: &Context) -> PathBuf {
    ctx.roots.root.join("node-agent-schedules.json")
}

/// Runs the cluster's schedules for this node's pods (`cluster::run_schedules`), each request
/// audited as a schedule's are and reported as a line of its own (`requested` or `failed`).
fn run_schedules(ctx: &Context, cluster: &Cluster, node: &str, slots: &mut cluster::Slots) -> Result<Vec<Taken>> {
    let kubelet = crate::kubelet::KubeletClient::from_config(&ctx.config.engines)?;
    let requested = match cluster::run_schedules(cluster, &kubelet, node, slots, crate::util::now()) {
        Ok(requested) => requested,
        Err(e) => {
            tracing::warn!("{e}; no schedule runs this pass");
            return Ok(Vec::new());
        }
    };
    crate::util::write_json(&schedules_path(ctx), slots)?;
    Ok(requested
        .into_iter()
        .map(|one| {
            ctx.audit(AuditEvent::kubelet_requested(&one.container, &one.schedule, &one.result));
            Taken {
                archive: one.result.as_ref().map(|a| a.join(" ")).unwrap_or_default(),
                result: if one.result.is_ok() { "requested".into() } else { "failed".into() },
                layout: None,
                container: Some(one.container),
                image: None,
                detail: match one.result {
                    Ok(_) => format!("schedule {}", one.schedule),
                    Err(e) => format!("schedule {}: {e}", one.schedule),
                },
            }
        })
        .collect())
}

fn validate(req: &NodeAgentRequest) -> Result<()> {
    if !req.checkpoint_dir.is_dir() {
        return Err(Error::invalid(format!(
            "the kubelet's checkpoint directory {:?} does not exist; name it with --checkpoint-dir",
            req.checkpoint_dir.display().to_string()
        )));
    }
    let sample = expand(&req.image, ("default", "pod", "container"), chrono::Utc::now());
    crate::image::validate_reference(&crate::image::normalize_reference(&sample)).map_err(|e| {
        Error::invalid(format!(
            "--image {:?} does not make an image name ({e}); use {{namespace}}, {{pod}}, {{container}} and {{time}} in a name",
            req.image
        ))
    })?;
    if req.push {
        crate::registry::check_reference(&sample)?;
    }
    Ok(())
}

/// The gates, loaded once; `None` without any. A planner comes with them, unused: the kubelet
/// made the plan.
fn load_gates(ctx: &Context, req: &NodeAgentRequest) -> Result<Option<Policies>> {
    if req.gates.is_empty() {
        return Ok(None);
    }
    let (planner, gates) = super::policy::planner_and_gates(ctx, (None, None), &req.gates)?;
    Ok(Some(Policies::load_components(&ctx.policy_cache(), planner, gates)?))
}

/// The archives the agent has taken, by file name.
type Seen = BTreeMap<String, Taken>;

fn state_path(ctx: &Context) -> PathBuf {
    ctx.roots.root.join("node-agent.json")
}

/// One pass: every settled archive not taken before.
fn pass(
    ctx: &Context,
    req: &NodeAgentRequest,
    mut gates: Option<&mut Policies>,
    sealed_to: &[String],
) -> Result<Vec<Taken>> {
    let state = state_path(ctx);
    let mut seen: Seen = crate::util::read_json_if_exists(&state, "node agent state")?.unwrap_or_default();
    // What is gone from the directory (deleted, or moved aside) needs no remembering: the
    // kubelet never writes a name twice, its names carry the time.
    seen.retain(|name, _| req.checkpoint_dir.join(name).exists());
    let mut names = Vec::new();
    let entries = std::fs::read_dir(&req.checkpoint_dir).map_err(Error::io("read", &req.checkpoint_dir))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = match std::fs::symlink_metadata(entry.path()) {
            Ok(meta) if meta.is_file() => meta,
            _ => continue,
        };
        // The operator's glob: `checkpoint-<pod>_<namespace>-<container>-<time>.tar`.
        if !(name.starts_with("checkpoint-") && name.ends_with(".tar") && name.contains('_'))
            || seen.contains_key(&name)
        {
            continue;
        }
        let settled = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age >= SETTLED);
        if settled || req.once {
            names.push(name);
        }
    }
    names.sort();
    let mut taken = Vec::new();
    for name in names {
        crate::interrupt::check()?;
        let outcome = take(ctx, req, &name, gates.as_deref_mut(), sealed_to);
        if outcome.result != "failed" {
            seen.insert(name, outcome.clone());
        }
        // After each: a restart takes up the next one.
        crate::util::write_json(&state, &seen)?;
        taken.push(outcome);
    }
    Ok(taken)
}

/// Which CRI runtime wrote an archive, and the names its `spec.dump` gives the container.
#[derive(Debug, Clone, PartialEq)]
struct KubeletArchive {
    layout: &'static str,
    target: PodContainer,
    /// The CRI's container ID.
    id: String,
    image: String,
    /// The pod's and the container's labels, as CRI-O records them.
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    has_rootfs: bool,
    has_volumes: bool,
}

impl KubeletArchive {
    fn shown(&self) -> String {
        self.target.to_string()
    }

    /// From `spec.dump`'s annotations (CRI-O's `io.kubernetes.*`, containerd's
    /// `io.kubernetes.cri.*`) and `config.dump`, as checkpointctl reads them.
    fn read(staged: &StagedCheckpoint) -> Result<KubeletArchive> {
        let refused = |reason: &str| Error::from(staged.refuse("spec.dump", reason));
        let spec: Value = staged.read_member_json("spec.dump")?.ok_or_else(|| refused("it is missing"))?;
        let config: Value = staged.read_member_json("config.dump")?.unwrap_or_default();
        let annotations = &spec["annotations"];
        let text = |key: &str| annotations[key].as_str().filter(|v| !v.is_empty()).map(str::to_string);
        let (layout, keys) =
            if annotations["io.container.manager"] == "cri-o" || staged.open_member("bind.mounts")?.is_some() {
                ("cri-o", ["io.kubernetes.pod.namespace", "io.kubernetes.pod.name", "io.kubernetes.container.name"])
            } else if text("io.kubernetes.cri.container-name").is_some() {
                (
                    "containerd",
                    [
                        "io.kubernetes.cri.sandbox-namespace",
                        "io.kubernetes.cri.sandbox-name",
                        "io.kubernetes.cri.container-name",
                    ],
                )
            } else {
                return Err(refused("names no CRI runtime: neither CRI-O's nor containerd's annotations are there"));
            };
        let [namespace, pod, container] = keys.map(|key| text(key).ok_or(key));
        let missing = |key: &str| refused(&format!("has no {key} annotation"));
        let labels: BTreeMap<String, String> =
            text("io.kubernetes.cri-o.Labels").and_then(|l| serde_json::from_str(&l).ok()).unwrap_or_default();
        let annotations = annotations.as_object().into_iter().flatten();
        let annotations = annotations.filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())));
        Ok(KubeletArchive {
            labels: labels.into_iter().collect(),
            annotations: annotations.collect(),
            has_rootfs: staged.open_member("rootfs-diff.tar")?.is_some(),
            has_volumes: staged.has_dir("volumes")?,
            layout,
            target: PodContainer::new(
                &namespace.map_err(missing)?,
                &pod.map_err(missing)?,
                &container.map_err(missing)?,
            )
            .map_err(|e| refused(&e.to_string()))?,
            id: config["id"].as_str().unwrap_or_default().to_string(),
            image: config["rootfsImageName"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// What CRI-O (`io.kubernetes.cri-o.annotations.checkpoint.*`) and containerd
    /// (`org.criu.checkpoint.*`) look for on a checkpoint image.
    fn annotations(&self) -> BTreeMap<String, String> {
        let cri_o = |k: &str| format!("{CRIO_ANNOTATION_PREFIX}{k}");
        let criu = |k: &str| format!("{CRIU_ANNOTATION_PREFIX}{k}");
        BTreeMap::from([
            (cri_o("name"), self.target.container.clone()),
            (cri_o("rootfsImageName"), self.image.clone()),
            (criu("container.name"), self.target.container.clone()),
            (criu("pod.name"), self.target.pod.clone()),
            (criu("pod.namespace"), self.target.namespace.clone()),
            (criu("engine.name"), self.layout.to_string()),
            (criu("rootfsImageName"), self.image.clone()),
        ])
    }
}

fn expand(
    template: &str,
    (namespace, pod, container): (&str, &str, &str),
    at: chrono::DateTime<chrono::Utc>,
) -> String {
    template
        .replace("{namespace}", namespace)
        .replace("{pod}", pod)
        .replace("{container}", container)
        .replace("{time}", &at.format("%Y%m%dT%H%M%S%6fZ").to_string())
}

/// Takes one archive: an image, or refused and moved aside.
fn take(
    ctx: &Context,
    req: &NodeAgentRequest,
    name: &str,
    gates: Option<&mut Policies>,
    sealed_to: &[String],
) -> Taken {
    let path = req.checkpoint_dir.join(name);
    let mut taken = Taken {
        archive: path.display().to_string(),
        result: "imaged".into(),
        layout: None,
        container: None,
        image: None,
        detail: String::new(),
    };
    let mut recorded = gates;
    let made = image_of(ctx, req, &path, recorded.as_deref_mut(), sealed_to);
    if let Some(policies) = recorded {
        let records = std::mem::take(&mut policies.records);
        if let Err(e) = policy::record::append(&ctx.roots.policy_log(), &records) {
            tracing::error!("cannot write the decision log {}: {e}", ctx.roots.policy_log().display());
        }
    }
    match made {
        Ok(Made { archive, image, entry, narrowed }) => {
            ctx.audit(AuditEvent::KubeletCheckpoint {
                archive: taken.archive.clone(),
                layout: archive.layout,
                container: archive.shown(),
                container_id: archive.id.clone(),
                image: image.clone(),
                entry,
            });
            taken.layout = Some(archive.layout.to_string());
            taken.container = Some(archive.shown());
            taken.image = Some(image);
            taken.detail = narrowed.unwrap_or_default();
        }
        Err(NoImage::Denied(denied)) => {
            let (archive, error) = *denied;
            // The kubelet's archive stays where it is, for the kubelet's and the operator's
            // retention: only ckpt's image of it was refused.
            taken.result = "denied".into();
            taken.detail = error.to_string();
            taken.layout = Some(archive.layout.to_string());
            taken.container = Some(archive.shown());
            ctx.audit(AuditEvent::Denial {
                about: super::audit::CheckpointSubject {
                    container: archive.shown(),
                    container_id: archive.id.clone(),
                    trigger: "kubelet".into(),
                    schedule: None,
                    policy: super::audit::PolicyIdentity { source: "kubelet".into(), digest: String::new() },
                },
                error: error.to_string(),
            });
        }
        Err(NoImage::Failed(failed)) => {
            let (archive, error) = *failed;
            taken.result = "failed".into();
            taken.detail = format!("{error}; the archive stays, and the next pass tries it again");
            taken.layout = Some(archive.layout.to_string());
            taken.container = Some(archive.shown());
        }
        Err(NoImage::Unreadable(e)) => {
            let kept_at = set_aside(&req.checkpoint_dir, name);
            taken.result = "refused".into();
            taken.detail = match &kept_at {
                Ok(at) => format!("{e}; kept at {}", at.display()),
                Err(move_failed) => format!("{e}; it stays where it is ({move_failed})"),
            };
            ctx.audit(AuditEvent::KubeletCheckpointRefused {
                archive: taken.archive.clone(),
                error: e.to_string(),
                kept_at: kept_at.ok().map(|at| at.display().to_string()),
            });
        }
    }
    taken
}

/// Asks the retainer about the checkpoints of each container an archive was taken of, then of
/// their pods, then of their namespaces, as the operator applies its limits level by level. A
/// `cluster-retainer` with a cluster to ask is also asked about every other container the
/// catalog holds checkpoints of, each told whether the API server still has it, so that the
/// checkpoints of what is gone can go (the operator's orphans).
fn retain_levels(
    ctx: &Context,
    retention: &policy::Retention,
    taken: &[Taken],
    cluster: Option<&Cluster>,
) -> Result<Vec<Taken>> {
    let cluster = cluster.filter(|_| retention.weighs_the_cluster());
    // The kubelet's archive and container of each entry the agent made, whichever level
    // deletes it.
    let mut made = BTreeMap::new();
    for entry in ctx.catalog().list()? {
        let Some(archive) = entry.plan["archive"].as_str().filter(|_| entry.trigger == "kubelet") else { continue };
        let archive = archive.to_string();
        pin_if_kept(ctx, entry.clone(), &archive)?;
        made.insert(entry.id, (archive, entry.container_id));
    }
    let mut asked: Vec<&str> = taken.iter().filter_map(|t| t.container.as_deref()).collect();
    if cluster.is_some() {
        asked.extend(made.values().map(|(_, container)| container.as_str()));
    }
    let containers: BTreeSet<PodContainer> = asked.into_iter().filter_map(|c| PodContainer::parse(c).ok()).collect();
    let mut levels: Vec<(String, Object<'_>)> = Vec::new();
    for c in &containers {
        let object = Object::Container { namespace: &c.namespace, pod: &c.pod, container: &c.container };
        levels.push((c.to_string(), object));
    }
    let pods: BTreeMap<String, &PodContainer> = containers.iter().map(|c| (c.pod_name(), c)).collect();
    for (name, c) in pods {
        levels.push((name, Object::Pod { namespace: &c.namespace, pod: &c.pod }));
    }
    let namespaces: BTreeMap<String, &PodContainer> = containers.iter().map(|c| (c.namespace_name(), c)).collect();
    for (name, c) in namespaces {
        levels.push((name, Object::Namespace(&c.namespace)));
    }
    let mut deleted = Vec::new();
    let mut answers = cluster.map(Answers::new);
    for (name, object) in levels {
        let scope = match object {
            Object::Container { .. } => Scope::Container,
            _ => Scope::Below,
        };
        let facts = ClusterFacts { level: level_of(object), exists: answers.as_mut().and_then(|a| a.exists(object)) };
        deleted.extend(retain(ctx, retention, (&name, scope, &facts), &made)?);
    }
    Ok(deleted)
}

/// What the API server said in one pass, each pod and namespace asked once: a pod's answer
/// serves it and its containers. An answer it could not give is `None`, and counts as "there".
struct Answers<'a> {
    cluster: &'a Cluster,
    pods: BTreeMap<(String, String), Option<Option<Vec<String>>>>,
    namespaces: BTreeMap<String, Option<bool>>,
}

impl<'a> Answers<'a> {
    fn new(cluster: &'a Cluster) -> Answers<'a> {
        Answers { cluster, pods: BTreeMap::new(), namespaces: BTreeMap::new() }
    }

    fn exists(&mut self, object: Object<'_>) -> Option<bool> {
        let cluster = self.cluster;
        fn answered<T>(result: std::result::Result<T, crate::kubernetes::KubernetesError>) -> Option<T> {
            result.inspect_err(|e| tracing::warn!("{e}; its checkpoints count as a live one's")).ok()
        }
        match object {
            Object::Namespace(namespace) => *self
                .namespaces
                .entry(namespace.to_string())
                .or_insert_with(|| answered(cluster.has_namespace(namespace))),
            Object::Pod { namespace, pod } | Object::Container { namespace, pod, .. } => {
                let containers = self
                    .pods
                    .entry((namespace.to_string(), pod.to_string()))
                    .or_insert_with(|| answered(cluster.pod_containers(namespace, pod)))
                    .as_ref()?;
                Some(match (object, containers) {
                    (_, None) => false,
                    (Object::Container { container, .. }, Some(names)) => names.iter().any(|c| c == container),
                    (_, Some(_)) => true,
                })
            }
        }
    }
}

fn level_of(object: Object<'_>) -> ClusterLevel {
    match object {
        Object::Container { .. } => ClusterLevel::Container,
        Object::Pod { .. } => ClusterLevel::Pod,
        Object::Namespace(_) => ClusterLevel::Namespace,
    }
}

/// The operator's pins: a `<archive>.keep` beside a kubelet's archive pins its catalog entry, which
/// then counts towards every limit but is never deleted, and the file's removal unpins it (a pin
/// made with `ckpt catalog pin` stays). Each change is audited as `ckpt catalog pin` audits it.
fn pin_if_kept(ctx: &Context, mut entry: Entry, archive: &str) -> Result<()> {
    const PINNED_BY: &str = "pinned-by";
    let kept = Path::new(&format!("{archive}.keep")).exists();
    let pinned_by_keep = entry.plan[PINNED_BY] == ".keep";
    let Some(plan) = entry.plan.as_object_mut() else { return Ok(()) };
    if kept && !entry.pinned {
        plan.insert(PINNED_BY.into(), json!(".keep"));
    } else if !kept && entry.pinned && pinned_by_keep {
        plan.remove(PINNED_BY);
    } else {
        return Ok(());
    }
    entry.pinned = kept;
    super::catalog::save_pin(ctx, &entry)
}

/// Asks the retainer about the checkpoints of `name` (a container, or a pod or namespace with
/// `Scope::Below`); deletes the images it names (through the catalog, which audits each) and the
/// kubelet's archives they were made of (`made`: each entry's archive and container).
fn retain(
    ctx: &Context,
    retention: &policy::Retention,
    (name, scope, cluster): (&str, Scope<'_>, &ClusterFacts),
    made: &BTreeMap<String, (String, String)>,
) -> Result<Vec<Taken>> {
    let retained = super::catalog::retain(ctx, retention, (name, scope), cluster)?;
    let mut deleted = Vec::new();
    for one in retained {
        let Some((archive, container)) = made.get(&one.entry) else { continue };
        let result = match &one.error {
            Some(error) => Err(error.clone()),
            None => match std::fs::remove_file(archive) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("remove {archive}: {e}")),
                _ => Ok(()),
            },
        };
        deleted.push(Taken {
            archive: archive.clone(),
            result: if result.is_ok() { "deleted".into() } else { "failed".into() },
            layout: None,
            container: Some(container.clone()),
            image: None,
            detail: match result {
                Ok(()) => one.reason,
                Err(error) => format!("{}: {error}", one.reason),
            },
        });
    }
    Ok(deleted)
}

/// An archive the agent refused goes to `refused/` beside it, out of the kubelet's and the
/// operator's sight, for someone to look at.
fn set_aside(dir: &Path, name: &str) -> Result<PathBuf> {
    let aside = dir.join("refused");
    crate::util::create_dir_all(&aside)?;
    let to = aside.join(name);
    std::fs::rename(dir.join(name), &to).map_err(Error::io("move aside", dir.join(name)))?;
    Ok(to)
}

/// An image made of a kubelet's archive.
struct Made {
    archive: KubeletArchive,
    image: String,
    entry: String,
    /// Why a gate narrowed it.
    narrowed: Option<String>,
}

/// Why an archive has no image.
enum NoImage {
    /// It cannot be read as a kubelet's checkpoint: it is moved aside.
    Unreadable(Box<Error>),
    /// A gate denied its image: the archive stays, the kubelet's.
    Denied(Box<(KubeletArchive, Error)>),
    /// Storing or pushing the image failed, not the archive: the next pass tries again.
    Failed(Box<(KubeletArchive, Error)>),
}

impl From<Error> for NoImage {
    fn from(error: Error) -> NoImage {
        NoImage::Unreadable(Box::new(error))
    }
}

/// What a gate is told of the image an archive is about to become.
fn gate_facts(
    archive: &KubeletArchive,
    path: &Path,
    (location, push): (&str, bool),
    sealed_to: &[String],
) -> Result<wit::ExportFacts> {
    let pairs = |list: &[(String, String)]| {
        list.iter().map(|(key, value)| wit::KeyValue { key: key.clone(), value: value.clone() }).collect()
    };
    Ok(wit::ExportFacts {
        container: wit::ContainerFacts {
            id: archive.id.clone(),
            name: archive.shown(),
            image: archive.image.clone(),
            labels: pairs(&archive.labels),
            annotations: pairs(&archive.annotations),
            state: "running".into(),
            memory_bytes: 0,
            process_count: 0,
            tcp_established: 0,
            file_locks: 0,
            volumes: vec![],
            rootfs_change_bytes: 0,
        },
        target: wit::ExportTarget {
            kind: if push { wit::TargetKind::Registry } else { wit::TargetKind::Image },
            location: location.to_string(),
            compression: if sealed_to.is_empty() { wit::Compression::None } else { wit::Compression::Zstd },
            sealed_to: sealed_to.to_vec(),
            signed: false,
        },
        size_bytes: std::fs::metadata(path).map_err(Error::io("stat", path))?.len(),
        has_rootfs: archive.has_rootfs,
        has_volumes: archive.has_volumes,
        digest: crate::util::file_digest(path)?,
        now: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// The checkpoint image of the archive at `path`, judged by the gates, added to the store (and
/// pushed), catalogued.
fn image_of(
    ctx: &Context,
    req: &NodeAgentRequest,
    path: &Path,
    gates: Option<&mut Policies>,
    sealed_to: &[String],
) -> std::result::Result<Made, NoImage> {
    let mut staged = StagedCheckpoint::from_archive(&ctx.roots.staging_dir(), path).map_err(Error::from)?;
    staged.page_images.take().map_or(Ok(()), ImagesInFlight::wait).map_err(Error::from)?;
    let archive = KubeletArchive::read(&staged)?;
    drop(staged);
    let at = chrono::Utc::now();
    let target = &archive.target;
    let name = expand(&req.image, (&target.namespace, &target.pod, &target.container), at);
    let reference = crate::image::normalize_reference(&name);
    let verdict = match gates {
        None => GateVerdict::Allow,
        Some(policies) => {
            let judged = gate_facts(&archive, path, (&reference, req.push), sealed_to)
                .and_then(|facts| Ok(policies.gate(&facts)?));
            match judged {
                Ok(verdict) => verdict,
                Err(error) if error.is_denial() => return Err(NoImage::Denied(Box::new((archive, error)))),
                Err(error) => return Err(NoImage::Failed(Box::new((archive, error)))),
            }
        }
    };
    match make_image(ctx, req, path, (&archive, sealed_to), &reference, &verdict, at) {
        Ok((image, entry)) => {
            let narrowed = match verdict {
                GateVerdict::Allow => None,
                GateVerdict::Narrow { reasons, .. } => Some(format!("narrowed by a gate: {}", reasons.join("; "))),
            };
            Ok(Made { archive, image, entry, narrowed })
        }
        Err(error) => Err(NoImage::Failed(Box::new((archive, error)))),
    }
}

/// When the kubelet took the checkpoint, from the time that ends its archive's name
/// (`checkpoint-<pod>_<namespace>-<container>-<RFC 3339>.tar`): retention orders a pod's and a
/// namespace's checkpoints by it, not by when the agent came to them.
fn checkpointed_at(path: &Path) -> Option<chrono::DateTime<chrono::Utc>> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".tar")?;
    // `2026-12-07T04:00:00Z`, or with an offset, `2026-12-07T04:00:00+01:00`.
    [20, 25].into_iter().find_map(|len| {
        let time = stem.get(stem.len().checked_sub(len)?..)?;
        chrono::DateTime::parse_from_rfc3339(time).ok().map(|t| t.with_timezone(&chrono::Utc))
    })
}

/// Whom the images are sealed to, as a checkpoint's exports are: nobody unless `--encrypt-to`
/// or the host config (`encrypt = "always"`) asks; then the host config's recipients and
/// `--encrypt-to`'s, and never nobody.
fn sealed_to(ctx: &Context, req: &NodeAgentRequest) -> Result<Vec<String>> {
    let always = ctx.config.exports.encrypt == crate::config::EncryptRule::Always;
    if !always && req.encrypt_to.is_empty() {
        return Ok(Vec::new());
    }
    super::checkpoint::seal_recipients(ctx, &[&req.encrypt_to])
}

fn make_image(
    ctx: &Context,
    req: &NodeAgentRequest,
    path: &Path,
    (archive, sealed_to): (&KubeletArchive, &[String]),
    reference: &str,
    verdict: &GateVerdict,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(String, String)> {
    // The kubelet's archive, checked above, is the image's one layer, as CRI-O's own are; a
    // narrowed one is copied without what the gate took away, a sealed one is sealed.
    let dropped = match verdict {
        GateVerdict::Allow => (false, false),
        GateVerdict::Narrow { drop_rootfs, drop_volumes, .. } => (*drop_rootfs, *drop_volumes),
    };
    let mut annotations = archive.annotations();
    let layer = if dropped == (false, false) && sealed_to.is_empty() {
        super::checkpoint::export::store_layer(ctx, path, sealed_to, &mut annotations)?
    } else {
        let scratch = crate::util::tempdir_in(&ctx.roots.staging_dir(), "kubelet-layer")?;
        let layer = scratch.path.join("layer");
        let file = std::fs::File::create(&layer).map_err(Error::io("create", &layer))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        super::checkpoint::podman::copy_archive(path, dropped, sealed_to, &mut out, &layer)?;
        std::io::Write::flush(&mut out).map_err(Error::io("write", &layer))?;
        drop(out);
        super::checkpoint::export::store_layer(ctx, &layer, sealed_to, &mut annotations)?
    };
    let reference = reference.to_string();
    ctx.images.add_image(&reference, &[layer], None, annotations)?;
    ctx.images.set_trust(&reference, "made-here")?;
    let location = match req.push {
        true => super::images::push(ctx, &reference, None, &req.registry)?,
        false => reference.clone(),
    };
    let info = ctx.images.resolve(&reference)?;
    // A pod's container is known by its names: the CRI's ID changes with every restart.
    let entry = Entry {
        id: crate::store::catalog::new_id(),
        container_id: archive.shown(),
        container_name: archive.shown(),
        kind: EntryKind::Image,
        location: location.clone(),
        size_bytes: info.size,
        digest: Some(info.manifest_digest.to_string()),
        created: checkpointed_at(path).unwrap_or(at),
        trigger: "kubelet".into(),
        schedule: None,
        policy: EntryPolicy { source: "kubelet".into(), digest: String::new() },
        plan: json!({"archive": path.display().to_string(), "layout": archive.layout, "cri-container-id": archive.id}),
        pinned: false,
        sealed_to: sealed_to.to_vec(),
        signature: None,
    };
    ctx.catalog().add(&entry)?;
    Ok((location, entry.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_that_seals_everything_never_makes_an_image_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let roots = crate::store::Roots::new(dir.path().join("root"), dir.path().join("run"));
        let mut ctx = Context::new(roots, "runc".into());
        let req = NodeAgentRequest {
            checkpoint_dir: dir.path().into(),
            image: "localhost/k/{pod}:1".into(),
            push: false,
            registry: RegistryFlags::default(),
            once: true,
            interval: Duration::from_secs(5),
            gates: vec![],
            encrypt_to: vec![],
            retainer: None,
            cluster_retention: None,
            schedules_on_node: None,
        };
        assert!(sealed_to(&ctx, &req).unwrap().is_empty(), "nothing asks for sealing");
        ctx.config.exports.encrypt = crate::config::EncryptRule::Always;
        assert!(matches!(sealed_to(&ctx, &req), Err(Error::SealWithoutRecipient)), "always, and nobody to seal to");
    }

    #[test]
    fn a_checkpoint_is_dated_by_the_time_in_its_archives_name() {
        let at = |name: &str| checkpointed_at(Path::new(name)).map(|t| t.to_rfc3339());
        assert_eq!(
            at("/k/checkpoint-web-0_default-web-2026-12-07T04:00:00Z.tar").as_deref(),
            Some("2026-12-07T04:00:00+00:00")
        );
        assert_eq!(
            at("checkpoint-web-0_default-web-2026-12-07T05:00:00+01:00.tar").as_deref(),
            Some("2026-12-07T04:00:00+00:00")
        );
        assert_eq!(at("checkpoint-web-0_default-web-latest.tar"), None);
        assert_eq!(at("checkpoint-x_y-z.tar"), None);
    }

    #[test]
    fn templates_expand_to_image_names() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-07T04:00:00Z").unwrap().with_timezone(&chrono::Utc);
        let name = expand("localhost/kube/{namespace}-{pod}-{container}:{time}", ("shop", "api-0", "api"), at);
        assert_eq!(name, "localhost/kube/shop-api-0-api:20261207T040000000000Z");
    }
}
