//! Compliance: a gate. A container's data class (a label) decides where its checkpoints may go
//! and whether its volumes may leave with them. Unlabelled containers are handled as the
//! settings say.

// Written against the 0.1.0 contract on purpose: ckpt must keep loading such components.
#![allow(deprecated)]

use std::collections::BTreeMap;

use ckpt_guest_sdk::v1::types::*;
use ckpt_guest_sdk::v1::{Guest, Level, export_policy, info, label, log, plan_from_request, settings};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_label")]
    label: String,
    classes: BTreeMap<String, Class>,
    /// `deny`, `allow`, or the name of a class to treat unlabelled containers as.
    #[serde(default = "default_unlabelled")]
    unlabelled: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Class {
    /// Allowed target prefixes: a path prefix for archives, `image:<prefix>` for images.
    targets: Vec<String>,
    #[serde(default = "yes")]
    volumes: bool,
    #[serde(default = "yes")]
    rootfs: bool,
}

fn default_label() -> String {
    "data-class".into()
}
fn default_unlabelled() -> String {
    "deny".into()
}
fn yes() -> bool {
    true
}

const SCHEMA: &str = r#"{"type":"object","required":["classes"],"additionalProperties":false,"properties":{
"label":{"type":"string"},"unlabelled":{"type":"string"},
"classes":{"type":"object","additionalProperties":{"type":"object","required":["targets"],"additionalProperties":false,
"properties":{"targets":{"type":"array","items":{"type":"string"}},"volumes":{"type":"boolean"},"rootfs":{"type":"boolean"}}}}}}"#;

fn parse(text: &str) -> Result<Settings, String> {
    let s: Settings = settings(text)?;
    if s.unlabelled != "deny" && s.unlabelled != "allow" && !s.classes.contains_key(&s.unlabelled) {
        return Err(format!("settings: \"unlabelled\" is {:?}: use deny, allow or a class name", s.unlabelled));
    }
    Ok(s)
}

fn target_name(target: &ExportTarget) -> String {
    match target.kind {
        TargetKind::Archive => target.location.clone(),
        TargetKind::Image => format!("image:{}", target.location),
    }
}

pub struct Compliance;

impl Guest for Compliance {
    fn describe() -> PolicyInfo {
        info("compliance", env!("CARGO_PKG_VERSION"), &[DecisionKind::Gate], SCHEMA)
    }

    fn validate_settings(settings: String) -> Result<(), String> {
        parse(&settings).map(drop)
    }

    fn plan(_settings: String, facts: CheckpointFacts) -> PlanDecision {
        PlanDecision::Plan(plan_from_request(&facts))
    }

    fn after_round(_settings: String, _facts: CheckpointFacts, _rounds: Vec<RoundStats>) -> RoundDecision {
        RoundDecision { action: RoundAction::DumpNow, reason: "compliance does not plan rounds".into() }
    }

    fn gate(settings: String, facts: ExportFacts) -> GateDecision {
        let s = match parse(&settings) {
            Ok(s) => s,
            Err(e) => return GateDecision::Deny(e),
        };
        let class_name = match label(&facts.container, &s.label) {
            Some(class) => class.to_string(),
            None if s.unlabelled == "allow" => return GateDecision::Allow,
            None if s.unlabelled == "deny" => {
                return GateDecision::Deny(format!("container {:?} has no {:?} label", facts.container.name, s.label));
            }
            None => s.unlabelled.clone(),
        };
        let Some(class) = s.classes.get(&class_name) else {
            return GateDecision::Deny(format!("data class {class_name:?} is not known to this policy"));
        };
        let target = target_name(&facts.target);
        if !class.targets.iter().any(|prefix| target.starts_with(prefix.as_str())) {
            return GateDecision::Deny(format!("data class {class_name:?} may not be exported to {target}"));
        }
        let drop_volumes = !class.volumes && facts.has_volumes;
        let drop_rootfs = !class.rootfs && facts.has_rootfs;
        if drop_volumes || drop_rootfs {
            log(Level::Info, &format!("narrowing export of {:?} for data class {class_name:?}", facts.container.name));
            return GateDecision::Narrow(Narrowing {
                drop_rootfs,
                drop_volumes,
                reason: format!(
                    "data class {class_name:?} forbids exporting {}",
                    if drop_volumes { "volumes" } else { "rootfs changes" }
                ),
            });
        }
        GateDecision::Allow
    }
}

export_policy!(Compliance);

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_guest_sdk::v1::sample_facts;

    const SETTINGS: &str = r#"{"classes": {"public": {"targets": ["/var/tmp/"]}, "pii": {"targets": ["/secure/"], "volumes": false}}, "unlabelled": "public"}"#;

    fn export(class: Option<&str>, location: &str, has_volumes: bool) -> ExportFacts {
        let mut container = sample_facts("c").container;
        if let Some(class) = class {
            container.labels.push(KeyValue { key: "data-class".into(), value: class.into() });
        }
        ExportFacts {
            container,
            target: ExportTarget {
                kind: TargetKind::Archive,
                location: location.into(),
                compression: Compression::Zstd,
            },
            size_bytes: 1,
            has_rootfs: true,
            has_volumes,
            digest: "blake3:00".into(),
            now: "2026-11-27T00:00:00Z".into(),
        }
    }

    #[test]
    fn gates_by_class() {
        assert_eq!(Compliance::gate(SETTINGS.into(), export(None, "/var/tmp/a.tar", true)), GateDecision::Allow);
        assert!(matches!(
            Compliance::gate(SETTINGS.into(), export(Some("pii"), "/var/tmp/a.tar", true)),
            GateDecision::Deny(_)
        ));
        let GateDecision::Narrow(n) = Compliance::gate(SETTINGS.into(), export(Some("pii"), "/secure/a.tar", true))
        else {
            panic!()
        };
        assert!(n.drop_volumes && !n.drop_rootfs);
        assert!(matches!(
            Compliance::gate(SETTINGS.into(), export(Some("other"), "/var/tmp/a", false)),
            GateDecision::Deny(_)
        ));
        assert!(Compliance::validate_settings(r#"{"classes":{},"unlabelled":"nope"}"#.into()).is_err());
    }
}
