//! Facts and decisions as JSON, with the WIT's own names: `memory-bytes`, `another-round`,
//! `{"rounds": 3}`. bindgen's types serialise with serde's defaults (`memory_bytes`,
//! `AnotherRound`), and bindgen takes no serde attributes, so every value passes through a walk
//! of `wit/policy.wit` as wit-parser reads it. The same walk writes the JSON Schema that
//! `wit/policy.schema.json` commits, and reads JSON strictly: a key that names no field is an
//! error that names it.

use std::sync::OnceLock;

use heck::{ToSnakeCase, ToUpperCamelCase};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use wit_parser::{Resolve, Type, TypeDefKind, TypeId};

use super::bindings::*;

const WIT: &str = include_str!("../../../wit/policy.wit");

/// A type of the contract, and its name there.
pub trait WitType: Serialize + DeserializeOwned {
    const WIT: &'static str;
}

macro_rules! wit_types {
    ($($rust:ty => $wit:literal),* $(,)?) => {
        $(impl WitType for $rust { const WIT: &'static str = $wit; })*
        /// Every type `ckpt` reads or writes as JSON, as the schema lists them.
        const DOCUMENTS: &[&str] = &[$($wit),*];
    };
}

wit_types! {
    CheckpointFacts => "checkpoint-facts",
    ExportFacts => "export-facts",
    RetainFacts => "retain-facts",
    RoundStats => "round-stats",
    Plan => "plan",
    PlanDecision => "plan-decision",
    RoundDecision => "round-decision",
    GateDecision => "gate-decision",
    Deletion => "deletion",
    CheckpointOptions => "checkpoint-options",
    ExportTarget => "export-target",
    PreDumpPlan => "pre-dump-plan",
    MigrationFacts => "migration-facts",
    StrategyDecision => "strategy-decision",
    ClusterFacts => "cluster-facts",
}

struct Contract {
    resolve: Resolve,
    types: Vec<(String, TypeId)>,
}

fn contract() -> &'static Contract {
    static CONTRACT: OnceLock<Contract> = OnceLock::new();
    CONTRACT.get_or_init(|| {
        let mut resolve = Resolve::new();
        let package = resolve.push_str("policy.wit", WIT).expect("wit/policy.wit parses: it is compiled into ckpt");
        let interfaces = &resolve.packages[package].interfaces;
        let types = ["types", "migration", "cluster"]
            .iter()
            .flat_map(|name| resolve.interfaces[interfaces[*name]].types.iter())
            .map(|(name, id)| (name.clone(), *id))
            .collect();
        Contract { resolve, types }
    })
}

fn named(name: &str) -> TypeId {
    contract().types.iter().find(|(n, _)| n == name).map(|(_, id)| *id).expect("a type of wit/policy.wit")
}

/// `value` as JSON with the WIT's names.
pub fn to_json<T: WitType>(value: &T) -> Value {
    let serde_form = serde_json::to_value(value).expect("contract types serialise");
    to_wit(&serde_form, &Type::Id(named(T::WIT)))
}

/// A strategy's WIT name: `stop-and-copy`, `pre-copy`, `post-copy`.
pub fn strategy_name(strategy: super::bindings::Strategy) -> &'static str {
    use super::bindings::Strategy;
    match strategy {
        Strategy::StopAndCopy => "stop-and-copy",
        Strategy::PreCopy => "pre-copy",
        Strategy::PostCopy => "post-copy",
    }
}

/// An older version's answer (`older`, a value of its bindings) as the host's `T`, by the
/// contract's names: a field a later version added takes the value that means what the older
/// version meant (see [`added_since_0_2`]).
pub fn from_older<T: WitType>(older: &impl Serialize) -> Result<T, String> {
    let serde_form = serde_json::to_value(older).map_err(|e| e.to_string())?;
    from_json(&to_wit(&serde_form, &Type::Id(named(T::WIT))))
}

/// Each item of `values` as [`to_json`] writes it.
pub fn list_to_json<T: WitType>(values: &[T]) -> Value {
    Value::Array(values.iter().map(to_json).collect())
}

/// Reads JSON with the WIT's names; every unknown key and missing field is named, by its path.
pub fn from_json<T: WitType>(value: &Value) -> Result<T, String> {
    let mut problems = Vec::new();
    let serde_form = from_wit(value, &Type::Id(named(T::WIT)), "", &mut problems);
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    serde_json::from_value(serde_form).map_err(|e| e.to_string())
}

/// A JSON list of `T`, as [`from_json`] reads each item.
pub fn list_from_json<T: WitType>(value: &Value) -> Result<Vec<T>, String> {
    let Value::Array(items) = value else { return Err(format!("expected a list of {}", T::WIT)) };
    items.iter().enumerate().map(|(i, item)| from_json(item).map_err(|e| format!("item {i}: {e}"))).collect()
}

fn kind(id: TypeId) -> &'static TypeDefKind {
    &contract().resolve.types[id].kind
}

/// A variant's case and payload: `"case"`, or `{"case": payload}`.
fn variant_parts(value: &Value) -> Option<(&str, Option<&Value>)> {
    match value {
        Value::String(tag) => Some((tag.as_str(), None)),
        Value::Object(map) if map.len() == 1 => map.iter().next().map(|(tag, payload)| (tag.as_str(), Some(payload))),
        _ => None,
    }
}

fn to_wit(value: &Value, ty: &Type) -> Value {
    let Type::Id(id) = ty else { return value.clone() };
    match (kind(*id), value) {
        (TypeDefKind::Type(inner), v) => to_wit(v, inner),
        // A field the value lacks (one an older version does not have) stays out, for
        // `from_wit` to give it its old meaning or name it missing.
        (TypeDefKind::Record(record), Value::Object(fields)) => Value::Object(
            record
                .fields
                .iter()
                .filter_map(|f| Some((f.name.clone(), to_wit(fields.get(&f.name.to_snake_case())?, &f.ty))))
                .collect(),
        ),
        (TypeDefKind::Enum(e), Value::String(s)) => Value::String(
            e.cases.iter().find(|c| c.name.to_upper_camel_case() == *s).map_or(s.clone(), |c| c.name.clone()),
        ),
        (TypeDefKind::Variant(variant), v) => {
            let Some((tag, payload)) = variant_parts(v) else { return v.clone() };
            let Some(case) = variant.cases.iter().find(|c| c.name.to_upper_camel_case() == tag) else {
                return v.clone();
            };
            match (&case.ty, payload) {
                (Some(ty), Some(payload)) => json!({ case.name.clone(): to_wit(payload, ty) }),
                _ => Value::String(case.name.clone()),
            }
        }
        (TypeDefKind::Option(inner), v) if !v.is_null() => to_wit(v, inner),
        (TypeDefKind::List(inner), Value::Array(items)) => {
            Value::Array(items.iter().map(|i| to_wit(i, inner)).collect())
        }
        (_, v) => v.clone(),
    }
}

/// A field 0.3.0 added, which a document written for 0.2.0 (a cases file, saved facts) lacks:
/// its value then is what 0.2.0 meant. Every other missing field is an error.
fn added_since_0_2(record: &str, field: &str) -> Option<Value> {
    match (record, field) {
        ("export-target", "sealed-to") => Some(json!([])),
        ("export-target", "signed") | ("plan", "plaintext-spill") => Some(json!(false)),
        // Unknown: a planner that needs it sees that the host said nothing.
        ("host-facts", "memory-available-bytes") => Some(json!(0)),
        _ => None,
    }
}

fn from_wit(value: &Value, ty: &Type, path: &str, problems: &mut Vec<String>) -> Value {
    let Type::Id(id) = ty else { return value.clone() };
    let at = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match (kind(*id), value) {
        (TypeDefKind::Type(inner), v) => from_wit(v, inner, path, problems),
        (TypeDefKind::Record(record), Value::Object(given)) => {
            let mut out = Map::new();
            for (key, v) in given {
                match record.fields.iter().find(|f| f.name == *key) {
                    Some(field) => {
                        out.insert(field.name.to_snake_case(), from_wit(v, &field.ty, &at(key), problems));
                    }
                    None => {
                        let close = key.replace('_', "-");
                        let hint = match record.fields.iter().any(|f| f.name == close) {
                            true => format!(" (did you mean {close:?}?)"),
                            false => String::new(),
                        };
                        let fields: Vec<&str> = record.fields.iter().map(|f| f.name.as_str()).collect();
                        problems.push(format!(
                            "key {:?} names no field{hint}; the fields there are {}",
                            at(key),
                            fields.join(", ")
                        ));
                    }
                }
            }
            for field in &record.fields {
                let optional = matches!(field.ty, Type::Id(id) if matches!(kind(id), TypeDefKind::Option(_)));
                if given.contains_key(&field.name) || optional {
                    continue;
                }
                let record_name = contract().resolve.types[*id].name.as_deref().unwrap_or_default();
                match added_since_0_2(record_name, &field.name) {
                    Some(default) => drop(out.insert(field.name.to_snake_case(), default)),
                    None => problems.push(format!("{:?} is missing", at(&field.name))),
                }
            }
            Value::Object(out)
        }
        (TypeDefKind::Enum(e), Value::String(s)) => match e.cases.iter().find(|c| c.name == *s) {
            Some(case) => Value::String(case.name.to_upper_camel_case()),
            None => {
                let cases: Vec<&str> = e.cases.iter().map(|c| c.name.as_str()).collect();
                problems.push(format!("{:?} at {path:?} is not one of {}", s, cases.join(", ")));
                Value::Null
            }
        },
        (TypeDefKind::Variant(variant), v) => {
            let Some((tag, payload)) = variant_parts(v) else {
                problems.push(format!("{path:?} must be a case name or {{\"case\": value}}"));
                return Value::Null;
            };
            let Some(case) = variant.cases.iter().find(|c| c.name == tag) else {
                let cases: Vec<&str> = variant.cases.iter().map(|c| c.name.as_str()).collect();
                problems.push(format!("{tag:?} at {path:?} is not one of {}", cases.join(", ")));
                return Value::Null;
            };
            let name = case.name.to_upper_camel_case();
            match (&case.ty, payload) {
                (Some(ty), Some(payload)) => json!({ name: from_wit(payload, ty, &at(tag), problems) }),
                (None, None) => Value::String(name),
                (Some(_), None) => {
                    problems.push(format!("{:?} needs a value: {{\"{tag}\": ...}}", at(tag)));
                    Value::Null
                }
                (None, Some(_)) => {
                    problems.push(format!("{:?} takes no value: write it as \"{tag}\"", at(tag)));
                    Value::Null
                }
            }
        }
        (TypeDefKind::Option(inner), v) if !v.is_null() => from_wit(v, inner, path, problems),
        (TypeDefKind::List(inner), Value::Array(items)) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| from_wit(item, inner, &format!("{path}[{i}]"), problems))
                .collect(),
        ),
        (_, v) => v.clone(),
    }
}

fn schema_of(ty: &Type) -> Value {
    match ty {
        Type::Bool => json!({"type": "boolean"}),
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => json!({"type": "integer", "minimum": 0}),
        Type::S8 | Type::S16 | Type::S32 | Type::S64 => json!({"type": "integer"}),
        Type::F32 | Type::F64 => json!({"type": "number"}),
        Type::Char | Type::String => json!({"type": "string"}),
        Type::ErrorContext => json!({}),
        Type::Id(id) => {
            let def = &contract().resolve.types[*id];
            match (&def.name, &def.kind) {
                (Some(name), _) if contract().types.iter().any(|(n, _)| n == name) => {
                    json!({"$ref": format!("#/$defs/{name}")})
                }
                (_, def) => schema_of_kind(def),
            }
        }
    }
}

fn schema_of_kind(def: &TypeDefKind) -> Value {
    let described = |docs: &wit_parser::Docs, mut schema: Value| {
        if let Some(text) = &docs.contents {
            schema["description"] = Value::String(text.trim().to_string());
        }
        schema
    };
    match def {
        TypeDefKind::Record(record) => {
            let properties: Map<String, Value> =
                record.fields.iter().map(|f| (f.name.clone(), described(&f.docs, schema_of(&f.ty)))).collect();
            let required: Vec<&str> = record
                .fields
                .iter()
                .filter(|f| !matches!(f.ty, Type::Id(id) if matches!(kind(id), TypeDefKind::Option(_))))
                .map(|f| f.name.as_str())
                .collect();
            json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
        }
        TypeDefKind::Enum(e) => json!({"enum": e.cases.iter().map(|c| c.name.as_str()).collect::<Vec<_>>()}),
        TypeDefKind::Variant(variant) => {
            let cases: Vec<Value> = variant
                .cases
                .iter()
                .map(|case| match &case.ty {
                    None => described(&case.docs, json!({"const": case.name})),
                    Some(ty) => described(
                        &case.docs,
                        json!({"type": "object", "properties": {case.name.clone(): schema_of(ty)},
                               "required": [case.name], "additionalProperties": false}),
                    ),
                })
                .collect();
            json!({"oneOf": cases})
        }
        TypeDefKind::Option(inner) => json!({"anyOf": [schema_of(inner), {"type": "null"}]}),
        TypeDefKind::List(inner) => json!({"type": "array", "items": schema_of(inner)}),
        TypeDefKind::Type(inner) => schema_of(inner),
        _ => json!({}),
    }
}

/// The JSON Schema of every type of the contract, in `$defs`; what ckpt reads and writes as JSON
/// (facts fixtures, cases, decisions) is listed under `documents`.
pub fn schema() -> Value {
    let defs: Map<String, Value> = contract()
        .types
        .iter()
        .map(|(name, id)| {
            let def = &contract().resolve.types[*id];
            let mut schema = schema_of_kind(&def.kind);
            if let Some(text) = &def.docs.contents {
                schema["description"] = Value::String(text.trim().to_string());
            }
            (name.clone(), schema)
        })
        .collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://ckpt.invalid/policy/0.3.0/schema.json",
        "title": "ckpt:policy@0.3.0 facts and decisions as JSON",
        "documents": DOCUMENTS,
        "$defs": defs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn facts_round_trip_with_the_wit_names() {
        let given = fixture("facts.json");
        let facts: CheckpointFacts = from_json(&given).unwrap();
        assert_eq!(to_json(&facts), given, "the fixture is written in the WIT's names, and reads back the same");
        assert!(given["container"]["memory-bytes"].is_u64());
        let plan = PlanDecision::Plan(Plan {
            options: facts.request.options,
            pre_dump: PreDumpPlan::Rounds(3),
            exports: vec![ExportTarget {
                kind: TargetKind::Archive,
                location: "/a".into(),
                compression: Compression::Zstd,
                sealed_to: vec!["age1example".into()],
                signed: true,
            }],
            plaintext_spill: false,
            reasons: vec![],
        });
        let json = to_json(&plan);
        assert_eq!(json["plan"]["pre-dump"], json!({"rounds": 3}));
        assert_eq!(json["plan"]["exports"][0]["kind"], "archive");
        assert_eq!(from_json::<PlanDecision>(&json).unwrap(), plan);
        assert_eq!(
            to_json(&RoundDecision { action: RoundAction::AnotherRound, reason: String::new() })["action"],
            "another-round"
        );
        assert_eq!(to_json(&GateDecision::Allow), json!("allow"));
    }

    #[test]
    fn an_older_plan_reads_with_what_later_versions_added_in_its_old_meaning() {
        use crate::policy::bindings::v2;
        let facts: CheckpointFacts = from_json(&fixture("facts.json")).unwrap();
        let older = v2::PlanDecision::Plan(v2::Plan {
            options: crate::policy::bindings::by_name(&facts.request.options).unwrap(),
            pre_dump: v2::PreDumpPlan::None,
            exports: vec![v2::ExportTarget {
                kind: v2::TargetKind::Registry,
                location: "localhost:5000/a:1".into(),
                compression: v2::Compression::Gzip,
            }],
            reasons: vec!["as requested".into()],
        });
        let PlanDecision::Plan(plan) = from_older::<PlanDecision>(&older).unwrap() else { panic!("not a plan") };
        assert!(!plan.plaintext_spill);
        let target = &plan.exports[0];
        assert_eq!((target.kind, target.compression), (TargetKind::Registry, Compression::Gzip));
        assert!(target.sealed_to.is_empty() && !target.signed, "in the clear and unsigned, as 0.2.0 meant");
    }

    #[test]
    fn unknown_keys_missing_fields_and_unknown_cases_are_named() {
        let mut given = fixture("facts.json");
        given["container"]["memory_bytes"] = json!(1);
        given["request"].as_object_mut().unwrap().remove("seed");
        given["request"]["exports"] = json!([{"kind": "Archive", "location": "/a", "compression": "zstd"}]);
        let err = from_json::<CheckpointFacts>(&given).unwrap_err();
        assert!(err.contains(r#"key "container.memory_bytes" names no field (did you mean "memory-bytes"?)"#), "{err}");
        assert!(err.contains(r#""request.seed" is missing"#), "{err}");
        assert!(
            err.contains(r#""Archive" at "request.exports[0].kind" is not one of archive, image, registry"#),
            "{err}"
        );
    }

    /// `wit/policy.schema.json` is what this walk writes: a change to the WIT shows in review.
    #[test]
    fn the_committed_schema_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/policy.schema.json");
        let generated = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
        if std::env::var_os("CKPT_UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(committed == generated, "wit/policy.schema.json is stale: rerun with CKPT_UPDATE_SCHEMA=1");
    }
}
